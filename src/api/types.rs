//! Parameter and result types of the verbs, with VDSM's wire names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Parameters of verbs that take only a VM.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VmIdParams {
    /// The VM.
    #[serde(rename = "vmID")]
    pub vm_id: Uuid,
}

/// Parameters of `Host.getVMList`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct GetVmListParams {
    /// Accepted and ignored, as VDSM does.
    #[serde(rename = "fullStatus", default)]
    pub full_status: Option<bool>,
    /// Only these VMs; all when empty.
    #[serde(rename = "vmList", default)]
    pub vm_list: Vec<Uuid>,
    /// Accepted and ignored, as VDSM does.
    #[serde(rename = "onlyUUID", default)]
    pub only_uuid: Option<bool>,
}

/// Parameters of verbs that take none.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct NoParams {}

/// A VM's status, with VDSM's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmStatus {
    /// Running.
    Up,
    /// Paused (by a user, an I/O error, a migration step...).
    Paused,
    /// Defined but not running.
    Down,
    /// Shutting down.
    #[serde(rename = "Powering down")]
    PoweringDown,
    /// Being started.
    WaitForLaunch,
    /// Suspended to RAM by the guest.
    Suspended,
}

/// One entry of `Host.getVMList`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmSummary {
    /// The libvirt domain UUID.
    pub vm_id: Uuid,
    /// Its status.
    pub status: VmStatus,
    /// When the status was read, in monotonic milliseconds (as VDSM).
    pub status_time: u64,
}

/// One image in a disk's backing chain, from the active layer down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainLink {
    /// The image file or device.
    pub path: String,
    /// Its format (`qcow2`, `raw`), when libvirt knows it.
    pub format: Option<String>,
}

/// One disk of `VM.getStats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskStats {
    /// The guest device name (`vda`).
    pub target: String,
    /// `disk`, `lun`, `cdrom` or `floppy`.
    pub device: String,
    /// `file`, `block`, `network`...
    pub disk_type: String,
    /// The active layer the VM writes to (absent for an empty drive).
    pub path: Option<String>,
    /// The active layer's format.
    pub format: Option<String>,
    /// Whether the guest sees it read-only.
    pub readonly: bool,
    /// Whether it is shared with other VMs.
    pub shareable: bool,
    /// The backing chain below the active layer, nearest first, as libvirt reports it.
    pub backing_chain: Vec<ChainLink>,
}

/// The result element of `VM.getStats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmStats {
    /// The libvirt domain UUID.
    pub vm_id: Uuid,
    /// The libvirt domain name.
    pub vm_name: String,
    /// Its status.
    pub status: VmStatus,
    /// When the status was read, in monotonic milliseconds.
    pub status_time: u64,
    /// Disks by target name.
    pub disks: BTreeMap<String, DiskStats>,
    /// Present while rvdsm holds the guest frozen through `VM.freeze` (rvdsm's addition, as
    /// KubeVirt shows its freeze status); a snapshot's own freeze lasts only its switch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frozen: Option<FrozenBy>,
}

/// Who holds a guest frozen, and until when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrozenBy {
    /// `VM.freeze`.
    pub by: String,
    /// Epoch seconds of the auto-thaw deadline.
    pub until: u64,
}

/// One package version in `Host.getCapabilities` (VDSM's `packages2` entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageVersion {
    /// `major.minor.release`.
    pub version: String,
}

/// The result of `Host.getCapabilities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The host's UUID (libvirt's host UUID).
    pub uuid: String,
    /// rvdsm's version.
    pub software_version: String,
    /// Always `"true"`: live external snapshots are what rvdsm is for.
    #[serde(rename = "liveSnapshot")]
    pub live_snapshot: String,
    /// libvirt and QEMU versions, keyed as VDSM keys them.
    pub packages2: BTreeMap<String, PackageVersion>,
    /// The libvirt URI rvdsm drives.
    #[serde(rename = "libvirtUri")]
    pub libvirt_uri: String,
    /// The host's storage pool: the `storagepoolID` storage verbs expect.
    #[serde(rename = "storagePool")]
    pub storage_pool: Uuid,
    /// Every verb served.
    #[serde(rename = "supportedVerbs")]
    pub supported_verbs: Vec<String>,
}
