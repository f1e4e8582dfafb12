//! What `VM.create` asks of the storage: each drive's volume prepared (as `Image.prepare`
//! does), with its format and its chain from the base up, to place in the VM's definition;
//! and whether the VM boots for the first time on a revert to a snapshot (a new generation
//! id is then due).

use std::sync::Arc;

use uuid::Uuid;

use super::{StorageService, blocking};
use crate::api::ApiError;
use crate::api::volume_types::{BLANK_UUID, VolumeRole};
use crate::storage::{StorageError, copy, image, snapshot_volume, tool_files, volume};

/// A drive's volume, ready for a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedDrive {
    /// The path the VM uses (through the pool's link).
    pub path: String,
    /// `qcow2` or `raw`.
    pub format: &'static str,
    /// `(volume, path)` from the base to `path`'s volume.
    pub chain: Vec<(Uuid, String)>,
}

/// The longest chain walked: a loop in corrupt metadata must not hang the walk.
const MAX_CHAIN: usize = 1024;

impl StorageService {
    /// Prepares `volume` of the image for a VM (every volume LEGAL, the pool's link made,
    /// the chain checked as `tool_files::check_chain` does) and reads its chain. Refused with VDSM's codes for unknown ids and ILLEGAL volumes.
    pub async fn prepare_drive(
        &self,
        pool: Uuid,
        domain: Uuid,
        image: Uuid,
        volume: Uuid,
    ) -> Result<PreparedDrive, ApiError> {
        let storage_domain = self.image_domain(pool, domain, image).await?;
        let pool_dir = self.inner.repo.pool_dir(self.inner.pool);
        blocking(move || {
            let domain = &*storage_domain;
            // QEMU opens the chain by names, as root: each data file must be a regular file
            // reached without a link, each qcow2 header name only its parent.
            tool_files::check_chain(domain, image, volume)?;
            let leaf = image::prepare(domain, &pool_dir, image, volume, false)?;
            let image_dir = leaf.parent().map(std::path::Path::to_path_buf);
            let path_of = |v: Uuid| {
                image_dir.as_ref().map_or_else(String::new, |d| {
                    d.join(v.hyphenated().to_string())
                        .to_string_lossy()
                        .into_owned()
                })
            };
            let format = volume::read_meta(domain, image, volume)?.format.qemu_name();
            let mut chain = vec![(volume, path_of(volume))];
            let mut current = volume;
            loop {
                let parent = volume::read_meta(domain, image, current)?.parent;
                if parent == BLANK_UUID {
                    break;
                }
                if chain.len() >= MAX_CHAIN || chain.iter().any(|(v, _)| *v == parent) {
                    return Err(StorageError::Inspect {
                        volume,
                        message: format!("its chain loops or exceeds {MAX_CHAIN} volumes"),
                    });
                }
                chain.push((parent, path_of(parent)));
                current = parent;
            }
            chain.reverse();
            Ok(PreparedDrive {
                path: leaf.to_string_lossy().into_owned(),
                format,
                chain,
            })
        })
        .await
    }

    /// Whether `volume` is a revert's or a clone's first boot: a leaf on a snapshot's volume
    /// that the snapshot's VM did not switch to (a preview of that snapshot, or a linked
    /// clone of it) and that nobody has written to yet, or a full copy not booted yet. The
    /// guest then resumes from an earlier instant and must get a new VM generation id.
    pub async fn is_unbooted_revert(
        &self,
        pool: Uuid,
        domain: Uuid,
        image: Uuid,
        volume: Uuid,
    ) -> Result<bool, ApiError> {
        let storage_domain = self.image_domain(pool, domain, image).await?;
        let checked = Arc::clone(&storage_domain);
        let (branch, copied) = blocking(move || {
            let parent = volume::read_meta(&checked, image, volume)?.parent;
            let branch = parent != BLANK_UUID
                && snapshot_volume::read_note(&checked, image, parent)
                    .is_some_and(|note| note.volume != volume);
            Ok((branch, copy::is_unbooted_clone(&checked, image, volume)))
        })
        .await?;
        if copied {
            return Ok(true);
        }
        if !branch {
            return Ok(false);
        }
        let written =
            snapshot_volume::has_data(&storage_domain, image, volume, self.inner.qemu_img_timeout)
                .await
                .map_err(ApiError::from)?;
        Ok(!written)
    }

    /// Forgets that `volume` is an unbooted full copy: a VM booted on it.
    pub async fn booted(&self, domain: Uuid, image: Uuid, volume: Uuid) -> Result<(), ApiError> {
        let domain = self.domain(domain)?;
        blocking(move || copy::clear_clone_mark(&domain, image, volume)).await
    }

    /// Releases a drive's image when its VM is gone: nothing to release on a file domain once
    /// the ids are checked (as `Image.teardown`).
    pub async fn teardown_drive(
        &self,
        pool: Uuid,
        domain: Uuid,
        image: Uuid,
    ) -> Result<(), ApiError> {
        self.image_domain(pool, domain, image).await.map(drop)
    }

    /// Checks a drive's chain again ([`tool_files::check_chain`]) right before its VM starts:
    /// QEMU opens it by names, and the check at its preparation was a define and a read-back
    /// ago.
    pub async fn recheck_drive_chain(
        &self,
        domain: Uuid,
        image: Uuid,
        volume: Uuid,
    ) -> Result<(), ApiError> {
        let domain = self.domain_with_image(domain, image).await?;
        blocking(move || tool_files::check_chain(&domain, image, volume).map(drop)).await
    }

    /// Refuses a volume a VM must not write to: one that is not a LEAF (the backing file of a
    /// snapshot: writing it corrupts every volume above), one with children (a leaf whose
    /// metadata lags behind a snapshot made on it), or one of an image a full copy is reading
    /// now (the copy would read a chain that changes under it).
    pub async fn check_writable_leaf(
        &self,
        pool: Uuid,
        domain: Uuid,
        image: Uuid,
        volume: Uuid,
    ) -> Result<(), ApiError> {
        if self.is_being_copied(domain, image) {
            return Err(StorageError::InvalidParameter(format!(
                "image {image} is being copied: a VM can run on it once the copy ends"
            ))
            .into());
        }
        let storage_domain = self.image_domain(pool, domain, image).await?;
        blocking(move || {
            let meta = volume::read_meta(&storage_domain, image, volume)?;
            if meta.role != VolumeRole::Leaf
                || !volume::children(&storage_domain, image, volume)?.is_empty()
            {
                return Err(StorageError::HasChildren(volume));
            }
            Ok(())
        })
        .await
    }
}
