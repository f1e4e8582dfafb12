//! Serializing metadata changes of a domain. The interface is small on purpose: a later issue
//! puts a cluster-wide lease (sanlock) behind the same trait for domains shared by hosts.
//!
//! The host implementation is an exclusive `flock` on `dom_md/rvdsm.lock`: two processes on the
//! host (or two tasks in one, each with its own open file) can never interleave metadata
//! changes. Holders keep it only for metadata steps, never across a qemu-img run. Taking it
//! blocks: call it off the async reactor.

use std::fs::File;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

use super::error::StorageError;
use super::layout::DomainDir;

/// Held while metadata of a domain is changed; released when dropped.
pub trait LockGuard: Send {}

/// A lock over a domain's metadata.
pub trait MetadataLock: Send + Sync {
    /// Waits for and takes the lock.
    fn acquire(&self) -> Result<Box<dyn LockGuard>, StorageError>;
}

/// An exclusive `flock` on a file in the domain (opened without following a link).
#[derive(Debug, Clone)]
pub struct FileLock {
    dir: DomainDir,
    path: PathBuf,
}

impl FileLock {
    /// The lock on the domain `dir` (its file created on first use).
    pub fn new(dir: DomainDir) -> Self {
        Self {
            path: dir.lock_file(),
            dir,
        }
    }
}

struct FlockGuard(#[allow(dead_code)] Flock<File>);

impl LockGuard for FlockGuard {}

impl MetadataLock for FileLock {
    fn acquire(&self) -> Result<Box<dyn LockGuard>, StorageError> {
        let file = self
            .dir
            .open_or_create(&self.path, 0o600)
            .map_err(StorageError::io("open lock file", &self.path))?;
        let locked = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| StorageError::io("lock", &self.path)(errno.into()))?;
        Ok(Box::new(FlockGuard(locked)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn second_holder_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let domain = DomainDir::new(dir.path(), uuid::Uuid::nil());
        std::fs::create_dir_all(domain.dom_md()).unwrap();
        let lock = FileLock::new(domain);
        let first = lock.acquire().unwrap();
        let (tx, rx) = mpsc::channel();
        let other = lock.clone();
        let waiter = std::thread::spawn(move || {
            let _second = other.acquire().unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "lock not exclusive"
        );
        drop(first);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("lock never released");
        waiter.join().unwrap();
    }
}
