//! A domain's life in the pool, VDSM's rules (`sp.py`, `hsm.py`): `StorageDomain.attach`,
//! `activate`, `deactivate`, `detach` and `format`, and this host's copy of the domains read
//! again from storage. Each change of the pool's record goes through
//! [`StorageService::change_record`] (the master verified again, under its lock, on the SPM).
//!
//! A domain names the pool before the master lists it, and stops naming it after the master
//! forgets it: a retry after a crash finishes an attach or a detach.

use std::sync::Arc;

use uuid::Uuid;

use super::{StorageService, blocking, off_reactor, pool::areas_of};
use crate::api::ApiError;
use crate::api::pool_types::{
    DeactivateDomainParams, DetachDomainParams, FormatDomainParams, PoolDomainParams,
};
use crate::api::volume_types::BLANK_UUID;
use crate::storage::StorageError;
use crate::storage::domain::Domain;
use crate::storage::pool::{DomainStatus, MAX_DOMAINS, PoolError, set_regular};

impl StorageService {
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
        // Joined for the write only, as VDSM's attach releases the host id it took: the
        // domain's lockspace is the pool's business once it is activated.
        let joined_before = cluster.joined().contains(&p.domain);
        let pool = p.pool;
        let named = Arc::clone(&domain);
        let write = async move {
            blocking(move || {
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
        let attached = match cluster.join(vec![areas_of(&domain)]).await {
            Ok(()) => cluster.with_sdm_lease(areas_of(&domain), write).await,
            Err(err) => Err(err),
        }
        .map_err(ApiError::from)
        .and_then(|written| written);
        if !joined_before && let Err(err) = cluster.leave(p.domain).await {
            tracing::warn!(domain = %p.domain, error = %err, "cannot leave a lockspace joined for the attach");
        }
        attached?;
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
        self.set_domain_status(p.pool, p.domain, DomainStatus::Active)
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
        if let Some(why) = self.in_use_reason(p.domain).await? {
            return Err(StorageError::from(PoolError::DomainAction {
                domain: p.domain,
                why,
            })
            .into());
        }
        self.set_domain_status(p.pool, p.domain, DomainStatus::Attached)
            .await?;
        // As VDSM's domain monitor releases its host id: the domain is the pool's no more
        // until activated (the other hosts leave it at their next connect).
        if let Err(err) = self.cluster()?.leave(p.domain).await {
            tracing::warn!(domain = %p.domain, error = %err, "deactivated, but its lockspace is still joined");
        }
        tracing::info!(domain = %p.domain, pool = %p.pool, "storage domain deactivated");
        Ok(())
    }

    /// `StorageDomain.detach` (SPM): a deactivated domain, not the master, is forgotten by the
    /// master, then stops naming the pool; this host leaves its lockspace.
    pub async fn detach_domain(&self, p: DetachDomainParams) -> Result<(), ApiError> {
        self.check_pool(p.pool)?;
        let _spm = self.require_spm().await?;
        let cluster = self.cluster()?.clone();
        let (master, _) = self.connected_master(p.pool)?;
        if p.domain == master {
            return Err(StorageError::from(PoolError::DetachMaster(p.domain)).into());
        }
        self.refresh_domain(p.domain).await?;
        let domain = self.domain(p.domain)?;
        let names_pool = domain.pool == p.pool;
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
                None if names_pool => Ok(()),
                None => Err(PoolError::NotInPool {
                    domain: p.domain,
                    pool: p.pool,
                }),
            }
        })
        .await?;
        // The domain's lockspace was left when it was deactivated (or at a reconnect): joined
        // again for its metadata's write only.
        let joined_before = cluster.joined().contains(&p.domain);
        cluster.join(vec![areas_of(&domain)]).await?;
        let pool = p.pool;
        let named = Arc::clone(&domain);
        let written = blocking(move || {
            named.update_keys(|keys| {
                if crate::storage::pool::membership(named.uuid, keys)?.pool == Some(pool) {
                    set_regular(keys, None);
                }
                Ok(())
            })
        })
        .await;
        if (!joined_before || written.is_ok())
            && let Err(err) = cluster.leave(p.domain).await
        {
            tracing::warn!(domain = %p.domain, error = %err, "detached, but its lockspace is still joined");
        }
        written?;
        self.refresh_domain(p.domain).await?;
        tracing::info!(domain = %p.domain, pool = %p.pool, "storage domain detached");
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
        // Any master, of this host's pool or another, that lists the domain, whatever version
        // this host connected at (the master may have moved since): that pool still has it,
        // `autoDetach` or not. A domain whose metadata cannot be read may be such a master:
        // the format is refused (fail closed).
        let mut listed_by = None;
        for (id, found) in self.memberships().await? {
            let found = found.map_err(|err| {
                StorageError::from(PoolError::Unreadable {
                    domain: id,
                    source: Box::new(err),
                })
            })?;
            if let Some(record) = found.master
                && record.domains.contains_key(&p.domain)
            {
                listed_by = Some((id, record.pool));
            }
        }
        let listed = |(master, pool): (Uuid, Uuid)| {
            in_use(format!("the master {master} of pool {pool} lists it"))
        };
        // VDSM's order: a domain of the connected pool first (392), then an attached one
        // without autoDetach (391).
        if let Some((master, pool)) = listed_by
            && pool == self.inner.pool
            && self.master().is_some()
        {
            return Err(listed((master, pool)));
        }
        let member = {
            let domain = Arc::clone(&domain);
            blocking(move || domain.membership()).await?
        };
        let alone = self.inner.cluster.is_none();
        if member.pool.is_some() && !p.auto_detach {
            return Err(StorageError::from(PoolError::FormatAttached(p.domain)).into());
        }
        if let Some(found) = listed_by {
            return Err(listed(found));
        }
        if let Some(record) = &member.master
            && !alone
        {
            return Err(in_use(format!("it is the master of pool {}", record.pool)));
        }
        if let Some(why) = self.in_use_reason(p.domain).await? {
            return Err(in_use(why));
        }
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

