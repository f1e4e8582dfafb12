//! Parameter types of the snapshot, freeze and job verbs (VDSM-REFERENCE §2.1, §5.2).

use serde::Deserialize;
use uuid::Uuid;

use super::snapshot_types::Quiesce;

/// One entry of `snapDrives`. The engine's form is `{domainID, imageID, baseVolumeID,
/// volumeID}`; the direct-LUN form `{baseGUID, GUID}` is recognized so it can be refused.
#[derive(Debug, Clone, Deserialize)]
pub struct SnapDrive {
    /// The storage domain.
    #[serde(rename = "domainID", default)]
    pub domain: Option<Uuid>,
    /// The image.
    #[serde(rename = "imageID", default)]
    pub image: Option<Uuid>,
    /// The volume the disk uses now.
    #[serde(rename = "baseVolumeID", default)]
    pub base: Option<Uuid>,
    /// The pre-created volume to switch to.
    #[serde(rename = "volumeID", default)]
    pub volume: Option<Uuid>,
    /// A direct LUN (refused).
    #[serde(rename = "GUID", default)]
    pub guid: Option<String>,
}

/// Parameters of `VM.snapshot`.
#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotParams {
    /// The VM.
    #[serde(rename = "vmID")]
    pub vm_id: Uuid,
    /// The disks to switch.
    #[serde(rename = "snapDrives")]
    pub drives: Vec<SnapDrive>,
    /// VDSM's `sdUUID,spUUID,dumpImg,dumpVol,confImg,confVol`: save the guest's RAM too.
    #[serde(rename = "snapMemory", default)]
    pub snap_memory: Option<String>,
    /// rvdsm's: how the RAM is saved (the configuration's default when absent).
    #[serde(rename = "memoryMode", default)]
    pub memory_mode: Option<crate::api::snapshot_types::MemoryMode>,
    /// The caller froze the guest: neither freeze nor thaw.
    #[serde(default)]
    pub frozen: Option<bool>,
    /// The job id (generated when absent).
    #[serde(rename = "jobUUID", default)]
    pub job: Option<Uuid>,
    /// Overall limit, minutes (VDSM's default 30).
    #[serde(default)]
    pub timeout: Option<i64>,
    /// Minutes after the job's start past which the switch is no longer attempted (8).
    #[serde(default)]
    pub freeze_timeout: Option<i64>,
    /// rvdsm's quiesce mode: `prefer` (default), `require`, `skip`.
    #[serde(default)]
    pub quiesce: Option<Quiesce>,
}

/// Parameters of `VM.freeze`.
#[derive(Debug, Clone, Deserialize)]
pub struct FreezeParams {
    /// The VM.
    #[serde(rename = "vmID")]
    pub vm_id: Uuid,
    /// Only these mount points (all when absent).
    #[serde(default)]
    pub mountpoints: Option<Vec<String>>,
    /// Seconds after which rvdsmd thaws the guest itself (config default 60).
    #[serde(rename = "autoThawSeconds", default)]
    pub auto_thaw_seconds: Option<u64>,
}

/// Parameters of `Host.getJobs`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GetJobsParams {
    /// Only jobs of this type (`virt`).
    #[serde(default)]
    pub job_type: Option<String>,
    /// Only these jobs.
    #[serde(default)]
    pub job_ids: Option<Vec<Uuid>>,
}
