//! The images other services change, as the storage service hands them out: a live
//! snapshot, a live merge and `VM.create` lock them, hold an [`ImageHandle`] on each and ask
//! it for what they need of its volumes; a full copy and a merge mark the image they read or
//! change. Not verbs: the ids are checked here, the work is the storage layer's.

use uuid::Uuid;

use super::StorageService;
use crate::storage::StorageError;
use crate::storage::image::{CopyReading, ImageHandle, ImageLock, ImageRef, MergeMark};

impl StorageService {
    /// Waits for the image's exclusive lock, held by every task that changes the image for
    /// its whole run (as VDSM's image resource): a delete never runs inside a create, nor a
    /// create on a parent a delete is removing. Held across a task's qemu-img run, which is
    /// bounded by its timeout; it blocks only this image.
    pub(super) async fn lock_image(&self, domain: Uuid, image: Uuid) -> ImageLock {
        self.inner
            .image_locks
            .lock(ImageRef::new(domain, image))
            .await
    }

    /// Waits for the exclusive locks of several images (in one order, so that two holders
    /// never wait for each other), for an operation that changes their chains as a whole: a
    /// snapshot job holds its drives' images from its start to its end, so no delete or
    /// create on them runs inside its switch or its rollback.
    pub async fn lock_images(&self, images: Vec<ImageRef>) -> Vec<ImageLock> {
        self.inner.image_locks.lock_all(images).await
    }

    /// A handle on the image holding its lock (waited for), for a job that changes the image
    /// from its checks to its end. Refused (358) for an unknown domain.
    pub async fn open_image(&self, image: ImageRef) -> Result<ImageHandle, StorageError> {
        let lock = self.inner.image_locks.lock(image).await;
        let domain = self.storage_domain(image.domain)?;
        Ok(ImageHandle::locked(
            domain,
            image.image,
            self.pool_dir(),
            self.inner.qemu_img_timeout,
            lock,
        ))
    }

    /// A handle on the image without its lock: for a caller that only reads, or that holds
    /// the lock already ([`Self::lock_images`]). Refused (358) for an unknown domain.
    pub fn image(&self, image: ImageRef) -> Result<ImageHandle, StorageError> {
        let domain = self.storage_domain(image.domain)?;
        Ok(ImageHandle::unlocked(
            domain,
            image.image,
            self.pool_dir(),
            self.inner.qemu_img_timeout,
        ))
    }

    /// A handle without the lock on a VM's drive image, checked as `Image.prepare` checks
    /// it: `pool` this host's pool (309), the domain one of its domains (358, 353), the image
    /// in it (268).
    pub async fn drive_image(
        &self,
        pool: Uuid,
        image: ImageRef,
    ) -> Result<ImageHandle, StorageError> {
        let domain = self.image_domain(pool, image.domain, image.image).await?;
        Ok(ImageHandle::unlocked(
            domain,
            image.image,
            self.pool_dir(),
            self.inner.qemu_img_timeout,
        ))
    }

    /// Releases a drive's image when its VM is gone: nothing to release on a file domain once
    /// the ids are checked (as `Image.teardown`).
    pub async fn teardown_drive(&self, pool: Uuid, image: ImageRef) -> Result<(), StorageError> {
        self.drive_image(pool, image).await.map(drop)
    }

    /// Whether a full copy is reading the image now.
    pub fn is_being_copied(&self, image: ImageRef) -> bool {
        self.inner.activity.is_being_copied(image)
    }

    /// Refuses an image a full copy is reading now, for a VM that would write to it (the copy
    /// would read a chain that changes under it).
    pub fn refuse_if_copied(&self, image: ImageRef) -> Result<(), StorageError> {
        if self.is_being_copied(image) {
            return Err(StorageError::InvalidParameter(format!(
                "image {} is being copied: a VM can run on it once the copy ends",
                image.image
            )));
        }
        Ok(())
    }

    /// Marks the image as read by a full copy until the guard drops; refused while a merge
    /// changes it.
    pub fn reading(&self, image: ImageRef) -> Result<CopyReading, StorageError> {
        self.inner.activity.reading(image)
    }

    /// Marks the image as changed by a merge (live, or a cold merge's commit) until the guard
    /// drops; refused while a copy reads it.
    pub fn merging(&self, image: ImageRef) -> Result<MergeMark, StorageError> {
        self.inner.activity.merging(image)
    }

    /// The pool's directory, where its links to the domains are.
    fn pool_dir(&self) -> std::path::PathBuf {
        self.inner.repo.pool_dir(self.inner.pool)
    }
}
