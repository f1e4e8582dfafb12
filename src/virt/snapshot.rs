//! What a snapshot, a freeze and a thaw need from libvirt: the VM's run state, the guest
//! agent's response timeout and freeze status, `virDomainFSFreeze`/`virDomainFSThaw`, one
//! atomic external disk-only snapshot onto pre-created volumes, and, for a stopped VM, its
//! definition pointed at the new volumes. Mutating calls never retry on their own.

use std::time::Duration;

use qapi::qga::{GuestFsfreezeStatus, guest_fsfreeze_status};
use uuid::Uuid;
use virt::domain::DomainState;
use virt::enumutil::Enum;
use virt::sys;

use super::connection::Libvirt;
use super::domains::lookup;
use super::error::VirtError;
use super::xml::edit::{DefinedSwitch, switch_disk_sources};
use super::xml::escape;
use super::{agent, ffi};

/// Whether the VM runs, for the purpose of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Running: a live snapshot, quiesced if possible.
    Running,
    /// Paused: a live snapshot, never quiesced (the agent cannot answer).
    Paused,
    /// Defined but not running: the definition is changed.
    Stopped,
}

/// The guest's filesystems, as its agent reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezeState {
    /// Not frozen.
    Thawed,
    /// Frozen.
    Frozen,
}

/// One disk to switch: its target (`vda`) and the new volume's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSwitch {
    /// The guest device.
    pub target: String,
    /// The pre-created qcow2 volume whose backing file is the current volume.
    pub new_path: String,
}

/// Something on the VM that a snapshot must not run into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// The VM is migrating.
    Migration,
    /// A block job (copy, commit, mirror, pull) runs on this disk.
    BlockJob(String),
}

impl Libvirt {
    /// A migration of the VM, or a block job on one of `targets`, if any.
    pub async fn conflict(
        &self,
        vm: Uuid,
        targets: Vec<String>,
    ) -> Result<Option<Conflict>, VirtError> {
        self.call("read domain jobs", move |conn| {
            let domain = lookup(conn, vm)?;
            if !domain
                .is_active()
                .map_err(|e| VirtError::libvirt("read domain state", e))?
            {
                return Ok(None);
            }
            let migrating = [
                sys::VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN as i32,
                sys::VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT as i32,
            ];
            if ffi::active_job_operation(&domain)?.is_some_and(|op| migrating.contains(&op)) {
                return Ok(Some(Conflict::Migration));
            }
            for target in &targets {
                if ffi::block_job_active(&domain, target)? {
                    return Ok(Some(Conflict::BlockJob(target.clone())));
                }
            }
            Ok(None)
        })
        .await
    }

    /// Whether libvirt may be running a snapshot on the VM now: one a killed rvdsmd started
    /// may still be under way in libvirtd, for a QEMU that does not answer, and switch the VM
    /// when QEMU wakes. A job holding the monitor (measured: a snapshot call on a stopped QEMU
    /// does, and the job calls then wait for it) or one libvirt does not name counts as one.
    /// The probe has a connection of its own, in case libvirt holds it all the same.
    pub async fn snapshot_running(&self, vm: Uuid) -> Result<bool, VirtError> {
        self.call_once_on(vm, "read domain job", move |conn| {
            let domain = lookup(conn, vm)?;
            if !domain
                .is_active()
                .map_err(|e| VirtError::libvirt("read domain state", e))?
            {
                return Ok(false);
            }
            if ffi::monitor_held(&domain)? {
                return Ok(true);
            }
            let snapshot = sys::VIR_DOMAIN_JOB_OPERATION_SNAPSHOT as i32;
            Ok(ffi::active_job_operation(&domain)?.is_some_and(|op| op == snapshot || op == -1))
        })
        .await
    }

    /// The VM's run state.
    pub async fn run_state(&self, vm: Uuid) -> Result<RunState, VirtError> {
        self.call("read domain state", move |conn| {
            let domain = lookup(conn, vm)?;
            let (state, _) = domain
                .state()
                .map_err(|e| VirtError::libvirt("read domain state", e))?;
            Ok(match state {
                Enum::Known(DomainState::Paused | DomainState::PMSuspended) => RunState::Paused,
                Enum::Known(DomainState::Shutoff | DomainState::Crashed) => RunState::Stopped,
                _ => RunState::Running,
            })
        })
        .await
    }

    /// Bounds every later agent call on the VM (libvirt's default waits forever).
    pub async fn set_agent_timeout(&self, vm: Uuid, timeout: Duration) -> Result<(), VirtError> {
        let seconds = i32::try_from(timeout.as_secs().max(1)).unwrap_or(i32::MAX);
        let hypervisor = self.clone();
        self.call("set agent timeout", move |conn| {
            let domain = lookup(conn, vm)?;
            // libvirt saves the domain's status file at each set: skipped when this very
            // domain has it already.
            let id = domain.id();
            if let Some(id) = id
                && hypervisor.agent_timeout_is(vm, id, seconds)
            {
                return Ok(());
            }
            ffi::set_agent_timeout(&domain, seconds)?;
            if let Some(id) = id {
                hypervisor.agent_timeout_set(vm, id, seconds);
            }
            Ok(())
        })
        .await
    }

