//! Parameter and result types of the pool verbs that coordinate hosts sharing domains
//! (`StoragePool.connect`, `disconnect`, `spmStart`, `spmStop`, `getSpmStatus`) and of
//! `Host.getStorageRepoStats`, with VDSM's wire names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::storage_types::number_or_string;

/// Parameters of `StoragePool.connect`.
#[derive(Debug, Clone, Deserialize)]
pub struct ConnectPoolParams {
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// This host's id in the pool's lockspaces.
    #[serde(rename = "hostID", deserialize_with = "number_or_string")]
    pub host_id: i64,
    /// Unused (VDSM keeps it for old engines).
    #[serde(rename = "scsiKey", default)]
    pub scsi_key: Option<serde_json::Value>,
    /// The domain that holds the pool's SPM lease.
    #[serde(rename = "masterSdUUID")]
    pub master: Uuid,
    /// The master domain's version, as the engine knows it.
    #[serde(rename = "masterVersion", deserialize_with = "number_or_string")]
    pub master_version: i64,
    /// The pool's domains and their states (`{sdUUID: "active"}`); absent: every domain
    /// attached to the pool.
    #[serde(rename = "domainDict", default)]
    pub domains: Option<BTreeMap<Uuid, String>>,
}

/// Parameters of `StoragePool.disconnect`.
#[derive(Debug, Clone, Deserialize)]
pub struct DisconnectPoolParams {
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// This host's id.
    #[serde(rename = "hostID", deserialize_with = "number_or_string")]
    pub host_id: i64,
    /// Unused.
    #[serde(rename = "scsiKey", default)]
    pub scsi_key: Option<serde_json::Value>,
    /// Unused (VDSM ignores it too).
    #[serde(default)]
    pub remove: Option<bool>,
}

/// Parameters of `StoragePool.spmStart`; VDSM ignores all but the pool.
#[derive(Debug, Clone, Deserialize)]
pub struct SpmStartParams {
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// Deprecated.
    #[serde(rename = "prevID", default)]
    pub prev_id: Option<serde_json::Value>,
    /// Deprecated.
    #[serde(rename = "prevLver", default)]
    pub prev_lver: Option<serde_json::Value>,
    /// Unused.
    #[serde(rename = "enableScsiFencing", default)]
    pub enable_scsi_fencing: Option<serde_json::Value>,
    /// Most hosts in the cluster (the lockspace was formatted for 2000).
    #[serde(rename = "maxHostID", default)]
    pub max_host_id: Option<serde_json::Value>,
    /// The master domain's expected version.
    #[serde(rename = "domVersion", default)]
    pub dom_version: Option<serde_json::Value>,
}

/// Parameters of `StoragePool.spmStop` and `StoragePool.getSpmStatus`.
#[derive(Debug, Clone, Deserialize)]
pub struct PoolIdParams {
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
}

/// Parameters of `Host.getStorageRepoStats`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RepoStatsParams {
    /// Only these domains (empty: all).
    #[serde(default)]
    pub domains: Vec<Uuid>,
}

/// VDSM's `SpmStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpmStatusInfo {
    /// `SPM`, `Free` or `Contend`: this host's role.
    #[serde(rename = "spmStatus")]
    pub status: String,
    /// The SPM lease's version (-1: unknown).
    #[serde(rename = "spmLver")]
    pub lver: i64,
    /// The SPM's host id (-1: none).
    #[serde(rename = "spmId")]
    pub spm_id: i64,
}

/// VDSM's `StorageDomainVitals` of one domain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainVitals {
    /// 0, or the code of the last check's failure.
    pub code: i32,
    /// Seconds since the last check, one decimal, as a string.
    #[serde(rename = "lastCheck")]
    pub last_check: String,
    /// How long the last check took, seconds, as a string.
    pub delay: String,
    /// The last check succeeded.
    pub valid: bool,
    /// The domain's version.
    pub version: u32,
    /// This host holds its lease in the domain's lockspace.
    pub acquired: bool,
    /// A check has run (not the initial guess).
    pub actual: bool,
}

/// VDSM's `Lease`: an external lease of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseId {
    /// The domain holding it.
    pub sd_id: Uuid,
    /// Its id (a VM's UUID, for a VM lease).
    pub lease_id: Uuid,
}

/// Parameters of `Lease.create`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateLeaseParams {
    /// The lease.
    pub lease: LeaseId,
    /// Metadata for the lease's value block (job fencing); not supported.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// Parameters of `Lease.delete`, `Lease.info` and `Lease.status`.
#[derive(Debug, Clone, Deserialize)]
pub struct LeaseParams {
    /// The lease.
    pub lease: LeaseId,
}

/// VDSM's `LeaseInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseInfo {
    /// The domain holding it.
    pub sd_id: Uuid,
    /// Its id.
    pub lease_id: Uuid,
    /// The domain's leases volume.
    pub path: String,
    /// The lease's offset there.
    pub offset: u64,
}

/// VDSM's `ExternalLeaseStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseStatus {
    /// The host ids holding it (empty: free).
    pub owners: Vec<u64>,
    /// Bumped at each acquire; `null` while the lease is free (as VDSM answers).
    pub version: Option<u64>,
}
