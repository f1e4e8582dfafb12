//! Hosts sharing the pool's domains: `StoragePool.connect` and `disconnect` (this host's
//! leases in the domains' lockspaces), `spmStart`, `spmStop` and `getSpmStatus` (the SPM role,
//! VDSM's: the `SDM` lease of the master domain), `Host.getStorageRepoStats`, and the check
//! the pool's metadata verbs pass first ([`StorageService::require_spm`]).
//!
//! A host without `[cluster] host_id` runs alone: its metadata verbs need no SPM role, the
//! pool verbs are refused (91), and its repo stats say no lease is acquired.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::error::StorageServiceError;
use super::{StorageService, blocking};
use crate::api::ApiError;
use crate::api::pool_types::{
    ConnectPoolParams, DisconnectPoolParams, DomainVitals, PoolIdParams, RepoStatsParams,
    SpmStartParams, SpmStatusInfo,
};
use crate::cluster::{Cluster, ClusterError, DomainAreas, VolumeLease};
use crate::jobs::tasks::TaskWork;
use crate::storage::StorageError;
use crate::storage::domain::Domain;
use crate::storage::pool::DomainStatus;

/// How long `spmStop` waits for verbs that passed their SPM check to start their tasks.
const SPM_STOP_WAIT: Duration = Duration::from_secs(10);

/// A verb of the pool's metadata between its SPM check and its task's start (see
/// [`StorageService::require_spm`]).
#[must_use = "the SPM check holds only while the guard lives"]
pub(crate) struct SpmWork(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>);

/// Bound of the read that checks a domain for `Host.getStorageRepoStats`.
const DOMAIN_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

impl StorageService {
    /// This host's cluster side, or the refusal of a host that runs alone.
    pub(super) fn cluster(&self) -> Result<&Cluster, ApiError> {
        self.inner
            .cluster
            .as_ref()
            .ok_or_else(|| ClusterError::NotClustered.into())
    }

    /// Whether the pool's metadata verbs may run here: always on a host that runs alone;
    /// on a shared pool only on the SPM whose lease is held. The guard is kept until the
    /// verb's task is registered (or its change made): `spmStop` waits for it, so no task
    /// starts between its check of the running tasks and the lease's release.
    pub(crate) async fn require_spm(&self) -> Result<SpmWork, ClusterError> {
        let guard = Arc::clone(&self.inner.spm_work).read_owned().await;
        if let Some(cluster) = &self.inner.cluster {
            cluster.require_spm()?;
        }
        Ok(SpmWork(guard))
    }

