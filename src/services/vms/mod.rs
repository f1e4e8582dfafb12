//! The VM lifecycle verbs: `VM.create` (an engine's domain XML on rvdsm's volumes: each drive
//! prepared, its chain recorded in the definition, each `<lease>` placed on its sanlock
//! resource and checked held once the VM runs, the VM defined and started, every step
//! undone when one fails), `VM.destroy` (SIGTERM, then SIGKILL, then the definition and the
//! images released), `VM.pause`, `VM.cont`, `VM.shutdown`. Create and destroy are journaled
//! ([`journal`]) and finished by [`VmService::recover`] after a crash. VMs keep running when
//! rvdsmd stops; libvirt's definition (with rvdsm's drive metadata) is the record of them.

#[cfg(test)]
mod fake_tests;
mod journal;
mod memory;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use crate::api::ApiError;
use crate::api::codes;
use crate::api::lifecycle_types::{
    CreateVmParams, DestroyVmParams, EmptyVmList, ShutdownVmParams, VmShortStatus,
};
use crate::api::pool_types::LeaseId;
use crate::api::types::VmStatus;
use crate::jobs::vm_jobs::JobRegistry;
use crate::services::StorageService;
use crate::services::errors::cannot_create;
use crate::services::monitor::Monitor;
use crate::services::storage::ImageRef;
use crate::virt::vm_policy::{self, Admitted, Expected, VmFileRules};
use crate::virt::vm_xml::{self, PlacedDrive, PlacedLease};
use crate::virt::{SharedHypervisor, VirtError};
use journal::{DriveImage, Entry, Journal, Operation};

/// VDSM's default for `VM.shutdown`'s `timeout` (`sys_shutdown_timeout`).
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// The lifecycle verbs; cheap to clone.
#[derive(Clone)]
pub struct VmService {
    inner: Arc<Inner>,
}

struct Inner {
    hypervisor: SharedHypervisor,
    /// Where a VM's host files may be and where rvdsm puts those it names.
    file_rules: VmFileRules,
    storage: StorageService,
    monitor: Monitor,
    /// The per-VM claims of the virt jobs: a destroy takes the VM's as a merge does.
    jobs: JobRegistry,
    /// libvirt's agent response timeout, set before the clock of a restored guest is set.
    agent_timeout: Duration,
    journal: Journal,
    /// VMs being created or destroyed: a second such call on one waits for nothing and is
    /// refused, so two never interleave their steps.
    busy: Mutex<HashSet<Uuid>>,
}

/// Marks a VM busy for as long as it lives.
struct Busy {
    inner: Arc<Inner>,
    vm: Uuid,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.inner
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.vm);
    }
}

