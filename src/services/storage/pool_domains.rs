//! The pool on storage and its domains: `StoragePool.create`, `getInfo`, `switchMaster` and
//! `destroy`; `StorageDomain.attach`, `activate`, `deactivate`, `detach` and `format`, with
//! VDSM's rules (`sp.py`, `hsm.py`). The pool's record lives in its master domain's metadata
//! (see [`crate::storage::pool`]); each change of it is made by the SPM under the master's
//! lock, after the master is verified again, so that a host connected at an old master or
//! version changes nothing.
//!
//! Each verb's writes are ordered so that a retry after a crash finishes it: a domain names
//! the pool before the master lists it, and stops naming it after the master forgets it; a
//! new master is written (higher version) before the old one is made regular.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

use super::{StorageService, blocking, pool::areas_of};
use crate::api::ApiError;
use crate::api::pool_types::{
    CreatePoolParams, DeactivateDomainParams, DestroyPoolParams, DetachDomainParams,
    FormatDomainParams, PoolDomainInfo, PoolDomainParams, PoolFullInfo, PoolIdParams, PoolInfo,
    SwitchMasterParams,
};
use crate::api::volume_types::BLANK_UUID;
use crate::cluster::BoxError;
use crate::jobs::tasks::TaskWork;
use crate::storage::StorageError;
use crate::storage::domain::Domain;
use crate::storage::pool::{
    DomainStatus, MAX_DOMAINS, Membership, PoolError, PoolRecord, set_master, set_regular,
    verify_master,
};

impl StorageService {
    /// `StoragePool.create`: the master gets the pool's record, every listed domain names the
    /// pool; written holding the master's SDM lease, as VDSM's temporary cluster lock. A retry
    /// of a create that ended (or was cut short) finishes it.
    pub async fn create_pool(&self, p: CreatePoolParams) -> Result<(), ApiError> {
        self.check_pool(p.pool)?;
        let cluster = self.cluster()?.clone();
        let record = new_record(&p)?;
        self.reload_domains().await?;
        let domains: Vec<Arc<Domain>> = record
            .domains
            .keys()
            .map(|d| self.domain(*d))
            .collect::<Result<_, _>>()?;
        let seen = self.memberships().await?;
        if check_creatable(&record, p.master, &seen)? {
            tracing::info!(pool = %p.pool, master = %p.master, "the pool exists as asked");
            return Ok(());
        }
        let master = self.domain(p.master)?;
        let areas: Vec<_> = domains.iter().map(|d| areas_of(d)).collect();
        cluster.join(areas).await?;
        let write = async move {
            blocking_storage(move || write_new_pool(&domains, &master, &record)).await
        };
        cluster
            .with_sdm_lease(areas_of(self.domain(p.master)?.as_ref()), write)
            .await?;
        self.reload_domains().await?;
        tracing::info!(pool = %p.pool, master = %p.master, version = p.master_version, "pool created");
        Ok(())
    }

    /// `StoragePool.getInfo`: the pool's record read now from its master.
    pub async fn pool_info(&self, p: PoolIdParams) -> Result<PoolFullInfo, ApiError> {
        self.check_pool(p.pool)?;
        let (master_id, version) = self.connected_master(p.pool)?;
        let record = self.verified_master(p.pool, master_id, version).await?;
        let master = self.domain(master_id)?;
        let mut dominfo = BTreeMap::new();
        for (id, status) in &record.domains {
            let Ok(domain) = self.domain(*id) else {
                continue;
            };
            let (free, total) = blocking(move || domain.space()).await.unwrap_or((0, 0));
            dominfo.insert(
                *id,
                PoolDomainInfo {
                    status: status.name().to_owned(),
                    alerts: Vec::new(),
                    isoprefix: String::new(),
                    version: self.domain(*id)?.version,
                    diskfree: free.to_string(),
                    disktotal: total.to_string(),
                },
            );
        }
        Ok(PoolFullInfo {
            info: PoolInfo {
                master_uuid: master_id,
                master_ver: record.version,
                name: record.description.clone(),
                domains: record.domains_text(),
                spm_id: record.spm_id,
                lver: record.lver,
                version: master.version.to_string(),
                kind: master.kind.name().to_owned(),
                isoprefix: String::new(),
                pool_status: "connected".to_owned(),
            },
            dominfo,
        })
    }

