//! The memory half of a snapshot with memory (`snapMemory`): the two volumes the manager made
//! are checked and held before the job is scheduled (RAW, alone in their image, used by no VM,
//! none of the snapshot's own images, the dump with room for the guest's RAM); the
//! configuration is written before libvirt is called; the dump is watched while libvirt writes
//! it (stopped when it reaches its volume's capacity, or when a live dump outlasts its bound);
//! afterwards the dump gets its capacity back, or, when the snapshot failed, both volumes are
//! marked ILLEGAL so that nothing ever restores them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::SnapshotService;
use super::error::SnapshotError;
use super::journal::{Entry, JournalMemory};
use super::validate::Drive;
use crate::api::snapshot_types::{MemoryMode, MemoryResult, MemoryVolumes};
use crate::api::types::VmStatus;
use crate::api::vm_types::SnapshotParams;
use crate::clock::epoch_secs;
use crate::services::storage::MemoryVolumeId;
use crate::storage::StorageError;
use crate::storage::memory_state::{MemoryState, SavedDisk, SavedFor, SavedVolume};
use crate::storage::memory_volume::MemoryVolume;
use crate::virt::{DiskSwitch, MemoryDump, PauseReport, VirtError};

/// How often the dump's size is looked at while libvirt writes it.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// The memory volumes of a checked request, held open for the job.
pub(super) struct MemoryJob {
    /// Their ids, as the request named them.
    pub ids: MemoryVolumes,
    /// How the RAM is saved.
    pub mode: MemoryMode,
    /// The dump's volume.
    pub dump: Arc<MemoryVolume>,
    /// The configuration's volume.
    pub conf: Arc<MemoryVolume>,
    /// Whether the guest ran when the job was checked (a paused one is left paused).
    pub was_running: bool,
}

impl MemoryJob {
    /// What the journal keeps of it.
    pub fn journal(&self) -> JournalMemory {
        JournalMemory {
            domain: self.ids.domain,
            dump: self.ids.dump,
            conf: self.ids.conf,
        }
    }

    /// What libvirt is given: the dump's held descriptor.
    pub fn dump_target(&self, timeout: Duration) -> MemoryDump {
        MemoryDump {
            file: self.dump.fd_name(),
            mode: self.mode,
            timeout,
        }
    }
}

impl SnapshotService {
    /// The request's memory volumes, checked and held (`None` without `snapMemory`).
    pub(super) async fn check_memory(
        &self,
        p: &SnapshotParams,
        drives: &[Drive],
        skipped: &[Uuid],
    ) -> Result<Option<MemoryJob>, SnapshotError> {
        let Some(text) = p.snap_memory.as_deref().filter(|m| !m.is_empty()) else {
            return Ok(None);
        };
        let ids: MemoryVolumes = text
            .parse()
            .map_err(|why| SnapshotError::invalid(format!("snapMemory: {why}")))?;
        if !skipped.is_empty() {
            return Err(SnapshotError::invalid(
                "a snapshot with memory switches every listed disk at the instant of the dump; \
                 some already use their new volume (a retried request?)",
            ));
        }
        let memory_images = [ids.dump.0, ids.conf.0];
        if let Some(drive) = drives
            .iter()
            .find(|d| d.domain == ids.domain && memory_images.contains(&d.image))
        {
            return Err(SnapshotError::invalid(format!(
                "image {} is a disk of the snapshot and a memory volume",
                drive.image
            )));
        }
        let dump = self
            .storage
            .open_memory_volume(MemoryVolumeId::new(ids.domain, ids.dump))
            .await?;
        let conf = self
            .storage
            .open_memory_volume(MemoryVolumeId::new(ids.domain, ids.conf))
            .await?;
        if let Some(volume) =
            crate::services::storage::memory_volume_in_use(&self.hypervisor, &[&dump, &conf])
                .await?
        {
            return Err(SnapshotError::invalid(format!(
                "memory volume {volume} is a disk of a VM"
            )));
        }
        let view =
            self.hypervisor
                .read_view(p.vm_id)
                .await?
                .ok_or_else(|| VirtError::NoSuchDomain {
                    uuid: p.vm_id.to_string(),
                })?;
        if !matches!(view.status, VmStatus::Up | VmStatus::Paused) {
            return Err(SnapshotError::invalid(format!(
                "a snapshot with memory needs a running VM; this one is {:?}",
                view.status
            )));
        }
        let ram = crate::virt::xml::saved::memory_bytes(&view.xml)?;
        let needed = crate::services::storage::dump_room_needed(ram);
        if dump.capacity < needed {
            return Err(SnapshotError::invalid(format!(
                "the dump volume {} is too small: {} bytes, and the guest's RAM ({ram} bytes) \
                 needs at least {needed}",
                ids.dump.1, dump.capacity
            )));
        }
        Ok(Some(MemoryJob {
            ids,
            mode: p.memory_mode.unwrap_or(self.memory.memory_mode),
            dump,
            conf,
            was_running: view.status == VmStatus::Up,
        }))
    }

