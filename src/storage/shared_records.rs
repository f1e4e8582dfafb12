//! The record directories the hosts sharing a domain keep in it, `<domain>/master/<kind>`
//! (the SPM's tasks, the successful `SDM.merge`s): one file per record, each reached from the
//! domain's directory without following a link at any component (`domain_fs`), created the
//! same way. Another host can write the domain; a link planted at `master`, at `<kind>` or at
//! a record's name must not lead rvdsm to write or read elsewhere. Blocking file I/O.

use std::io;
use std::path::PathBuf;

use super::layout::DomainDir;

/// Directories as `create_dir_all` made them before; records readable by root only.
const DIR_MODE: u32 = 0o755;
const RECORD_MODE: u32 = 0o600;

/// The records of one kind in a domain's `master/` directory. Nothing is touched until a
/// method is called.
#[derive(Debug, Clone)]
pub struct SharedRecords {
    dir: DomainDir,
    kind: &'static str,
}

impl SharedRecords {
    /// The records `kind` (one path component) of the domain in `dir`.
    pub fn new(dir: DomainDir, kind: &'static str) -> Self {
        debug_assert!(!kind.contains('/') && kind != ".." && !kind.is_empty());
        Self { dir, kind }
    }

    fn master(&self) -> PathBuf {
        self.dir.root().join("master")
    }

    /// `<domain>/master/<kind>`.
    pub fn path(&self) -> PathBuf {
        self.master().join(self.kind)
    }

    fn record(&self, name: &str) -> io::Result<PathBuf> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a record's name"),
            ));
        }
        Ok(self.path().join(name))
    }

    /// Creates `master/` and `master/<kind>/` unless they are there (refusing anything at
    /// either name that is not a plain directory, a link included).
    pub fn ensure(&self) -> io::Result<()> {
        self.dir.ensure_dir(&self.master(), DIR_MODE)?;
        self.dir.ensure_dir(&self.path(), DIR_MODE)
    }

    /// Replaces the record `name` with `bytes`, atomically and durably.
    pub fn write(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.record(name)?;
        self.ensure()?;
        self.dir.write_atomic(&path, bytes, RECORD_MODE)
    }

    /// The record `name`; `None` when there is none.
    pub fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match self.dir.read(&self.record(name)?) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the record `name` (a link there itself, never its target); returns whether
    /// one was there.
    pub fn remove(&self, name: &str) -> io::Result<bool> {
        self.dir.remove(&self.record(name)?)
    }

    /// The names of the records (none when the directory does not exist yet).
    pub fn names(&self) -> io::Result<Vec<String>> {
        match self.dir.list(&self.master()) {
            Ok(None) => return Ok(Vec::new()),
            Ok(Some(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(self.dir.list(&self.path())?.unwrap_or_default())
    }

    /// Every record whose name ends with `suffix`, with its name; unreadable ones are
    /// logged and skipped.
    pub fn all(&self, suffix: &str) -> io::Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for name in self.names()? {
            if !name.ends_with(suffix) || name.starts_with('.') {
                continue;
            }
            match self.read(&name) {
                Ok(Some(bytes)) => out.push((name, bytes)),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(record = %name, kind = self.kind, error = %err, "shared record skipped");
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn setup() -> (tempfile::TempDir, DomainDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DomainDir::new(&tmp.path().join("mnt"), Uuid::from_u128(1));
        std::fs::create_dir_all(dir.root()).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        (tmp, dir, elsewhere)
    }

    #[test]
    fn records_round_trip() {
        let (_tmp, dir, _) = setup();
        let records = SharedRecords::new(dir, "tasks");
        assert!(records.names().unwrap().is_empty());
        records.write("a.json", b"one").unwrap();
        records.write("a.json", b"two").unwrap();
        assert_eq!(records.read("a.json").unwrap().unwrap(), b"two");
        assert_eq!(
            records.all(".json").unwrap(),
            vec![("a.json".to_owned(), b"two".to_vec())]
        );
        assert!(records.remove("a.json").unwrap());
        assert_eq!(records.read("a.json").unwrap(), None);
        assert!(records.write("../x", b"x").is_err());
    }

    #[test]
    fn a_link_at_master_or_at_the_kind_is_never_followed() {
        let (_tmp, dir, elsewhere) = setup();
        std::os::unix::fs::symlink(&elsewhere, dir.root().join("master")).unwrap();
        let records = SharedRecords::new(dir.clone(), "tasks");
        assert!(records.write("a.json", b"x").is_err());
        assert!(records.names().is_err());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        std::fs::remove_file(dir.root().join("master")).unwrap();
        std::fs::create_dir(dir.root().join("master")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.root().join("master/tasks")).unwrap();
        assert!(records.write("a.json", b"x").is_err());
        assert!(records.read("a.json").is_err());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }
}
