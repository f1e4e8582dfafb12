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
    /// Its RAM being saved by `VM.hibernate` (libvirt's save); `Down` once saved.
    #[serde(rename = "Saving State")]
    SavingState,
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
    /// The upstream version.
    pub version: String,
    /// The distribution's release of it.
    pub release: String,
}

/// The host's operating system, as VDSM reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatingSystem {
    /// `ID` of os-release (`debian`).
    pub name: String,
    /// `VERSION_ID`.
    pub version: String,
    /// The kernel release.
    pub release: String,
    /// `PRETTY_NAME`.
    pub pretty_name: String,
}

/// One host network interface, read-only (rvdsm configures no networks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostNic {
    /// The MAC address.
    pub hwaddr: String,
    /// The MTU (a string, as VDSM).
    pub mtu: String,
    /// Link speed in Mb/s (0 when unknown).
    pub speed: u64,
}

/// The result of `Host.getCapabilities`, with VDSM's names and value types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// The host's UUID (libvirt's host UUID).
    pub uuid: String,
    /// rvdsm's version.
    #[serde(rename = "software_version")]
    pub software_version: String,
    /// rvdsm's revision (`0`).
    #[serde(rename = "software_revision")]
    pub software_revision: String,
    /// `rvdsm`.
    #[serde(rename = "version_name")]
    pub version_name: String,
    /// Compatibility levels of the API, as VDSM's `clusterLevels`.
    pub cluster_levels: Vec<String>,
    /// Engine versions this host works with.
    #[serde(rename = "supportedENGINEs")]
    pub supported_engines: Vec<String>,
    /// `kvm`.
    pub vm_types: Vec<String>,
    /// Whether `/dev/kvm` exists (`"true"`/`"false"`).
    pub kvm_enabled: String,
    /// CPU model name.
    pub cpu_model: String,
    /// CPU flags, comma-separated.
    pub cpu_flags: String,
    /// Cores (a string, as VDSM).
    pub cpu_cores: String,
    /// Sockets.
    pub cpu_sockets: String,
    /// Logical CPUs.
    pub cpu_threads: String,
    /// MHz.
    pub cpu_speed: String,
    /// Online CPUs, comma-separated ids.
    pub online_cpus: String,
    /// Memory in MiB (a string).
    pub mem_size: String,
    /// Memory reserved for the host, MiB (a string).
    pub reserved_mem: String,
    /// Per-guest overhead, MiB (a string).
    pub guest_overhead: String,
    /// The OS.
    pub operating_system: OperatingSystem,
    /// Kernel, libvirt, QEMU and rvdsm versions, keyed as VDSM keys them.
    pub packages2: BTreeMap<String, PackageVersion>,
    /// Always `"true"`: live external snapshots are what rvdsm is for.
    pub live_snapshot: String,
    /// `"true"`: `VM.merge` is served.
    pub live_merge: String,
    /// Network interfaces, read from the kernel.
    pub nics: BTreeMap<String, HostNic>,
    /// Bridges (names only; read-only).
    pub bridges: BTreeMap<String, serde_json::Value>,
    /// Logical networks: none (rvdsm configures no networks).
    pub networks: BTreeMap<String, serde_json::Value>,
    /// Bonds: none configured by rvdsm.
    pub bondings: BTreeMap<String, serde_json::Value>,
    /// VLANs: none configured by rvdsm.
    pub vlans: BTreeMap<String, serde_json::Value>,
    /// Hooks: rvdsm runs none.
    pub hooks: BTreeMap<String, serde_json::Value>,
    /// No host-level selinux report: `{}`.
    pub selinux: BTreeMap<String, serde_json::Value>,
    /// Always `false`.
    pub hosted_engine_deployed: bool,
    /// The libvirt URI rvdsm drives (rvdsm's addition).
    pub libvirt_uri: String,
    /// The host's storage pool: the `storagepoolID` storage verbs expect (rvdsm's addition).
    pub storage_pool: Uuid,
    /// Every verb served (rvdsm's addition).
    pub supported_verbs: Vec<String>,
}
