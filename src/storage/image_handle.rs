//! The handle other services hold on one image while they change it: the image's exclusive
//! lock (as VDSM's image resource: one changer at a time), its domain, and the operations a
//! live snapshot, a live merge and `VM.create` need of its volumes. Every blocking step runs
//! off the reactor; every qemu-img run is bounded by the handle's timeout.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard};
use uuid::Uuid;

use super::domain::Domain;
use super::error::StorageError;
use super::image::{ImageRef, PreparedDrive};
use super::memory_volume::{self, MemoryVolume};
use super::merge::{self, MergePair};
use super::{copy, image, snapshot_volume, tool_files};
use crate::api::snapshot_types::SnapshotNote;
use crate::api::volume_types::Legality;

/// One exclusive lock per image. A std lock guards the map only, never across I/O.
#[derive(Default)]
pub struct ImageLocks {
    locks: std::sync::Mutex<HashMap<ImageRef, Arc<Mutex<()>>>>,
}

/// An image's exclusive lock, held until dropped.
pub struct ImageLock {
    _guard: OwnedMutexGuard<()>,
}

impl ImageLocks {
    /// Waits for the image's lock. Held across a task's qemu-img run, which is bounded by its
    /// timeout; it blocks only this image.
    pub async fn lock(&self, image: ImageRef) -> ImageLock {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            // Forget the locks nobody holds or waits for, so the map stays as small as the
            // set of images being changed.
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            Arc::clone(locks.entry(image).or_default())
        };
        ImageLock {
            _guard: lock.lock_owned().await,
        }
    }

    /// Waits for the locks of several images, in one order, so that two holders never wait
    /// for each other.
    pub async fn lock_all(&self, mut images: Vec<ImageRef>) -> Vec<ImageLock> {
        images.sort();
        images.dedup();
        let mut guards = Vec::with_capacity(images.len());
        for image in images {
            guards.push(self.lock(image).await);
        }
        guards
    }
}

/// One image of a domain, ready for the operations other services need of it.
///
/// A handle made by [`ImageHandle::locked`] holds the image's lock until it drops (a live
/// merge holds it from its checks to its end); one made by [`ImageHandle::unlocked`] is for a
/// caller that only reads, or that holds the lock already (a snapshot job holds all its
/// images' locks at once, see [`ImageLocks::lock_all`]).
pub struct ImageHandle {
    domain: Arc<Domain>,
    image: Uuid,
    /// The pool's directory, where the links to its domains are (`VM.create`'s paths).
    pool_dir: PathBuf,
    qemu_img_timeout: Duration,
    _lock: Option<ImageLock>,
}

impl ImageHandle {
    /// A handle holding `lock`, the image's lock.
    pub fn locked(
        domain: Arc<Domain>,
        image: Uuid,
        pool_dir: PathBuf,
        qemu_img_timeout: Duration,
        lock: ImageLock,
    ) -> Self {
        Self {
            _lock: Some(lock),
            ..Self::unlocked(domain, image, pool_dir, qemu_img_timeout)
        }
    }

    /// A handle that holds no lock (see the type's documentation).
    pub fn unlocked(
        domain: Arc<Domain>,
        image: Uuid,
        pool_dir: PathBuf,
        qemu_img_timeout: Duration,
    ) -> Self {
        Self {
            domain,
            image,
            pool_dir,
            qemu_img_timeout,
            _lock: None,
        }
    }

    /// The image's lock, for a holder that outlives the handle (a job that goes on without
    /// the handle's operations); `None` for an unlocked handle.
    pub fn into_lock(self) -> Option<ImageLock> {
        self._lock
    }

    /// Which image this is.
    pub fn image_ref(&self) -> ImageRef {
        ImageRef {
            domain: self.domain.uuid,
            image: self.image,
        }
    }

