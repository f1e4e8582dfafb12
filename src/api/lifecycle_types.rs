//! Parameters and results of the VM lifecycle and monitoring verbs, with VDSM's wire names
//! and its implementation's value types (numbers as strings where VDSM sends strings).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::types::{FrozenBy, VmStatus};

/// `vmParams` of `VM.create`: the libvirt domain XML an engine sends. Other keys (VDSM's
/// legacy dictionary form) are ignored with a log line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VmParams {
    /// The libvirt domain XML, with oVirt's `ovirt-vm` metadata naming each drive's volume
    /// (empty when missing: refused by the service with a clear message).
    #[serde(default)]
    pub xml: String,
    /// Restore: the RAM dump of a memory snapshot (VDSM 4.2+'s form).
    #[serde(rename = "memoryDumpVolume", default)]
    pub memory_dump_volume: Option<super::merge_types::DriveSpec>,
    /// Restore: the configuration saved with it.
    #[serde(rename = "memoryConfVolume", default)]
    pub memory_conf_volume: Option<super::merge_types::DriveSpec>,
    /// Restore: both, as VDSM's legacy string
    /// (`sdUUID,spUUID,dumpImg,dumpVol,confImg,confVol`), after a hibernation.
    #[serde(rename = "hiberVolHandle", default)]
    pub hiber_vol_handle: Option<String>,
}

/// Parameters of `VM.hibernate`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HibernateParams {
    /// The VM.
    #[serde(rename = "vmID")]
    pub vm_id: Uuid,
    /// `sdUUID,spUUID,dumpImg,dumpVol,confImg,confVol`: where the RAM and the configuration go.
    #[serde(rename = "hiberVolHandle")]
    pub hiber_vol_handle: String,
}

/// Parameters of `VM.create`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CreateVmParams {
    /// The VM: must be the `<uuid>` of the XML.
    #[serde(rename = "vmID")]
    pub vm_id: Uuid,
    /// The definition.
    #[serde(rename = "vmParams")]
    pub vm_params: VmParams,
}

/// Parameters of `VM.destroy`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DestroyVmParams {
    /// The VM.
    #[serde(rename = "vmID")]
    pub vm_id: Uuid,
    /// SIGTERM attempts before SIGKILL (1).
    #[serde(rename = "gracefulAttempts", default)]
    pub graceful_attempts: Option<u32>,
}

/// Parameters of `VM.shutdown`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ShutdownVmParams {
    /// The VM.
    #[serde(rename = "vmID")]
    pub vm_id: Uuid,
    /// Seconds to wait before asking the guest (VDSM shows a message meanwhile); 0 here.
    #[serde(default)]
    pub delay: Option<i64>,
    /// The message for the guest's users; accepted, not shown (no display agent).
    #[serde(default)]
    pub message: Option<String>,
    /// Reboot instead of powering off.
    #[serde(default)]
    pub reboot: Option<bool>,
    /// Seconds before `force` destroys the VM (120).
    #[serde(default)]
    pub timeout: Option<i64>,
    /// Destroy the VM if it is still up after `timeout`.
    #[serde(default)]
    pub force: Option<bool>,
}

/// Parameters of `Host.dumpxmls` and `Host.getVMFullList`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct VmListParams {
    /// Only these VMs (all when empty).
    #[serde(rename = "vmList", default)]
    pub vm_list: Vec<Uuid>,
}

/// A VM's short status (`VM.create`'s `vmList`, `Host.getVMList`), as VDSM's `status()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmShortStatus {
    /// The VM.
    pub vm_id: Uuid,
    /// Its status.
    pub status: VmStatus,
    /// Monotonic milliseconds, as a string (VDSM's implementation).
    pub status_time: String,
}

/// The result of `VM.pause` and `VM.cont`: VDSM answers `{"vmList": {}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EmptyVmList {
    /// Always empty.
    #[serde(rename = "vmList")]
    pub vm_list: BTreeMap<String, String>,
}

/// One disk of a VM's stats: VDSM's figures (strings), then rvdsm's view of the disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmDiskStats {
    /// Bytes read since QEMU started.
    pub read_bytes: String,
    /// Bytes written since QEMU started.
    pub written_bytes: String,
    /// Read requests since QEMU started.
    pub read_ops: String,
    /// Write requests since QEMU started.
    pub write_ops: String,
    /// Bytes per second read over the last sampling interval.
    pub read_rate: String,
    /// Bytes per second written over the last sampling interval.
    pub write_rate: String,
    /// Nanoseconds per read over the last interval.
    pub read_latency: String,
    /// Nanoseconds per write over the last interval.
    pub write_latency: String,
    /// Nanoseconds per flush over the last interval.
    pub flush_latency: String,
    /// Bytes the active layer occupies (libvirt's `allocation`).
    pub truesize: String,
    /// The active layer's file size (libvirt's `physical`).
    pub apparentsize: String,
    /// The image, for a drive on a storage volume.
    #[serde(rename = "imageID", skip_serializing_if = "Option::is_none")]
    pub image_id: Option<Uuid>,
    /// rvdsm's view of the disk (target, path, chain...).
    #[serde(flatten)]
    pub device: super::types::DiskStats,
}

