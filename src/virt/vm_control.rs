//! Starting and stopping VMs: define and start a definition, pause, resume, ask the guest to
//! shut down or reboot, destroy (gracefully, then by force) and undefine. Each call changes a
//! VM, so each runs once ([`Libvirt::call_once`]), never retried behind the caller's back.

use uuid::Uuid;

use super::connection::Libvirt;
use super::domains::lookup;
use super::error::{VirtError, code::NO_DOMAIN};

/// How a destroy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// QEMU ended on SIGTERM (it flushed its caches).
    Gracefully,
    /// QEMU was killed.
    Forcefully,
    /// It was not running.
    AlreadyDown,
}

impl Libvirt {
    /// Defines `xml` persistently (replacing the definition of a stopped VM with its UUID).
    pub async fn define(&self, xml: String) -> Result<(), VirtError> {
        self.call_once("define domain", move |conn| {
            conn.define_domain_xml(&xml)
                .map(drop)
                .map_err(|e| VirtError::libvirt("define domain", e))
        })
        .await
    }

    /// Starts a defined VM.
    pub async fn start(&self, vm: Uuid) -> Result<(), VirtError> {
        self.on_domain("start domain", vm, |d| d.create()).await
    }

    /// Forgets a stopped VM's definition; a VM libvirt no longer knows is fine.
    pub async fn undefine(&self, vm: Uuid) -> Result<(), VirtError> {
        self.call_once("undefine domain", move |conn| match lookup(conn, vm) {
            Ok(domain) => domain
                .undefine_flags(virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM)
                .or_else(|e| gone_is_fine(e, "undefine domain")),
            Err(VirtError::NoSuchDomain { .. }) => Ok(()),
            Err(err) => Err(err),
        })
        .await
    }

    /// Pauses a running VM's CPUs.
    pub async fn pause(&self, vm: Uuid) -> Result<(), VirtError> {
        self.on_domain("pause domain", vm, |d| d.suspend()).await
    }

    /// Resumes a paused VM.
    pub async fn resume(&self, vm: Uuid) -> Result<(), VirtError> {
        self.on_domain("resume domain", vm, |d| d.resume()).await
    }

    /// Asks the guest to shut down (or reboot), through its agent or ACPI as libvirt chooses.
    pub async fn request_shutdown(&self, vm: Uuid, reboot: bool) -> Result<(), VirtError> {
        self.on_domain("shut down domain", vm, move |d| {
            if reboot { d.reboot(0) } else { d.shutdown() }
        })
        .await
    }

    /// Runs one state-changing call `f` on the VM, once.
    async fn on_domain(
        &self,
        op: &'static str,
        vm: Uuid,
        f: impl FnOnce(&virt::domain::Domain) -> Result<(), virt::error::Error> + Send + 'static,
    ) -> Result<(), VirtError> {
        self.call_once(op, move |conn| {
            f(&lookup(conn, vm)?).map_err(|e| VirtError::libvirt(op, e))
        })
        .await
    }

    /// Stops QEMU: SIGTERM (libvirt waits for it) up to `graceful_attempts` times, then
    /// SIGKILL. An error means QEMU could not be killed either.
    pub async fn destroy(&self, vm: Uuid, graceful_attempts: u32) -> Result<Stopped, VirtError> {
        for attempt in 0..graceful_attempts {
            match self.destroy_once(vm, true).await {
                Ok(stopped) => return Ok(stopped),
                Err(err) => {
                    tracing::warn!(%vm, attempt, error = %err, "graceful destroy failed");
                }
            }
        }
        self.destroy_once(vm, false)
            .await
            .map(|stopped| match stopped {
                Stopped::Gracefully => Stopped::Forcefully,
                other => other,
            })
    }

    async fn destroy_once(&self, vm: Uuid, graceful: bool) -> Result<Stopped, VirtError> {
        self.call_once("destroy domain", move |conn| {
            let domain = lookup(conn, vm)?;
            if !domain
                .is_active()
                .map_err(|e| VirtError::libvirt("read domain state", e))?
            {
                return Ok(Stopped::AlreadyDown);
            }
            let flags = if graceful {
                virt::sys::VIR_DOMAIN_DESTROY_GRACEFUL
            } else {
                0
            };
            domain
                .destroy_flags(flags)
                .map(|()| Stopped::Gracefully)
                .map_err(|e| VirtError::libvirt("destroy domain", e))
        })
        .await
    }
}

impl Libvirt {
    /// Records in the definition of a VM rvdsm created that its drives `leaves` now write to
    /// new volumes (live, and in the persistent definition too), so that the recorded chains
    /// stay those the VM runs on. Nothing for a VM without rvdsm's drive metadata.
    pub async fn record_new_leaves(
        &self,
        vm: Uuid,
        leaves: Vec<super::vm_xml::NewLeaf>,
    ) -> Result<(), VirtError> {
        self.edit_drive_metadata(vm, move |xml| {
            super::vm_xml::metadata_with_new_leaves(xml, &leaves)
        })
        .await
    }

    /// Records in the definition of a VM rvdsm created that a merge took `merged` out of the
    /// drive `target`'s chain (and, for an active merge, that the drive now writes to `base`).
    pub async fn record_merge(
        &self,
        vm: Uuid,
        target: String,
        merged: Uuid,
        base: Uuid,
    ) -> Result<(), VirtError> {
        self.edit_drive_metadata(vm, move |xml| {
            super::vm_xml::metadata_after_merge(xml, &target, merged, base)
        })
        .await
    }

    /// Replaces the VM's `ovirt-vm` metadata with what `edit` makes of its live XML (live,
    /// and in the persistent definition of a running persistent VM); nothing when `edit` has
    /// nothing to change.
    async fn edit_drive_metadata(
        &self,
        vm: Uuid,
        edit: impl FnOnce(&str) -> Result<Option<String>, VirtError> + Send + 'static,
    ) -> Result<(), VirtError> {
        self.call_once("record drive volumes", move |conn| {
            let domain = lookup(conn, vm)?;
            let xml = domain
                .xml_desc(0)
                .map_err(|e| VirtError::libvirt("read domain XML", e))?;
            let Some(element) = edit(&xml)? else {
                return Ok(());
            };
            let active = domain
                .is_active()
                .map_err(|e| VirtError::libvirt("read domain state", e))?;
            let persistent = domain
                .is_persistent()
                .map_err(|e| VirtError::libvirt("read domain persistence", e))?;
            let flags = if active && persistent {
                virt::sys::VIR_DOMAIN_AFFECT_LIVE | virt::sys::VIR_DOMAIN_AFFECT_CONFIG
            } else {
                virt::sys::VIR_DOMAIN_AFFECT_CURRENT
            };
            domain
                .set_metadata(
                    virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                    Some(&element),
                    Some("ovirt-vm"),
                    Some(super::vm_xml::OVIRT_VM_NS),
                    flags,
                )
                .map_err(|e| VirtError::libvirt("record drive volumes", e))
        })
        .await
    }
}

fn gone_is_fine(err: virt::error::Error, op: &'static str) -> Result<(), VirtError> {
    let err = VirtError::libvirt(op, err);
    if err.libvirt_code() == Some(NO_DOMAIN) {
        Ok(())
    } else {
        Err(err)
    }
}
