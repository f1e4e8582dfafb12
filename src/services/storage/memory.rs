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
use crate::storage::memory_state::{self, MemoryState};
use crate::storage::memory_volume::{self, MemoryVolume};

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
        let (conf, bytes) = (Arc::clone(conf), memory_state::encode(state));
        off_reactor(move || memory_volume::write_conf(&conf, &bytes)).await
    }

    /// Reads and checks the configuration in `conf` (refused when rvdsm did not write it
    /// whole, in a version it reads).
    pub async fn read_memory_state(
        &self,
        conf: &Arc<MemoryVolume>,
    ) -> Result<MemoryState, StorageError> {
        let conf = Arc::clone(conf);
        let limit = memory_state::MAX_LEN + 4096;
        let bytes = off_reactor(move || memory_volume::read_conf(&conf, limit)).await?;
        Ok(memory_state::decode(&bytes)?)
    }

    /// Ends a dump libvirt wrote: its size, the volume given its capacity back.
    pub async fn finish_dump(&self, dump: &Arc<MemoryVolume>) -> Result<u64, StorageError> {
        let dump = Arc::clone(dump);
        off_reactor(move || memory_volume::finish_dump(&dump)).await
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
                    tracing::error!(volume = %id.volume, error = %err, "cannot mark a memory volume ILLEGAL")
                }
            }
        }
    }
}