    /// `StorageDomain.attach` (SPM): the domain names the pool, then the master lists it
    /// `Attached`. Written holding the domain's SDM lease: the SPM of another pool that
    /// claims the domain holds it.
    pub async fn attach_domain(&self, p: PoolDomainParams) -> Result<(), ApiError> {
        self.check_pool(p.pool)?;
        let _spm = self.require_spm().await?;
        let cluster = self.cluster()?.clone();
        self.refresh_domain(p.domain).await?;
        let domain = self.domain(p.domain)?;
        let (master, version) = self.connected_master(p.pool)?;
        let record = self.verified_master(p.pool, master, version).await?;
        if record.domains.contains_key(&p.domain) {
            return Ok(());
        }
        if record.domains.len() >= MAX_DOMAINS {
            return Err(StorageError::from(PoolError::InvalidParameter(format!(
                "the pool has {MAX_DOMAINS} domains"
            )))
            .into());
        }
        cluster.join(vec![areas_of(&domain)]).await?;
        let pool = p.pool;
        let named = Arc::clone(&domain);
        let write = async move {
            blocking_storage(move || {
                named.update_keys(|keys| {
                    match crate::storage::pool::membership(named.uuid, keys)?.pool {
                        Some(other) if other != pool => Err(PoolError::AlreadyAttached {
                            domain: named.uuid,
                            pool: other,
                        }
                        .into()),
                        _ => {
                            set_regular(keys, Some(pool));
                            Ok(())
                        }
                    }
                })
            })
            .await
        };
        cluster.with_sdm_lease(areas_of(&domain), write).await?;
        self.change_record(p.pool, move |record| {
            record.domains.insert(p.domain, DomainStatus::Attached);
            Ok(())
        })
        .await?;
        self.refresh_domain(p.domain).await?;
        tracing::info!(domain = %p.domain, pool = %p.pool, "storage domain attached to the pool");
        Ok(())
    }

    /// `StorageDomain.activate` (SPM): the master lists the domain `Active`; this host joins its
    /// lockspace.
    pub async fn activate_domain(&self, p: PoolDomainParams) -> Result<(), ApiError> {
        self.check_pool(p.pool)?;
        let _spm = self.require_spm().await?;
        let domain = self.domain(p.domain)?;
        self.change_record(p.pool, move |record| {
            let status = record
                .domains
                .get_mut(&p.domain)
                .ok_or(PoolError::NotInPool {
                    domain: p.domain,
                    pool: p.pool,
                })?;
            *status = DomainStatus::Active;
            Ok(())
        })
        .await?;
        self.cluster()?.connect(vec![areas_of(&domain)]).await?;
        tracing::info!(domain = %p.domain, pool = %p.pool, "storage domain activated");
        Ok(())
    }

    /// `StorageDomain.deactivate` (SPM): the master lists the domain `Attached`. The master
    /// itself moves to `masterSdUUID` at `masterVersion` first; without a new master its
    /// deactivation is ignored, as VDSM does (an engine sends it when the pool goes to
    /// maintenance). Refused while a VM of this host uses the domain or a task runs.
    pub async fn deactivate_domain(&self, p: DeactivateDomainParams) -> Result<(), ApiError> {
        self.check_pool(p.pool)?;
        let (master, _) = self.connected_master(p.pool)?;
        if p.domain == master {
            let new = Some(p.master).filter(|m| *m != BLANK_UUID && *m != master);
            let Some(new) = new else {
                let _spm = self.require_spm().await?;
                tracing::warn!(domain = %p.domain, "deactivation of the master without a new master: ignored, as VDSM does");
                return Ok(());
            };
            self.move_master(p.pool, master, new, p.master_version, true)
                .await?;
            tracing::info!(domain = %p.domain, pool = %p.pool, new_master = %new, "master storage domain deactivated");
            return Ok(());
        }
        let _spm = self.require_spm().await?;
        self.refuse_in_use(p.domain).await.map_err(|why| {
            StorageError::from(PoolError::DomainAction {
                domain: p.domain,
                why,
            })
        })?;
        self.change_record(p.pool, move |record| {
            let status = record
                .domains
                .get_mut(&p.domain)
                .ok_or(PoolError::NotInPool {
                    domain: p.domain,
                    pool: p.pool,
                })?;
            *status = DomainStatus::Attached;
            Ok(())
        })
        .await?;
        tracing::info!(domain = %p.domain, pool = %p.pool, "storage domain deactivated");
        Ok(())
    }

