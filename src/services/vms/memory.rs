//! Saved RAM brought back, and saved: `VM.create` with `memoryDumpVolume`/`memoryConfVolume`
//! (or VDSM's older `hiberVolHandle`) restores a VM from a snapshot with memory or a
//! hibernation, and `VM.hibernate` saves one and stops it.
//!
//! A restore trusts nothing it reads from the shared domain beyond its form: the configuration
//! must be rvdsm's, whole, saved for this VM and this dump; its definition goes through the
//! same admission as a manager's (`vm_policy::admit`), with the manager's drive metadata in
//! place of the saved one and every disk placed by rvdsm on the volumes the manager names; and
//! each of those volumes must hold exactly the data of the saved instant: the volume the disk
//! was on then (a hibernation), or an empty child of it (a snapshot's preview). RAM restored
//! onto a disk that moved on would see filesystems it does not know.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::VmService;
use crate::api::ApiError;
use crate::api::lifecycle_types::{CreateVmParams, HibernateParams};
use crate::api::merge_types::DriveSpec;
use crate::api::snapshot_types::{MemoryMode, MemoryVolumes};
use crate::api::types::VmStatus;
use crate::clock::epoch_secs;
use crate::services::errors::cannot_create;
use crate::services::storage::{ImageRef, MemoryVolumeId, memory_volume_in_use};
use crate::storage::memory_state::{MemoryState, SavedDisk, SavedFor, SavedVolume};
use crate::storage::memory_volume::MemoryVolume;
use crate::virt::vm_xml::{self, EngineVm};
use crate::virt::{MemoryDump, VirtError};

/// How long a restore or a hibernation's save may take.
const MEMORY_CALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Saved RAM a `VM.create` restores, checked.
pub(super) struct Restore {
    /// The dump, held open.
    pub dump: Arc<MemoryVolume>,
    /// The dump's id.
    pub dump_id: MemoryVolumeId,
    /// The saved definition, with the manager's drive metadata: what is admitted and placed.
    pub xml: String,
    /// What the configuration said.
    pub state: MemoryState,
}

fn invalid(reason: impl std::fmt::Display) -> ApiError {
    ApiError::invalid_parameter(format!(
        "{{'action': 'VM.create', 'parameter': 'vmParams', 'reason': '{reason}'}}"
    ))
}

/// The dump and configuration a `VM.create` names, in either of VDSM's forms.
fn named_volumes(p: &CreateVmParams) -> Result<Option<(MemoryVolumeId, MemoryVolumeId)>, ApiError> {
    let params = &p.vm_params;
    let id = |v: &DriveSpec| MemoryVolumeId::new(v.domain, (v.image, v.volume));
    match (
        &params.memory_dump_volume,
        &params.memory_conf_volume,
        &params.hiber_vol_handle,
    ) {
        (None, None, None) => Ok(None),
        (Some(dump), Some(conf), None) => {
            if id(dump) == id(conf) {
                return Err(invalid(
                    "memoryDumpVolume and memoryConfVolume are the same volume",
                ));
            }
            Ok(Some((id(dump), id(conf))))
        }
        (None, None, Some(handle)) => {
            let v: MemoryVolumes = handle
                .parse()
                .map_err(|why| invalid(format!("hiberVolHandle: {why}")))?;
            Ok(Some((
                MemoryVolumeId::new(v.domain, v.dump),
                MemoryVolumeId::new(v.domain, v.conf),
            )))
        }
        _ => Err(invalid(
            "give memoryDumpVolume and memoryConfVolume together, or hiberVolHandle alone",
        )),
    }
}

