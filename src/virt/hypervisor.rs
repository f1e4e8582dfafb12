//! The hypervisor as the services see it: one trait with every libvirt operation a service may
//! ask for, implemented by [`Libvirt`] (the real, reconnecting libvirt connection) and, in unit
//! tests, by [`super::fake::FakeHypervisor`] (scripted answers, every call recorded), so that
//! the decision logic of each service can be tested without root, libvirtd or a guest.
//!
//! Services hold a [`SharedHypervisor`]; nothing above `virt` names [`Libvirt`] but the wiring
//! ([`crate::services::Services::open`]'s caller).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::connection::Libvirt;
use super::domains::{DomainInfo, HostInfo};
use super::error::VirtError;
use super::memory::{MemoryDump, PauseReport};
use super::sampling::{DomainStats, DomainView};
use super::snapshot::{Conflict, DiskSwitch, FreezeState, RunState};
use super::vm_control::Stopped;
use super::xml::edit::DefinedSwitch;
use super::xml::vm::NewLeaf;
use super::{BlockJob, Pivot};
use crate::api::types::DiskStats;

/// The hypervisor every service shares.
pub type SharedHypervisor = Arc<dyn Hypervisor>;

/// What the services may ask of the hypervisor. Every call is bounded (the real one by the
/// connection's call timeout); a mutating call is made once, never retried behind the caller.
#[async_trait]
pub trait Hypervisor: Send + Sync + 'static {
    /// The libvirt URI, for logs and `Host.getCapabilities`.
    fn uri(&self) -> &str;

    // Inventory.
    /// Every domain libvirt knows.
    async fn list_domains(&self) -> Result<Vec<DomainInfo>, VirtError>;
    /// One domain and its disks as its live XML has them.
    async fn domain_disks(&self, vm: Uuid) -> Result<(DomainInfo, Vec<DiskStats>), VirtError>;
    /// The source paths of every disk of every domain.
    async fn disk_paths_in_use(&self) -> Result<Vec<String>, VirtError>;
    /// The host's capabilities.
    async fn host_info(&self) -> Result<HostInfo, VirtError>;
    /// Every domain's view and statistics.
    async fn sample_all(&self) -> Result<Vec<(DomainView, DomainStats)>, VirtError>;
    /// One domain's view now; `None` when libvirt no longer knows it.
    async fn read_view(&self, vm: Uuid) -> Result<Option<DomainView>, VirtError>;
    /// The disk `target` of a VM as its live XML has it, or `None` when it has no such disk.
    async fn disk(&self, vm: Uuid, target: String) -> Result<Option<DiskStats>, VirtError> {
        let (_, disks) = self.domain_disks(vm).await?;
        Ok(disks.into_iter().find(|d| d.target == target))
    }
    /// Waits until no call that timed out on `vm` still runs in libvirt.
    async fn settled(&self, vm: Uuid);

    // Lifecycle.
    /// Defines `xml` persistently.
    async fn define(&self, xml: String) -> Result<(), VirtError>;
    /// Starts a defined VM.
    async fn start(&self, vm: Uuid) -> Result<(), VirtError>;
    /// Removes a VM's definition (a VM libvirt does not know is fine).
    async fn undefine(&self, vm: Uuid) -> Result<(), VirtError>;
    /// Pauses a VM.
    async fn pause(&self, vm: Uuid) -> Result<(), VirtError>;
    /// Resumes a paused VM.
    async fn resume(&self, vm: Uuid) -> Result<(), VirtError>;
    /// Asks the guest to shut down (or reboot).
    async fn request_shutdown(&self, vm: Uuid, reboot: bool) -> Result<(), VirtError>;
    /// Stops QEMU: SIGTERM up to `graceful_attempts` times, then SIGKILL.
    async fn destroy(&self, vm: Uuid, graceful_attempts: u32) -> Result<Stopped, VirtError>;
    /// Records the new leaves of a snapshot in the definition of a VM rvdsm created.
    async fn record_new_leaves(&self, vm: Uuid, leaves: Vec<NewLeaf>) -> Result<(), VirtError>;
    /// Records that a merge took `merged` out of the drive `target`'s chain.
    async fn record_merge(
        &self,
        vm: Uuid,
        target: String,
        merged: Uuid,
        base: Uuid,
    ) -> Result<(), VirtError>;

    // Snapshots and the guest agent.
    /// A job or block job on the VM that a snapshot of `targets` must not race.
    async fn conflict(&self, vm: Uuid, targets: Vec<String>)
    -> Result<Option<Conflict>, VirtError>;
    /// Whether a snapshot job runs on the VM now.
    async fn snapshot_running(&self, vm: Uuid) -> Result<bool, VirtError>;
    /// The VM's run state.
    async fn run_state(&self, vm: Uuid) -> Result<RunState, VirtError>;
    /// Bounds the guest agent's calls on the VM.
    async fn set_agent_timeout(&self, vm: Uuid, timeout: Duration) -> Result<(), VirtError>;
    /// The agent's freeze status.
    async fn freeze_state(&self, vm: Uuid, timeout: Duration) -> Result<FreezeState, VirtError>;
    /// Freezes the guest's filesystems (all when `mountpoints` is empty).
    async fn freeze(&self, vm: Uuid, mountpoints: Vec<String>) -> Result<u32, VirtError>;
    /// Thaws the guest's filesystems (all when `mountpoints` is empty).
    async fn thaw(&self, vm: Uuid, mountpoints: Vec<String>) -> Result<u32, VirtError>;
    /// One atomic external disk-only snapshot onto pre-created volumes.
    async fn external_snapshot(
        &self,
        vm: Uuid,
        switches: Vec<DiskSwitch>,
        all_targets: Vec<String>,
    ) -> Result<(), VirtError>;
    /// Points a stopped VM's definition at new volumes.
    async fn switch_defined_disks(
        &self,
        vm: Uuid,
        switches: Vec<DefinedSwitch>,
    ) -> Result<(), VirtError>;

    // Memory: snapshots with memory, hibernation, restore.
    /// The domain's definition as a restore needs it.
    async fn migratable_xml(&self, vm: Uuid) -> Result<String, VirtError>;
    /// One external snapshot with memory: the disks switch at the instant the RAM is saved.
    async fn memory_snapshot(
        &self,
        vm: Uuid,
        switches: Vec<DiskSwitch>,
        all_targets: Vec<String>,
        dump: MemoryDump,
    ) -> Result<PauseReport, VirtError>;
    /// Hibernation: the RAM saved, the domain stopped (still defined).
    async fn save_memory(&self, vm: Uuid, dump: MemoryDump) -> Result<PauseReport, VirtError>;
    /// Restores saved RAM with the definition `xml`, paused.
    async fn restore_paused(
        &self,
        vm: Uuid,
        file: String,
        xml: String,
        timeout: Duration,
    ) -> Result<(), VirtError>;
    /// Sets the guest's clock to the host's now (through its agent).
    async fn set_guest_time(&self, vm: Uuid) -> Result<(), VirtError>;
    /// Stops the domain's running save or dump.
    async fn abort_job(&self, vm: Uuid) -> Result<(), VirtError>;

    // Block jobs (live merge).
    /// Starts a block commit of `top` into `base` on the disk `target`.
    async fn block_commit(
        &self,
        vm: Uuid,
        target: String,
        base: String,
        top: String,
        bandwidth_mib: u64,
        active: bool,
    ) -> Result<(), VirtError>;
    /// The block job on the disk `target`, if one runs.
    async fn block_job(&self, vm: Uuid, target: String) -> Result<Option<BlockJob>, VirtError>;
    /// Pivots the active commit on `target` onto its base.
    async fn pivot(&self, vm: Uuid, target: String) -> Result<Pivot, VirtError>;
    /// Aborts the block job on `target` without pivoting.
    async fn abort_block_job(&self, vm: Uuid, target: String) -> Result<(), VirtError>;
}

