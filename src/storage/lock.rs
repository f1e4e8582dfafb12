//! Serializing metadata changes of a domain.
//!
//! On the host, an exclusive `flock` on `dom_md/rvdsm.lock`: two processes on the host (or two
//! tasks in one, each with its own open file) can never interleave metadata changes. Holders
//! keep it only for metadata steps, never across a qemu-img run. Taking it blocks: call it off
//! the async reactor.
//!
//! Across hosts, a [`SharedLeases`] decides: on a shared domain, each step first asks whether this
//! host still holds its lease in the domain's lockspace (sanlock's, kept by the cluster
//! module), so a host that lost it stops changing metadata at its next step. Which host may
//! change what is the SPM's role, checked by the verbs.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

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

/// What the lease manager of hosts sharing a domain does for the storage module: say whether
/// this host may change the domain's metadata now, and format a new volume's lease.
pub trait SharedLeases: Send + Sync {
    /// `Err` with why this host may not change metadata now.
    fn check(&self) -> Result<(), String>;
    /// Formats the lease of a new `volume` in its (empty) `.lease` file. Blocks.
    fn format_volume_lease(&self, volume: uuid::Uuid, file: &std::path::Path)
    -> Result<(), String>;
    /// Formats the external lease `lease` (free, version 0) at `offset` of `file`. Blocks.
    fn format_lease(
        &self,
        lease: uuid::Uuid,
        file: &std::path::Path,
        offset: u64,
    ) -> Result<(), String>;
    /// Clears the area of the external lease `lease` at `offset` of `file`. Blocks.
    fn clear_lease(
        &self,
        lease: uuid::Uuid,
        file: &std::path::Path,
        offset: u64,
    ) -> Result<(), String>;
    /// The external lease's holders (host ids) and, when held, its version. Blocks.
    fn lease_status(
        &self,
        lease: uuid::Uuid,
        file: &std::path::Path,
        offset: u64,
    ) -> Result<(Vec<u64>, Option<u64>), String>;
}

/// An exclusive `flock` on a file in the domain (opened without following a link), behind the
/// domain's lease gate if it is shared.
#[derive(Clone)]
pub struct FileLock {
    dir: DomainDir,
    path: PathBuf,
    gate: Option<Arc<dyn SharedLeases>>,
}

impl std::fmt::Debug for FileLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLock")
            .field("path", &self.path)
            .field("gated", &self.gate.is_some())
            .finish()
    }
}

impl FileLock {
    /// The lock on the domain `dir` (its file created on first use).
    pub fn new(dir: DomainDir) -> Self {
        Self {
            path: dir.lock_file(),
            dir,
            gate: None,
        }
    }

    /// The same lock, taken only while `gate` allows.
    pub fn gated(self, gate: Arc<dyn SharedLeases>) -> Self {
        Self {
            gate: Some(gate),
            ..self
        }
    }

    fn check_gate(&self) -> Result<(), StorageError> {
        match &self.gate {
            Some(gate) => gate.check().map_err(StorageError::LeaseNotHeld),
            None => Ok(()),
        }
    }
}

struct FlockGuard(#[allow(dead_code)] Flock<File>);

impl LockGuard for FlockGuard {}

impl MetadataLock for FileLock {
    fn acquire(&self) -> Result<Box<dyn LockGuard>, StorageError> {
        self.check_gate()?;
        let file = self
            .dir
            .open_or_create(&self.path, 0o600)
            .map_err(StorageError::io("open lock file", &self.path))?;
        let locked = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| StorageError::io("lock", &self.path)(errno.into()))?;
        // Again: the wait for the lock may have been long.
        self.check_gate()?;
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

    struct Closed;

    impl SharedLeases for Closed {
        fn check(&self) -> Result<(), String> {
            Err("lease lost".into())
        }

        fn format_volume_lease(
            &self,
            _volume: uuid::Uuid,
            _file: &std::path::Path,
        ) -> Result<(), String> {
            Err("lease lost".into())
        }

        fn format_lease(&self, _: uuid::Uuid, _: &std::path::Path, _: u64) -> Result<(), String> {
            Err("lease lost".into())
        }

        fn clear_lease(&self, _: uuid::Uuid, _: &std::path::Path, _: u64) -> Result<(), String> {
            Err("lease lost".into())
        }

        fn lease_status(
            &self,
            _: uuid::Uuid,
            _: &std::path::Path,
            _: u64,
        ) -> Result<(Vec<u64>, Option<u64>), String> {
            Err("lease lost".into())
        }
    }

    #[test]
    fn a_closed_gate_refuses_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let domain = DomainDir::new(dir.path(), uuid::Uuid::nil());
        std::fs::create_dir_all(domain.dom_md()).unwrap();
        let lock = FileLock::new(domain).gated(Arc::new(Closed));
        match lock.acquire() {
            Err(StorageError::LeaseNotHeld(why)) => assert_eq!(why, "lease lost"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