impl VmService {
    /// The saved RAM a `VM.create` asks to restore, checked (see the module's rules); `None`
    /// for a plain create.
    pub(super) async fn memory_to_restore(
        &self,
        p: &CreateVmParams,
        engine: &EngineVm,
    ) -> Result<Option<Restore>, ApiError> {
        let Some((dump_id, conf_id)) = named_volumes(p)? else {
            return Ok(None);
        };
        let storage = &self.inner.storage;
        let conf = storage.open_memory_volume(conf_id).await?;
        let state = storage
            .read_memory_state(&conf)
            .await
            .map_err(|e| cannot_create(format!("configuration volume {}: {e}", conf_id.volume)))?;
        if state.vm_id != engine.uuid {
            return Err(cannot_create(format!(
                "the configuration volume {} was saved for VM {}, not {}",
                conf_id.volume, state.vm_id, engine.uuid
            )));
        }
        let saved_dump = MemoryVolumeId::from(state.dump);
        if saved_dump != dump_id {
            return Err(cannot_create(format!(
                "the configuration belongs to the dump {}, not to {}",
                saved_dump.volume, dump_id.volume
            )));
        }
        let dump = storage.open_memory_volume(dump_id).await?;
        if let Some(volume) = memory_volume_in_use(&self.inner.hypervisor, &[&dump, &conf]).await? {
            return Err(cannot_create(format!(
                "memory volume {volume} is a disk of a VM"
            )));
        }
        self.check_disks_at_saved_instant(engine, &state.disks, &dump)
            .await?;
        if !crate::virt::vm_policy::depth::within_depth(&state.domain_xml) {
            return Err(cannot_create(
                "the saved definition nests elements too deep",
            ));
        }
        let xml = vm_xml::with_metadata_of(&state.domain_xml, &p.vm_params.xml)
            .map_err(|e| cannot_create(format!("the saved definition: {e}")))?;
        // The configuration's own VM id was checked; the definition inside it names its VM
        // again, and that is the one libvirt would define.
        let saved_vm = vm_xml::parse_engine_vm(&xml)
            .map_err(|e| cannot_create(format!("the saved definition: {e}")))?;
        if saved_vm.uuid != engine.uuid {
            return Err(cannot_create(format!(
                "the saved definition is VM {}'s, not {}'s",
                saved_vm.uuid, engine.uuid
            )));
        }
        Ok(Some(Restore {
            dump,
            dump_id,
            xml,
            state,
        }))
    }

    /// Each drive the manager names is on the saved disk's image, at the saved volume or on an
    /// empty child of it; and the saved disks are exactly the manager's drives.
    async fn check_disks_at_saved_instant(
        &self,
        engine: &EngineVm,
        saved: &[SavedDisk],
        dump: &MemoryVolume,
    ) -> Result<(), ApiError> {
        if saved.len() != engine.drives.len() {
            return Err(cannot_create(format!(
                "the RAM was saved with {} managed disks, the definition has {}",
                saved.len(),
                engine.drives.len()
            )));
        }
        for drive in &engine.drives {
            let disk = saved
                .iter()
                .find(|d| d.target == drive.target)
                .ok_or_else(|| {
                    cannot_create(format!("disk {} was not saved with the RAM", drive.target))
                })?;
            let at = disk.volume;
            if (at.domain_id, at.image_id) != (drive.domain, drive.image) {
                return Err(cannot_create(format!(
                    "disk {} was on image {} when the RAM was saved, not {}",
                    drive.target, at.image_id, drive.image
                )));
            }
            let image = self
                .inner
                .storage
                .image(ImageRef::new(drive.domain, drive.image))?;
            if drive.volume == at.volume_id {
                // The VM stopped writing the volume before its dump was finished (rvdsm gives
                // the dump its capacity back once the save returned): a volume changed since
                // (the VM started afresh on it) no longer holds the saved instant.
                if image.data_modified(drive.volume).await? > dump.modified()? {
                    return Err(cannot_create(format!(
                        "disk {}: volume {} was written after the RAM was saved: the restored \
                         guest would find its disk changed under it",
                        drive.target, drive.volume
                    )));
                }
                continue;
            }
            let parent = image.backing_of(drive.volume).await?;
            if parent != Some(at.volume_id) || image.has_data(drive.volume).await? {
                return Err(cannot_create(format!(
                    "disk {}: volume {} does not hold the data of the saved instant (it must \
                     be volume {} or an unwritten child of it): the restored guest would find \
                     its disk changed under it",
                    drive.target, drive.volume, at.volume_id
                )));
            }
        }
        Ok(())
    }

