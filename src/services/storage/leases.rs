//! External leases, VDSM's VM leases: `Lease.create` and `Lease.delete` (tasks on the SPM),
//! `Lease.info` and `Lease.status` (any connected host), and what `VM.create` asks of them.
//! A VM whose definition carries a `<lease>` runs only while its QEMU holds that lease through
//! libvirt's sanlock lock manager, so no two hosts run it at once.

use std::time::Duration;

use uuid::Uuid;

use super::{StorageService, off_reactor};
use crate::api::ApiError;
use crate::api::pool_types::{CreateLeaseParams, LeaseId, LeaseInfo, LeaseParams, LeaseStatus};
use crate::api::verbs::names;
use crate::jobs::tasks::TaskWork;
use crate::storage::domain::Domain;
use crate::storage::{StorageError, xleases};

/// Bound of a lease operation: a few direct I/Os on the shared storage by sanlock and rvdsm.
const LEASE_IO_TIMEOUT: Duration = Duration::from_secs(20);

/// `work` off the reactor, bounded by [`LEASE_IO_TIMEOUT`] (a hung storage leaves its thread
/// blocked, never the caller).
async fn bounded<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::time::timeout(LEASE_IO_TIMEOUT, off_reactor(work))
        .await
        .unwrap_or_else(|_| {
            Err(StorageError::LeasesVolume(format!(
                "{what} did not end within {} s: the storage does not answer",
                LEASE_IO_TIMEOUT.as_secs()
            )))
        })
}

/// Refuses at once what the task would refuse: a lease on a domain no sanlock shares here.
fn require_shared(domain: &Domain) -> Result<(), ApiError> {
    xleases::manager_of(domain).map(drop).map_err(Into::into)
}

impl StorageService {
    /// VDSM's check that the host is connected to its pool (309): a host that shares its
    /// domains knows them only once connected.
    pub(crate) fn require_connected(&self) -> Result<(), StorageError> {
        let connected = self.inner.cluster.is_none()
            || self
                .inner
                .master
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some();
        if connected {
            Ok(())
        } else {
            Err(StorageError::PoolUnknown(self.inner.pool))
        }
    }

    /// `Lease.create`.
    pub async fn create_lease(&self, p: CreateLeaseParams) -> Result<Uuid, ApiError> {
        if p.metadata.is_some() {
            return Err(ApiError::invalid_parameter(
                "{'action': 'Lease.create', 'parameter': 'metadata', 'reason': 'a lease's value \
                 block (job fencing) is not supported'}",
            ));
        }
        self.require_connected()?;
        let _spm = self.require_spm().await?;
        let lease = p.lease;
        require_shared(&*self.domain(lease.sd_id)?)?;
        let work = TaskWork::CreateLease {
            domain: lease.sd_id,
            lease: lease.lease_id,
        };
        Ok(self.run_task(names::LEASE_CREATE, lease, work, |service, lease, _| async move {
            let domain = service.domain(lease.sd_id)?;
            let slot = bounded("creating the lease", move || xleases::create(&domain, lease.lease_id)).await?;
            tracing::info!(lease = %lease.lease_id, domain = %lease.sd_id, offset = slot.offset, "external lease created");
            Ok(())
        })
        .await?)
    }

    /// `Lease.delete`.
    pub async fn delete_lease(&self, p: LeaseParams) -> Result<Uuid, ApiError> {
        self.require_connected()?;
        let _spm = self.require_spm().await?;
        let lease = p.lease;
        require_shared(&*self.domain(lease.sd_id)?)?;
        let work = TaskWork::DeleteLease {
            domain: lease.sd_id,
            lease: lease.lease_id,
        };
        Ok(self.run_task(names::LEASE_DELETE, lease, work, |service, lease, _| async move {
            let domain = service.domain(lease.sd_id)?;
            bounded("deleting the lease", move || xleases::delete(&domain, lease.lease_id)).await?;
            tracing::info!(lease = %lease.lease_id, domain = %lease.sd_id, "external lease deleted");
            Ok(())
        })
        .await?)
    }

    /// `Lease.info`.
    pub async fn lease_info(&self, p: LeaseParams) -> Result<LeaseInfo, ApiError> {
        self.require_connected()?;
        Ok(self.external_lease(p.lease).await?)
    }

    /// Where `lease` lives, for a VM's `<lease>`.
    pub(crate) async fn external_lease(&self, lease: LeaseId) -> Result<LeaseInfo, StorageError> {
        let domain = self.domain(lease.sd_id)?;
        let slot = bounded("reading the leases index", move || {
            xleases::lookup(&domain, lease.lease_id)
        })
        .await?;
        Ok(LeaseInfo {
            sd_id: lease.sd_id,
            lease_id: lease.lease_id,
            path: slot.path.display().to_string(),
            offset: slot.offset,
        })
    }

    /// `Lease.status`.
    pub async fn lease_status(&self, p: LeaseParams) -> Result<LeaseStatus, ApiError> {
        self.require_connected()?;
        Ok(self.lease_owners(p.lease).await?)
    }

    /// Who holds `lease` now (a VM's lease, checked after its start).
    pub(crate) async fn lease_owners(&self, lease: LeaseId) -> Result<LeaseStatus, StorageError> {
        let domain = self.domain(lease.sd_id)?;
        let (_, owners, version) = bounded("reading the lease", move || {
            xleases::status(&domain, lease.lease_id)
        })
        .await?;
        Ok(LeaseStatus { owners, version })
    }

    /// This host's id among the hosts sharing the pool's domains; `None` on a host that runs
    /// alone (which cannot hold leases).
    pub(crate) fn host_id(&self) -> Option<u64> {
        self.inner.cluster.as_ref().map(|c| c.host_id())
    }
}
