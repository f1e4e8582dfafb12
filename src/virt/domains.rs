//! VMs as libvirt sees them: listing, lookup by UUID, state, disks; and the host's identity.

use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState, DomainStateReasonEnum};
use virt::enumutil::Enum;

use super::connection::Libvirt;
use super::error::{VirtError, code::NO_DOMAIN as VIR_ERR_NO_DOMAIN, libvirt_code};
use super::xml;
use crate::api::types::{DiskStats, VmStatus};

/// What rvdsm needs to know of one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainInfo {
    /// The libvirt domain UUID (rvdsm's vmId).
    pub uuid: Uuid,
    /// The libvirt domain name.
    pub name: String,
    /// Its state, in VDSM's terms.
    pub status: VmStatus,
}

/// The host as libvirt describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostInfo {
    /// The host UUID from libvirt's capabilities.
    pub uuid: String,
    /// libvirt's version, `major.minor.release`.
    pub libvirt_version: String,
    /// The hypervisor's (QEMU's) version, `major.minor.release`.
    pub qemu_version: String,
}

impl Libvirt {
    /// Every VM libvirt knows on this host, running or only defined.
    pub async fn list_domains(&self) -> Result<Vec<DomainInfo>, VirtError> {
        self.call("list domains", |conn| {
            let domains = conn
                .list_all_domains(0)
                .map_err(|e| VirtError::libvirt("list domains", e))?;
            let mut infos = Vec::with_capacity(domains.len());
            for domain in &domains {
                match domain_info(domain) {
                    Ok(info) => infos.push(info),
                    // A domain undefined between the listing and this read is simply gone.
                    Err(err) if err.libvirt_code() == Some(VIR_ERR_NO_DOMAIN) => {}
                    Err(err) => return Err(err),
                }
            }
            Ok(infos)
        })
        .await
    }

    /// One VM and its disks, read from its live XML.
    pub async fn domain_disks(
        &self,
        uuid: Uuid,
    ) -> Result<(DomainInfo, Vec<DiskStats>), VirtError> {
        self.call("read domain", move |conn| {
            let domain = lookup(conn, uuid)?;
            let info = domain_info(&domain)?;
            let text = domain
                .xml_desc(0)
                .map_err(|e| VirtError::libvirt("read domain XML", e))?;
            Ok((info, xml::parse_disks(&text)?))
        })
        .await
    }

    /// Every image file a VM of this host uses or would use when started: the disk sources of
    /// every domain, running or only defined, and the backing chains libvirt reports.
    pub async fn disk_paths_in_use(&self) -> Result<Vec<String>, VirtError> {
        self.call("list disks in use", |conn| {
            let domains = conn
                .list_all_domains(0)
                .map_err(|e| VirtError::libvirt("list domains", e))?;
            let mut paths = Vec::new();
            for domain in &domains {
                let text = match domain.xml_desc(0) {
                    Ok(text) => text,
                    Err(e) if libvirt_code(&e) == VIR_ERR_NO_DOMAIN => continue,
                    Err(e) => return Err(VirtError::libvirt("read domain XML", e)),
                };
                for disk in xml::parse_disks(&text)? {
                    paths.extend(disk.path);
                    paths.extend(disk.backing_chain.into_iter().map(|link| link.path));
                }
            }
            Ok(paths)
        })
        .await
    }

    /// The host's identity and versions.
    pub async fn host_info(&self) -> Result<HostInfo, VirtError> {
        self.call("read host capabilities", |conn| {
            let caps = conn
                .capabilities()
                .map_err(|e| VirtError::libvirt("read capabilities", e))?;
            let libvirt = conn
                .lib_version()
                .map_err(|e| VirtError::libvirt("read libvirt version", e))?;
            let qemu = conn
                .hyp_version()
                .map_err(|e| VirtError::libvirt("read hypervisor version", e))?;
            Ok(HostInfo {
                uuid: xml::host_uuid(&caps)?,
                libvirt_version: version_string(libvirt),
                qemu_version: version_string(qemu),
            })
        })
        .await
    }
}

/// The domain with this UUID, or [`VirtError::NoSuchDomain`].
pub(crate) fn lookup(conn: &Connect, uuid: Uuid) -> Result<Domain, VirtError> {
    let text = uuid.hyphenated().to_string();
    conn.lookup_domain_by_uuid_string(&text).map_err(|e| {
        if libvirt_code(&e) == VIR_ERR_NO_DOMAIN {
            VirtError::NoSuchDomain { uuid: text.clone() }
        } else {
            VirtError::libvirt("look up domain", e)
        }
    })
}

fn domain_info(domain: &Domain) -> Result<DomainInfo, VirtError> {
    let (uuid, name, state, _reason) = identity(domain)?;
    Ok(DomainInfo {
        uuid,
        name,
        status: vm_status(state),
    })
}

/// A domain's UUID, name, state and the state's reason.
pub(crate) fn identity(
    domain: &Domain,
) -> Result<(Uuid, String, Enum<DomainState, u32>, DomainStateReasonEnum), VirtError> {
    let uuid = domain
        .uuid()
        .map_err(|e| VirtError::libvirt("read domain UUID", e))?;
    let name = domain
        .name()
        .map_err(|e| VirtError::libvirt("read domain name", e))?;
    let (state, reason) = domain
        .state()
        .map_err(|e| VirtError::libvirt("read domain state", e))?;
    Ok((uuid, name, state, reason))
}

/// libvirt's domain state in VDSM's vocabulary.
pub(crate) fn vm_status(state: Enum<DomainState, u32>) -> VmStatus {
    match state {
        Enum::Known(DomainState::Running | DomainState::Blocked) => VmStatus::Up,
        Enum::Known(DomainState::Paused) => VmStatus::Paused,
        Enum::Known(DomainState::Shutdown) => VmStatus::PoweringDown,
        Enum::Known(DomainState::Shutoff | DomainState::Crashed) => VmStatus::Down,
        Enum::Known(DomainState::PMSuspended) => VmStatus::Suspended,
        Enum::Known(DomainState::NoState) | Enum::Unknown(_) => VmStatus::WaitForLaunch,
    }
}

/// libvirt encodes versions as `major * 1_000_000 + minor * 1_000 + release`.
fn version_string(encoded: u32) -> String {
    format!(
        "{}.{}.{}",
        encoded / 1_000_000,
        (encoded / 1_000) % 1_000,
        encoded % 1_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_decode() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(7_002_015), "7.2.15");
    }

    #[test]
    fn states_map_to_vdsm_names() {
        assert_eq!(vm_status(Enum::Known(DomainState::Running)), VmStatus::Up);
        assert_eq!(
            vm_status(Enum::Known(DomainState::Paused)),
            VmStatus::Paused
        );
        assert_eq!(vm_status(Enum::Known(DomainState::Shutoff)), VmStatus::Down);
        assert_eq!(vm_status(Enum::Unknown(99)), VmStatus::WaitForLaunch);
    }
}