impl VmService {
    /// The service; its journal lives in `journal_dir`. Blocking (opens the journal).
    pub fn open(
        hypervisor: SharedHypervisor,
        storage: StorageService,
        monitor: Monitor,
        jobs: JobRegistry,
        file_rules: VmFileRules,
        agent_timeout: Duration,
        journal_dir: &std::path::Path,
    ) -> std::io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                hypervisor,
                file_rules,
                storage,
                monitor,
                jobs,
                agent_timeout,
                journal: Journal::open(journal_dir, "VM lifecycle")?.0,
                busy: Mutex::default(),
            }),
        })
    }

    fn claim(&self, vm: Uuid) -> Result<Busy, ApiError> {
        let mut busy = self.inner.busy.lock().unwrap_or_else(|e| e.into_inner());
        if !busy.insert(vm) {
            return Err(ApiError::Coded {
                code: codes::VM_EXISTS,
                message: format!(
                    "Virtual machine already exists: {{'reason': 'VM {vm} is being created or destroyed'}}"
                ),
            });
        }
        Ok(Busy {
            inner: Arc::clone(&self.inner),
            vm,
        })
    }

    /// `VM.create`.
    pub async fn create(&self, p: CreateVmParams) -> Result<VmShortStatus, ApiError> {
        if p.vm_params.xml.trim().is_empty() {
            return Err(ApiError::invalid_parameter(
                "{'action': 'VM.create', 'parameter': 'vmParams', 'reason': 'vmParams.xml, the libvirt domain XML, is required'}",
            ));
        }
        if !vm_policy::depth::within_depth(&p.vm_params.xml) {
            return Err(cannot_create(format!(
                "the domain XML nests elements deeper than {} levels",
                vm_policy::depth::MAX_DEPTH
            )));
        }
        let engine = vm_xml::parse_engine_vm(&p.vm_params.xml).map_err(cannot_create)?;
        if engine.uuid != p.vm_id {
            return Err(ApiError::invalid_parameter(format!(
                "{{'action': 'VM.create', 'parameter': 'vmID', 'value': '{}', 'reason': 'the XML's <uuid> is {}'}}",
                p.vm_id, engine.uuid
            )));
        }
        let mut targets = HashSet::new();
        if let Some(twice) = engine.drives.iter().find(|d| !targets.insert(&d.target)) {
            return Err(cannot_create(format!(
                "drive {} is named twice",
                twice.target
            )));
        }
        let restore = self.memory_to_restore(&p, &engine).await?;
        // A restore runs the definition saved with the RAM (the manager's drive metadata in
        // it), admitted and placed exactly as a manager's.
        let definition = restore
            .as_ref()
            .map_or(p.vm_params.xml.as_str(), |r| r.xml.as_str());
        let managed: Vec<&str> = engine.drives.iter().map(|d| d.target.as_str()).collect();
        let admitted = vm_policy::admit(definition, engine.uuid, &managed, &self.inner.file_rules)?;
        check_host_files(&admitted).await?;
        let _busy = self.claim(engine.uuid)?;
        if self
            .inner
            .hypervisor
            .read_view(engine.uuid)
            .await?
            .is_some()
        {
            return Err(ApiError::Coded {
                code: codes::VM_EXISTS,
                message: format!(
                    "Virtual machine already exists: {{'vmId': '{}'}}",
                    engine.uuid
                ),
            });
        }
        make_placed_dirs(&admitted).await?;
        // The images stay locked until the VM uses them: no delete slips in between.
        let dump_image = restore
            .as_ref()
            .map(|r| ImageRef::new(r.dump_id.domain, r.dump_id.image));
        let _locks = self
            .inner
            .storage
            .lock_images(
                engine
                    .drives
                    .iter()
                    .map(drive_image)
                    .chain(dump_image)
                    .collect(),
            )
            .await;
        let mut placed = Vec::with_capacity(engine.drives.len());
        let mut reverted = false;
        for drive in &engine.drives {
            self.inner.storage.refuse_if_copied(drive_image(drive))?;
            let image = self
                .inner
                .storage
                .drive_image(drive.pool, drive_image(drive))
                .await?;
            image.check_writable_leaf(drive.volume).await?;
            let prepared = image.prepare_drive(drive.volume).await?;
            placed.push(PlacedDrive {
                target: drive.target.clone(),
                path: prepared.path,
                format: prepared.format.to_owned(),
                chain: prepared.chain,
            });
            reverted |= image.is_unbooted_revert(drive.volume).await?;
        }
        let mut xml = vm_xml::place_drives(&admitted.xml, &placed).map_err(cannot_create)?;
        let mut expected = Expected {
            drives: placed.clone(),
            paths: admitted
                .host_files
                .iter()
                .map(|f| f.path.to_string_lossy().into_owned())
                .chain(
                    admitted
                        .placed
                        .iter()
                        .map(|p| p.to_string_lossy().into_owned()),
                )
                .collect(),
        };
        if !engine.leases.is_empty() {
            let leases;
            (xml, leases) = self.place_leases(&engine, &xml).await?;
            expected.paths.extend(leases.into_iter().map(|l| l.path));
        }
        if reverted && restore.is_none() {
            // The guest resumes from an earlier instant: software that keys on the VM's
            // generation (directory replicas, unique-id generators) must know.
            xml = vm_xml::with_new_genid(&xml).map_err(cannot_create)?;
            tracing::info!(vm = %engine.uuid, "first boot on a reverted snapshot: new generation id");
        }
        let entry = Entry {
            vm: engine.uuid,
            operation: Operation::Create,
            managed: true,
            images: engine
                .drives
                .iter()
                .map(|d| DriveImage {
                    pool: d.pool,
                    domain: d.domain,
                    image: d.image,
                })
                .collect(),
        };
        self.journal_write(entry.clone()).await?;
        self.define_and_start(&engine, xml, &expected, &entry, restore.as_ref())
            .await?;
        if let Err(err) = self.check_leases_held(&engine).await {
            tracing::error!(vm = %engine.uuid, error = %err, "VM started without its lease; undoing");
            self.undo_create(&entry).await;
            return Err(err);
        }
        self.journal_remove(engine.uuid).await;
        if reverted {
            for drive in &engine.drives {
                let booted = match self.inner.storage.image(drive_image(drive)) {
                    Ok(image) => image.clear_clone_mark(drive.volume).await,
                    Err(err) => Err(err),
                };
                if let Err(err) = booted {
                    tracing::warn!(vm = %engine.uuid, error = %err, "cannot clear a clone's mark");
                }
            }
        }
        self.inner.monitor.refresh(engine.uuid).await;
        tracing::info!(vm = %engine.uuid, name = %engine.name, drives = placed.len(), "VM created");
        Ok(self.short_status(engine.uuid))
    }

    /// Defines the VM, checks libvirt's parse of it and the drives' chains, and starts it (or
    /// restores it from its saved RAM); whatever fails is undone (definition, images, journal
    /// entry).
    async fn define_and_start(
        &self,
        engine: &vm_xml::EngineVm,
        xml: String,
        expected: &Expected,
        entry: &Entry,
        restore: Option<&memory::Restore>,
    ) -> Result<(), ApiError> {
        let vm = engine.uuid;
        if let Err(err) = self.inner.hypervisor.define(xml.clone()).await {
            tracing::warn!(%vm, error = %err, "VM.create failed; undoing");
            self.undo_create(entry).await;
            return Err(cannot_create(err));
        }
        crate::failpoint::pause!("vm-create:defined");
        if let Err(refusal) = self.verify_definition(vm, expected).await {
            tracing::error!(%vm, error = %refusal, "libvirt's definition is not what rvdsm placed; undoing");
            self.undo_create(entry).await;
            return Err(refusal.into());
        }
        if let Err(refusal) = self.recheck_chains(engine).await {
            tracing::error!(%vm, error = %refusal, "a drive's chain changed before the start; undoing");
            self.undo_create(entry).await;
            return Err(refusal);
        }
        let started = match restore {
            None => self.inner.hypervisor.start(vm).await,
            Some(restore) => self.restore_and_resume(vm, xml, restore).await,
        };
        if let Err(err) = started {
            tracing::warn!(%vm, error = %err, "VM.create failed; undoing");
            self.undo_create(entry).await;
            return Err(cannot_create(err));
        }
        Ok(())
    }

    /// The definition with each `<lease>` pointed at its sanlock resource (`Lease.info`), as
    /// VDSM fills the engine's placeholders. Only a host sharing its domains through sanlock
    /// can hold a lease.
    async fn place_leases(
        &self,
        engine: &vm_xml::EngineVm,
        xml: &str,
    ) -> Result<(String, Vec<PlacedLease>), ApiError> {
        if self.inner.storage.host_id().is_none() {
            return Err(cannot_create(
                "the VM has a <lease>, and this host runs alone: VM leases need sanlock \
                 ([cluster] host_id and StoragePool.connect)",
            ));
        }
        let mut placed = Vec::with_capacity(engine.leases.len());
        for lease in &engine.leases {
            let id = LeaseId {
                sd_id: lease.domain,
                lease_id: lease.lease,
            };
            let info = self.inner.storage.external_lease(id).await?;
            placed.push(PlacedLease {
                lease: *lease,
                path: info.path,
                offset: info.offset,
            });
        }
        let xml = vm_xml::place_leases(xml, &placed).map_err(cannot_create)?;
        Ok((xml, placed))
    }

    /// Every drive's chain checked again right before the start (see
    /// `ImageHandle::recheck_chain`).
    async fn recheck_chains(&self, engine: &vm_xml::EngineVm) -> Result<(), ApiError> {
        for drive in &engine.drives {
            self.inner
                .storage
                .image(drive_image(drive))?
                .recheck_chain(drive.volume)
                .await?;
        }
        Ok(())
    }

    /// Reads libvirt's parse of the definition just made and checks it against what rvdsm
    /// placed: libvirt's parser, not rvdsm's, decides what QEMU opens.
    async fn verify_definition(&self, vm: Uuid, expected: &Expected) -> Result<(), VirtError> {
        let view =
            self.inner
                .hypervisor
                .read_view(vm)
                .await?
                .ok_or_else(|| VirtError::Refused {
                    element: "the definition".into(),
                    reason: "libvirt lost it between the define and the check".into(),
                })?;
        vm_policy::verify_defined(&view.xml, expected)
    }

    /// After the start: each of the VM's leases is held by this host. libvirt acquires them
    /// only when its lock manager is sanlock; with another one it starts the VM without
    /// them, which would let a second host run the same VM.
    async fn check_leases_held(&self, engine: &vm_xml::EngineVm) -> Result<(), ApiError> {
        let Some(host) = self.inner.storage.host_id() else {
            return Ok(());
        };
        for lease in &engine.leases {
            let id = LeaseId {
                sd_id: lease.domain,
                lease_id: lease.lease,
            };
            self.inner.storage.require_connected()?;
            let status = self.inner.storage.lease_owners(id).await?;
            if !status.owners.contains(&host) {
                return Err(cannot_create(format!(
                    "the VM started without holding its lease {} (holders: {:?}): libvirtd's \
                     lock manager must be sanlock (lock_manager = \"sanlock\" in qemu.conf, \
                     auto_disk_leases = 0 in qemu-sanlock.conf); the VM was stopped",
                    lease.lease, status.owners
                )));
            }
        }
        Ok(())
    }

    /// Undoes a create: the definition goes, the images are released. Idempotent.
    async fn undo_create(&self, entry: &Entry) {
        let vm = entry.vm;
        match self.inner.hypervisor.destroy(vm, 0).await {
            Ok(_) | Err(VirtError::NoSuchDomain { .. }) => {}
            Err(err) => tracing::warn!(%vm, error = %err, "cannot stop the half-created VM"),
        }
        if let Err(err) = self.inner.hypervisor.undefine(vm).await {
            tracing::error!(%vm, error = %err, "cannot undefine the half-created VM; the journal keeps it");
            return;
        }
        self.teardown(&entry.images).await;
        self.journal_remove(vm).await;
        self.inner.monitor.refresh(vm).await;
    }

    async fn teardown(&self, images: &[DriveImage]) {
        for image in images {
            if let Err(err) = self
                .inner
                .storage
                .teardown_drive(image.pool, ImageRef::new(image.domain, image.image))
                .await
            {
                tracing::warn!(image = %image.image, error = %err, "cannot tear the image down");
            }
        }
    }

    /// `VM.destroy`; refused (42) while a live merge, a snapshot or a freeze call holds the
    /// VM, and holding it until done, so that none starts meanwhile: a merge that saw its VM
    /// killed and undefined could no longer tell whether QEMU had pivoted.
    pub async fn destroy(&self, p: DestroyVmParams) -> Result<(), ApiError> {
        let vm = p.vm_id;
        let _busy = self.claim(vm)?;
        let view = self.existing_view(vm).await?;
        let _held = self.inner.jobs.claim_vm(vm).map_err(|_| ApiError::Coded {
            code: codes::VM_DESTROY_FAILED,
            message: format!(
                "Virtual machine destroy error: {{'reason': '{}: the VM was not destroyed; \
                 try again once it ends (Host.getJobs)'}}",
                self.inner.jobs.holder_of(vm)
            ),
        })?;
        let drives = vm_xml::managed_drives(&view.xml).unwrap_or_default();
        let entry = Entry {
            vm,
            operation: Operation::Destroy,
            managed: !drives.is_empty(),
            images: drives
                .iter()
                .map(|(d, _)| DriveImage {
                    pool: d.pool,
                    domain: d.domain,
                    image: d.image,
                })
                .collect(),
        };
        self.journal_write(entry.clone()).await?;
        let attempts = p.graceful_attempts.unwrap_or(1);
        match self.inner.hypervisor.destroy(vm, attempts).await {
            Ok(stopped) => tracing::info!(%vm, ?stopped, "VM stopped"),
            Err(err) => {
                self.journal_remove(vm).await;
                self.inner.monitor.refresh(vm).await;
                return Err(ApiError::Coded {
                    code: codes::VM_DESTROY_FAILED,
                    message: format!(
                        "Virtual machine destroy error: {{'reason': 'QEMU could not be stopped, even with SIGKILL; the VM still runs: {err}'}}"
                    ),
                });
            }
        }
        self.finish_destroy(&entry).await;
        Ok(())
    }

    /// After QEMU stopped: rvdsm's VMs are undefined and their images released.
    async fn finish_destroy(&self, entry: &Entry) {
        crate::failpoint::pause!("vm-destroy:stopped");
        if entry.managed {
            if let Err(err) = self.inner.hypervisor.undefine(entry.vm).await {
                tracing::error!(vm = %entry.vm, error = %err, "cannot undefine the VM; the journal keeps it");
                return;
            }
            self.teardown(&entry.images).await;
        }
        self.journal_remove(entry.vm).await;
        self.inner.monitor.refresh(entry.vm).await;
    }

    /// `VM.pause`.
    pub async fn pause(&self, vm: Uuid) -> Result<EmptyVmList, ApiError> {
        self.require_running(vm).await?;
        self.inner.hypervisor.pause(vm).await?;
        self.inner.monitor.refresh(vm).await;
        Ok(EmptyVmList::default())
    }

    /// `VM.cont`.
    pub async fn cont(&self, vm: Uuid) -> Result<EmptyVmList, ApiError> {
        self.require_running(vm).await?;
        self.inner.hypervisor.resume(vm).await?;
        self.inner.monitor.refresh(vm).await;
        Ok(EmptyVmList::default())
    }

    /// `VM.shutdown`: asks the guest now; with `force`, destroys the VM if it is still up
    /// after `timeout` seconds.
    pub async fn shutdown(&self, p: ShutdownVmParams) -> Result<(), ApiError> {
        let vm = p.vm_id;
        self.require_running(vm).await?;
        let reboot = p.reboot.unwrap_or(false);
        self.inner.hypervisor.request_shutdown(vm, reboot).await?;
        if p.force.unwrap_or(false) && !reboot {
            let timeout = p
                .timeout
                .and_then(|t| u64::try_from(t).ok())
                .filter(|t| *t > 0)
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT, Duration::from_secs);
            let service = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                if let Ok(Some(view)) = service.inner.hypervisor.read_view(vm).await
                    && view.status != VmStatus::Down
                {
                    tracing::warn!(%vm, "the guest did not shut down in time; destroying it");
                    if let Err(err) = service.inner.hypervisor.destroy(vm, 1).await {
                        tracing::error!(%vm, error = %err, "cannot destroy the VM");
                    }
                    service.inner.monitor.refresh(vm).await;
                }
            });
        }
        Ok(())
    }

    /// The VM as libvirt has it now; 1 when libvirt does not know it.
    async fn existing_view(&self, vm: Uuid) -> Result<crate::virt::DomainView, ApiError> {
        self.inner
            .hypervisor
            .read_view(vm)
            .await?
            .ok_or(ApiError::NoSuchVm {
                vm_id: vm.to_string(),
            })
    }

    async fn require_running(&self, vm: Uuid) -> Result<(), ApiError> {
        let view = self.existing_view(vm).await?;
        if view.status == VmStatus::Down {
            return Err(ApiError::Coded {
                code: codes::VM_IS_DOWN,
                message: format!("Virtual machine is down: {{'vmId': '{vm}'}}"),
            });
        }
        Ok(())
    }

    /// Finishes what a crash interrupted: a create is undone unless its VM runs; a destroy is
    /// carried out.
    pub async fn recover(&self) {
        let journal = self.inner.journal.clone();
        let entries = tokio::task::spawn_blocking(move || journal.entries())
            .await
            .unwrap_or_default();
        for entry in entries {
            let view = match self.inner.hypervisor.read_view(entry.vm).await {
                Ok(view) => view,
                Err(err) => {
                    tracing::error!(vm = %entry.vm, error = %err, "cannot read the VM; its journal entry waits for the next start");
                    continue;
                }
            };
            match (entry.operation, view) {
                (Operation::Create, Some(view)) if view.status != VmStatus::Down => {
                    tracing::info!(vm = %entry.vm, "an interrupted VM.create had started the VM; kept");
                    self.journal_remove(entry.vm).await;
                }
                (Operation::Create, _) => {
                    tracing::warn!(vm = %entry.vm, "undoing an interrupted VM.create");
                    self.undo_create(&entry).await;
                }
                (Operation::Destroy, _) => {
                    tracing::warn!(vm = %entry.vm, "finishing an interrupted VM.destroy");
                    match self.inner.hypervisor.destroy(entry.vm, 0).await {
                        Ok(_) | Err(VirtError::NoSuchDomain { .. }) => {
                            self.finish_destroy(&entry).await;
                        }
                        Err(err) => {
                            tracing::error!(vm = %entry.vm, error = %err, "cannot stop the VM");
                        }
                    }
                }
            }
        }
    }

    fn short_status(&self, vm: Uuid) -> VmShortStatus {
        self.inner
            .monitor
            .statuses(&[vm])
            .pop()
            .unwrap_or(VmShortStatus {
                vm_id: vm,
                status: VmStatus::WaitForLaunch,
                status_time: crate::clock::monotonic_millis().to_string(),
            })
    }

    /// Records the operation before its first step; refused (nothing done) when it cannot be.
    async fn journal_write(&self, entry: Entry) -> Result<(), ApiError> {
        let journal = self.inner.journal.clone();
        let operation = entry.operation;
        let written = tokio::task::spawn_blocking(move || journal.write(&entry))
            .await
            .map_err(|e| ApiError::Unexpected(e.to_string()))?;
        written.map_err(|e| {
            let reason = format!("cannot journal the operation, so it was not begun: {e}");
            match operation {
                Operation::Create => cannot_create(reason),
                Operation::Destroy => ApiError::Coded {
                    code: codes::VM_DESTROY_FAILED,
                    message: format!("Virtual machine destroy error: {{'reason': '{reason}'}}"),
                },
            }
        })
    }

    async fn journal_remove(&self, vm: Uuid) {
        let journal = self.inner.journal.clone();
        match tokio::task::spawn_blocking(move || journal.remove(vm)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::error!(%vm, error = %err, "cannot remove the VM journal entry");
            }
            Err(err) => tracing::error!(%vm, error = %err, "VM journal removal panicked"),
        }
    }
}

/// Checks on disk each host file the definition names (regular, in its directory, reached
/// without a link).
async fn check_host_files(admitted: &Admitted) -> Result<(), ApiError> {
    let files = admitted.host_files.clone();
    tokio::task::spawn_blocking(move || files.iter().try_for_each(|file| file.check()))
        .await
        .map_err(|e| ApiError::Unexpected(format!("host file check panicked: {e}")))?
        .map_err(ApiError::from)
}

/// Makes the directories of the files rvdsm names for the VM (its console log or socket).
async fn make_placed_dirs(admitted: &Admitted) -> Result<(), ApiError> {
    let placed = admitted.placed.clone();
    tokio::task::spawn_blocking(move || vm_policy::host_files::make_dirs(&placed))
        .await
        .map_err(|e| ApiError::Unexpected(format!("making the VM's directories panicked: {e}")))?
        .map_err(|e| cannot_create(format!("cannot make the directory of a VM's file: {e}")))
}

/// The image a drive of an engine's VM is on.
fn drive_image(drive: &vm_xml::EngineDrive) -> ImageRef {
    ImageRef::new(drive.domain, drive.image)
}