    /// Restores the defined VM from its dump, paused; then resumes it and sets its clock, as
    /// VDSM does once a restore completes.
    pub(super) async fn restore_and_resume(
        &self,
        vm: Uuid,
        xml: String,
        restore: &Restore,
    ) -> Result<(), VirtError> {
        let hypervisor = &self.inner.hypervisor;
        hypervisor
            .restore_paused(vm, restore.dump.fd_name(), xml, MEMORY_CALL_TIMEOUT)
            .await?;
        crate::failpoint::pause!("vm-restore:paused");
        hypervisor.resume(vm).await?;
        self.sync_guest_clock(vm).await;
        tracing::info!(%vm, saved_for = ?restore.state.saved_for, saved_at = restore.state.saved_at, "VM restored from its saved RAM");
        Ok(())
    }

    /// Sets the guest's clock to the host's (it stood still while the RAM was saved); a
    /// guest without an agent keeps its clock, as under VDSM.
    async fn sync_guest_clock(&self, vm: Uuid) {
        let hypervisor = &self.inner.hypervisor;
        let set = async {
            hypervisor
                .set_agent_timeout(vm, self.inner.agent_timeout)
                .await?;
            hypervisor.set_guest_time(vm).await
        };
        if let Err(err) = set.await {
            tracing::warn!(%vm, error = %err, "cannot set the restored guest's clock");
        }
    }

    /// `VM.hibernate`: checks the VM and the volumes, writes the configuration, and saves the
    /// RAM in the background; the VM stops once saved (status Down), or runs on if the save
    /// fails, the volumes then marked ILLEGAL.
    pub async fn hibernate(&self, p: HibernateParams) -> Result<(), ApiError> {
        let vm = p.vm_id;
        let ids: MemoryVolumes = p.hiber_vol_handle.parse().map_err(|why| {
            ApiError::invalid_parameter(format!(
                "{{'action': 'VM.hibernate', 'parameter': 'hiberVolHandle', 'reason': '{why}'}}"
            ))
        })?;
        self.require_running(vm).await?;
        let claim = self.inner.jobs.claim_vm(vm).map_err(|_| ApiError::Coded {
            code: crate::api::codes::GENERAL,
            message: format!(
                "General Exception: {{'reason': '{}: the VM was not hibernated'}}",
                self.inner.jobs.holder_of(vm)
            ),
        })?;
        let view = self.existing_view(vm).await?;
        let (dump_id, conf_id) = (
            MemoryVolumeId::new(ids.domain, ids.dump),
            MemoryVolumeId::new(ids.domain, ids.conf),
        );
        let storage = &self.inner.storage;
        let locks = storage
            .lock_images(vec![
                ImageRef::new(dump_id.domain, dump_id.image),
                ImageRef::new(conf_id.domain, conf_id.image),
            ])
            .await;
        let dump = storage.open_memory_volume(dump_id).await?;
        let conf = storage.open_memory_volume(conf_id).await?;
        if let Some(volume) = memory_volume_in_use(&self.inner.hypervisor, &[&dump, &conf]).await? {
            return Err(ApiError::invalid_parameter(format!(
                "{{'action': 'VM.hibernate', 'reason': 'memory volume {volume} is a disk of a VM'}}"
            )));
        }
        let ram = crate::virt::xml::saved::memory_bytes(&view.xml)?;
        if dump.capacity < crate::services::storage::dump_room_needed(ram) {
            return Err(ApiError::invalid_parameter(format!(
                "{{'action': 'VM.hibernate', 'reason': 'the dump volume {} is too small: {} bytes for {ram} bytes of RAM'}}",
                dump_id.volume, dump.capacity
            )));
        }
        // A hibernation without its disks could never be resumed: refused before the save.
        let disks = vm_xml::managed_drives(&view.xml)
            .map_err(|e| cannot_hibernate(format!("the VM's drives cannot be read: {e}")))?
            .into_iter()
            .map(|(drive, _)| SavedDisk {
                target: drive.target,
                volume: SavedVolume {
                    domain_id: drive.domain,
                    image_id: drive.image,
                    volume_id: drive.volume,
                },
            })
            .collect();
        let xml = self.inner.hypervisor.migratable_xml(vm).await?;
        let state = MemoryState {
            vm_id: vm,
            saved_for: SavedFor::Hibernation,
            mode: MemoryMode::Paused,
            saved_at: epoch_secs(),
            elapsed_time_offset: 0.0,
            domain_xml: crate::virt::xml::saved::restorable(&xml)?,
            disks,
            dump: dump_id.into(),
        };
        storage.write_memory_state(&conf, &state).await?;
        tracing::info!(%vm, "hibernation starting");
        let was_running = view.status == VmStatus::Up;
        let service = self.clone();
        tokio::spawn(async move {
            let _held = (locks, conf);
            service
                .save_and_stop(vm, dump, [dump_id, conf_id], was_running, claim)
                .await;
        });
        Ok(())
    }