/// Each call goes to the inherent method of the same name (inherent methods take precedence
/// over trait methods in Rust's method resolution, so `self.x(..)` here is `Libvirt::x`).
#[async_trait]
impl Hypervisor for Libvirt {
    fn uri(&self) -> &str {
        Libvirt::uri(self)
    }
    async fn list_domains(&self) -> Result<Vec<DomainInfo>, VirtError> {
        Libvirt::list_domains(self).await
    }
    async fn domain_disks(&self, vm: Uuid) -> Result<(DomainInfo, Vec<DiskStats>), VirtError> {
        Libvirt::domain_disks(self, vm).await
    }
    async fn disk_paths_in_use(&self) -> Result<Vec<String>, VirtError> {
        Libvirt::disk_paths_in_use(self).await
    }
    async fn host_info(&self) -> Result<HostInfo, VirtError> {
        Libvirt::host_info(self).await
    }
    async fn sample_all(&self) -> Result<Vec<(DomainView, DomainStats)>, VirtError> {
        Libvirt::sample_all(self).await
    }
    async fn read_view(&self, vm: Uuid) -> Result<Option<DomainView>, VirtError> {
        Libvirt::read_view(self, vm).await
    }
    async fn settled(&self, vm: Uuid) {
        Libvirt::settled(self, vm).await;
    }
    async fn define(&self, xml: String) -> Result<(), VirtError> {
        Libvirt::define(self, xml).await
    }
    async fn start(&self, vm: Uuid) -> Result<(), VirtError> {
        Libvirt::start(self, vm).await
    }
    async fn undefine(&self, vm: Uuid) -> Result<(), VirtError> {
        Libvirt::undefine(self, vm).await
    }
    async fn pause(&self, vm: Uuid) -> Result<(), VirtError> {
        Libvirt::pause(self, vm).await
    }
    async fn resume(&self, vm: Uuid) -> Result<(), VirtError> {
        Libvirt::resume(self, vm).await
    }
    async fn request_shutdown(&self, vm: Uuid, reboot: bool) -> Result<(), VirtError> {
        Libvirt::request_shutdown(self, vm, reboot).await
    }
    async fn destroy(&self, vm: Uuid, graceful_attempts: u32) -> Result<Stopped, VirtError> {
        Libvirt::destroy(self, vm, graceful_attempts).await
    }
    async fn record_new_leaves(&self, vm: Uuid, leaves: Vec<NewLeaf>) -> Result<(), VirtError> {
        Libvirt::record_new_leaves(self, vm, leaves).await
    }
    async fn record_merge(
        &self,
        vm: Uuid,
        target: String,
        merged: Uuid,
        base: Uuid,
    ) -> Result<(), VirtError> {
        Libvirt::record_merge(self, vm, target, merged, base).await
    }
    async fn conflict(
        &self,
        vm: Uuid,
        targets: Vec<String>,
    ) -> Result<Option<Conflict>, VirtError> {
        Libvirt::conflict(self, vm, targets).await
    }
    async fn snapshot_running(&self, vm: Uuid) -> Result<bool, VirtError> {
        Libvirt::snapshot_running(self, vm).await
    }
    async fn run_state(&self, vm: Uuid) -> Result<RunState, VirtError> {
        Libvirt::run_state(self, vm).await
    }
    async fn set_agent_timeout(&self, vm: Uuid, timeout: Duration) -> Result<(), VirtError> {
        Libvirt::set_agent_timeout(self, vm, timeout).await
    }
    async fn freeze_state(&self, vm: Uuid, timeout: Duration) -> Result<FreezeState, VirtError> {
        Libvirt::freeze_state(self, vm, timeout).await
    }
    async fn freeze(&self, vm: Uuid, mountpoints: Vec<String>) -> Result<u32, VirtError> {
        Libvirt::freeze(self, vm, mountpoints).await
    }
    async fn thaw(&self, vm: Uuid, mountpoints: Vec<String>) -> Result<u32, VirtError> {
        Libvirt::thaw(self, vm, mountpoints).await
    }
    async fn external_snapshot(
        &self,
        vm: Uuid,
        switches: Vec<DiskSwitch>,
        all_targets: Vec<String>,
    ) -> Result<(), VirtError> {
        Libvirt::external_snapshot(self, vm, switches, all_targets).await
    }
    async fn switch_defined_disks(
        &self,
        vm: Uuid,
        switches: Vec<DefinedSwitch>,
    ) -> Result<(), VirtError> {
        Libvirt::switch_defined_disks(self, vm, switches).await
    }
    async fn migratable_xml(&self, vm: Uuid) -> Result<String, VirtError> {
        Libvirt::migratable_xml(self, vm).await
    }
    async fn memory_snapshot(
        &self,
        vm: Uuid,
        switches: Vec<DiskSwitch>,
        all_targets: Vec<String>,
        dump: MemoryDump,
    ) -> Result<PauseReport, VirtError> {
        Libvirt::memory_snapshot(self, vm, switches, all_targets, dump).await
    }
    async fn save_memory(&self, vm: Uuid, dump: MemoryDump) -> Result<PauseReport, VirtError> {
        Libvirt::save_memory(self, vm, dump).await
    }
    async fn restore_paused(
        &self,
        vm: Uuid,
        file: String,
        xml: String,
        timeout: Duration,
    ) -> Result<(), VirtError> {
        Libvirt::restore_paused(self, vm, file, xml, timeout).await
    }
    async fn set_guest_time(&self, vm: Uuid) -> Result<(), VirtError> {
        Libvirt::set_guest_time(self, vm).await
    }
    async fn abort_job(&self, vm: Uuid) -> Result<(), VirtError> {
        Libvirt::abort_job(self, vm).await
    }
    async fn block_commit(
        &self,
        vm: Uuid,
        target: String,
        base: String,
        top: String,
        bandwidth_mib: u64,
        active: bool,
    ) -> Result<(), VirtError> {
        Libvirt::block_commit(self, vm, target, base, top, bandwidth_mib, active).await
    }
    async fn block_job(&self, vm: Uuid, target: String) -> Result<Option<BlockJob>, VirtError> {
        Libvirt::block_job(self, vm, target).await
    }
    async fn pivot(&self, vm: Uuid, target: String) -> Result<Pivot, VirtError> {
        Libvirt::pivot(self, vm, target).await
    }
    async fn abort_block_job(&self, vm: Uuid, target: String) -> Result<(), VirtError> {
        Libvirt::abort_block_job(self, vm, target).await
    }
}

impl std::fmt::Debug for dyn Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Hypervisor").field(&self.uri()).finish()
    }
}
