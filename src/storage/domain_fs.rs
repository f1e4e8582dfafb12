//! Every file operation inside a storage domain, none of which follows a symbolic link. A
//! domain can be shared with other hosts and rvdsmd runs as root: a link planted at any name
//! rvdsm reads or writes (`<vol>.meta.new` pointing at `/etc/shadow`, an image directory
//! pointing out of the domain) must never lead it to read, write, chmod or delete elsewhere.
//!
//! The domain's directory is opened first (following only the mount link rvdsm made, or the
//! mount itself); every path below it is opened relative to that descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a link at any component fails the
//! call (`ELOOP`/`EXDEV`). Files are created with `O_EXCL`, temporary ones after removing
//! whatever sits at their name; modes are set with `fchmod` on the opened descriptor; entries
//! are removed and renamed relative to their directory's descriptor, which never follows the
//! last component. Blocking: callers run these off the reactor.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2, renameat};
use nix::sys::stat::{Mode, fchmod, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::layout::DomainDir;

/// The most [`DomainDir::read`] reads: the metadata and records it is for are a few KiB.
pub const MAX_READ: u64 = 1 << 20;

/// Resolution below the domain's directory: no link, no way out.
fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS
}

fn mode_bits(mode: u32) -> Mode {
    Mode::from_bits_truncate(mode)
}