    /// The master lists `domain`, one of the pool's (353 otherwise), as `status`.
    async fn set_domain_status(
        &self,
        pool: Uuid,
        domain: Uuid,
        status: DomainStatus,
    ) -> Result<(), ApiError> {
        self.change_record(pool, move |record| {
            let listed = record
                .domains
                .get_mut(&domain)
                .ok_or(PoolError::NotInPool { domain, pool })?;
            *listed = status;
            Ok(())
        })
        .await
        .map(drop)
    }

    /// Why a VM of this host or a running task uses `domain`, if one does; `Err` when that
    /// cannot be told (libvirt does not answer).
    pub(super) async fn in_use_reason(&self, domain: Uuid) -> Result<Option<String>, ApiError> {
        let Ok(found) = self.domain(domain) else {
            return Ok(None);
        };
        let root = found.dir.root().to_owned();
        let mut roots = vec![
            root.clone(),
            self.inner
                .repo
                .pool_dir(self.inner.pool)
                .join(domain.to_string()),
        ];
        // The domain's real path too: libvirt reports the paths it was given, which may be
        // through the LOCALFS link or not.
        if let Ok(real) = blocking(move || {
            std::fs::canonicalize(&root).map_err(StorageError::io("resolve", &root))
        })
        .await
        {
            roots.push(real);
        }
        let paths = self.inner.hypervisor.disk_paths_in_use().await?;
        if let Some(path) = paths
            .iter()
            .find(|p| roots.iter().any(|r| std::path::Path::new(p).starts_with(r)))
        {
            return Ok(Some(format!("a VM of this host uses {path}")));
        }
        let busy = self.tasks_blocking_spm_stop();
        if !busy.is_empty() {
            return Ok(Some(format!("SPM tasks run: {}", busy.join(", "))));
        }
        Ok(None)
    }

    /// Reads `domain`'s metadata again (another host may have attached or detached it).
    pub(super) async fn refresh_domain(&self, domain: Uuid) -> Result<(), StorageError> {
        let dir = self.domain(domain)?.dir.clone();
        let mut fresh = off_reactor(move || Domain::load(dir)).await?;
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