    /// `StorageDomain.detach` (SPM): a deactivated domain, not the master, is forgotten by the
    /// master, then stops naming the pool; this host leaves its lockspace.
    pub async fn detach_domain(&self, p: DetachDomainParams) -> Result<(), ApiError> {
        self.check_pool(p.pool)?;
        let _spm = self.require_spm().await?;
        let (master, _) = self.connected_master(p.pool)?;
        if p.domain == master {
            return Err(StorageError::from(PoolError::DetachMaster(p.domain)).into());
        }
        let domain = self.domain(p.domain)?;
        self.change_record(p.pool, move |record| {
            match record.domains.get(&p.domain) {
                Some(DomainStatus::Attached) => {
                    record.domains.remove(&p.domain);
                    Ok(())
                }
                Some(DomainStatus::Active) => Err(PoolError::StateTransition {
                    domain: p.domain,
                    why: "the domain is active: StorageDomain.deactivate first".into(),
                }),
                // Forgotten already (a detach cut short after this step): its own metadata
                // is finished below.
                None => Ok(()),
            }
        })
        .await?;
        let pool = p.pool;
        let named = Arc::clone(&domain);
        blocking(move || {
            named.update_keys(|keys| {
                if crate::storage::pool::membership(named.uuid, keys)?.pool == Some(pool) {
                    set_regular(keys, None);
                }
                Ok(())
            })
        })
        .await?;
        self.refresh_domain(p.domain).await?;
        if let Err(err) = self.cluster()?.leave(p.domain).await {
            tracing::warn!(domain = %p.domain, error = %err, "detached, but its lockspace is still joined");
        }
        tracing::info!(domain = %p.domain, pool = %p.pool, "storage domain detached");
        Ok(())
    }

    /// `StoragePool.switchMaster` (SPM): a task that moves the master.
    pub async fn switch_master(&self, p: SwitchMasterParams) -> Result<Uuid, ApiError> {
        self.check_pool(p.pool)?;
        let (master, version) = self.connected_master(p.pool)?;
        if p.old != master {
            return Err(StorageError::from(PoolError::WrongMaster {
                pool: p.pool,
                master: p.old,
                why: format!("this host is connected to master {master}"),
            })
            .into());
        }
        if p.master_version <= version {
            return Err(StorageError::from(PoolError::WrongMaster {
                pool: p.pool,
                master: p.old,
                why: format!("masterVersion {} is not above {version}", p.master_version),
            })
            .into());
        }
        let spm = self.require_spm().await?;
        let task = Uuid::new_v4();
        let work = TaskWork::SwitchMaster {
            pool: p.pool,
            old: p.old,
            new: p.new,
        };
        super::on_tasks(&self.inner.tasks, move |t| {
            t.start(task, "StoragePool.switchMaster", work)
        })
        .await?;
        drop(spm);
        let service = self.clone();
        tokio::spawn(async move {
            let moved = service
                .move_master(p.pool, p.old, p.new, p.master_version, false)
                .await;
            let outcome = moved.map_err(|e| {
                tracing::warn!(%task, error = %e, "switchMaster failed");
                (e.code(), e.to_string(), true)
            });
            if let Err(err) =
                super::on_tasks(&service.inner.tasks, move |t| t.end(task, outcome)).await
            {
                tracing::error!(%task, error = %err, "cannot record the task's end");
            }
        });
        Ok(task)
    }

    /// `StoragePool.destroy` (SPM, the pool's only domain left the master): the master is made
    /// a regular, unattached domain, the SPM role given up and the lockspaces left.
    pub async fn destroy_pool(&self, p: DestroyPoolParams) -> Result<(), ApiError> {
        self.check_pool(p.pool)?;
        let cluster = self.cluster()?.clone();
        if u64::try_from(p.host_id).ok() != Some(cluster.host_id()) {
            return Err(crate::cluster::ClusterError::HostIdMismatch {
                expected: cluster.host_id(),
                got: p.host_id,
            }
            .into());
        }
        let (master_id, version) = self.connected_master(p.pool)?;
        {
            let _spm = self.require_spm().await?;
            let record = self.verified_master(p.pool, master_id, version).await?;
            if let Some(other) = record.domains.keys().find(|d| **d != master_id) {
                return Err(StorageError::from(PoolError::DomainAction {
                    domain: *other,
                    why: "the pool still has this domain: deactivate and detach it first".into(),
                })
                .into());
            }
            let master = self.domain(master_id)?;
            let pool = p.pool;
            blocking(move || {
                master.update_keys(|keys| {
                    let record = crate::storage::pool::membership(master.uuid, keys)?.master;
                    if record.is_some_and(|r| r.pool == pool && r.version == version) {
                        set_regular(keys, None);
                    }
                    Ok(())
                })
            })
            .await?;
        }
        self.spm_stop(PoolIdParams { pool: p.pool }).await?;
        cluster.disconnect().await?;
        *self.inner.master.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.reload_domains().await?;
        tracing::info!(pool = %p.pool, "pool destroyed");
        Ok(())
    }

