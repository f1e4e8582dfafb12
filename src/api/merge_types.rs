//! The live merge's wire vocabulary: `VM.merge`'s parameters (VDSM's `DriveSpecVolume`,
//! `baseVolUUID`, `topVolUUID`, `bandwidth`, `jobUUID`), the block job a VM's stats show in
//! `vmJobs` (VDSM's `BlockJobInfo`), and the cold merge's and the copy's parameters (what
//! those jobs did lives with the jobs, in `jobs::results`).

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

/// VDSM's `SubchainInfo`: a cold merge of `top_id` into its parent `base_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubchainInfo {
    /// The storage domain.
    pub sd_id: Uuid,
    /// The image.
    pub img_id: Uuid,
    /// The volume merged away.
    pub top_id: Uuid,
    /// The volume that receives the data.
    pub base_id: Uuid,
    /// The base's generation the caller expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_generation: Option<u32>,
}

/// Parameters of `StoragePool.prepareMerge` and `StoragePool.finalizeMerge`.
#[derive(Debug, Clone, Deserialize)]
pub struct PoolSubchainParams {
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// The subchain.
    #[serde(rename = "subchainInfo")]
    pub subchain: SubchainInfo,
}

/// Parameters of `SDM.merge`.
#[derive(Debug, Clone, Deserialize)]
pub struct SdmMergeParams {
    /// The job id.
    pub job_id: Uuid,
    /// The subchain.
    pub subchain_info: SubchainInfo,
    /// Merge `top`'s dirty bitmaps into `base` too.
    #[serde(default)]
    pub merge_bitmaps: bool,
}

/// VDSM's `CopyDataDIVEndpoint` (`endpoint_type: "div"`): a volume of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyEndpoint {
    /// Only `div` (domain, image, volume) is served.
    pub endpoint_type: EndpointType,
    /// The storage domain.
    pub sd_id: Uuid,
    /// The image.
    pub img_id: Uuid,
    /// The volume.
    pub vol_id: Uuid,
    /// The volume's generation the caller expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    /// Whether the caller prepared the volume already (nothing to do on a file domain).
    #[serde(default)]
    pub prepared: bool,
}

/// `CopyDataEndpointType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointType {
    /// A volume of a storage domain.
    Div,
}

/// Parameters of `SDM.copy_data`.
#[derive(Debug, Clone, Deserialize)]
pub struct CopyDataParams {
    /// The job id.
    pub job_id: Uuid,
    /// What is copied (its whole chain, as the guest sees it).
    pub source: CopyEndpoint,
    /// Where to (an existing volume, written over).
    pub destination: CopyEndpoint,
    /// Refused when true: bitmaps are not copied.
    #[serde(default)]
    pub copy_bitmaps: bool,
}

/// Parameters of `Image.reconcileVolumeChain`.
#[derive(Debug, Clone, Deserialize)]
pub struct ReconcileParams {
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
    /// The image.
    #[serde(rename = "imageID")]
    pub image: Uuid,
    /// The leaf the caller last knew.
    #[serde(rename = "leafVolID")]
    pub leaf: Uuid,
}
