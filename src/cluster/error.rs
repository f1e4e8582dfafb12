//! Errors of the cluster module; `services::errors` gives them VDSM's codes.

use std::time::Duration;

use uuid::Uuid;

use crate::sys::sanlock::SanlockError;

/// A cluster failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// This host has not joined the domain's lockspace (661).
    #[error(
        "Cannot acquire host id: host id {host_id} has not joined the lockspace of domain \
         {domain} (StoragePool.connect joins it)"
    )]
    NotJoined {
        /// The domain.
        domain: Uuid,
        /// This host's id.
        host_id: u64,
    },
    /// This host lost its lease in the domain's lockspace (661).
    #[error(
        "Cannot acquire host id: this host lost its lease in the lockspace of domain {domain}; \
         no metadata change until it holds it again"
    )]
    LeaseLost {
        /// The domain.
        domain: Uuid,
    },
    /// The daemon did not confirm the lease at the last check (661).
    #[error(
        "Cannot acquire host id: sanlock did not confirm this host's lease in domain {domain} \
         at the last check"
    )]
    LeaseUnknown {
        /// The domain.
        domain: Uuid,
    },
    /// The join could not begin (661).
    #[error("Cannot acquire host id: domain {domain}: {why}")]
    Join {
        /// The domain.
        domain: Uuid,
        /// Why.
        why: String,
    },
    /// The lockspace could not be left (662).
    #[error("Cannot release host id: domain {domain}: {why}")]
    Leave {
        /// The domain.
        domain: Uuid,
        /// Why.
        why: String,
    },
    /// The verb needs the SPM role, which this host does not hold (654).
    #[error("Not SPM: this host is not the SPM of its pool (StoragePool.spmStart)")]
    NotSpm,
    /// Refused while this host is the SPM (656).
    #[error("Operation not allowed while SPM is active: StoragePool.spmStop first")]
    IsSpm,
    /// Another live host holds the SPM lease (651).
    #[error("Cannot obtain lock: the SPM lease is held by another host: {0}")]
    SpmHeld(SanlockError),
    /// Another host holds the lease of a volume a job would write (651).
    #[error("Cannot obtain lock: the lease of volume {volume} is held by another host: {source}")]
    VolumeLeaseHeld {
        /// The volume.
        volume: Uuid,
        /// sanlock's refusal.
        source: SanlockError,
    },
    /// spmStart while another runs (650).
    #[error("Error starting SPM: another StoragePool.spmStart is running")]
    SpmContending,
    /// spmStop while an spmStart runs (653).
    #[error("Error stopping SPM: it is being started")]
    SpmStarting,
    /// spmStop while SPM tasks run (653).
    #[error("Error stopping SPM, SPM has unfinished task(s): {0}")]
    SpmBusy(String),
    /// The host id of the request is not this host's (700).
    #[error(
        "Host id not found or does not match manager host id: this host's is {expected}, the request's {got}"
    )]
    HostIdMismatch {
        /// The configured one.
        expected: u64,
        /// The request's.
        got: i64,
    },
    /// This host runs alone: no host id is configured (91).
    #[error(
        "this host runs without sanlock: set [cluster] host_id in its configuration to share domains"
    )]
    NotClustered,
    /// A sanlock call failed (650).
    #[error("{0}")]
    Sanlock(SanlockError),
    /// A call to the sanlock daemon did not end in time (650).
    #[error("sanlock {op} did not answer within {limit:?}")]
    Timeout {
        /// The call.
        op: &'static str,
        /// Its bound.
        limit: Duration,
    },
    /// A bug (100).
    #[error("{0}")]
    Unexpected(String),
}
