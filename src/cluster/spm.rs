//! The SPM role of this host's pool: VDSM's `SDM` lease in the master domain, taken by
//! `spmStart` (at once or not at all), given up by `spmStop`, and reported as VDSM's
//! `SpmStatus` (read from the lease on disk when another host holds it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::state::{LeaseState, Spm, SpmRole, SpmStatus};
use super::{Cluster, ClusterError, DomainAreas};

/// Bound of the work a caller does holding an SDM lease: a few small metadata reads and
/// writes, which take milliseconds on healthy storage.
const SDM_WORK_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    /// Whether this host may run the pool's metadata verbs now: it is the SPM, and its lease
    /// in the master domain is held.
    pub fn require_spm(&self) -> Result<(), ClusterError> {
        let master = {
            let state = self.state();
            match (state.spm.role, state.spm.master) {
                (SpmRole::Spm, Some(master)) => master,
                _ => return Err(ClusterError::NotSpm),
            }
        };
        self.gate(master)
    }

    /// The SPM lease of this host's pool, in `master`, acquired for this process: waits (up to
    /// the join's bound) for this host's lease in the master's lockspace, then takes the SDM
    /// lease at once or fails (another live host holds it). `verify` runs with the lease held
    /// and before the role is taken: it reads the master's record again (the master may have
    /// moved since the connect), and its refusal (`Ok(Err(..))`) gives the lease back.
    pub async fn spm_start<E>(
        &self,
        master: Uuid,
        verify: impl Future<Output = Result<(), E>>,
    ) -> Result<Result<SpmStatus, E>, ClusterError> {
        let areas = {
            let mut state = self.state();
            match state.spm.role {
                SpmRole::Spm => return Ok(Ok(state.spm.status(self.host_id()))),
                SpmRole::Contend => return Err(ClusterError::SpmContending),
                SpmRole::Free => {}
            }
            let areas = state.domains.get(&master).map(|d| d.areas.clone()).ok_or(
                ClusterError::NotJoined {
                    domain: master,
                    host_id: self.host_id(),
                },
            )?;
            state.spm = Spm {
                role: SpmRole::Contend,
                master: Some(master),
                lver: -1,
            };
            areas
        };
        let outcome = match self.contend(&areas).await {
            Ok(lver) => match self.under_lease(&areas, verify).await {
                Ok(Ok(())) => Ok(Ok(lver)),
                Ok(Err(refusal)) => {
                    self.release_sdm(&areas).await;
                    Ok(Err(refusal))
                }
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        };
        let mut state = self.state();
        match outcome {
            Ok(Ok(lver)) => {
                state.spm.role = SpmRole::Spm;
                state.spm.lver = lver;
                tracing::info!(domain = %master, lver, "this host is the SPM");
                Ok(Ok(state.spm.status(self.host_id())))
            }
            Ok(Err(refusal)) => {
                state.spm = Spm::default();
                Ok(Err(refusal))
            }
            Err(err) => {
                state.spm = Spm::default();
                Err(err)
            }
        }
    }

    /// Runs `write` holding the SDM lease of `master`, for a pool no host is the SPM of yet
    /// (VDSM's temporary cluster lock of `StoragePool.create`): joins the master's lockspace,
    /// takes the lease at once or fails, and gives it back after. On the SPM of that master
    /// the lease is held already. `write`'s own error comes back as `Ok(Err(..))`.
    pub async fn with_sdm_lease<T, E>(
        &self,
        master: DomainAreas,
        write: impl Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, ClusterError> {
        let held = {
            let state = self.state();
            match state.spm.role {
                SpmRole::Spm => state.spm.master == Some(master.uuid),
                SpmRole::Contend => return Err(ClusterError::SpmContending),
                SpmRole::Free => false,
            }
        };
        if held {
            return self.under_lease(&master, write).await;
        }
        self.connect(vec![master.clone()]).await?;
        self.contend(&master).await?;
        let written = self.under_lease(&master, write).await?;
        self.release_sdm(&master).await;
        Ok(written)
    }

    /// Runs `work` while an SDM lease is held, bounded by [`SDM_WORK_TIMEOUT`]. Past it the
    /// work may still be writing (a hung mount, a blocking write): the lease is then kept by
    /// this process, so that no other host takes it and writes meanwhile; sanlock frees it
    /// when rvdsmd exits.
    async fn under_lease<T, E>(
        &self,
        areas: &DomainAreas,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, ClusterError> {
        match tokio::time::timeout(SDM_WORK_TIMEOUT, work).await {
            Ok(done) => Ok(done),
            Err(_) => {
                tracing::error!(domain = %areas.uuid, "the work under the SDM lease did not end in time: the lease stays held until rvdsmd exits");
                Err(ClusterError::Timeout {
                    op: "metadata work under the SDM lease",
                    limit: SDM_WORK_TIMEOUT,
                })
            }
        }
    }

    /// Moves the SPM role to `new_master` with the pool's master: takes its SDM lease while
    /// the old one is still held (no host can be SPM on either meanwhile), runs `write` (the
    /// records of the move), then gives the old lease up. A refused `write` (`Ok(Err(..))`)
    /// gives the new lease back and leaves the role where it was.
    pub async fn move_spm<E>(
        &self,
        new_master: Uuid,
        write: impl Future<Output = Result<(), E>>,
    ) -> Result<Result<(), E>, ClusterError> {
        let (old, new) = {
            let state = self.state();
            let old = match (state.spm.role, state.spm.master) {
                (SpmRole::Spm, Some(master)) => master,
                _ => return Err(ClusterError::NotSpm),
            };
            let areas = |d: Uuid| {
                state
                    .domains
                    .get(&d)
                    .map(|d| d.areas.clone())
                    .ok_or(ClusterError::NotJoined {
                        domain: d,
                        host_id: self.host_id(),
                    })
            };
            (areas(old)?, areas(new_master)?)
        };
        self.gate(new_master)?;
        let lver = self.contend(&new).await?;
        if let Err(refusal) = self.under_lease(&new, write).await? {
            self.release_sdm(&new).await;
            return Ok(Err(refusal));
        }
        let moved = {
            let mut state = self.state();
            let still = state.spm.role == SpmRole::Spm && state.spm.master == Some(old.uuid);
            if still {
                state.spm.master = Some(new_master);
                state.spm.lver = lver;
            }
            still
        };
        if !moved {
            // The role went meanwhile (a lost lease): the new lease is not kept either.
            self.release_sdm(&new).await;
            return Err(ClusterError::NotSpm);
        }
        self.release_sdm(&old).await;
        tracing::info!(from = %old.uuid, to = %new_master, lver, "the SPM role moved with the master");
        Ok(Ok(()))
    }

    /// Gives the SDM lease of `areas` back; a failure is logged (the lease stays held by this
    /// process, so no other host takes it meanwhile: safe, and released at the daemon's exit).
    async fn release_sdm(&self, areas: &DomainAreas) {
        let Some(registration) = self.state().registration.clone() else {
            return;
        };
        let lease = areas.sdm_lease();
        let released = self
            .call("release", self.inner.settings.call_timeout, move || {
                registration.release(&lease)
            })
            .await;
        if let Err(err) = released {
            tracing::error!(domain = %areas.uuid, error = %err, "cannot release the SDM lease");
        }
    }

    async fn contend(&self, areas: &DomainAreas) -> Result<i64, ClusterError> {
        self.wait_joined(areas.uuid).await?;
        self.acquire(areas.sdm_lease())
            .await
            .map(|lver| i64::try_from(lver).unwrap_or(i64::MAX))
            .map_err(|err| match err {
                ClusterError::Sanlock(e) if e.is_held_elsewhere() => ClusterError::SpmHeld(e),
                other => other,
            })
    }

    /// Waits for this host's lease in `domain`'s lockspace, polling the daemon, for at most the
    /// time a join takes with this io_timeout (sanlock: about 2 × io_timeout when the host id
    /// is free, up to 8 × io_timeout + the watchdog's 60 s when a dead host held it).
    pub(super) async fn wait_joined(&self, domain: Uuid) -> Result<(), ClusterError> {
        let io = u64::from(self.inner.settings.io_timeout);
        let deadline = Instant::now() + Duration::from_secs(8 * io + 70);
        loop {
            self.poll().await;
            match self.gate(domain) {
                Ok(()) => return Ok(()),
                Err(ClusterError::NotJoined { .. })
                    if Instant::now() < deadline
                        && self.state().domains.get(&domain).map(|d| d.state)
                            == Some(LeaseState::Joining) =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Gives the SPM role up: the SDM lease released. `busy` names the pool's unfinished
    /// tasks, which refuse it (VDSM's 653).
    pub async fn spm_stop(&self, busy: Option<String>) -> Result<(), ClusterError> {
        let (master, registration) = {
            let state = self.state();
            match (state.spm.role, state.spm.master, &state.registration) {
                (SpmRole::Spm, Some(master), Some(registration)) => {
                    (master, Arc::clone(registration))
                }
                (SpmRole::Contend, ..) => return Err(ClusterError::SpmStarting),
                _ => return Ok(()),
            }
        };
        if let Some(tasks) = busy {
            return Err(ClusterError::SpmBusy(tasks));
        }
        let lease = self
            .state()
            .domains
            .get(&master)
            .map(|d| d.areas.sdm_lease())
            .ok_or(ClusterError::NotSpm)?;
        self.call("release", self.inner.settings.call_timeout, move || {
            registration.release(&lease)
        })
        .await?;
        self.state().spm = Spm::default();
        tracing::info!(domain = %master, "this host is no longer the SPM");
        Ok(())
    }

    /// The SPM's state as VDSM reports it: this host's role; the SPM's host id and the lease's
    /// version read from the master domain's lease area when another host holds it.
    pub async fn spm_status(&self, master: Option<Uuid>) -> Result<SpmStatus, ClusterError> {
        let (own, areas) = {
            let state = self.state();
            let own = state.spm.status(self.host_id());
            let master = state.spm.master.or(master);
            let areas = master.and_then(|m| state.domains.get(&m).map(|d| d.areas.clone()));
            (own, areas)
        };
        if own.role != SpmRole::Free {
            return Ok(own);
        }
        let Some(areas) = areas else {
            return Ok(own);
        };
        let lease = areas.sdm_lease();
        let (owners, lver) = self
            .call(
                "read resource owners",
                self.inner.settings.call_timeout,
                move || Ok((lease.owners()?, lease.version()?)),
            )
            .await?;
        Ok(SpmStatus {
            spm_id: owners
                .first()
                .map_or(-1, |h| i64::try_from(h.id).unwrap_or(-1)),
            role: SpmRole::Free,
            lver: i64::try_from(lver).unwrap_or(-1),
        })
    }
}