    /// `guest-fsfreeze-status` through the agent, bounded by `timeout`. The agent calls run on
    /// a connection of their own, as the switch does: libvirtd serves a client's calls a few
    /// at a time (`max_client_requests`, 5), and the agent's round trips, slow on a busy
    /// guest, then held up every VM's calls behind them when several snapshots ran at once.
    pub async fn freeze_state(
        &self,
        vm: Uuid,
        timeout: Duration,
    ) -> Result<FreezeState, VirtError> {
        self.call_once_on(vm, "read freeze status", move |conn| {
            let status = agent::execute(&lookup(conn, vm)?, guest_fsfreeze_status {}, timeout)?;
            Ok(match status {
                GuestFsfreezeStatus::frozen => FreezeState::Frozen,
                GuestFsfreezeStatus::thawed => FreezeState::Thawed,
            })
        })
        .await
    }

    /// Freezes the guest's filesystems (all when `mountpoints` is empty); returns how many.
    pub async fn freeze(&self, vm: Uuid, mountpoints: Vec<String>) -> Result<u32, VirtError> {
        self.call_once_on(vm, "freeze guest filesystems", move |conn| {
            ffi::fs_freeze(&lookup(conn, vm)?, &mountpoints).map_err(VirtError::from)
        })
        .await
    }

    /// Thaws the guest's filesystems; returns how many (0 when none was frozen).
    pub async fn thaw(&self, vm: Uuid, mountpoints: Vec<String>) -> Result<u32, VirtError> {
        self.call_once_on(vm, "thaw guest filesystems", move |conn| {
            ffi::fs_thaw(&lookup(conn, vm)?, &mountpoints).map_err(VirtError::from)
        })
        .await
    }

    /// One atomic external disk-only snapshot of a live VM onto pre-created volumes: every
    /// listed disk switches or none does; every other disk is left alone.
    pub async fn external_snapshot(
        &self,
        vm: Uuid,
        switches: Vec<DiskSwitch>,
        all_targets: Vec<String>,
    ) -> Result<(), VirtError> {
        let xml = snapshot_xml(&switches, &all_targets, None);
        self.call_once_on(vm, "create external snapshot", move |conn| {
            let domain = lookup(conn, vm)?;
            let flags = sys::VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
                | sys::VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
                | sys::VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                | sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
            domain
                .create_snapshot_xml(&xml, flags)
                .map(|_| ())
                .map_err(|e| VirtError::libvirt("create external snapshot", e))
        })
        .await
    }

    /// Points a stopped VM's definition at the new volumes (an offline snapshot): each disk,
    /// by its target, gets its new volume and a qcow2 driver (see `xml_edit.rs`).
    pub async fn switch_defined_disks(
        &self,
        vm: Uuid,
        switches: Vec<DefinedSwitch>,
    ) -> Result<(), VirtError> {
        self.call_once_on(vm, "redefine domain disks", move |conn| {
            let domain = lookup(conn, vm)?;
            let xml = domain
                .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                .map_err(|e| VirtError::libvirt("read domain XML", e))?;
            let xml = switch_disk_sources(&xml, &switches)?;
            conn.define_domain_xml(&xml)
                .map(|_| ())
                .map_err(|e| VirtError::libvirt("define domain", e))
        })
        .await
    }
}

/// The `<domainsnapshot>` document: the listed disks external onto their new files (qcow2),
/// every other disk `snapshot='no'`, and the RAM into `memory_file` when given.
pub(super) fn snapshot_xml(
    switches: &[DiskSwitch],
    all_targets: &[String],
    memory_file: Option<&str>,
) -> String {
    let mut xml = String::from("<domainsnapshot><disks>");
    for target in all_targets {
        match switches.iter().find(|s| &s.target == target) {
            Some(switch) => xml.push_str(&format!(
                "<disk name='{}' snapshot='external' type='file'><driver type='qcow2'/>\
                 <source file='{}'/></disk>",
                escape(target),
                escape(&switch.new_path)
            )),
            None => xml.push_str(&format!("<disk name='{}' snapshot='no'/>", escape(target))),
        }
    }
    xml.push_str("</disks>");
    if let Some(file) = memory_file {
        xml.push_str(&format!(
            "<memory snapshot='external' file='{}'/>",
            escape(file)
        ));
    }
    xml.push_str("</domainsnapshot>");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlisted_disks_are_left_alone() {
        let xml = snapshot_xml(
            &[DiskSwitch {
                target: "vdb".into(),
                new_path: "/sd/images/i/new".into(),
            }],
            &["vda".into(), "vdb".into()],
            None,
        );
        assert_eq!(
            xml,
            "<domainsnapshot><disks><disk name='vda' snapshot='no'/>\
             <disk name='vdb' snapshot='external' type='file'><driver type='qcow2'/>\
             <source file='/sd/images/i/new'/></disk></disks></domainsnapshot>"
        );
    }
}
