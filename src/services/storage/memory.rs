//! The volumes that hold a guest's saved RAM, as the storage service hands them to the
//! snapshot and VM services: a snapshot with memory and a hibernation write them, a restore
//! reads them. The ids are checked here, the work is the storage layer's
//! ([`crate::storage::memory_volume`], [`crate::storage::memory_state`]); every file operation
//! runs off the reactor.

use std::sync::Arc;

use uuid::Uuid;

use super::StorageService;
use crate::storage::StorageError;
use crate::storage::image::ImageRef;
use crate::storage::memory_state::{self, MemoryState, SavedVolume};
use crate::storage::memory_volume::{self, MemoryVolume};

/// What a dump needs beyond the guest's RAM: libvirt's header and the definition, and the
/// devices' state (video memory above all). Engines size dump volumes RAM + 200 MiB.
pub const DUMP_HEADROOM: u64 = 64 << 20;

/// The least a dump volume must hold for a guest of `ram` bytes (in paused mode; a live dump
/// of a guest that writes grows past it, and is stopped at the volume's capacity).
pub fn dump_room_needed(ram: u64) -> u64 {
    ram.saturating_add(DUMP_HEADROOM)
}

/// A memory volume by its domain, image and volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryVolumeId {
    /// The storage domain.
    pub domain: Uuid,
    /// The image.
    pub image: Uuid,
    /// The volume.
    pub volume: Uuid,
}

impl MemoryVolumeId {
    /// The volume `(image, volume)` of `domain`.
    pub fn new(domain: Uuid, (image, volume): (Uuid, Uuid)) -> Self {
        Self {
            domain,
            image,
            volume,
        }
    }
}

impl From<SavedVolume> for MemoryVolumeId {
    fn from(v: SavedVolume) -> Self {
        Self {
            domain: v.domain_id,
            image: v.image_id,
            volume: v.volume_id,
        }
    }
}

impl From<MemoryVolumeId> for SavedVolume {
    fn from(v: MemoryVolumeId) -> Self {
        Self {
            domain_id: v.domain,
            image_id: v.image,
            volume_id: v.volume,
        }
    }
}

async fn off_reactor<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Panicked(e.to_string()))?
}

impl StorageService {
    /// The volume checked as a memory volume and held open ([`memory_volume::open`]).
    pub async fn open_memory_volume(
        &self,
        id: MemoryVolumeId,
    ) -> Result<Arc<MemoryVolume>, StorageError> {
        let handle = self.image(ImageRef::new(id.domain, id.image))?;
        handle.open_memory_volume(id.volume).await.map(Arc::new)
    }

    /// Writes `state` into the configuration volume `conf`, durably.
    pub async fn write_memory_state(
        &self,
        conf: &Arc<MemoryVolume>,
        state: &MemoryState,
    ) -> Result<(), StorageError> {
        // Refused here what a restore would refuse (a payload too large, a number JSON
        // cannot carry), before anything is written.
        let bytes = memory_state::try_encode(state)?;
        let conf = Arc::clone(conf);
        off_reactor(move || memory_volume::write_conf(&conf, &bytes)).await
    }

    /// Reads and checks the configuration in `conf` (refused when rvdsm did not write it
    /// whole, in a version it reads).
    pub async fn read_memory_state(
        &self,
        conf: &Arc<MemoryVolume>,
    ) -> Result<MemoryState, StorageError> {
        let conf = Arc::clone(conf);
        let limit = memory_state::MAX_READ;
        let bytes = off_reactor(move || memory_volume::read_conf(&conf, limit)).await?;
        Ok(memory_state::decode(&bytes)?)
    }

    /// Ends a dump libvirt wrote: its size, the volume given its capacity back.
    pub async fn finish_dump(&self, dump: &Arc<MemoryVolume>) -> Result<u64, StorageError> {
        let dump = Arc::clone(dump);
        off_reactor(move || memory_volume::finish_dump(&dump)).await
    }

    /// Empties the dump's file before libvirt writes it ([`memory_volume::empty_dump`]).
    pub async fn empty_dump(&self, dump: &Arc<MemoryVolume>) -> Result<(), StorageError> {
        let dump = Arc::clone(dump);
        off_reactor(move || memory_volume::empty_dump(&dump)).await
    }

    /// The dump's size now (while libvirt writes it).
    pub async fn dump_size(&self, dump: &Arc<MemoryVolume>) -> Result<u64, StorageError> {
        let dump = Arc::clone(dump);
        off_reactor(move || dump.size_now()).await
    }

    /// Marks memory volumes ILLEGAL, never to be restored; a failure is logged.
    pub async fn discard_memory(&self, ids: &[MemoryVolumeId]) {
        for id in ids {
            let marked = match self.image(ImageRef::new(id.domain, id.image)) {
                Ok(handle) => handle.mark_memory_unusable(id.volume).await,
                Err(err) => Err(err),
            };
            match marked {
                Ok(()) => tracing::info!(volume = %id.volume, "memory volume marked ILLEGAL"),
                Err(err) => {
                    tracing::error!(volume = %id.volume, error = %err, "cannot mark a memory volume ILLEGAL");
                }
            }
        }
    }
}

/// The first of `volumes` that a VM uses as a disk, if any: a dump written there would
/// overwrite the VM's data. Compared by canonical path, as the snapshot compares disks.
pub async fn memory_volume_in_use(
    hypervisor: &crate::virt::SharedHypervisor,
    volumes: &[&Arc<MemoryVolume>],
) -> Result<Option<Uuid>, crate::virt::VirtError> {
    let in_use = hypervisor.disk_paths_in_use().await?;
    let ours: Vec<std::path::PathBuf> = volumes.iter().map(|v| v.path.clone()).collect();
    let (in_use, ours) = tokio::task::spawn_blocking(move || {
        let real = |p: &std::path::Path| std::fs::canonicalize(p).ok();
        let in_use: Vec<_> = in_use.iter().filter_map(|p| real(p.as_ref())).collect();
        let ours: Vec<_> = ours.iter().map(|p| real(p)).collect();
        (in_use, ours)
    })
    .await
    .unwrap_or_default();
    Ok(volumes
        .iter()
        .zip(ours)
        .find(|(_, real)| real.as_ref().is_some_and(|r| in_use.contains(r)))
        .map(|(volume, _)| volume.volume))
}