    /// Exclusive of every verb between its SPM check and its task's start; waits (bounded)
    /// without blocking new readers behind it, so that a verb that checks twice never
    /// waits on itself.
    async fn spm_work_exclusive(&self) -> Result<tokio::sync::OwnedRwLockWriteGuard<()>, ApiError> {
        let started = Instant::now();
        loop {
            if let Ok(guard) = Arc::clone(&self.inner.spm_work).try_write_owned() {
                return Ok(guard);
            }
            if started.elapsed() > SPM_STOP_WAIT {
                return Err(ClusterError::SpmBusy(
                    "requests of the pool's verbs are starting their tasks".into(),
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_host_id(&self, cluster: &Cluster, host_id: i64) -> Result<(), ApiError> {
        if u64::try_from(host_id).ok() == Some(cluster.host_id()) {
            Ok(())
        } else {
            Err(ClusterError::HostIdMismatch {
                expected: cluster.host_id(),
                got: host_id,
            }
            .into())
        }
    }

    /// The lease areas of the pool's domains (`only` given: those, each attached).
    fn areas(&self, only: Option<Vec<Uuid>>) -> Result<Vec<DomainAreas>, ApiError> {
        let domains: Vec<Arc<Domain>> = match only {
            Some(ids) => ids
                .into_iter()
                .map(|id| self.domain(id))
                .collect::<Result<_, _>>()?,
            None => {
                let domains = self.inner.domains.read().unwrap_or_else(|e| e.into_inner());
                domains
                    .values()
                    .filter(|d| d.pool == self.inner.pool)
                    .cloned()
                    .collect()
            }
        };
        Ok(domains.iter().map(|d| areas_of(d)).collect())
    }

    /// Whether this host may change the metadata of each of `domains` now: always on its own
    /// domains; on shared ones while it holds its lease in their lockspaces (after
    /// `StoragePool.connect` and the join). A domain it does not know counts as writable:
    /// the change itself says why not.
    pub(crate) fn may_change(&self, domains: impl IntoIterator<Item = Uuid>) -> bool {
        domains.into_iter().all(|id| {
            self.domain(id).map_or(true, |d| {
                d.shared().is_none_or(|leases| leases.check().is_ok())
            })
        })
    }

    /// Waits until [`Self::may_change`] holds for `domains`, logging now and then.
    pub(crate) async fn wait_may_change(&self, domains: Vec<Uuid>) {
        let mut attempt = 0u64;
        while !self.may_change(domains.iter().copied()) {
            attempt += 1;
            if attempt.is_power_of_two() {
                tracing::warn!(
                    ?domains,
                    "waiting until this host holds its lease in the domains' lockspaces (StoragePool.connect)"
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// When the daemon stops: the SPM role given up and the lockspaces left, so that other
    /// hosts need not wait for this host's leases to expire.
    pub(crate) async fn leave_cluster(&self) {
        if let Some(cluster) = &self.inner.cluster {
            cluster.stop().await;
        }
    }

    /// Where the hosts sharing `domain` keep records of `kind` (`<domain>/master/<kind>`);
    /// `None` on a host that runs alone.
    pub(crate) fn shared_records(
        &self,
        domain: Uuid,
        kind: &'static str,
    ) -> Option<crate::storage::shared_records::SharedRecords> {
        self.inner.cluster.as_ref()?;
        let domain = self.domain(domain).ok()?;
        let dir = domain.dir.clone();
        Some(crate::storage::shared_records::SharedRecords::new(
            dir, kind,
        ))
    }

    /// The lease of the volume a storage job writes, held until released, on a shared
    /// domain; `None` on a host that runs alone.
    pub(crate) async fn hold_volume_lease(
        &self,
        domain: Uuid,
        image: Uuid,
        volume: Uuid,
    ) -> Result<Option<VolumeLease>, StorageServiceError> {
        let Some(cluster) = &self.inner.cluster else {
            return Ok(None);
        };
        let file = self.domain(domain)?.dir.lease(image, volume);
        let lease = cluster.hold_volume_lease(domain, volume, &file).await?;
        Ok(Some(lease))
    }

    /// `StoragePool.connect`: the master verified on storage first (it says it is the pool's
    /// master at `masterVersion`, and no other domain claims more: 304, 324), then this host
    /// joins the lockspaces of the pool's active domains, as the master lists them.
    pub async fn connect_pool(&self, p: ConnectPoolParams) -> Result<(), ApiError> {
        self.check_pool(p.pool)?;
        let cluster = self.cluster()?;
        self.check_host_id(cluster, p.host_id)?;
        self.reload_domains().await?;
        let record = self
            .verified_master(p.pool, p.master, p.master_version)
            .await?;
        if let Some((master, version)) = self.master()
            && (master, version) != (p.master, p.master_version)
            && cluster.require_spm().is_ok()
        {
            return Err(ClusterError::IsSpm.into());
        }
        let active: Vec<Uuid> = record
            .domains
            .iter()
            .filter(|(_, s)| **s == DomainStatus::Active)
            .map(|(d, _)| *d)
            .filter(|d| {
                let known = self.domain(*d).is_ok();
                if !known {
                    tracing::warn!(domain = %d, "a domain of the pool is not found on this host");
                }
                known
            })
            .collect();
        let areas = self.areas(Some(active.clone()))?;
        cluster.connect(areas).await?;
        // Domains the pool no longer has active (deactivated, detached, formatted since the
        // last connect): their lockspaces are left, as VDSM stops monitoring them.
        for gone in cluster.joined().into_iter().filter(|d| !active.contains(d)) {
            if let Err(err) = cluster.leave(gone).await {
                tracing::warn!(domain = %gone, error = %err, "cannot leave the lockspace of a domain the pool no longer has active");
            }
        }
        *self.inner.master.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((p.master, p.master_version));
        tracing::info!(pool = %p.pool, master = %p.master, version = p.master_version, host_id = p.host_id, "connected to the pool");
        Ok(())
    }

    /// `StoragePool.disconnect`.
    pub async fn disconnect_pool(&self, p: DisconnectPoolParams) -> Result<(), ApiError> {
        self.check_pool(p.pool)?;
        let cluster = self.cluster()?;
        self.check_host_id(cluster, p.host_id)?;
        cluster.disconnect().await?;
        *self.inner.master.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    pub(super) fn master(&self) -> Option<(Uuid, i64)> {
        *self.inner.master.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `StoragePool.spmStart`: a task that contends for the SDM lease of the master this host
    /// connected to, only while the storage still says it is the pool's master at that version
    /// (checked before the lease is asked for and again once it is held), then records this
    /// host as the pool's SPM in the master.
    pub async fn spm_start(&self, p: SpmStartParams) -> Result<Uuid, ApiError> {
        self.check_pool(p.pool)?;
        let cluster = self.cluster()?.clone();
        // VDSM's answer for a pool this host has not connected to.
        let (master, version) = self.master().ok_or(StorageError::PoolUnknown(p.pool))?;
        let task = Uuid::new_v4();
        let work = TaskWork::SpmStart { pool: p.pool };
        super::on_tasks(&self.inner.tasks, move |t| {
            t.start(task, "StoragePool.spmStart", work)
        })
        .await?;
        let service = self.clone();
        let already = cluster.require_spm().is_ok();
        let pool = p.pool;
        tokio::spawn(async move {
            let started = match service.verified_master(pool, master, version).await {
                Ok(_) => {
                    let checker = service.clone();
                    let verify = async move {
                        checker
                            .verified_master(pool, master, version)
                            .await
                            .map(drop)
                    };
                    cluster
                        .spm_start(master, verify)
                        .await
                        .map_err(ApiError::from)
                        .and_then(|verified| verified)
                }
                Err(refused) => Err(refused),
            };
            if let Ok(status) = &started
                && !already
            {
                service.record_spm(pool, master, version, status.lver).await;
                service.take_over_tasks(master).await;
            }
            service.end_task(task, "spmStart", started.map(drop)).await;
        });
        Ok(task)
    }

    /// Writes this host as the pool's SPM into the master's record (`POOL_SPM_ID`,
    /// `POOL_SPM_LVER`), as VDSM's SPM does; a failure is logged: the lease, not the record,
    /// makes the SPM.
    async fn record_spm(&self, pool: Uuid, master: Uuid, version: i64, lver: i64) {
        let Ok(cluster) = self.cluster() else {
            return;
        };
        let spm_id = i64::try_from(cluster.host_id()).unwrap_or(-1);
        let domain = match self.domain(master) {
            Ok(domain) => domain,
            Err(err) => {
                tracing::warn!(error = %err, "cannot record the SPM in the master");
                return;
            }
        };
        let written = blocking(move || {
            domain.update_keys(|keys| {
                let found = crate::storage::pool::membership(master, keys)?;
                if let Some(mut record) = found.master
                    && record.pool == pool
                    && record.version == version
                {
                    record.spm_id = spm_id;
                    record.lver = lver;
                    crate::storage::pool::set_master(keys, &record);
                }
                Ok(())
            })
        })
        .await;
        if let Err(err) = written {
            tracing::warn!(error = %err, "cannot record the SPM in the master");
        }
    }

    /// `StoragePool.spmStop`: refused while a task of the pool's metadata verbs runs.
    pub async fn spm_stop(&self, p: PoolIdParams) -> Result<(), ApiError> {
        self.check_pool(p.pool)?;
        let cluster = self.cluster()?;
        let _exclusive = self.spm_work_exclusive().await?;
        let busy = self.tasks_blocking_spm_stop();
        let busy = (!busy.is_empty()).then(|| busy.join(", "));
        cluster.spm_stop(busy).await?;
        self.stop_sharing_tasks();
        Ok(())
    }

    /// `StoragePool.getSpmStatus`.
    pub async fn spm_status(&self, p: PoolIdParams) -> Result<SpmStatusInfo, ApiError> {
        self.check_pool(p.pool)?;
        let cluster = self.cluster()?;
        let (master, _) = self.master().ok_or(StorageError::PoolUnknown(p.pool))?;
        let status = cluster.spm_status(Some(master)).await?;
        Ok(SpmStatusInfo {
            status: status.role.name().to_owned(),
            lver: status.lver,
            spm_id: status.spm_id,
        })
    }

    /// `Host.getStorageRepoStats`: each attached domain read now (its metadata, bounded),
    /// with this host's lease in its lockspace as last checked.
    pub async fn repo_stats(
        &self,
        p: RepoStatsParams,
    ) -> Result<BTreeMap<Uuid, DomainVitals>, ApiError> {
        let domains: Vec<Arc<Domain>> = {
            let domains = self.inner.domains.read().unwrap_or_else(|e| e.into_inner());
            domains
                .values()
                .filter(|d| p.domains.is_empty() || p.domains.contains(&d.uuid))
                .cloned()
                .collect()
        };
        let leases = self
            .inner
            .cluster
            .as_ref()
            .map(Cluster::repo_stats)
            .unwrap_or_default();
        let mut out = BTreeMap::new();
        for domain in domains {
            let (code, delay) = check_domain(Arc::clone(&domain)).await;
            let lease = leases.get(&domain.uuid);
            out.insert(
                domain.uuid,
                DomainVitals {
                    code,
                    last_check: "0.0".to_owned(),
                    delay: format!("{:.6}", delay.as_secs_f64()),
                    valid: code == 0 && lease.is_none_or(|l| l.valid),
                    version: domain.version,
                    acquired: lease.is_some_and(|l| l.acquired),
                    actual: true,
                },
            );
        }
        Ok(out)
    }
}

/// The lease areas of `domain`.
pub(super) fn areas_of(domain: &Domain) -> DomainAreas {
    DomainAreas {
        uuid: domain.uuid,
        dom_md: domain.dir.dom_md(),
        block_size: domain.block_size,
    }
}

/// Reads the domain's metadata as VDSM's monitor does; its error code (0: readable) and how
/// long the read took.
async fn check_domain(domain: Arc<Domain>) -> (i32, Duration) {
    let started = Instant::now();
    let read = blocking(move || {
        let path = domain.dir.metadata();
        domain
            .dir
            .read(&path)
            .map(drop)
            .map_err(StorageError::io("read", &path))
    });
    let code = match tokio::time::timeout(DOMAIN_CHECK_TIMEOUT, read).await {
        Ok(Ok(())) => 0,
        Ok(Err(err)) => err.code(),
        Err(_) => crate::api::codes::STORAGE_EXCEPTION,
    };
    (code, started.elapsed())
}
