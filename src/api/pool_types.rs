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

/// `domainList` of `StoragePool.create`: a list, or a comma-separated string as older engines
/// send it.
fn uuid_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Uuid>, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                Uuid::parse_str(s).map_err(|_| D::Error::custom(format!("{s:?} is not a UUID")))
            })
            .collect(),
        list @ serde_json::Value::Array(_) => {
            serde_json::from_value(list).map_err(D::Error::custom)
        }
        other => Err(D::Error::custom(format!(
            "expected a list of UUIDs, got {other}"
        ))),
    }
}

/// Parameters of `StoragePool.create`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreatePoolParams {
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// Its name (`POOL_DESCRIPTION`).
    pub name: String,
    /// The domain that becomes its master.
    #[serde(rename = "masterSdUUID")]
    pub master: Uuid,
    /// The master's first version.
    #[serde(rename = "masterVersion", deserialize_with = "number_or_string")]
    pub master_version: i64,
    /// The pool's domains, the master among them.
    #[serde(rename = "domainList", deserialize_with = "uuid_list")]
    pub domains: Vec<Uuid>,
    /// Unused: the lease timing is `[cluster] io_timeout_secs`.
    #[serde(rename = "lockRenewalIntervalSec", default)]
    pub lock_renewal_interval: Option<serde_json::Value>,
    /// Unused (as above).
    #[serde(rename = "leaseTimeSec", default)]
    pub lease_time: Option<serde_json::Value>,
    /// Unused (as above).
    #[serde(rename = "ioOpTimeoutSec", default)]
    pub io_op_timeout: Option<serde_json::Value>,
    /// Unused (as above).
    #[serde(rename = "leaseRetries", default)]
    pub lease_retries: Option<serde_json::Value>,
}

/// Parameters of `StorageDomain.attach` and `StorageDomain.activate`.
#[derive(Debug, Clone, Deserialize)]
pub struct PoolDomainParams {
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
}

/// Parameters of `StorageDomain.deactivate`.
#[derive(Debug, Clone, Deserialize)]
pub struct DeactivateDomainParams {
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// The master after the change: another domain moves the master there (BLANK: none).
    #[serde(rename = "masterSdUUID")]
    pub master: Uuid,
    /// The master's version after the change.
    #[serde(rename = "masterVersion", deserialize_with = "number_or_string")]
    pub master_version: i64,
}

/// Parameters of `StorageDomain.detach`.
#[derive(Debug, Clone, Deserialize)]
pub struct DetachDomainParams {
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// Unused (the master cannot be detached).
    #[serde(rename = "masterSdUUID", default)]
    pub master: Option<Uuid>,
    /// Unused.
    #[serde(
        rename = "masterVersion",
        default,
        deserialize_with = "optional_number_or_string"
    )]
    pub master_version: Option<i64>,
    /// Unused: a forced detach is not offered.
    #[serde(default)]
    pub force: Option<serde_json::Value>,
}

fn optional_number_or_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<i64>, D::Error> {
    number_or_string(d).map(Some)
}

/// Parameters of `StorageDomain.format`.
#[derive(Debug, Clone, Deserialize)]
pub struct FormatDomainParams {
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
    /// Format a domain still attached to a pool this host is not connected to.
    #[serde(rename = "autoDetach", deserialize_with = "bool_or_string")]
    pub auto_detach: bool,
}

/// A boolean, or VDSM's `"true"`/`"false"` strings.
fn bool_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => Ok(b),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(D::Error::custom(format!("expected a boolean, got {other}"))),
    }
}

/// Parameters of `StoragePool.switchMaster`.
#[derive(Debug, Clone, Deserialize)]
pub struct SwitchMasterParams {
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// The master now.
    #[serde(rename = "oldMasterUUID")]
    pub old: Uuid,
    /// The master after.
    #[serde(rename = "newMasterUUID")]
    pub new: Uuid,
    /// The master's version after (above the current one).
    #[serde(rename = "masterVersion", deserialize_with = "number_or_string")]
    pub master_version: i64,
}

/// Parameters of `StoragePool.destroy`.
#[derive(Debug, Clone, Deserialize)]
pub struct DestroyPoolParams {
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// This host's id.
    #[serde(rename = "hostID", deserialize_with = "number_or_string")]
    pub host_id: i64,
    /// Unused.
    #[serde(rename = "scsiKey", default)]
    pub scsi_key: Option<serde_json::Value>,
}

/// VDSM's `StoragePoolFullInfo`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolFullInfo {
    /// The pool.
    pub info: PoolInfo,
    /// Each of its active domains.
    pub dominfo: BTreeMap<Uuid, PoolDomainInfo>,
}

/// VDSM's `StoragePoolInfo`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolInfo {
    /// The master domain.
    pub master_uuid: Uuid,
    /// The master's version.
    pub master_ver: i64,
    /// The pool's name.
    pub name: String,
    /// `<sd>:<status>,...`.
    pub domains: String,
    /// The host id of the SPM that last started (-1: none).
    pub spm_id: i64,
    /// Its SDM lease's version.
    pub lver: i64,
    /// The master domain's format version.
    pub version: String,
    /// The master domain's type (`LOCALFS`, `NFS`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// No ISO domain: empty.
    pub isoprefix: String,
    /// `connected`.
    pub pool_status: String,
}

/// VDSM's `StoragePoolDomainInfo`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolDomainInfo {
    /// `Active` or `Attached`.
    pub status: String,
    /// Alerts (none are raised).
    pub alerts: Vec<serde_json::Value>,
    /// No ISO domain: empty.
    pub isoprefix: String,
    /// The domain's format version.
    pub version: u32,
    /// Free bytes.
    pub diskfree: String,
    /// Total bytes.
    pub disktotal: String,
}
