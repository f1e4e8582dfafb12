//! Host files a VM reads that the manager names (a kernel and initrd for direct kernel boot,
//! firmware images): accepted only inside a directory of the configuration, as a regular file
//! reached without a symbolic link, so that a manager cannot make QEMU read, or libvirt chown,
//! any other file of the host.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, fstat};

use super::refused;
use crate::fsutil::is_plain_absolute;
use crate::virt::VirtError;

/// A host file of a definition, inside one of the configured directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    /// The element that names it, for messages.
    pub element: String,
    /// The configured directory it lies in.
    pub dir: PathBuf,
    /// The file, as the definition names it.
    pub path: PathBuf,
}

impl HostFile {
    /// `path` as named by `element`, if it is absolute, plain and inside one of `dirs`.
    pub fn inside(element: String, path: &Path, dirs: &[PathBuf]) -> Result<Self, VirtError> {
        if !is_plain_absolute(path) {
            return Err(refused(
                element,
                format!("{path:?} is not a plain absolute path"),
            ));
        }
        let Some(dir) = dirs
            .iter()
            .find(|d| path.starts_with(d) && path != d.as_path())
        else {
            return Err(refused(
                element,
                format!(
                    "{path:?} is outside the directories this host allows for it ({dirs:?}, \
                     the [vm] section of rvdsm.toml)"
                ),
            ));
        };
        Ok(Self {
            element,
            dir: dir.clone(),
            path: path.to_owned(),
        })
    }

    /// Checks on disk that the file is a regular file below its directory with no symbolic
    /// link on the way. Blocking.
    pub fn check(&self) -> Result<(), VirtError> {
        let failed = |why: String| refused(self.element.clone(), why);
        let rel = self
            .path
            .strip_prefix(&self.dir)
            .map_err(|_| failed(format!("{:?} left its directory", self.path)))?;
        let dir = openat2(
            nix::fcntl::AT_FDCWD,
            &self.dir,
            OpenHow::new().flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC),
        )
        .map_err(|e| failed(format!("cannot open {:?}: {e}", self.dir)))?;
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
            .mode(Mode::empty())
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let file = openat2(dir, rel, how).map_err(|e| {
            failed(format!(
                "cannot open {:?} without following a link: {e}",
                self.path
            ))
        })?;
        let stat = fstat(file.as_fd()).map_err(|e| failed(format!("{:?}: {e}", self.path)))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(failed(format!("{:?} is not a regular file", self.path)));
        }
        Ok(())
    }
}

/// Makes the directories of the files rvdsm names for a VM (owner only: a console log holds
/// what the guest printed). Blocking.
pub fn make_dirs(placed: &[PathBuf]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    for dir in placed.iter().filter_map(|p| p.parent()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(dir: &Path) -> Vec<PathBuf> {
        vec![dir.to_owned()]
    }

    #[test]
    fn a_file_inside_the_directory_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"k").unwrap();
        let file = HostFile::inside(
            "<kernel>".into(),
            &dir.path().join("vmlinuz"),
            &dirs(dir.path()),
        )
        .unwrap();
        file.check().unwrap();
    }

    #[test]
    fn paths_outside_or_with_dots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dirs(dir.path());
        for path in [
            PathBuf::from("/etc/shadow"),
            dir.path().join("../etc/shadow"),
            dir.path().to_owned(),
            PathBuf::from("vmlinuz"),
        ] {
            let err = HostFile::inside("<kernel>".into(), &path, &allowed).unwrap_err();
            assert!(err.to_string().contains("<kernel>"), "{err}");
        }
        assert!(HostFile::inside("<kernel>".into(), Path::new("/boot/x"), &[]).is_err());
    }

    #[test]
    fn a_link_or_a_directory_inside_is_refused_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let victim = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(victim.path(), dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        for name in ["link", "sub", "etc/passwd", "missing"] {
            let file =
                HostFile::inside("<initrd>".into(), &dir.path().join(name), &dirs(dir.path()))
                    .unwrap();
            assert!(file.check().is_err(), "{name} was accepted");
        }
    }
}
