//! The VM lifecycle journal: one file per VM being created or destroyed, written (and synced)
//! before the first step that changes anything and removed after the last, so that a crash of
//! rvdsmd in between is finished at the next start (a half-created VM is undone, a
//! half-destroyed one destroyed).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::fsutil::{remove_if_exists, write_atomic};

/// What was under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// `VM.create`.
    Create,
    /// `VM.destroy`.
    Destroy,
}

/// One drive's image, to tear down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveImage {
    /// The pool.
    pub pool: Uuid,
    /// The domain.
    pub domain: Uuid,
    /// The image.
    pub image: Uuid,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The VM.
    pub vm: Uuid,
    /// What was under way.
    pub operation: Operation,
    /// Whether rvdsm defined the VM (and so undefines it).
    pub managed: bool,
    /// Its drives' images.
    pub images: Vec<DriveImage>,
}

/// The journal's directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The journal in `dir` (created if missing). Blocking.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, vm: Uuid) -> PathBuf {
        self.dir.join(format!("{vm}.json"))
    }

    /// Records `entry` durably. Blocking.
    pub fn write(&self, entry: &Entry) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        write_atomic(&self.path(entry.vm), &bytes, 0o600)
    }

    /// Forgets the VM's entry. Blocking.
    pub fn remove(&self, vm: Uuid) -> std::io::Result<()> {
        remove_if_exists(&self.path(vm)).map(drop)
    }

    /// Every entry left by a previous run; unreadable ones are logged and skipped. Blocking.
    pub fn entries(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| {
                let path = e.path();
                match std::fs::read(&path).map(|b| serde_json::from_slice::<Entry>(&b)) {
                    Ok(Ok(entry)) => Some(entry),
                    Ok(Err(err)) => {
                        tracing::error!(path = %path.display(), error = %err, "unreadable VM journal entry");
                        None
                    }
                    Err(err) => {
                        tracing::error!(path = %path.display(), error = %err, "cannot read VM journal entry");
                        None
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_reopen_and_go_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let entry = Entry {
            vm: Uuid::from_u128(1),
            operation: Operation::Create,
            managed: true,
            images: vec![DriveImage {
                pool: Uuid::from_u128(2),
                domain: Uuid::from_u128(3),
                image: Uuid::from_u128(4),
            }],
        };
        journal.write(&entry).unwrap();
        std::fs::write(dir.path().join("junk.json"), b"{").unwrap();
        let reopened = Journal::open(dir.path()).unwrap();
        assert_eq!(reopened.entries(), vec![entry.clone()]);
        reopened.remove(entry.vm).unwrap();
        reopened.remove(entry.vm).unwrap();
        assert!(reopened.entries().is_empty());
    }
}