/// One network interface of a VM's stats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmNicStats {
    /// The host-side device (`vnet0`).
    pub name: String,
    /// Bytes received since QEMU started.
    pub rx: String,
    /// Bytes sent since QEMU started.
    pub tx: String,
    /// Receive errors.
    pub rx_errors: String,
    /// Received packets dropped.
    pub rx_dropped: String,
    /// Send errors.
    pub tx_errors: String,
    /// Sent packets dropped.
    pub tx_dropped: String,
    /// Seconds (monotonic) of the sample.
    pub sample_time: f64,
}

/// A VM's stats (`VM.getStats`, `Host.getAllVmStats`), in VDSM's shape: the running fields
/// for a VM that runs or is paused, the exit fields for one that is down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmStats {
    /// The VM.
    pub vm_id: Uuid,
    /// Its status.
    pub status: VmStatus,
    /// When the sample was taken, monotonic milliseconds (a string, as VDSM).
    pub status_time: String,
    /// The libvirt domain name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    /// `kvm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_type: Option<String>,
    /// `"true"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kvm_enable: Option<String>,
    /// `"true"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acpi_enable: Option<String>,
    /// Seconds since rvdsm first saw the VM running (since QEMU started, for VMs it started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_time: Option<String>,
    /// `"0"`, or `"-1"` when the sample is stale (libvirt did not answer for three intervals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor_response: Option<String>,
    /// Guest CPU time in user mode over the last interval, percent of one CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_user: Option<String>,
    /// Host system CPU time over the last interval, percent of one CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_sys: Option<String>,
    /// Total CPU nanoseconds (user + system) since QEMU started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_usage: Option<String>,
    /// Whether the CPU figures come from two real samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_actual: Option<bool>,
    /// Virtual CPUs online.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<String>,
    /// Percent of the guest's memory in use (`"0"` without balloon statistics, as VDSM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_usage: Option<String>,
    /// The balloon: `balloon_max`, `balloon_cur` (KiB, strings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balloon_info: Option<BTreeMap<String, String>>,
    /// Host/guest clock difference, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_offset: Option<String>,
    /// Disks by target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disks: Option<BTreeMap<String, VmDiskStats>>,
    /// Network interfaces by host device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<BTreeMap<String, VmNicStats>>,
    /// Block jobs (merges) on the VM's disks, by job id; `{}` when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_jobs: Option<BTreeMap<Uuid, serde_json::Value>>,
    /// 0 normal, 1 error (a VM that is down).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    /// Why it went down, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_message: Option<String>,
    /// VDSM's exit reason number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<u8>,
    /// rvdsm: present while `VM.freeze` holds the guest frozen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frozen: Option<FrozenBy>,
    /// rvdsm: seconds since the figures were sampled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_age: Option<f64>,
    /// rvdsm: whether rvdsm created the VM (`VM.create`) rather than finding it defined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
}

/// VDSM's words for an exit reason number.
pub fn exit_message(reason: u8) -> &'static str {
    match reason {
        0 => "VM terminated succesfully",
        1 => "VM terminated with error",
        2 => "Lost connection with qemu process",
        3 => "failed to start libvirt vm",
        5 => "SaveState succeeded",
        6 => "Admin shut down from the engine",
        7 => "User shut down from within the guest",
        9 => "Failed to find the libvirt domain",
        11 => "VM has been terminated on the host",
        _ => "VM terminated",
    }
}

/// The result of `Host.getStats`, with VDSM's names and value types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStats {
    /// Percent of the host's CPU time in user mode over the last sampling interval.
    pub cpu_user: String,
    /// Percent in system mode.
    pub cpu_sys: String,
    /// Percent idle.
    pub cpu_idle: String,
    /// The 1-minute load average.
    pub cpu_load: String,
    /// Percent of rvdsmd's own CPU use in user mode (0: not measured).
    pub cpu_user_vdsmd: String,
    /// Percent in system mode (0: not measured).
    pub cpu_sys_vdsmd: String,
    /// Available memory, MiB.
    pub mem_free: u64,
    /// Percent of memory in use (a string).
    pub mem_used: String,
    /// Shared memory (KSM), MiB.
    pub mem_shared: u64,
    /// Swap total, MiB.
    pub swap_total: u64,
    /// Swap free, MiB.
    pub swap_free: u64,
    /// VMs known.
    pub vm_count: usize,
    /// VMs running or paused.
    pub vm_active: usize,
    /// VMs migrating (0).
    pub vm_migrating: usize,
    /// Incoming migrations (0).
    pub incoming_vm_migrations: usize,
    /// Outgoing migrations (0).
    pub outgoing_vm_migrations: usize,
    /// Boot time, epoch seconds (a string).
    pub boot_time: String,
    /// Seconds rvdsmd has run (a string).
    pub elapsed_time: String,
    /// Now, UTC, ISO 8601.
    pub date_time: String,
    /// Whether KSM runs.
    pub ksm_state: bool,
    /// KSM pages to scan (0).
    pub ksm_pages: u64,
    /// KSM CPU use (0).
    pub ksm_cpu: u64,
    /// Host NICs' statistics: none reported yet (`{}`).
    pub network: BTreeMap<String, serde_json::Value>,
    /// Storage domains' vitals: none reported yet (`{}`).
    pub storage_domains: BTreeMap<String, serde_json::Value>,
    /// Received packets dropped (a string).
    pub rx_dropped: String,
    /// Sent packets dropped (a string).
    pub tx_dropped: String,
    /// Hosted-engine score (0).
    pub ha_score: u64,
    /// Whether the network configuration differs from the saved one (`"False"`).
    pub net_config_dirty: String,
}
