//! The SPM role of this host's pool: VDSM's `SDM` lease in the master domain, taken by
//! `spmStart` (at once or not at all), given up by `spmStop`, and reported as VDSM's
//! `SpmStatus` (read from the lease on disk when another host holds it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::state::{LeaseState, Spm, SpmRole, SpmStatus};
use super::{BoxError, Cluster, ClusterError, DomainAreas};

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
    /// moved since the connect), and its refusal gives the lease back.
    pub async fn spm_start(
        &self,
        master: Uuid,
        verify: impl Future<Output = Result<(), BoxError>>,
    ) -> Result<SpmStatus, ClusterError> {
        let areas = {
            let mut state = self.state();
            match state.spm.role {
                SpmRole::Spm => return Ok(state.spm.status(self.host_id())),
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
            Ok(lver) => match verify.await {
                Ok(()) => Ok(lver),
                Err(refusal) => {
                    self.release_sdm(&areas).await;
                    Err(ClusterError::MasterRefused(refusal.into()))
                }
            },
            Err(err) => Err(err),
        };
        let mut state = self.state();
        match outcome {
            Ok(lver) => {
                state.spm.role = SpmRole::Spm;
                state.spm.lver = lver;
                tracing::info!(domain = %master, lver, "this host is the SPM");
                Ok(state.spm.status(self.host_id()))
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
    /// the lease is held already.
    pub async fn with_sdm_lease<T>(
        &self,
        master: DomainAreas,
        write: impl Future<Output = Result<T, BoxError>>,
    ) -> Result<T, ClusterError> {
        let held = {
            let state = self.state();
            match state.spm.role {
                SpmRole::Spm => state.spm.master == Some(master.uuid),
                SpmRole::Contend => return Err(ClusterError::SpmContending),
                SpmRole::Free => false,
            }
        };
        if held {
            return write
                .await
                .map_err(|e| ClusterError::MasterRefused(e.into()));
        }
        self.connect(vec![master.clone()]).await?;
        self.contend(&master).await?;
        let written = write
            .await
            .map_err(|e| ClusterError::MasterRefused(e.into()));
        self.release_sdm(&master).await;
        written
    }

    /// Moves the SPM role to `new_master` with the pool's master: takes its SDM lease while
    /// the old one is still held (no host can be SPM on either meanwhile), runs `write` (the
    /// records of the move), then gives the old lease up. A refused `write` gives the new
    /// lease back and leaves the role where it was.
    pub async fn move_spm(
        &self,
        new_master: Uuid,
        write: impl Future<Output = Result<(), BoxError>>,
    ) -> Result<(), ClusterError> {
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
        if let Err(refusal) = write.await {
            self.release_sdm(&new).await;
            return Err(ClusterError::MasterRefused(refusal.into()));
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
        Ok(())
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
