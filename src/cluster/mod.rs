//! This host among the hosts that share storage domains, through sanlock: the host id, the
//! lockspaces of the domains it joined (one delta lease per host in each domain's
//! `dom_md/ids`), the SPM role of its pool (the `SDM` paxos lease in the master domain's
//! `dom_md/leases`, VDSM's), and the gate each metadata change of a shared domain passes.
//!
//! A host without a configured host id runs alone, as before: no [`Cluster`] exists and no
//! gate closes. With one, a domain's metadata changes only while this host holds its delta
//! lease in the domain's lockspace, and the pool's metadata verbs run only on the SPM.
//!
//! Every sanlock call blocks (it talks to the local daemon, which does direct I/O on the
//! shared storage): each runs on the blocking pool under a deadline. The state is kept under a
//! std mutex never held across a call.
//!
//! - this file: the host's lockspaces (join, leave, poll) and the gate of metadata changes;
//! - `spm`: the SPM role (`spmStart`, `spmStop`, `getSpmStatus`);
//! - `leases`: acquiring resource leases for this process, and the SDM jobs' volume leases;
//! - `state`: what is known of each lease, as plain values;
//! - `error`: the module's errors.

mod error;
mod leases;
mod spm;
mod state;

pub use error::ClusterError;
pub use leases::{VolumeLease, external_lease, volume_lease};
pub use state::{LeaseState, RepoStat, SpmRole, SpmStatus};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::storage::lock::SharedLeases;
use crate::sys::sanlock::{self, Disk, Lockspace, Registration, Resource, Sector};
use state::{DomainLease, Spm};

/// VDSM's SDM lease: resource `SDM` at slot 1 of `dom_md/leases`, slots 1 MiB apart.
const SDM_LEASE_NAME: &str = "SDM";
const LEASE_ALIGNMENT: u64 = 1 << 20;

/// How this host takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Its host id in every lockspace, 1 to 250.
    pub host_id: u64,
    /// sanlock's io_timeout for the lockspaces it formats and joins, seconds (VDSM: 10).
    pub io_timeout: u32,
    /// Bound of one call to the sanlock daemon that does not wait on leases.
    pub call_timeout: Duration,
}

/// The cluster side of the host; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("host_id", &self.host_id())
            .finish_non_exhaustive()
    }
}

struct Inner {
    settings: ClusterSettings,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    domains: HashMap<Uuid, DomainLease>,
    spm: Spm,
    registration: Option<Arc<Registration>>,
    /// Lockspaces whose last inquiry has not returned (its thread blocked in a hung daemon).
    inquiring: std::collections::HashSet<Uuid>,
}

/// An inquiry of a lockspace in flight: over when dropped (returned, panicked or never run).
struct Inquiry {
    cluster: Cluster,
    domain: Uuid,
}

impl Drop for Inquiry {
    fn drop(&mut self) {
        self.cluster.state().inquiring.remove(&self.domain);
    }
}

/// The lease areas of a domain.
#[derive(Debug, Clone)]
pub struct DomainAreas {
    /// The domain.
    pub uuid: Uuid,
    /// Its `dom_md` directory.
    pub dom_md: PathBuf,
    /// Its block size.
    pub block_size: u32,
}

impl DomainAreas {
    fn lockspace(&self, host_id: u64) -> Lockspace {
        Lockspace {
            name: self.uuid.to_string(),
            host_id,
            disk: Disk {
                path: self.dom_md.join("ids"),
                offset: 0,
            },
        }
    }

    fn sdm_lease(&self) -> Resource {
        Resource {
            lockspace: self.uuid.to_string(),
            name: SDM_LEASE_NAME.to_owned(),
            disk: Disk {
                path: self.dom_md.join("leases"),
                offset: LEASE_ALIGNMENT,
            },
        }
    }
}

/// One shared domain's leases, as the storage module uses them: the gate of its metadata
/// lock (open while this host holds its lease in the domain's lockspace) and its new volumes'
/// leases.
struct DomainLeases {
    cluster: Cluster,
    domain: Uuid,
    sector: Sector,
}

impl SharedLeases for DomainLeases {
    fn check(&self) -> Result<(), String> {
        self.cluster.gate(self.domain).map_err(|e| e.to_string())
    }

    fn format_volume_lease(&self, volume: Uuid, file: &Path) -> Result<(), String> {
        let resource = volume_lease(self.domain, volume, file);
        leases::check_disk(&resource.lockspace, &resource.disk)
            .and_then(|()| resource.format(self.sector))
            .map_err(|e| e.to_string())
    }

