//! The live merge's wire vocabulary: `VM.merge`'s parameters (VDSM's `DriveSpecVolume`,
//! `baseVolUUID`, `topVolUUID`, `bandwidth`, `jobUUID`), the block job a VM's stats show in
//! `vmJobs` (VDSM's `BlockJobInfo`), and what a done merge did (its `Host.getJobs` result).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// VDSM's `DriveSpecVolume`: a VM's disk named by its volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveSpec {
    /// The pool.
    #[serde(rename = "poolID")]
    pub pool: Uuid,
    /// The storage domain.
    #[serde(rename = "domainID")]
    pub domain: Uuid,
    /// The image.
    #[serde(rename = "imageID")]
    pub image: Uuid,
    /// The volume the disk uses (its leaf).
    #[serde(rename = "volumeID")]
    pub volume: Uuid,
}

/// Parameters of `VM.merge`.
#[derive(Debug, Clone, Deserialize)]
pub struct MergeParams {
    /// The VM.
    #[serde(rename = "vmID")]
    pub vm_id: Uuid,
    /// The disk.
    pub drive: DriveSpec,
    /// The volume that receives the data and stays.
    #[serde(rename = "baseVolUUID")]
    pub base: Uuid,
    /// The volume merged away.
    #[serde(rename = "topVolUUID")]
    pub top: Uuid,
    /// I/O limit in MiB/s; 0 for none.
    #[serde(default)]
    pub bandwidth: u64,
    /// The job id (generated when absent).
    #[serde(rename = "jobUUID", default)]
    pub job: Option<Uuid>,
}

/// A block job in a VM's `vmJobs`, as VDSM's `BlockJobInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmBlockJob {
    /// The job id.
    pub id: Uuid,
    /// Always `block`.
    #[serde(rename = "jobType")]
    pub job_type: &'static str,
    /// Always `commit`.
    #[serde(rename = "blockJobType")]
    pub block_job_type: &'static str,
    /// The disk (`vda`).
    pub drive: String,
    /// The image.
    #[serde(rename = "imgUUID")]
    pub image: Uuid,
    /// I/O limit in MiB/s (0: none).
    pub bandwidth: u64,
    /// Bytes done, as a string (VDSM's).
    pub cur: String,
    /// Bytes to do, as a string.
    pub end: String,
}

/// What a done merge did (its `result` in `Host.getJobs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MergeResult {
    /// The volume that received the data.
    pub base: Uuid,
    /// The volume merged away, and deleted.
    pub top: Uuid,
    /// Whether `top` was the disk's active layer (the VM now writes to `base`).
    pub active: bool,
    /// The pivots asked of libvirt (active merges).
    pub pivot_attempts: u32,
}
