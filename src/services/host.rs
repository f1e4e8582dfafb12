//! Host and VM inventory: `Host.ping2`, `Host.getCapabilities`, `Host.getVMList`,
//! `VM.getStats`.

use std::collections::BTreeMap;

use crate::api::ApiError;
use crate::api::VERBS;
use crate::api::types::FrozenBy;
use crate::api::types::{
    Capabilities, GetVmListParams, PackageVersion, VmIdParams, VmStats, VmSummary,
};
use crate::clock::monotonic_millis;
use crate::services::FreezeService;
use crate::virt::Hypervisor;

/// Answers inventory questions about the host and its VMs.
#[derive(Clone)]
pub struct HostService {
    hypervisor: Hypervisor,
    pool: uuid::Uuid,
    freezes: FreezeService,
}

impl HostService {
    /// A service over `hypervisor`, on a host whose storage pool is `pool`; `freezes` tells
    /// which guests rvdsm holds frozen.
    pub fn new(hypervisor: Hypervisor, pool: uuid::Uuid, freezes: FreezeService) -> Self {
        Self {
            hypervisor,
            pool,
            freezes,
        }
    }

    /// `Host.ping2`: answers without touching libvirt, so a manager can tell "daemon up" from
    /// "hypervisor up".
    pub fn ping(&self) {}

    /// `Host.getCapabilities`.
    pub async fn capabilities(&self) -> Result<Capabilities, ApiError> {
        let host = self.hypervisor.host_info().await?;
        let packages2 = BTreeMap::from([
            package("libvirt", &host.libvirt_version),
            package("qemu-kvm", &host.qemu_version),
            package("rvdsm", crate::VERSION),
        ]);
        Ok(Capabilities {
            uuid: host.uuid,
            software_version: crate::VERSION.to_owned(),
            live_snapshot: "true".to_owned(),
            packages2,
            libvirt_uri: self.hypervisor.uri().to_owned(),
            storage_pool: self.pool,
            supported_verbs: VERBS.iter().map(|v| v.name.to_owned()).collect(),
        })
    }

    /// `Host.getVMList`: every VM libvirt knows, optionally only those in `vmList`.
    pub async fn vm_list(&self, params: GetVmListParams) -> Result<Vec<VmSummary>, ApiError> {
        let status_time = monotonic_millis();
        let domains = self.hypervisor.list_domains().await?;
        Ok(domains
            .into_iter()
            .filter(|d| params.vm_list.is_empty() || params.vm_list.contains(&d.uuid))
            .map(|d| VmSummary {
                vm_id: d.uuid,
                status: d.status,
                status_time,
            })
            .collect())
    }

    /// `VM.getStats`: a one-element list, as VDSM returns it.
    pub async fn vm_stats(&self, params: VmIdParams) -> Result<Vec<VmStats>, ApiError> {
        let status_time = monotonic_millis();
        let (info, disks) = self.hypervisor.domain_disks(params.vm_id).await?;
        Ok(vec![VmStats {
            vm_id: info.uuid,
            vm_name: info.name,
            status: info.status,
            status_time,
            disks: disks.into_iter().map(|d| (d.target.clone(), d)).collect(),
            frozen: self
                .freezes
                .owned_until(info.uuid)
                .map(|(by, until)| FrozenBy { by, until }),
        }])
    }
}

fn package(name: &str, version: &str) -> (String, PackageVersion) {
    (
        name.to_owned(),
        PackageVersion {
            version: version.to_owned(),
        },
    )
}