    fn format_lease(&self, lease: Uuid, file: &Path, offset: u64) -> Result<(), String> {
        let resource = external_lease(self.domain, lease, file, offset);
        leases::check_disk(&resource.lockspace, &resource.disk)
            .and_then(|()| resource.format(self.sector))
            .map_err(|e| e.to_string())
    }

    fn clear_lease(&self, lease: Uuid, file: &Path, offset: u64) -> Result<(), String> {
        let resource = external_lease(self.domain, lease, file, offset);
        leases::check_disk(&resource.lockspace, &resource.disk)
            .and_then(|()| resource.clear(self.sector))
            .map_err(|e| e.to_string())
    }

    fn lease_status(
        &self,
        lease: Uuid,
        file: &Path,
        offset: u64,
    ) -> Result<(Vec<u64>, Option<u64>), String> {
        let resource = external_lease(self.domain, lease, file, offset);
        leases::check_disk(&resource.lockspace, &resource.disk).map_err(|e| e.to_string())?;
        let owners = resource.owners().map_err(|e| e.to_string())?;
        // An owner recorded by an earlier generation of its host (it joined again since)
        // holds nothing: sanlock treats the lease as free, as VDSM's `inspect` does.
        let lockspace = Lockspace {
            name: self.domain.to_string(),
            host_id: 0,
            disk: Disk {
                path: PathBuf::new(),
                offset: 0,
            },
        };
        let owners: Vec<u64> = owners
            .iter()
            .filter(|owner| match lockspace.hosts(owner.id) {
                Ok(hosts) => hosts
                    .iter()
                    .all(|h| h.id != owner.id || h.generation == owner.generation),
                // Its state is not known yet: it may hold the lease.
                Err(_) => true,
            })
            .map(|h| h.id)
            .collect();
        if owners.is_empty() {
            return Ok((owners, None));
        }
        let version = resource.version().map_err(|e| e.to_string())?;
        Ok((owners, Some(version)))
    }
}

impl Cluster {
    /// The leases of `domain` (of `block_size`) for its storage: see [`SharedLeases`].
    pub fn domain_leases(&self, domain: Uuid, block_size: u32) -> Arc<dyn SharedLeases> {
        Arc::new(DomainLeases {
            cluster: self.clone(),
            domain,
            sector: Sector::of_block_size(block_size),
        })
    }