    /// Writes what restoring needs into the configuration volume, before the dump.
    pub(super) async fn save_configuration(
        &self,
        entry: &Entry,
        memory: &MemoryJob,
    ) -> Result<(), String> {
        let xml = self
            .hypervisor
            .migratable_xml(entry.vm)
            .await
            .map_err(|e| e.to_string())?;
        let xml = crate::virt::xml::saved::restorable(&xml).map_err(|e| e.to_string())?;
        let state = MemoryState {
            vm_id: entry.vm,
            saved_for: SavedFor::Snapshot,
            mode: memory.mode,
            saved_at: epoch_secs(),
            elapsed_time_offset: 0.0,
            domain_xml: xml,
            disks: entry
                .drives
                .iter()
                .map(|d| SavedDisk {
                    target: d.target.clone(),
                    volume: SavedVolume {
                        domain_id: d.domain,
                        image_id: d.image,
                        volume_id: d.base,
                    },
                })
                .collect(),
            dump: MemoryVolumeId::new(memory.ids.domain, memory.ids.dump).into(),
        };
        self.storage
            .write_memory_state(&memory.conf, &state)
            .await
            .map_err(|e| e.to_string())
    }

    /// The snapshot with memory, its dump watched: stopped (libvirt's job aborted, which
    /// undoes the snapshot) when the dump reaches its volume's capacity, or when a live dump
    /// outlasts `[snapshot] live_memory_max_secs`.
    pub(super) async fn watched_memory_snapshot(
        &self,
        vm: Uuid,
        switches: Vec<DiskSwitch>,
        all_targets: Vec<String>,
        dump: MemoryDump,
        memory: &MemoryJob,
    ) -> Result<PauseReport, VirtError> {
        if let Err(err) = self.storage.empty_dump(&memory.dump).await {
            return Err(VirtError::Refused {
                element: "the dump volume".into(),
                reason: format!("cannot empty it before the dump: {err}"),
            });
        }
        let live_bound = (dump.mode == MemoryMode::Live)
            .then(|| Duration::from_secs(self.memory.live_memory_max_secs));
        let snapshot = self
            .hypervisor
            .memory_snapshot(vm, switches, all_targets, dump);
        tokio::pin!(snapshot);
        let started = Instant::now();
        let mut aborted = false;
        loop {
            tokio::select! {
                result = &mut snapshot => return result,
                () = tokio::time::sleep(WATCH_INTERVAL), if !aborted => {
                    let why = self.why_stop_dump(&memory.dump, started, live_bound).await;
                    if let Some(why) = why {
                        tracing::warn!(%vm, %why, "stopping the RAM dump");
                        aborted = true;
                        if let Err(err) = self.hypervisor.abort_job(vm).await {
                            tracing::error!(%vm, error = %err, "cannot stop the RAM dump");
                        }
                    }
                }
            }
        }
    }