    /// Runs `f` on the domain and the image off the reactor.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Domain, Uuid) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let domain = Arc::clone(&self.domain);
        let image = self.image;
        tokio::task::spawn_blocking(move || f(&domain, image))
            .await
            .map_err(|e| StorageError::Panicked(e.to_string()))?
    }

    /// Refuses (268) when the image's directory is not in the domain. The look runs off the
    /// reactor: a hung mount must not stall the daemon.
    pub async fn check_exists(&self) -> Result<(), StorageError> {
        self.blocking(image_exists).await
    }

    /// Checks that `top` can be merged into `base` ([`merge::check_pair`]).
    pub async fn merge_pair(&self, base: Uuid, top: Uuid) -> Result<MergePair, StorageError> {
        self.check_exists().await?;
        self.blocking(move |d, i| merge::check_pair(d, i, base, top))
            .await
    }

    /// Marks `base`'s snapshot note before a live commit of `top` into it begins
    /// ([`merge::note_merge_begun`]).
    pub async fn note_merge_begun(
        &self,
        base: Uuid,
        top: Uuid,
        vm: Uuid,
    ) -> Result<(), StorageError> {
        self.blocking(move |d, i| merge::note_merge_begun(d, i, base, top, vm))
            .await
    }

    /// A volume's legality; `None` when it is gone.
    pub async fn legality(&self, volume: Uuid) -> Result<Option<Legality>, StorageError> {
        self.blocking(move |d, i| merge::legality(d, i, volume))
            .await
    }

    /// Sets a volume's legality (a volume already gone is left alone).
    pub async fn set_legality(&self, volume: Uuid, legality: Legality) -> Result<(), StorageError> {
        self.blocking(move |d, i| merge::set_legality(d, i, volume, legality))
            .await
    }

    /// Takes the merged `top` out of the image and deletes it ([`merge::unlink_merged`]).
    pub async fn unlink_merged(&self, base: Uuid, top: Uuid) -> Result<(), StorageError> {
        self.blocking(move |d, i| merge::unlink_merged(d, i, base, top))
            .await
    }

    /// The volume `volume`'s data file names as its backing file ([`merge::backing_of`]).
    pub async fn backing_of(&self, volume: Uuid) -> Result<Option<Uuid>, StorageError> {
        merge::backing_of(&self.domain, self.image, volume, self.qemu_img_timeout).await
    }

    /// The names of a volume's persistent dirty bitmaps (read while a VM may write it).
    pub async fn bitmaps(&self, volume: Uuid) -> Result<Vec<String>, StorageError> {
        merge::bitmaps(&self.domain, self.image, volume, self.qemu_img_timeout).await
    }

    /// The data files of `base` and of `volume`, checked to be a usable snapshot target on
    /// top of `base` ([`snapshot_volume::check_target`]).
    pub async fn snapshot_target(
        &self,
        base: Uuid,
        volume: Uuid,
    ) -> Result<(PathBuf, PathBuf), StorageError> {
        self.check_exists().await?;
        self.blocking(move |d, i| snapshot_volume::check_target(d, i, base, volume))
            .await
    }

    /// Deletes a new volume a failed snapshot did not switch to; `parent` becomes a LEAF
    /// again ([`snapshot_volume::discard`]). The caller holds the image's lock.
    pub async fn discard_volume(&self, volume: Uuid, parent: Uuid) -> Result<(), StorageError> {
        self.blocking(move |d, i| snapshot_volume::discard(d, i, volume, parent))
            .await
    }

    /// Whether the guest may have written to `volume` (its own layer holds data).
    pub async fn has_data(&self, volume: Uuid) -> Result<bool, StorageError> {
        snapshot_volume::has_data(&self.domain, self.image, volume, self.qemu_img_timeout).await
    }

    /// Records how the snapshot on top of `base` was taken.
    pub async fn write_snapshot_note(
        &self,
        base: Uuid,
        note: SnapshotNote,
    ) -> Result<(), StorageError> {
        self.blocking(move |d, i| snapshot_volume::write_note(d, i, base, &note))
            .await
    }

    /// Prepares `volume` for a VM and reads its chain ([`image::prepare_drive`]).
    pub async fn prepare_drive(&self, volume: Uuid) -> Result<PreparedDrive, StorageError> {
        let pool_dir = self.pool_dir.clone();
        self.blocking(move |d, i| image::prepare_drive(d, &pool_dir, i, volume))
            .await
    }

    /// Refuses a volume a VM must not write to ([`image::check_writable_leaf`]).
    pub async fn check_writable_leaf(&self, volume: Uuid) -> Result<(), StorageError> {
        self.blocking(move |d, i| image::check_writable_leaf(d, i, volume))
            .await
    }

    /// Whether `volume` is a revert's or a clone's first boot: a leaf on a snapshot's volume
    /// that the snapshot's VM did not switch to (a preview of that snapshot, or a linked
    /// clone of it) and that nobody has written to yet, or a full copy not booted yet. The
    /// guest then resumes from an earlier instant and must get a new VM generation id.
    pub async fn is_unbooted_revert(&self, volume: Uuid) -> Result<bool, StorageError> {
        let (branch, copied) = self
            .blocking(move |d, i| {
                Ok((
                    image::is_snapshot_branch(d, i, volume)?,
                    copy::is_unbooted_clone(d, i, volume),
                ))
            })
            .await?;
        if copied {
            return Ok(true);
        }
        if !branch {
            return Ok(false);
        }
        Ok(!self.has_data(volume).await?)
    }

    /// Forgets that `volume` is an unbooted full copy: a VM booted on it.
    pub async fn clear_clone_mark(&self, volume: Uuid) -> Result<(), StorageError> {
        self.blocking(move |d, i| copy::clear_clone_mark(d, i, volume))
            .await
    }

    /// `volume` checked and held as a memory volume ([`memory_volume::open`]).
    pub async fn open_memory_volume(&self, volume: Uuid) -> Result<MemoryVolume, StorageError> {
        self.check_exists().await?;
        self.blocking(move |d, i| memory_volume::open(d, i, volume))
            .await
    }

    /// Marks a memory volume ILLEGAL: never to be restored.
    pub async fn mark_memory_unusable(&self, volume: Uuid) -> Result<(), StorageError> {
        self.blocking(move |d, i| memory_volume::mark_unusable(d, i, volume))
            .await
    }

    /// Checks a drive's chain again ([`tool_files::check_chain`]) right before its VM starts:
    /// QEMU opens it by names, and the check at its preparation was a define and a read-back
    /// ago.
    pub async fn recheck_chain(&self, volume: Uuid) -> Result<(), StorageError> {
        self.check_exists().await?;
        self.blocking(move |d, i| tool_files::check_chain(d, i, volume).map(drop))
            .await
    }
}

/// Refuses (268) an image whose directory is not in the domain.
fn image_exists(domain: &Domain, image: Uuid) -> Result<(), StorageError> {
    if domain.has_image(image)? {
        Ok(())
    } else {
        Err(StorageError::ImageDoesNotExist {
            image,
            domain: domain.uuid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_image_and_images_apart() {
        let locks = ImageLocks::default();
        let a = ImageRef::new(Uuid::from_u128(1), Uuid::from_u128(2));
        let b = ImageRef::new(Uuid::from_u128(1), Uuid::from_u128(3));
        let held = locks.lock_all(vec![b, a, b]).await;
        assert_eq!(held.len(), 2, "each image locked once");
        let waiting = tokio::time::timeout(Duration::from_millis(50), locks.lock(a)).await;
        assert!(waiting.is_err(), "a second holder waits");
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(5), locks.lock(a)).await;
        assert!(again.is_ok(), "free once the first holder is gone");
        let other = ImageRef::new(Uuid::from_u128(4), Uuid::from_u128(2));
        let apart = tokio::time::timeout(Duration::from_secs(5), locks.lock(other)).await;
        assert!(apart.is_ok(), "another domain's image is another lock");
    }
}