    /// The hibernation's save, run in the background. Whether it saved is read from the
    /// domain, not from the call alone: a call that gave up (its timeout) while libvirt went
    /// on may still have saved and stopped the VM.
    async fn save_and_stop(
        &self,
        vm: Uuid,
        dump: Arc<MemoryVolume>,
        ids: [MemoryVolumeId; 2],
        was_running: bool,
        claim: crate::jobs::vm_jobs::VmClaim,
    ) {
        let hypervisor = &self.inner.hypervisor;
        let target = MemoryDump {
            file: dump.fd_name(),
            mode: MemoryMode::Paused,
            timeout: MEMORY_CALL_TIMEOUT,
        };
        let saved = match hypervisor.save_memory(vm, target).await {
            Ok(pause) => Ok(pause),
            Err(err) => {
                hypervisor.settled(vm).await;
                match hypervisor.read_view(vm).await {
                    Ok(Some(view)) if view.status == VmStatus::Down => {
                        tracing::warn!(%vm, error = %err, "the save reported an error, and the VM is saved and stopped");
                        Ok(crate::virt::PauseReport::default())
                    }
                    _ => Err(err),
                }
            }
        };
        // Saved (the VM shows Down) or not: the VM is free for the manager's next call (its
        // VM.destroy, say) from here; the memory volumes stay locked until settled.
        drop(claim);
        match saved {
            Ok(pause) => match self.inner.storage.finish_dump(&dump).await {
                Ok(bytes) => {
                    tracing::info!(%vm, dump_bytes = bytes, pause_ms = ?pause.pause_ms, "VM hibernated");
                }
                // The VM is stopped and its RAM is in the dump: kept, whatever the resize.
                Err(err) => {
                    tracing::error!(%vm, error = %err, "VM hibernated; its dump volume could not be given its capacity back");
                }
            },
            Err(err) => {
                tracing::error!(%vm, error = %err, "hibernation failed; the VM runs on");
                self.inner.storage.discard_memory(&ids).await;
                self.resume_if_left_paused(vm, was_running).await;
            }
        }
        self.inner.monitor.refresh(vm).await;
    }

    /// libvirt resumes a guest it paused for a failed save; in case it could not, rvdsm never
    /// leaves standing a guest that ran before (one the user had paused stays paused).
    async fn resume_if_left_paused(&self, vm: Uuid, was_running: bool) {
        let hypervisor = &self.inner.hypervisor;
        if was_running
            && let Ok(Some(view)) = hypervisor.read_view(vm).await
            && matches!(view.status, VmStatus::Paused | VmStatus::SavingState)
            && let Err(err) = hypervisor.resume(vm).await
        {
            tracing::error!(%vm, error = %err, "cannot resume the VM after a failed hibernation");
        }
    }
}

/// VDSM's general error for a hibernation refused, with its reason.
fn cannot_hibernate(reason: impl std::fmt::Display) -> ApiError {
    ApiError::invalid_parameter(format!(
        "{{'action': 'VM.hibernate', 'reason': '{reason}'}}"
    ))
}