    /// `StorageDomain.format`: the domain's directory removed, once nothing claims it: not in
    /// the pool this host is connected to (392), not attached to a pool unless `autoDetach`
    /// (391), no VM of this host using it, no task running, this host out of its lockspace.
    pub async fn format_domain(&self, p: FormatDomainParams) -> Result<(), ApiError> {
        self.refresh_domain(p.domain).await?;
        let domain = self.domain(p.domain)?;
        let in_use = |why: String| {
            ApiError::from(StorageError::from(PoolError::FormatInUse {
                domain: p.domain,
                why,
            }))
        };
        if let Some((master, version)) = self.master()
            && let Ok(record) = self.verified_master(self.inner.pool, master, version).await
            && record.domains.contains_key(&p.domain)
        {
            return Err(in_use("it is a domain of the connected pool".into()));
        }
        let member = {
            let domain = Arc::clone(&domain);
            blocking(move || domain.membership()).await?
        };
        let alone = self.inner.cluster.is_none();
        if member.pool.is_some() && !p.auto_detach {
            return Err(StorageError::from(PoolError::FormatAttached(p.domain)).into());
        }
        if let Some(record) = &member.master
            && !alone
        {
            return Err(in_use(format!("it is the master of pool {}", record.pool)));
        }
        self.refuse_in_use(p.domain).await.map_err(in_use)?;
        if let Some(cluster) = &self.inner.cluster {
            cluster.leave(p.domain).await?;
        }
        self.inner
            .domains
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p.domain);
        let repo = self.inner.repo.clone();
        let removed = blocking(move || domain.remove(&repo)).await;
        if let Err(err) = removed {
            // Still there in part: found again, as it is.
            self.reload_domains().await?;
            return Err(err);
        }
        tracing::info!(domain = %p.domain, "storage domain formatted");
        Ok(())
    }

    /// Moves the master to `new` at `version`, with the SPM role (see
    /// [`crate::cluster::Cluster::move_spm`]): the new master written first (its record with
    /// the higher version, the old master `Attached` when `deactivate`), then the old one made
    /// regular. Refused while other SPM tasks run: their records stay in the old master.
    async fn move_master(
        &self,
        pool: Uuid,
        old: Uuid,
        new: Uuid,
        version: i64,
        deactivate: bool,
    ) -> Result<(), ApiError> {
        let cluster = self.cluster()?.clone();
        let (master, current) = self.connected_master(pool)?;
        if master != old || version <= current {
            return Err(StorageError::from(PoolError::WrongMaster {
                pool,
                master: old,
                why: format!(
                    "the move needs master {master} and a version above {current}, got {old} at {version}"
                ),
            })
            .into());
        }
        let busy = self.running_spm_tasks();
        if !busy.is_empty() {
            return Err(StorageError::from(PoolError::DomainAction {
                domain: old,
                why: format!("SPM tasks run: {}", busy.join(", ")),
            })
            .into());
        }
        let mut record = self.verified_master(pool, old, current).await?;
        match record.domains.get(&new) {
            Some(DomainStatus::Active) => {}
            Some(DomainStatus::Attached) => {
                return Err(StorageError::from(PoolError::StateTransition {
                    domain: new,
                    why: "a new master must be active".into(),
                })
                .into());
            }
            None => {
                return Err(StorageError::from(PoolError::NotInPool { domain: new, pool }).into());
            }
        }
        record.version = version;
        if deactivate {
            record.domains.insert(old, DomainStatus::Attached);
        }
        let (old_domain, new_domain) = (self.domain(old)?, self.domain(new)?);
        let write = async move {
            blocking_storage(move || {
                new_domain.update_keys(|keys| {
                    set_master(keys, &record);
                    Ok(())
                })?;
                old_domain.update_keys(|keys| {
                    set_regular(keys, Some(pool));
                    Ok(())
                })
            })
            .await
        };
        cluster.move_spm(new, write).await?;
        *self.inner.master.lock().unwrap_or_else(|e| e.into_inner()) = Some((new, version));
        self.share_tasks_in(new);
        self.reload_domains().await?;
        tracing::info!(%pool, from = %old, to = %new, version, "the pool's master moved");
        Ok(())
    }

    /// Changes the pool's record in its master, on the SPM: the master verified again under
    /// its lock (this host's connect may be stale), then `change` applied and written.
    async fn change_record(
        &self,
        pool: Uuid,
        change: impl FnOnce(&mut PoolRecord) -> Result<(), PoolError> + Send + 'static,
    ) -> Result<PoolRecord, ApiError> {
        let (master_id, version) = self.connected_master(pool)?;
        self.verified_master(pool, master_id, version).await?;
        let master = self.domain(master_id)?;
        blocking(move || {
            master.update_keys(|keys| {
                let found = crate::storage::pool::membership(master_id, keys)?;
                let mut record = found
                    .master
                    .filter(|r| r.pool == pool && r.version == version)
                    .ok_or_else(|| PoolError::WrongMaster {
                        pool,
                        master: master_id,
                        why: "the master changed under the change".into(),
                    })?;
                change(&mut record)?;
                set_master(keys, &record);
                Ok(record)
            })
        })
        .await
    }

    /// Why a VM of this host or a running task uses `domain`, if one does.
    async fn refuse_in_use(&self, domain: Uuid) -> Result<(), String> {
        let Ok(found) = self.domain(domain) else {
            return Ok(());
        };
        let root = found.dir.root().to_owned();
        let mut roots = vec![
            root.clone(),
            self.inner
                .repo
                .pool_dir(self.inner.pool)
                .join(domain.to_string()),
        ];
        if let Ok(real) = tokio::task::spawn_blocking(move || std::fs::canonicalize(&root))
            .await
            .map_err(|e| e.to_string())?
        {
            roots.push(real);
        }
        let paths = self
            .inner
            .hypervisor
            .disk_paths_in_use()
            .await
            .map_err(|e| format!("cannot tell which volumes VMs use: {e}"))?;
        if let Some(path) = paths
            .iter()
            .find(|p| roots.iter().any(|r| std::path::Path::new(p).starts_with(r)))
        {
            return Err(format!("a VM of this host uses {path}"));
        }
        let busy = self.running_spm_tasks();
        if !busy.is_empty() {
            return Err(format!("SPM tasks run: {}", busy.join(", ")));
        }
        Ok(())
    }

    /// The SPM tasks not ended yet (but an spmStart).
    pub(super) fn running_spm_tasks(&self) -> Vec<String> {
        self.inner
            .tasks
            .all()
            .into_iter()
            .filter(|t| !t.state.is_done() && !matches!(t.work, TaskWork::SpmStart { .. }))
            .map(|t| format!("{} ({})", t.id, t.verb))
            .collect()
    }

    /// Every domain under the repository, with its place in a pool read now.
    pub(super) async fn memberships(
        &self,
    ) -> Result<Vec<(Uuid, Result<Membership, StorageError>)>, ApiError> {
        let repo = self.inner.repo.clone();
        blocking(move || {
            Ok(Domain::discover(&repo)
                .into_iter()
                .map(|d| (d.uuid, d.membership()))
                .collect())
        })
        .await
    }

    /// The record of `pool`'s master `master` at `version`, verified on storage now (see
    /// [`verify_master`]).
    pub(super) async fn verified_master(
        &self,
        pool: Uuid,
        master: Uuid,
        version: i64,
    ) -> Result<PoolRecord, StorageError> {
        let repo = self.inner.repo.clone();
        let verified = tokio::task::spawn_blocking(move || {
            let seen: Vec<_> = Domain::discover(&repo)
                .into_iter()
                .map(|d| (d.uuid, d.membership()))
                .collect();
            verify_master(pool, master, version, &seen)
        })
        .await
        .map_err(|e| StorageError::Persist(format!("master check panicked: {e}")))?;
        Ok(verified?)
    }

    /// The master and version the last `StoragePool.connect` verified (309 before one).
    pub(super) fn connected_master(&self, pool: Uuid) -> Result<(Uuid, i64), ApiError> {
        self.master()
            .ok_or_else(|| StorageError::PoolUnknown(pool).into())
    }

    /// Reads `domain`'s metadata again (another host may have attached or detached it).
    pub(super) async fn refresh_domain(&self, domain: Uuid) -> Result<(), ApiError> {
        let dir = self.domain(domain)?.dir.clone();
        let mut fresh = blocking(move || Domain::load(dir)).await?;
        if let Some(cluster) = &self.inner.cluster {
            fresh.share(cluster.domain_leases(fresh.uuid, fresh.block_size));
        }
        self.inner
            .domains
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain, Arc::new(fresh));
        Ok(())
    }

    /// Reads every domain under the repository again: new ones attached, changed ones
    /// refreshed, removed ones forgotten.
    pub(super) async fn reload_domains(&self) -> Result<(), ApiError> {
        let repo = self.inner.repo.clone();
        let found = blocking(move || Ok(Domain::discover(&repo))).await?;
        let mut fresh = std::collections::HashMap::new();
        for mut domain in found {
            if let Some(cluster) = &self.inner.cluster {
                domain.share(cluster.domain_leases(domain.uuid, domain.block_size));
            }
            fresh.insert(domain.uuid, Arc::new(domain));
        }
        *self
            .inner
            .domains
            .write()
            .unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// The record `StoragePool.create` asks for, its request checked.
fn new_record(p: &CreatePoolParams) -> Result<PoolRecord, StorageError> {
    let mut unique = p.domains.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != p.domains.len() {
        return Err(PoolError::InvalidParameter("domainList names a domain twice".into()).into());
    }
    if !p.domains.contains(&p.master) {
        return Err(PoolError::InvalidParameter(format!(
            "masterSdUUID={} is not in domainList",
            p.master
        ))
        .into());
    }
    Ok(PoolRecord::new(
        p.pool,
        p.master_version,
        &p.name,
        p.domains.iter().copied(),
    )?)
}

/// Whether the pool exists as `record` asks already (`true`: nothing to write), or may be
/// created: every domain unattached or attached to this pool (a retry), and no domain the
/// master of the pool but the master at the very record asked.
fn check_creatable(
    record: &PoolRecord,
    master: Uuid,
    seen: &[(Uuid, Result<Membership, StorageError>)],
) -> Result<bool, StorageError> {
    let mut exists = false;
    for (id, found) in seen {
        let found = match found {
            Ok(m) => m,
            Err(_) if !record.domains.contains_key(id) => continue,
            Err(err) => {
                return Err(PoolError::Record {
                    domain: *id,
                    why: err.to_string(),
                }
                .into());
            }
        };
        if let Some(other) = &found.master
            && other.pool == record.pool
        {
            let same = *id == master
                && other.version == record.version
                && other.domains.keys().eq(record.domains.keys());
            if !same {
                return Err(PoolError::WrongMaster {
                    pool: record.pool,
                    master: *id,
                    why: format!(
                        "the pool exists with master {id} at version {}",
                        other.version
                    ),
                }
                .into());
            }
            exists = true;
        }
        if record.domains.contains_key(id)
            && let Some(pool) = found.pool
            && pool != record.pool
        {
            return Err(PoolError::AlreadyAttached { domain: *id, pool }.into());
        }
    }
    Ok(exists)
}

/// The writes of a new pool: each domain but the master names the pool, then the master gets
/// the record (the step that makes the pool). Blocks.
fn write_new_pool(
    domains: &[Arc<Domain>],
    master: &Domain,
    record: &PoolRecord,
) -> Result<(), StorageError> {
    for domain in domains.iter().filter(|d| d.uuid != master.uuid) {
        domain.update_keys(|keys| {
            set_regular(keys, Some(record.pool));
            Ok(())
        })?;
    }
    master.update_keys(|keys| {
        set_master(keys, record);
        Ok(())
    })
}

/// Runs blocking storage work off the reactor, its error boxed for the cluster's checks.
async fn blocking_storage<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, BoxError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(BoxError::from),
        Err(e) => Err(format!("storage work panicked: {e}").into()),
    }
}