    /// Why a running dump must stop now, if it must.
    async fn why_stop_dump(
        &self,
        dump: &Arc<MemoryVolume>,
        started: Instant,
        live_bound: Option<Duration>,
    ) -> Option<String> {
        if let Some(bound) = live_bound
            && started.elapsed() > bound
        {
            return Some(format!(
                "the live dump did not end within {} s (the guest dirties its RAM faster than \
                 it is written)",
                bound.as_secs()
            ));
        }
        let size = self.storage.dump_size(dump).await.ok()?;
        (size >= dump.capacity).then(|| {
            format!(
                "the dump reached its volume's capacity ({} bytes)",
                dump.capacity
            )
        })
    }

    /// After a failed snapshot with memory: a switch found done after all means libvirt saved
    /// the RAM whole (it switches the disks only after), so the dump is finished and kept;
    /// otherwise both volumes are marked ILLEGAL. A guest the dump left paused (libvirt could
    /// not resume it, or rvdsm's call gave up while libvirt held it) is resumed: rvdsm never
    /// leaves standing a guest that ran before.
    pub(super) async fn after_failed_dump(
        &self,
        entry: &Entry,
        memory: &MemoryJob,
        switched: bool,
    ) {
        if switched {
            self.finish_interrupted_dump(&memory.journal()).await;
        } else {
            self.discard_memory(&memory.journal()).await;
        }
        if memory.was_running
            && let Ok(crate::virt::RunState::Paused) = self.hypervisor.run_state(entry.vm).await
        {
            tracing::warn!(vm = %entry.vm, "the failed dump left the guest paused; resuming it");
            if let Err(err) = self.hypervisor.resume(entry.vm).await {
                tracing::error!(vm = %entry.vm, error = %err, "cannot resume the guest after a failed dump");
            }
        }
    }

    /// After a switch with memory: the dump given its capacity back, and what was saved.
    pub(super) async fn finish_memory(
        &self,
        memory: &MemoryJob,
        pause: Option<PauseReport>,
    ) -> Result<MemoryResult, StorageError> {
        let dump_bytes = self.storage.finish_dump(&memory.dump).await?;
        let pause = pause.unwrap_or_default();
        Ok(MemoryResult {
            mode: memory.mode,
            pause_ms: pause.pause_ms,
            downtime_ms: pause.downtime_ms,
            dump_bytes,
            dump_volume: memory.ids.dump.1,
            conf_volume: memory.ids.conf.1,
        })
    }

    /// Marks the memory volumes of a failed snapshot ILLEGAL; a failure is logged.
    pub(super) async fn discard_memory(&self, memory: &JournalMemory) {
        self.storage.discard_memory(&memory_ids(memory)).await;
    }
}

impl SnapshotService {
    /// The dump of an interrupted snapshot that switched: given its capacity back (libvirt
    /// truncated it to what it wrote). A dump that cannot be is marked ILLEGAL.
    pub(super) async fn finish_interrupted_dump(&self, memory: &JournalMemory) {
        let id = MemoryVolumeId::new(memory.domain, memory.dump);
        let finished = match self.storage.open_memory_volume(id).await {
            Ok(dump) => self.storage.finish_dump(&dump).await,
            Err(err) => Err(err),
        };
        if let Err(err) = finished {
            tracing::error!(volume = %id.volume, error = %err, "the dump of an interrupted snapshot cannot be finished; marking the memory volumes ILLEGAL");
            self.discard_memory(memory).await;
        }
    }
}

/// The two volumes of a journaled snapshot with memory.
fn memory_ids(memory: &JournalMemory) -> [MemoryVolumeId; 2] {
    [
        MemoryVolumeId::new(memory.domain, memory.dump),
        MemoryVolumeId::new(memory.domain, memory.conf),
    ]
}