    /// A host with `settings`, in no lockspace yet.
    pub fn new(settings: ClusterSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                state: Mutex::default(),
            }),
        }
    }

    /// This host's id.
    pub fn host_id(&self) -> u64 {
        self.inner.settings.host_id
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a blocking sanlock call on the blocking pool, bounded by `limit`.
    async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        limit: Duration,
        f: impl FnOnce() -> Result<T, sanlock::SanlockError> + Send + 'static,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(limit, tokio::task::spawn_blocking(f)).await {
            Err(_) => Err(ClusterError::Timeout { op, limit }),
            Ok(Err(join)) => Err(ClusterError::Unexpected(format!("{op}: {join}"))),
            Ok(Ok(result)) => result.map_err(ClusterError::Sanlock),
        }
    }

    /// Formats a new domain's lease areas: its lockspace (every host id free) and its SDM
    /// lease (free, version 0). Only for a domain no host uses yet.
    pub async fn format_domain(&self, areas: DomainAreas) -> Result<(), ClusterError> {
        let io_timeout = self.inner.settings.io_timeout;
        let sector = Sector::of_block_size(areas.block_size);
        let lockspace = areas.lockspace(0);
        let sdm = areas.sdm_lease();
        // Writing 2000 delta leases with direct I/O takes a few seconds on a slow export.
        let limit = self.inner.settings.call_timeout * 4;
        self.call("format lease areas", limit, move || {
            leases::check_disk(&lockspace.name, &lockspace.disk)?;
            leases::check_disk(&sdm.lockspace, &sdm.disk)?;
            lockspace.format(sector, io_timeout)?;
            sdm.format(sector)
        })
        .await
    }

    /// Begins joining the lockspace of each domain not joined yet (VDSM's host id
    /// acquisition); [`Cluster::poll`] follows the joins. Returns at once.
    pub async fn connect(&self, domains: Vec<DomainAreas>) -> Result<(), ClusterError> {
        let host_id = self.host_id();
        let io_timeout = self.inner.settings.io_timeout;
        for areas in domains {
            let joining = {
                let mut state = self.state();
                let entry = state
                    .domains
                    .entry(areas.uuid)
                    .or_insert_with(|| DomainLease::new(areas.clone()));
                if matches!(entry.state, LeaseState::Joining | LeaseState::Joined) {
                    continue;
                }
                let before = entry.state;
                entry.set(LeaseState::Joining);
                (before, entry.areas.lockspace(host_id))
            };
            let (before, joining) = joining;
            let uuid = areas.uuid;
            let limit = self.inner.settings.call_timeout;
            let started = self
                .call("add lockspace", limit, move || {
                    leases::check_disk(&joining.name, &joining.disk)?;
                    match joining.join(io_timeout, false) {
                        Err(e) if e.code == sanlock::code::EEXIST => Ok(()),
                        Err(e) if e.code == sanlock::code::EINPROGRESS => Ok(()),
                        other => other,
                    }
                })
                .await;
            if let Err(err) = started {
                // A lost lease stays lost (the next poll tries again); a first join failed.
                let after = if before == LeaseState::Lost {
                    LeaseState::Lost
                } else {
                    LeaseState::Left
                };
                if let Some(d) = self.state().domains.get_mut(&uuid) {
                    d.set(after);
                }
                return Err(ClusterError::Join {
                    domain: uuid,
                    why: err.to_string(),
                });
            }
            tracing::info!(domain = %uuid, host_id, "joining the domain's lockspace");
        }
        Ok(())
    }

    /// Joins the lockspaces of `domains` and waits until this host holds its lease in each
    /// (see [`Cluster::connect`]; a few io_timeouts).
    pub async fn join(&self, domains: Vec<DomainAreas>) -> Result<(), ClusterError> {
        let ids: Vec<Uuid> = domains.iter().map(|d| d.uuid).collect();
        self.connect(domains).await?;
        for id in ids {
            self.wait_joined(id).await?;
        }
        Ok(())
    }

    /// The domains whose lockspace this host joined or is joining.
    pub fn joined(&self) -> Vec<Uuid> {
        self.state()
            .domains
            .iter()
            .filter(|(_, d)| {
                matches!(
                    d.state,
                    LeaseState::Joining | LeaseState::Joined | LeaseState::Lost
                )
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Leaves the lockspace of `domain` (a domain detached or formatted). Refused while the SPM
    /// role is held in it.
    pub async fn leave(&self, domain: Uuid) -> Result<(), ClusterError> {
        let lockspace = {
            let mut state = self.state();
            if state.spm.master == Some(domain) && state.spm.role != SpmRole::Free {
                return Err(ClusterError::IsSpm);
            }
            let Some(entry) = state.domains.get_mut(&domain) else {
                return Ok(());
            };
            if entry.state == LeaseState::Left {
                state.domains.remove(&domain);
                return Ok(());
            }
            let before = entry.state;
            entry.set(LeaseState::Left);
            (before, entry.areas.lockspace(self.host_id()))
        };
        let (before, lockspace) = lockspace;
        // Releasing the delta lease waits for one renewal interval at most (as disconnect).
        let limit = self.inner.settings.call_timeout * 2;
        let left = self
            .call("remove lockspace", limit, move || lockspace.leave(true))
            .await;
        match left {
            Ok(()) => {
                self.state().domains.remove(&domain);
                tracing::info!(%domain, "left the domain's lockspace");
                Ok(())
            }
            Err(e) => {
                // Still held (EBUSY: a lease is held in it): as it was.
                if let Some(d) = self.state().domains.get_mut(&domain) {
                    d.set(before);
                }
                Err(ClusterError::Leave {
                    domain,
                    why: e.to_string(),
                })
            }
        }
    }

    /// Leaves every lockspace. Refused while this host is the SPM.
    pub async fn disconnect(&self) -> Result<(), ClusterError> {
        if self.state().spm.role != SpmRole::Free {
            return Err(ClusterError::IsSpm);
        }
        let host_id = self.host_id();
        // Marked left first: no metadata change starts while the leases go.
        let leaving: Vec<_> = {
            let mut state = self.state();
            state
                .domains
                .values_mut()
                .filter(|d| d.state != LeaseState::Left)
                .map(|d| {
                    let before = d.state;
                    d.set(LeaseState::Left);
                    (d.areas.uuid, before, d.areas.lockspace(host_id))
                })
                .collect()
        };
        for (left, (uuid, _, lockspace)) in leaving.iter().enumerate() {
            // Releasing the delta lease waits for one renewal interval at most.
            let limit = self.inner.settings.call_timeout * 2;
            let lockspace = lockspace.clone();
            let result = self
                .call("remove lockspace", limit, move || lockspace.leave(true))
                .await;
            if let Err(e) = result {
                // Still held (EBUSY: a job holds a volume lease in it): as they were, for
                // this one and those not reached.
                let mut state = self.state();
                for (uuid, before, _) in &leaving[left..] {
                    if let Some(d) = state.domains.get_mut(uuid) {
                        d.set(*before);
                    }
                }
                return Err(ClusterError::Leave {
                    domain: *uuid,
                    why: e.to_string(),
                });
            }
            tracing::info!(domain = %uuid, "left the domain's lockspace");
        }
        Ok(())
    }

    /// Asks the daemon about each lockspace being joined or held, and records what it says:
    /// a join done, a lease lost (then the SPM role goes with it). Called every few seconds.
    pub async fn poll(&self) {
        let host_id = self.host_id();
        // A lease lost with the storage comes back when the storage does, as VDSM's domain
        // monitor acquires the host id again.
        let lost: Vec<_> = self
            .state()
            .domains
            .values()
            .filter(|d| d.state == LeaseState::Lost)
            .map(|d| d.areas.clone())
            .collect();
        if !lost.is_empty()
            && let Err(err) = self.connect(lost).await
        {
            tracing::debug!(error = %err, "cannot join a lost lockspace again yet");
        }
        let watched: Vec<_> = self
            .state()
            .domains
            .values()
            .filter(|d| matches!(d.state, LeaseState::Joining | LeaseState::Joined))
            .map(|d| (d.areas.uuid, d.areas.lockspace(host_id)))
            .collect();
        // A local call that answers in milliseconds: a daemon slower than one io_timeout is
        // in trouble, and the gate closes until it answers again.
        let limit = Duration::from_secs(u64::from(self.inner.settings.io_timeout));
        for (uuid, lockspace) in watched {
            let asked = Instant::now();
            let answer = if self.state().inquiring.insert(uuid) {
                let inquiry = Inquiry {
                    cluster: self.clone(),
                    domain: uuid,
                };
                self.call("inquire lockspace", limit, move || {
                    let _inquiry = inquiry;
                    lockspace.joined()
                })
                .await
            } else {
                // The last inquiry still blocks its thread in the daemon: no second thread
                // is sent after it, and the lease counts as unconfirmed.
                Err(ClusterError::Timeout {
                    op: "inquire lockspace",
                    limit,
                })
            };
            let delay = asked.elapsed();
            let lost = {
                let mut state = self.state();
                let Some(entry) = state.domains.get_mut(&uuid) else {
                    continue;
                };
                entry.observed(answer, delay)
            };
            if lost {
                tracing::error!(domain = %uuid, host_id, "this host lost its lease in the domain's lockspace: no metadata change until it joins again");
                let mut state = self.state();
                if state.spm.master == Some(uuid) && state.spm.role != SpmRole::Free {
                    tracing::error!(domain = %uuid, "the SPM role is lost with it");
                    state.spm = Spm::default();
                }
            }
        }
    }

    /// Polls the daemon every `interval` (see [`Cluster::poll`]) while the runtime runs.
    pub fn watch(&self, interval: Duration) {
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                cluster.poll().await;
            }
        });
    }

    /// Whether this host may change the metadata of `domain` now: it holds its delta lease in
    /// the domain's lockspace.
    pub fn gate(&self, domain: Uuid) -> Result<(), ClusterError> {
        let state = self.state();
        match state.domains.get(&domain) {
            Some(d) if d.usable() => Ok(()),
            Some(d) if d.state == LeaseState::Joined => Err(ClusterError::LeaseUnknown { domain }),
            Some(d) if d.state == LeaseState::Lost => Err(ClusterError::LeaseLost { domain }),
            _ => Err(ClusterError::NotJoined {
                domain,
                host_id: self.host_id(),
            }),
        }
    }

    /// The lease state of each domain this host joined or is joining, VDSM's
    /// `Host.getStorageRepoStats` vitals.
    pub fn repo_stats(&self) -> HashMap<Uuid, RepoStat> {
        self.state()
            .domains
            .iter()
            .map(|(uuid, d)| (*uuid, d.stat()))
            .collect()
    }

    /// At the daemon's stop: the SPM role given up and every lockspace left, so that other
    /// hosts need not wait for this host's leases to expire.
    pub async fn stop(&self) {
        if let Err(err) = self.spm_stop(None).await {
            tracing::warn!(error = %err, "cannot release the SPM lease at stop");
        }
        if let Err(err) = self.disconnect().await {
            tracing::warn!(error = %err, "cannot leave the lockspaces at stop");
        }
    }
}
