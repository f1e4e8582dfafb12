//! What a live merge asks of the storage: the pair checked before the commit, the base's
//! snapshot note marked before it, the leaf's legality around a pivot, the merged volume
//! unlinked and deleted, and a stopped VM's real chain read from its images. Not verbs: parts
//! of the merge job, which holds the image lock.

use uuid::Uuid;

use super::{StorageService, blocking};
use crate::api::ApiError;
use crate::api::volume_types::Legality;
use crate::storage::merge::{self, MergePair};

impl StorageService {
    /// Checks that `top` can be merged into `base` ([`merge::check_pair`]).
    pub async fn merge_pair(
        &self,
        domain: Uuid,
        image: Uuid,
        base: Uuid,
        top: Uuid,
    ) -> Result<MergePair, ApiError> {
        let domain = self.domain_with_image(domain, image).await?;
        blocking(move || merge::check_pair(&domain, image, base, top)).await
    }

    /// Marks `base`'s snapshot note before a live commit of `top` into it begins
    /// ([`merge::note_merge_begun`]).
    pub async fn note_merge_begun(
        &self,
        domain: Uuid,
        image: Uuid,
        (base, top): (Uuid, Uuid),
        vm: Uuid,
    ) -> Result<(), ApiError> {
        let domain = self.domain(domain)?;
        blocking(move || merge::note_merge_begun(&domain, image, base, top, vm)).await
    }

    /// A volume's legality; `None` when it is gone.
    pub async fn legality(
        &self,
        domain: Uuid,
        image: Uuid,
        volume: Uuid,
    ) -> Result<Option<Legality>, ApiError> {
        let domain = self.domain(domain)?;
        blocking(move || merge::legality(&domain, image, volume)).await
    }

    /// Sets a volume's legality (a volume already gone is left alone).
    pub async fn set_legality(
        &self,
        domain: Uuid,
        image: Uuid,
        volume: Uuid,
        legality: Legality,
    ) -> Result<(), ApiError> {
        let domain = self.domain(domain)?;
        blocking(move || merge::set_legality(&domain, image, volume, legality)).await
    }

    /// Takes the merged `top` out of the image and deletes it ([`merge::unlink_merged`]).
    pub async fn unlink_merged(
        &self,
        domain: Uuid,
        image: Uuid,
        base: Uuid,
        top: Uuid,
    ) -> Result<(), ApiError> {
        let domain = self.domain(domain)?;
        blocking(move || merge::unlink_merged(&domain, image, base, top)).await
    }

    /// The volume `volume`'s image names as its backing file ([`merge::backing_of`]).
    pub async fn backing_of(
        &self,
        domain: Uuid,
        image: Uuid,
        volume: Uuid,
    ) -> Result<Option<Uuid>, ApiError> {
        let domain = self.domain(domain)?;
        let timeout = self.inner.qemu_img_timeout;
        Ok(merge::backing_of(&domain, image, volume, timeout).await?)
    }

    /// The names of a volume's persistent dirty bitmaps (read while a VM may write it).
    pub async fn volume_bitmaps(
        &self,
        domain: Uuid,
        image: Uuid,
        volume: Uuid,
    ) -> Result<Vec<String>, ApiError> {
        let domain = self.domain(domain)?;
        let timeout = self.inner.qemu_img_timeout;
        Ok(merge::bitmaps(&domain, image, volume, timeout).await?)
    }
}
