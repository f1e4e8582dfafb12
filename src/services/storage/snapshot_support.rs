//! What `VM.snapshot` asks of the storage: its new volumes checked before anything changes,
//! discarded when the switch did not happen, looked at for the guest's writes, and the note of
//! how each snapshot was taken. Not verbs: parts of the snapshot job.

use std::path::PathBuf;

use uuid::Uuid;

use super::{StorageService, blocking};
use crate::api::ApiError;
use crate::api::snapshot_types::SnapshotNote;
use crate::storage::snapshot_volume;

impl StorageService {
    /// The data files of `base` and of `volume`, checked to be a usable snapshot target on
    /// top of `base`: it exists, is LEGAL, a LEAF, COW, and its parent is `base`.
    pub async fn snapshot_target(
        &self,
        domain: Uuid,
        image: Uuid,
        base: Uuid,
        volume: Uuid,
    ) -> Result<(PathBuf, PathBuf), ApiError> {
        let domain = self.domain_with_image(domain, image).await?;
        blocking(move || snapshot_volume::check_target(&domain, image, base, volume)).await
    }

    /// Deletes a new volume a failed snapshot did not switch to; its parent (`parent`) becomes
    /// a LEAF again. Idempotent, so that a rollback interrupted by a crash is finished by
    /// recovery. The caller holds the image's lock ([`StorageService::lock_images`]).
    pub async fn discard_volume(
        &self,
        domain: Uuid,
        image: Uuid,
        volume: Uuid,
        parent: Uuid,
    ) -> Result<(), ApiError> {
        let domain = self.domain(domain)?;
        blocking(move || snapshot_volume::discard(&domain, image, volume, parent)).await
    }

    /// Whether the guest may have written to `volume` (its own layer holds data).
    pub async fn volume_has_data(
        &self,
        domain: Uuid,
        image: Uuid,
        volume: Uuid,
    ) -> Result<bool, ApiError> {
        let domain = self.domain(domain)?;
        let timeout = self.inner.qemu_img_timeout;
        Ok(snapshot_volume::has_data(&domain, image, volume, timeout).await?)
    }

    /// Records how the snapshot on top of `base` was taken.
    pub async fn note_snapshot(
        &self,
        domain: Uuid,
        image: Uuid,
        base: Uuid,
        note: SnapshotNote,
    ) -> Result<(), ApiError> {
        let domain = self.domain(domain)?;
        blocking(move || snapshot_volume::write_note(&domain, image, base, &note)).await
    }
}