impl DomainDir {
    /// The domain's directory, opened: the mount (or rvdsm's link to a local directory) is
    /// followed, the `<sdUUID>` directory in it is not.
    fn open_root(&self) -> io::Result<OwnedFd> {
        let mount = self.root().parent().unwrap_or(Path::new("/"));
        let name = self.root().file_name().unwrap_or_default();
        let mount = openat2(
            nix::fcntl::AT_FDCWD,
            mount,
            OpenHow::new().flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC),
        )?;
        let how = OpenHow::new()
            .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
            .resolve(beneath());
        Ok(openat2(mount, name, how)?)
    }

    /// `path` relative to the domain's directory; a path elsewhere is refused.
    fn inside<'a>(&self, path: &'a Path) -> io::Result<&'a Path> {
        path.strip_prefix(self.root())
            .ok()
            .filter(|rel| !rel.as_os_str().is_empty())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not inside the storage domain", path.display()),
                )
            })
    }

    /// Opens `path` (inside the domain) with `flags`, refusing links on the way.
    fn open_beneath(&self, path: &Path, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
        let rel = self.inside(path)?;
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(mode_bits(mode))
            .resolve(beneath());
        Ok(openat2(self.open_root()?, rel, how)?)
    }

    /// The directory holding `path`, opened, and the last component's name.
    fn parent_of(&self, path: &Path) -> io::Result<(OwnedFd, PathBuf)> {
        let rel = self.inside(path)?;
        let name = PathBuf::from(rel.file_name().unwrap_or_default());
        let dir = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => {
                let how = OpenHow::new()
                    .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
                    .resolve(beneath());
                openat2(self.open_root()?, parent, how)?
            }
            None => self.open_root()?,
        };
        Ok((dir, name))
    }

    /// The content of `path`: a small file (metadata, a record), at most `MAX_READ` (1 MiB).
    /// Another host writes these files: a huge one is refused, never read into memory, and
    /// so is anything but a regular file (a FIFO planted as a record would block the reader).
    pub fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open_regular(path, false)?
            .take(MAX_READ + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_READ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is larger than {MAX_READ} bytes", path.display()),
            ));
        }
        Ok(bytes)
    }

    /// The content of `path`, as text.
    pub fn read_to_string(&self, path: &Path) -> io::Result<String> {
        String::from_utf8(self.read(path)?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The metadata of `path` itself (a link is refused, not described).
    pub fn stat(&self, path: &Path) -> io::Result<std::fs::Metadata> {
        File::from(self.open_beneath(path, OFlag::O_PATH, 0)?).metadata()
    }

    /// Opens the regular file `path` for reading, or reading and writing, refusing a link at
    /// any component and anything but a regular file (a FIFO would block the opener, a device
    /// node would let a tool write a host's disk). Never creates it.
    pub fn open_regular(&self, path: &Path, write: bool) -> io::Result<File> {
        let access = if write {
            OFlag::O_RDWR
        } else {
            OFlag::O_RDONLY
        };
        // The name is resolved once, as a path only (O_PATH opens nothing: a device node
        // planted there by a co-tenant's root is not opened, so no driver's open runs, and a
        // FIFO does not block); the descriptor is opened for real only once it is known to be
        // a regular file, through its own /proc entry, which no name in the domain can change.
        let located = File::from(self.open_beneath(path, OFlag::O_PATH, 0)?);
        if !located.metadata()?.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file (refused: a tool must not open it)",
            ));
        }
        let reopened = format!("/proc/self/fd/{}", located.as_raw_fd());
        let how = OpenHow::new().flags(access | OFlag::O_CLOEXEC);
        Ok(File::from(openat2(
            nix::fcntl::AT_FDCWD,
            reopened.as_str(),
            how,
        )?))
    }

    /// Whether `path`, resolved now without following any link, is still the file `held`
    /// (same device and inode): what a tool that opens `path` by name will open.
    pub fn is_still(&self, path: &Path, held: &File) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let now = self.stat(path)?;
        let held = held.metadata()?;
        Ok(now.file_type().is_file() && (now.dev(), now.ino()) == (held.dev(), held.ino()))
    }

    /// Replaces `path` with `bytes` atomically and durably: written to `<name>.new` (created
    /// afresh with `O_EXCL` after whatever sat at that name is removed), fsynced, given `mode`,
    /// renamed over `path`, and the directory fsynced.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent_of(path)?;
        let mut temporary = name.clone().into_os_string();
        temporary.push(".new");
        let temporary = PathBuf::from(temporary);
        remove_entry(&dir, &temporary)?;
        let result = (|| {
            let how = OpenHow::new()
                .flags(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC)
                .mode(mode_bits(mode))
                .resolve(beneath());
            let fd = openat2(dir.as_fd(), &temporary, how)?;
            fchmod(&fd, mode_bits(mode))?;
            let mut file = File::from(fd);
            file.write_all(bytes)?;
            file.sync_all()?;
            renameat(dir.as_fd(), &temporary, dir.as_fd(), &name)?;
            File::from(dir.as_fd().try_clone_to_owned()?).sync_all()
        })();
        if result.is_err() {
            let _ = remove_entry(&dir, &temporary);
        }
        result
    }

    /// Creates `path` empty with `mode`, failing with `AlreadyExists` if anything is there
    /// (a link included); the directory entry is made durable.
    pub fn create_exclusive(&self, path: &Path, mode: u32) -> io::Result<File> {
        let (dir, name) = self.parent_of(path)?;
        let how = OpenHow::new()
            .flags(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC)
            .mode(mode_bits(mode))
            .resolve(beneath());
        let fd = openat2(dir.as_fd(), &name, how)?;
        fchmod(&fd, mode_bits(mode))?;
        File::from(dir).sync_all()?;
        Ok(File::from(fd))
    }

    /// Opens `path` for reading and writing, creating it with `mode` if needed (lock files).
    pub fn open_or_create(&self, path: &Path, mode: u32) -> io::Result<File> {
        let flags = OFlag::O_RDWR | OFlag::O_CREAT;
        Ok(File::from(self.open_beneath(path, flags, mode)?))
    }

    /// Gives the file at `path` (never a link's target) `mode`, and fsyncs it.
    pub fn chmod_and_sync(&self, path: &Path, mode: u32) -> io::Result<()> {
        let fd = self.open_beneath(path, OFlag::O_RDONLY, 0)?;
        fchmod(&fd, mode_bits(mode))?;
        File::from(fd).sync_all()
    }

    /// Removes the entry `path` (a link itself, never its target); a missing one is fine.
    /// Returns whether something was removed.
    pub fn remove(&self, path: &Path) -> io::Result<bool> {
        let (dir, name) = match self.parent_of(path) {
            Ok(found) => found,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        remove_entry(&dir, &name)
    }

    /// Removes the empty directory `path`; a missing one is fine.
    pub fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = match self.parent_of(path) {
            Ok(found) => found,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match unlinkat(&dir, &name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the directory `path` (its parent must exist) unless it is there; refuses
    /// anything at that name that is not a plain directory. Both entries are made durable.
    pub fn ensure_dir(&self, path: &Path, mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent_of(path)?;
        match mkdirat(&dir, &name, mode_bits(mode)) {
            Ok(()) => File::from(dir).sync_all()?,
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        self.open_beneath(path, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)
            .map(drop)
    }

    /// The names in the directory `path` (`None` when it does not exist).
    pub fn list(&self, path: &Path) -> io::Result<Option<Vec<String>>> {
        let fd = match self.open_beneath(path, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut dir = nix::dir::Dir::from_fd(fd)?;
        let names = dir
            .iter()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str().ok().map(str::to_owned))
            .filter(|name| name != "." && name != "..")
            .collect();
        Ok(Some(names))
    }

    /// Makes the directory `path` durable.
    pub fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let fd = self.open_beneath(path, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)?;
        File::from(fd).sync_all()
    }
}

/// Removes the entry `name` of `dir` (never following it); returns whether it was there.
fn remove_entry(dir: &OwnedFd, name: &Path) -> io::Result<bool> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    /// A domain directory in a temporary mount, and a file outside it that links point at.
    fn setup() -> (tempfile::TempDir, DomainDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path().join("mnt");
        let dir = DomainDir::new(&mount, Uuid::from_u128(1));
        std::fs::create_dir_all(dir.image(Uuid::from_u128(2))).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"precious").unwrap();
        (tmp, dir, outside)
    }

    fn untouched(outside: &Path) {
        assert_eq!(std::fs::read(outside).unwrap(), b"precious");
    }

    #[test]
    fn writes_replace_atomically_with_their_mode() {
        let (_tmp, dir, _) = setup();
        let path = dir.meta(Uuid::from_u128(2), Uuid::from_u128(3));
        dir.write_atomic(&path, b"one", 0o640).unwrap();
        dir.write_atomic(&path, b"two", 0o640).unwrap();
        assert_eq!(dir.read(&path).unwrap(), b"two");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(dir.stat(&path).unwrap().permissions().mode() & 0o777, 0o640);
        let names = dir.list(&dir.image(Uuid::from_u128(2))).unwrap().unwrap();
        assert_eq!(
            names,
            [format!("{}.meta", Uuid::from_u128(3))],
            "no temporary left"
        );
    }

    #[test]
    fn a_huge_file_is_refused_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DomainDir::new(tmp.path(), uuid::Uuid::from_u128(5));
        std::fs::create_dir_all(dir.root()).unwrap();
        let path = dir.root().join("metadata");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_READ + 1).unwrap();
        assert_eq!(
            dir.read(&path).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        file.set_len(MAX_READ).unwrap();
        assert_eq!(dir.read(&path).unwrap().len() as u64, MAX_READ);
    }

    #[test]
    fn a_link_at_any_name_is_never_followed() {
        let (_tmp, dir, outside) = setup();
        let image = Uuid::from_u128(2);
        let meta = dir.meta(image, Uuid::from_u128(3));
        // The temporary name: removed and created afresh, the target untouched.
        std::os::unix::fs::symlink(
            &outside,
            dir.image(image)
                .join(format!("{}.meta.new", Uuid::from_u128(3))),
        )
        .unwrap();
        dir.write_atomic(&meta, b"meta", 0o600).unwrap();
        untouched(&outside);
        // The file itself: reads, chmod, exclusive creation refused; removal takes the link.
        let data = dir.volume(image, Uuid::from_u128(4));
        std::os::unix::fs::symlink(&outside, &data).unwrap();
        assert!(dir.read(&data).is_err());
        assert!(dir.stat(&data).is_err());
        assert!(dir.chmod_and_sync(&data, 0o666).is_err());
        assert!(dir.create_exclusive(&data, 0o600).is_err());
        assert!(dir.open_or_create(&data, 0o600).is_err());
        assert!(dir.remove(&data).unwrap());
        untouched(&outside);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&outside).unwrap().permissions().mode();
        assert_ne!(mode & 0o777, 0o666);
        // A directory on the way: everything below it is refused.
        let elsewhere = outside.parent().unwrap().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let linked = dir.image(Uuid::from_u128(5));
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        let below = dir.meta(Uuid::from_u128(5), Uuid::from_u128(6));
        assert!(dir.write_atomic(&below, b"x", 0o600).is_err());
        assert!(dir.list(&linked).is_err());
        assert!(dir.ensure_dir(&linked, 0o755).is_err());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn paths_outside_the_domain_are_refused() {
        let (_tmp, dir, outside) = setup();
        assert!(dir.read(&outside).is_err());
        assert!(dir.write_atomic(Path::new("/tmp/x"), b"x", 0o600).is_err());
    }
}
