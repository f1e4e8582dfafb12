//! Resource leases held by this process: the acquire every lease goes through (never left
//! held unknown to its caller), this process's registration with the sanlock daemon, and the
//! volume leases the SDM jobs hold.

use std::path::Path;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::{Cluster, ClusterError};
use crate::storage::layout::DomainDir;
use crate::storage::tool_files::HeldFile;
use crate::sys::sanlock::{Disk, Registration, Resource, SanlockError};

/// Checks, right before sanlock is given its name, that `disk`'s file is a regular file of
/// the domain whose lockspace is `lockspace` (the domain's UUID), reached from the domain's
/// directory without any link: the sanlock daemon opens it by name, as root, and writes it.
/// Blocks (two opens).
pub(super) fn check_disk(lockspace: &str, disk: &Disk) -> Result<(), SanlockError> {
    let refused = |message: String| SanlockError {
        op: "check the lease file",
        code: -nix::libc::ELOOP,
        message,
    };
    let domain = Uuid::parse_str(lockspace)
        .map_err(|_| refused(format!("lockspace {lockspace:?} is not a domain's UUID")))?;
    let root = disk
        .path
        .ancestors()
        .find(|a| a.file_name().is_some_and(|name| *name == *lockspace))
        .ok_or_else(|| {
            refused(format!(
                "{} is not inside domain {domain}",
                disk.path.display()
            ))
        })?;
    let dir = DomainDir::new(root.parent().unwrap_or(Path::new("/")), domain);
    HeldFile::open(&dir, &disk.path, false)
        .map(drop)
        .map_err(|e| refused(e.to_string()))
}

/// Whether an acquire that may outlive its caller's bound was taken by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handoff {
    Waiting,
    Delivered,
    Abandoned,
}

/// A volume's lease held by this process (see [`Cluster::hold_volume_lease`]). Dropped
/// without [`VolumeLease::release`], it stays held until the process ends.
#[must_use = "a volume lease is held until released"]
pub struct VolumeLease {
    cluster: Cluster,
    resource: Resource,
}

impl VolumeLease {
    /// Releases the lease.
    pub async fn release(self) {
        let Some(registration) = self.cluster.state().registration.clone() else {
            return;
        };
        let resource = self.resource;
        let name = resource.name.clone();
        let limit = self.cluster.inner.settings.call_timeout;
        let released = self
            .cluster
            .call("release", limit, move || registration.release(&resource))
            .await;
        if let Err(err) = released {
            tracing::error!(volume = %name, error = %err, "cannot release a volume lease");
        }
    }
}

/// The lease of a volume: resource `<volume>` at offset 0 of `<volume>.lease`, in the
/// domain's lockspace (VDSM's file domains).
pub fn volume_lease(domain: Uuid, volume: Uuid, lease_file: &Path) -> Resource {
    Resource {
        lockspace: domain.to_string(),
        name: volume.to_string(),
        disk: Disk {
            path: lease_file.to_owned(),
            offset: 0,
        },
    }
}

/// An external lease (a VM's): resource `<lease>` at `offset` of the domain's `xleases`, in
/// the domain's lockspace.
pub fn external_lease(domain: Uuid, lease: Uuid, xleases: &Path, offset: u64) -> Resource {
    Resource {
        lockspace: domain.to_string(),
        name: lease.to_string(),
        disk: Disk {
            path: xleases.to_owned(),
            offset,
        },
    }
}

impl Cluster {
    /// Acquires `lease` for this process; returns its version. The acquire does not wait for
    /// a failing owner's lease to expire (sanlock's OWNER_NOWAIT): a paxos round of a few
    /// direct I/Os, or a refusal. Should it still outlive its bound, the handoff makes sure a
    /// lease it gets late is released, never held by this process unknown to it.
    pub(super) async fn acquire(&self, lease: Resource) -> Result<u64, ClusterError> {
        let registration = self.registration().await?;
        let limit = self.inner.settings.call_timeout * 2;
        let handoff = Arc::new(Mutex::new(Handoff::Waiting));
        let late = Arc::clone(&handoff);
        let held = lease.clone();
        let result = self
            .call("acquire", limit, move || {
                check_disk(&held.lockspace, &held.disk)?;
                registration.acquire(&held, None)?;
                let mut handoff = late.lock().unwrap_or_else(|e| e.into_inner());
                if *handoff == Handoff::Abandoned {
                    tracing::warn!(lease = %held.name, "a lease acquired after its caller gave up: released");
                    registration.release(&held)?;
                    return Ok(None);
                }
                *handoff = Handoff::Delivered;
                held.version().map(Some)
            })
            .await;
        let result = match result {
            Err(ClusterError::Timeout { op, limit }) => {
                let delivered = {
                    let mut handoff = handoff.lock().unwrap_or_else(|e| e.into_inner());
                    if *handoff != Handoff::Delivered {
                        *handoff = Handoff::Abandoned;
                    }
                    *handoff == Handoff::Delivered
                };
                if delivered {
                    // Acquired just as the bound passed: the lease is this process's.
                    self.call("read resource", limit, move || lease.version().map(Some))
                        .await
                } else {
                    Err(ClusterError::Timeout { op, limit })
                }
            }
            other => other,
        };
        match result {
            Ok(Some(lver)) => Ok(lver),
            Ok(None) => Err(ClusterError::Unexpected("acquire abandoned".into())),
            Err(other) => Err(other),
        }
    }

    /// The lease of `volume` (in `file`) of a shared `domain`, held by this process until
    /// [`VolumeLease::release`]: the SDM jobs that write a volume hold it, so a job another
    /// host runs on it, or a lost one, cannot write it at once. Refused (651) while another
    /// host holds it, and (661) while this host has no lease in the domain's lockspace.
    pub async fn hold_volume_lease(
        &self,
        domain: Uuid,
        volume: Uuid,
        file: &Path,
    ) -> Result<VolumeLease, ClusterError> {
        self.gate(domain)?;
        let resource = volume_lease(domain, volume, file);
        self.acquire(resource.clone())
            .await
            .map_err(|err| match err {
                ClusterError::Sanlock(e) if e.is_held_elsewhere() => {
                    ClusterError::VolumeLeaseHeld { volume, source: e }
                }
                other => other,
            })?;
        Ok(VolumeLease {
            cluster: self.clone(),
            resource,
        })
    }

    /// This process's registration with the daemon, made once.
    pub(super) async fn registration(&self) -> Result<Arc<Registration>, ClusterError> {
        if let Some(registration) = self.state().registration.clone() {
            return Ok(registration);
        }
        let registration = Arc::new(
            self.call(
                "register",
                self.inner.settings.call_timeout,
                Registration::new,
            )
            .await?,
        );
        Ok(Arc::clone(
            self.state().registration.get_or_insert(registration),
        ))
    }
}
