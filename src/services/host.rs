//! Host and VM inventory: `Host.ping2`, `Host.getCapabilities` (from the kernel, libvirt and
//! the package database), `Host.getStats`, and the monitoring verbs, which answer from the
//! [`Monitor`]'s cache: `Host.getVMList`, `Host.getVMFullList`, `VM.getStats`,
//! `Host.getAllVmStats`, `Host.dumpxmls`.

use std::collections::BTreeMap;
use std::time::Instant;

use uuid::Uuid;

use super::monitor::MonitorError;
use crate::api::ApiError;
use crate::api::VERBS;
use crate::api::lifecycle_types::{HostStats, VmShortStatus};
use crate::api::types::{
    Capabilities, GetVmListParams, HostNic, OperatingSystem, PackageVersion, VmStatus,
};
use crate::hostinfo;
use crate::services::Monitor;
use crate::virt::{SharedHypervisor, VirtError};
use serde_json::value::RawValue;

/// Answers inventory questions about the host and its VMs.
#[derive(Clone)]
pub struct HostService {
    hypervisor: SharedHypervisor,
    pool: Uuid,
    monitor: Monitor,
    started: Instant,
}

impl HostService {
    /// A service over `hypervisor`, on a host whose storage pool is `pool`; `monitor` holds
    /// the sampled VMs.
    pub fn new(hypervisor: SharedHypervisor, pool: Uuid, monitor: Monitor) -> Self {
        Self {
            hypervisor,
            pool,
            monitor,
            started: Instant::now(),
        }
    }

    /// `Host.ping2`: answers without touching libvirt, so a manager can tell "daemon up" from
    /// "hypervisor up".
    pub fn ping(&self) {}

    /// `Host.getCapabilities`.
    pub async fn capabilities(&self) -> Result<Capabilities, HostError> {
        let host = self.hypervisor.host_info().await?;
        let (uri, pool) = (self.hypervisor.uri().to_owned(), self.pool);
        tokio::task::spawn_blocking(move || capabilities_now(host, uri, pool))
            .await
            .map_err(HostError::Panicked)
    }

    /// `Host.getStats`.
    pub async fn stats(&self) -> Result<HostStats, HostError> {
        let (cpu, vms) = (self.monitor.host_cpu(), self.monitor.statuses(&[]));
        let elapsed = self.started.elapsed().as_secs();
        tokio::task::spawn_blocking(move || host_stats_now(cpu, &vms, elapsed))
            .await
            .map_err(HostError::Panicked)
    }

    /// `Host.getVMList` (and `Host.getVMFullList`, which VDSM answers alike): every VM libvirt
    /// knows, from the cache.
    pub fn vm_list(&self, params: GetVmListParams) -> Vec<VmShortStatus> {
        self.monitor.statuses(&params.vm_list)
    }

    /// `Host.getVMFullList`.
    pub fn vm_full_list(&self, only: &[Uuid]) -> Vec<VmShortStatus> {
        self.monitor.statuses(only)
    }

    /// `VM.getStats`: a one-element list, as VDSM returns it, as JSON text.
    pub fn vm_stats_json(&self, vm: Uuid) -> Result<Box<RawValue>, MonitorError> {
        self.monitor.vm_stats_json(vm)
    }

    /// `Host.getAllVmStats`, as JSON text.
    pub fn all_vm_stats_json(&self) -> Result<Box<RawValue>, MonitorError> {
        self.monitor.all_stats_json()
    }

    /// `Host.dumpxmls`.
    pub fn dump_xmls(&self, only: &[Uuid]) -> Result<BTreeMap<Uuid, String>, MonitorError> {
        self.monitor.xmls(only)
    }
}

