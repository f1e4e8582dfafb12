//! The pool's record on storage and its master: `StoragePool.create`, `getInfo`,
//! `switchMaster` and `destroy`, the master's moves, and what every pool verb does first: the
//! master verified on storage again (see [`crate::storage::pool::verify_master`]), the record
//! changed only under the master's lock by the SPM, so that a host connected at an old master
//! or version changes nothing.
//!
//! Each verb's writes are ordered so that a retry after a crash finishes it: a domain names
//! the pool before the master lists it; a new master is written (higher version) before the
//! old one is made regular.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

use super::{StorageService, blocking, pool::areas_of};
use crate::api::ApiError;
use crate::api::pool_types::{
    CreatePoolParams, DestroyPoolParams, PoolDomainInfo, PoolFullInfo, PoolIdParams, PoolInfo,
    SwitchMasterParams,
};
use crate::jobs::tasks::TaskWork;
use crate::storage::StorageError;
use crate::storage::domain::Domain;
use crate::storage::pool::{
    DomainStatus, Membership, PoolError, PoolRecord, set_master, set_regular, verify_master,
};

/// Bound of one read of every domain's metadata (a few small files per domain).
const DOMAINS_SCAN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
        if check_creatable(&record, p.master, seen)? {
            tracing::info!(pool = %p.pool, master = %p.master, "the pool exists as asked");
            return Ok(());
        }
        let master = self.domain(p.master)?;
        let areas: Vec<_> = domains.iter().map(|d| areas_of(d)).collect();
        // The lockspaces are joined for the write only, as VDSM's temporary cluster lock
        // releases its host id: the connect joins what the pool needs.
        let joined_before = cluster.joined();
        let joined_here: Vec<Uuid> = areas
            .iter()
            .map(|a| a.uuid)
            .filter(|d| !joined_before.contains(d))
            .collect();
        let write =
            async move { blocking(move || write_new_pool(&domains, &master, &record)).await };
        let master_areas = areas_of(self.domain(p.master)?.as_ref());
        let created = match cluster.join(areas).await {
            Ok(()) => cluster.with_sdm_lease(master_areas, write).await,
            Err(err) => Err(err),
        }
        .map_err(ApiError::from)
        .and_then(|written| written);
        for domain in joined_here {
            if let Err(err) = cluster.leave(domain).await {
                tracing::warn!(%domain, error = %err, "cannot leave a lockspace joined for StoragePool.create");
            }
        }
        created?;
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
            service.end_task(task, "switchMaster", moved).await;
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
            // Refused before anything is written: the spmStop below would refuse it after.
            let busy = self.tasks_blocking_spm_stop();
            if !busy.is_empty() {
                return Err(crate::cluster::ClusterError::SpmBusy(busy.join(", ")).into());
            }
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
                    if !record.is_some_and(|r| r.pool == pool && r.version == version) {
                        return Err(PoolError::WrongMaster {
                            pool,
                            master: master.uuid,
                            why: "the master changed before the destroy".into(),
                        }
                        .into());
                    }
                    set_regular(keys, None);
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

    /// Moves the master to `new` at `version`, with the SPM role (see
    /// [`crate::cluster::Cluster::move_spm`]): the new master written first (its record with
    /// the higher version, the old master `Attached` when `deactivate`), then the old one made
    /// regular. Refused while other SPM tasks run: their records stay in the old master.
    pub(super) async fn move_master(
        &self,
        pool: Uuid,
        old: Uuid,
        new: Uuid,
        version: i64,
        deactivate: bool,
    ) -> Result<(), ApiError> {
        let cluster = self.cluster()?.clone();
        // Held for the whole move: spmStop waits for it (then refuses, after 10 s), and never
        // releases a lease the move is taking or giving up.
        let _spm = self.require_spm().await?;
        if new == old {
            return Err(StorageError::from(PoolError::InvalidParameter(format!(
                "the new master {new} is the master"
            )))
            .into());
        }
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
        let busy = self.tasks_blocking_spm_stop();
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
        // An activated domain's lockspace may still be joining.
        cluster.join(vec![areas_of(&new_domain)]).await?;
        let write = async move {
            blocking(move || {
                new_domain.update_keys(|keys| {
                    set_master(keys, &record);
                    Ok(())
                })?;
                // The point of no return: the new master, at the higher version, is the one
                // verified from now on. The old one is made regular as well as can be; a
                // failure is logged and changes nothing (its lower version refuses it).
                let demoted = old_domain.update_keys(|keys| {
                    set_regular(keys, Some(pool));
                    Ok(())
                });
                if let Err(err) = demoted {
                    tracing::error!(domain = %old_domain.uuid, error = %err, "the old master still says it is master; its lower version refuses it");
                }
                Ok(())
            })
            .await
        };
        cluster.move_spm(new, write).await??;
        *self.inner.master.lock().unwrap_or_else(|e| e.into_inner()) = Some((new, version));
        self.share_tasks_in(new);
        self.reload_domains().await?;
        tracing::info!(%pool, from = %old, to = %new, version, "the pool's master moved");
        Ok(())
    }

    /// Changes the pool's record in its master, on the SPM: the master verified again under
    /// its lock (this host's connect may be stale), then `change` applied and written.
    pub(super) async fn change_record(
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

    /// The SPM tasks not ended yet (but an spmStart, and a switchMaster: the move runs in it,
    /// and a second one finds the master moved).
    pub(super) fn tasks_blocking_spm_stop(&self) -> Vec<String> {
        self.inner
            .tasks
            .all()
            .into_iter()
            .filter(|t| {
                !t.state.is_done()
                    && !matches!(
                        t.work,
                        TaskWork::SpmStart { .. } | TaskWork::SwitchMaster { .. }
                    )
            })
            .map(|t| format!("{} ({})", t.id, t.verb))
            .collect()
    }

    /// Every domain under the repository, with its place in a pool read now; bounded by
    /// [`DOMAINS_SCAN_TIMEOUT`] (a hung mount must not hang the pool's verbs).
    pub(super) async fn memberships(
        &self,
    ) -> Result<Vec<(Uuid, Result<Membership, StorageError>)>, ApiError> {
        let repo = self.inner.repo.clone();
        let scan = blocking(move || {
            Ok(Domain::discover_all(&repo)
                .into_iter()
                .map(|(uuid, found)| (uuid, found.and_then(|d| d.membership())))
                .collect())
        });
        match tokio::time::timeout(DOMAINS_SCAN_TIMEOUT, scan).await {
            Ok(scanned) => scanned,
            Err(_) => Err(
                StorageError::io("read the domains' metadata", self.inner.repo.mounts())(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {DOMAINS_SCAN_TIMEOUT:?}"),
                    ),
                )
                .into(),
            ),
        }
    }

    /// The record of `pool`'s master `master` at `version`, verified on storage now (see
    /// [`verify_master`]).
    pub(super) async fn verified_master(
        &self,
        pool: Uuid,
        master: Uuid,
        version: i64,
    ) -> Result<PoolRecord, ApiError> {
        let seen = self.memberships().await?;
        Ok(verify_master(pool, master, version, seen).map_err(StorageError::from)?)
    }

    /// The master and version the last `StoragePool.connect` verified (309 before one).
    pub(super) fn connected_master(&self, pool: Uuid) -> Result<(Uuid, i64), ApiError> {
        self.master()
            .ok_or_else(|| StorageError::PoolUnknown(pool).into())
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
    seen: Vec<(Uuid, Result<Membership, StorageError>)>,
) -> Result<bool, StorageError> {
    let mut exists = false;
    for (id, found) in seen {
        // Any domain read: one that cannot be may be the pool's master already (fail closed).
        let found = found.map_err(|err| PoolError::Unreadable {
            domain: id,
            source: Box::new(err),
        })?;
        let id = &id;
        let found = &found;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params(master: Uuid, domains: Vec<Uuid>) -> CreatePoolParams {
        CreatePoolParams {
            pool: Uuid::from_u128(1),
            name: "dc".into(),
            master,
            master_version: 1,
            domains,
            lock_renewal_interval: None,
            lease_time: None,
            io_op_timeout: None,
            lease_retries: None,
        }
    }

    fn member(pool: Option<Uuid>, master: Option<PoolRecord>) -> Result<Membership, StorageError> {
        Ok(Membership { pool, master })
    }

    #[test]
    fn a_create_names_its_master_among_distinct_domains() {
        let (d1, d2) = (Uuid::from_u128(2), Uuid::from_u128(3));
        assert!(new_record(&params(d1, vec![d1, d2])).is_ok());
        assert!(new_record(&params(d1, vec![d2])).is_err());
        assert!(new_record(&params(d1, vec![d1, d1])).is_err());
    }

    #[test]
    fn a_create_is_refused_over_another_pool_and_finished_over_its_own() {
        let (d1, d2, other) = (Uuid::from_u128(2), Uuid::from_u128(3), Uuid::from_u128(9));
        let record = new_record(&params(d1, vec![d1, d2])).unwrap();
        let pool = record.pool;
        // Fresh domains, or a create cut short after the regular domain's write: go on.
        let fresh = vec![(d1, member(None, None)), (d2, member(None, None))];
        assert!(!check_creatable(&record, d1, fresh).unwrap());
        let half = vec![(d1, member(None, None)), (d2, member(Some(pool), None))];
        assert!(!check_creatable(&record, d1, half).unwrap());
        // Done as asked: nothing to write.
        let done = vec![
            (d1, member(Some(pool), Some(record.clone()))),
            (d2, member(Some(pool), None)),
        ];
        assert!(check_creatable(&record, d1, done).unwrap());
        // A domain of another pool, or the pool existing otherwise: refused.
        let taken = vec![(d1, member(None, None)), (d2, member(Some(other), None))];
        assert!(matches!(
            check_creatable(&record, d1, taken),
            Err(StorageError::Pool(PoolError::AlreadyAttached { .. }))
        ));
        let mut later = record.clone();
        later.version = 2;
        let moved = vec![
            (d1, member(None, None)),
            (d2, member(Some(pool), Some(later))),
        ];
        assert!(matches!(
            check_creatable(&record, d1, moved),
            Err(StorageError::Pool(PoolError::WrongMaster { .. }))
        ));
    }
}
