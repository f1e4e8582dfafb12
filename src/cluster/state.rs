//! What this host knows of its leases: per domain, the state of its delta lease and the last
//! answer about it; for the pool, its SPM role. Plain values, changed under the cluster's
//! mutex.

use std::time::{Duration, Instant};

use super::{ClusterError, DomainAreas};

/// This host's delta lease in a domain's lockspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// The join has begun.
    Joining,
    /// Held: metadata may change.
    Joined,
    /// Held, then gone without this host leaving (renewal failed, daemon restarted).
    Lost,
    /// Not joined (left, or the join failed).
    Left,
}

/// A domain's lease, as watched.
pub(super) struct DomainLease {
    pub areas: DomainAreas,
    pub state: LeaseState,
    since: Instant,
    last_check: Option<Instant>,
    delay: Duration,
    valid: bool,
}

/// VDSM's `StorageDomainVitals` of one domain, as far as its lease goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RepoStat {
    /// This host holds its delta lease.
    pub acquired: bool,
    /// A check has run since the join began.
    pub actual: bool,
    /// Seconds since the last check.
    pub last_check: f64,
    /// How long the last check took, seconds.
    pub delay: f64,
    /// The last check got an answer and the lease is not lost.
    pub valid: bool,
}

impl DomainLease {
    pub fn new(areas: DomainAreas) -> Self {
        Self {
            areas,
            state: LeaseState::Left,
            since: Instant::now(),
            last_check: None,
            delay: Duration::ZERO,
            valid: true,
        }
    }

    pub fn set(&mut self, state: LeaseState) {
        if self.state != state {
            self.state = state;
            self.since = Instant::now();
        }
    }

    /// Records the daemon's answer to "is the lease held?"; true when it shows the lease
    /// lost.
    pub fn observed(
        &mut self,
        answer: Result<Option<bool>, ClusterError>,
        delay: Duration,
    ) -> bool {
        self.last_check = Some(Instant::now());
        self.delay = delay;
        self.valid = answer.is_ok();
        match (self.state, answer) {
            (LeaseState::Joining | LeaseState::Joined, Ok(Some(true))) => {
                if self.state == LeaseState::Joining {
                    tracing::info!(domain = %self.areas.uuid, seconds = self.since.elapsed().as_secs_f64(), "joined the domain's lockspace");
                }
                self.set(LeaseState::Joined);
                false
            }
            (LeaseState::Joined, Ok(None | Some(false))) => {
                self.set(LeaseState::Lost);
                self.valid = false;
                true
            }
            (LeaseState::Joining, Ok(None)) => {
                // The join failed (the host id is held by another live host, or the area
                // is unreadable): the daemon dropped it.
                tracing::error!(domain = %self.areas.uuid, "the join of the domain's lockspace failed");
                self.set(LeaseState::Left);
                self.valid = false;
                false
            }
            // While the daemon cannot answer, the lease may be failing: the gate closes
            // (`valid` false) and opens again at the next good answer.
            _ => false,
        }
    }

    /// Whether metadata may change: the lease held, and the last check said so.
    pub fn usable(&self) -> bool {
        self.state == LeaseState::Joined && self.valid
    }

    pub fn stat(&self) -> RepoStat {
        RepoStat {
            acquired: self.state == LeaseState::Joined,
            actual: self.last_check.is_some(),
            last_check: self.last_check.map_or(0.0, |at| at.elapsed().as_secs_f64()),
            delay: self.delay.as_secs_f64(),
            valid: self.valid && self.state != LeaseState::Lost,
        }
    }
}

/// A host's SPM role in its pool (VDSM's `SpmRole`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpmRole {
    /// Not the SPM.
    #[default]
    Free,
    /// Acquiring the SPM lease.
    Contend,
    /// The SPM.
    Spm,
}

impl SpmRole {
    /// VDSM's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Free => "Free",
            Self::Contend => "Contend",
            Self::Spm => "SPM",
        }
    }
}

/// VDSM's `SpmStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpmStatus {
    /// The SPM's host id, -1 when none.
    pub spm_id: i64,
    /// This host's role.
    pub role: SpmRole,
    /// The SPM lease's version, -1 when unknown.
    pub lver: i64,
}

/// This host's SPM role.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Spm {
    pub role: SpmRole,
    pub master: Option<uuid::Uuid>,
    pub lver: i64,
}

impl Spm {
    pub fn status(&self, host_id: u64) -> SpmStatus {
        match self.role {
            SpmRole::Spm => SpmStatus {
                spm_id: i64::try_from(host_id).unwrap_or(-1),
                role: SpmRole::Spm,
                lver: self.lver,
            },
            role => SpmStatus {
                spm_id: -1,
                role,
                lver: -1,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> DomainLease {
        DomainLease::new(DomainAreas {
            uuid: uuid::Uuid::nil(),
            dom_md: "/nonexistent".into(),
            block_size: 512,
        })
    }

    #[test]
    fn a_join_completes_and_a_lease_that_vanishes_is_lost() {
        let mut d = lease();
        d.set(LeaseState::Joining);
        assert!(!d.observed(Ok(Some(false)), Duration::ZERO));
        assert_eq!(d.state, LeaseState::Joining);
        assert!(!d.stat().acquired);
        assert!(!d.observed(Ok(Some(true)), Duration::from_millis(3)));
        assert_eq!(d.state, LeaseState::Joined);
        assert!(d.stat().acquired && d.stat().valid);
        assert!(d.observed(Ok(None), Duration::ZERO));
        assert_eq!(d.state, LeaseState::Lost);
        assert!(!d.stat().acquired && !d.stat().valid);
        // Lost stays lost until a new join.
        assert!(!d.observed(Ok(Some(true)), Duration::ZERO));
        assert_eq!(d.state, LeaseState::Lost);
    }

    #[test]
    fn a_daemon_that_cannot_answer_closes_the_gate_until_it_answers() {
        let mut d = lease();
        d.set(LeaseState::Joined);
        let timeout = ClusterError::Timeout {
            op: "inquire lockspace",
            limit: Duration::from_secs(1),
        };
        assert!(!d.observed(Err(timeout), Duration::from_secs(1)));
        assert!(!d.usable());
        assert!(!d.stat().valid);
        assert!(!d.observed(Ok(Some(true)), Duration::ZERO));
        assert!(d.usable());
    }

    #[test]
    fn a_failed_join_ends_as_left() {
        let mut d = lease();
        d.set(LeaseState::Joining);
        assert!(!d.observed(Ok(None), Duration::ZERO));
        assert_eq!(d.state, LeaseState::Left);
    }

    #[test]
    fn only_the_spm_reports_its_own_id() {
        let spm = Spm {
            role: SpmRole::Spm,
            master: None,
            lver: 4,
        };
        assert_eq!(
            spm.status(3),
            SpmStatus {
                spm_id: 3,
                role: SpmRole::Spm,
                lver: 4
            }
        );
        assert_eq!(Spm::default().status(3).spm_id, -1);
    }
}