/// Why a host verb failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// libvirt could not answer.
    #[error(transparent)]
    Virt(#[from] VirtError),
    /// Reading the host's files panicked.
    #[error("reading the host's facts panicked")]
    Panicked(#[source] tokio::task::JoinError),
}

impl From<HostError> for ApiError {
    fn from(err: HostError) -> Self {
        match err {
            HostError::Virt(e) => e.into(),
            HostError::Panicked(e) => ApiError::Unexpected(e.to_string()),
        }
    }
}

fn capabilities_now(host: crate::virt::HostInfo, uri: String, pool: Uuid) -> Capabilities {
    let cpu = hostinfo::parse_cpuinfo(&hostinfo::read("/proc/cpuinfo"));
    let mem = hostinfo::parse_meminfo(&hostinfo::read("/proc/meminfo"));
    let os = hostinfo::parse_os_release(&hostinfo::read("/etc/os-release"));
    let kernel = hostinfo::read("/proc/sys/kernel/osrelease")
        .trim()
        .to_owned();
    let field = |k: &str| os.get(k).cloned().unwrap_or_default();
    let mut packages2: BTreeMap<String, PackageVersion> =
        hostinfo::package_versions(&["libvirt-daemon", "qemu-system-x86", "qemu-utils", "sanlock"])
            .into_iter()
            .map(|(name, (version, release))| {
                let key = match name.as_str() {
                    "libvirt-daemon" => "libvirt".to_owned(),
                    "qemu-system-x86" => "qemu-kvm".to_owned(),
                    "qemu-utils" => "qemu-img".to_owned(),
                    _ => name,
                };
                (key, PackageVersion { version, release })
            })
            .collect();
    // libvirt's and QEMU's own versions win over the package database's when both are known.
    for (name, version) in [
        ("libvirt", &host.libvirt_version),
        ("qemu-kvm", &host.qemu_version),
    ] {
        let release = packages2
            .get(name)
            .map_or("0".to_owned(), |p| p.release.clone());
        packages2.insert(
            name.to_owned(),
            PackageVersion {
                version: version.clone(),
                release,
            },
        );
    }
    packages2.insert(
        "kernel".into(),
        PackageVersion {
            version: kernel.split('-').next().unwrap_or_default().to_owned(),
            release: kernel.split_once('-').map_or("0", |(_, r)| r).to_owned(),
        },
    );
    packages2.insert(
        "rvdsm".into(),
        PackageVersion {
            version: crate::VERSION.to_owned(),
            release: "0".into(),
        },
    );
    let (nics, bridges) = read_nics();
    let online = (0..cpu.threads)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    Capabilities {
        uuid: host.uuid,
        software_version: crate::VERSION.to_owned(),
        software_revision: "0".into(),
        version_name: "rvdsm".into(),
        cluster_levels: ["4.2", "4.3", "4.4", "4.5", "4.6", "4.7"]
            .map(String::from)
            .to_vec(),
        supported_engines: ["4.2", "4.3", "4.4", "4.5", "4.6", "4.7"]
            .map(String::from)
            .to_vec(),
        vm_types: vec!["kvm".into()],
        kvm_enabled: std::path::Path::new("/dev/kvm").exists().to_string(),
        cpu_model: cpu.model,
        cpu_flags: cpu.flags.join(","),
        cpu_cores: cpu.cores.to_string(),
        cpu_sockets: cpu.sockets.to_string(),
        cpu_threads: cpu.threads.to_string(),
        cpu_speed: cpu.speed_mhz,
        online_cpus: online,
        mem_size: (mem.get("MemTotal").copied().unwrap_or(0) / 1024).to_string(),
        reserved_mem: "321".into(),
        guest_overhead: "65".into(),
        operating_system: OperatingSystem {
            name: field("ID"),
            version: field("VERSION_ID"),
            release: kernel,
            pretty_name: field("PRETTY_NAME"),
        },
        packages2,
        live_snapshot: "true".into(),
        live_merge: "true".into(),
        nics,
        bridges,
        networks: BTreeMap::new(),
        bondings: BTreeMap::new(),
        vlans: BTreeMap::new(),
        hooks: BTreeMap::new(),
        selinux: BTreeMap::new(),
        hosted_engine_deployed: false,
        libvirt_uri: uri,
        storage_pool: pool,
        supported_verbs: VERBS.iter().map(|v| v.name.to_owned()).collect(),
    }
}

/// Physical NICs and bridges from `/sys/class/net`.
fn read_nics() -> (
    BTreeMap<String, HostNic>,
    BTreeMap<String, serde_json::Value>,
) {
    let mut nics = BTreeMap::new();
    let mut bridges = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return (nics, bridges);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        if dir.join("bridge").exists() {
            bridges.insert(name, serde_json::json!({}));
        } else if dir.join("device").exists() {
            let read = |f: &str| {
                hostinfo::read(&dir.join(f).to_string_lossy())
                    .trim()
                    .to_owned()
            };
            nics.insert(
                name,
                HostNic {
                    hwaddr: read("address"),
                    mtu: read("mtu"),
                    speed: read("speed").parse().unwrap_or(0),
                },
            );
        }
    }
    (nics, bridges)
}

fn host_stats_now(cpu: Option<[f64; 3]>, vms: &[VmShortStatus], elapsed: u64) -> HostStats {
    let mem = hostinfo::parse_meminfo(&hostinfo::read("/proc/meminfo"));
    let kib = |k: &str| mem.get(k).copied().unwrap_or(0);
    let total = kib("MemTotal").max(1);
    let available = kib("MemAvailable");
    let (_, boot) = hostinfo::parse_proc_stat(&hostinfo::read("/proc/stat"));
    let load = hostinfo::read("/proc/loadavg");
    let [user, sys, idle] = cpu.unwrap_or([0.0, 0.0, 100.0]);
    let active = vms.iter().filter(|v| v.status != VmStatus::Down).count();
    HostStats {
        cpu_user: format!("{user:.2}"),
        cpu_sys: format!("{sys:.2}"),
        cpu_idle: format!("{idle:.2}"),
        cpu_load: load.split_whitespace().next().unwrap_or("0").to_owned(),
        cpu_user_vdsmd: "0.00".into(),
        cpu_sys_vdsmd: "0.00".into(),
        mem_free: available / 1024,
        mem_used: format!("{}", 100 * (total - available.min(total)) / total),
        mem_shared: 0,
        swap_total: kib("SwapTotal") / 1024,
        swap_free: kib("SwapFree") / 1024,
        vm_count: vms.len(),
        vm_active: active,
        vm_migrating: 0,
        incoming_vm_migrations: 0,
        outgoing_vm_migrations: 0,
        boot_time: boot.to_string(),
        elapsed_time: elapsed.to_string(),
        date_time: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        ksm_state: hostinfo::read("/sys/kernel/mm/ksm/run").trim() == "1",
        ksm_pages: 0,
        ksm_cpu: 0,
        network: BTreeMap::new(),
        storage_domains: BTreeMap::new(),
        rx_dropped: "0".into(),
        tx_dropped: "0".into(),
        ha_score: 0,
        net_config_dirty: "False".into(),
    }
}
