//! Reading libvirt's XML: a domain's disks with their backing chains, and the host UUID from
//! the capabilities document. Pure functions over text, so they are tested without libvirt.

use roxmltree::Node;
use uuid::Uuid;

use super::{child, parse};
use crate::api::types::{ChainLink, DiskStats};
use crate::virt::error::VirtError;

/// The disks of a domain, in the order of its XML.
pub fn parse_disks(domain_xml: &str) -> Result<Vec<DiskStats>, VirtError> {
    let doc = parse("domain", domain_xml)?;
    let devices = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("devices"));
    let Some(devices) = devices else {
        return Ok(Vec::new());
    };
    devices
        .children()
        .filter(|n| n.has_tag_name("disk"))
        .map(parse_disk)
        .collect()
}

fn parse_disk(disk: Node) -> Result<DiskStats, VirtError> {
    let disk_type = disk.attribute("type").unwrap_or("file").to_owned();
    let target = child(disk, "target")
        .and_then(|t| t.attribute("dev"))
        .ok_or_else(|| VirtError::Xml {
            what: "domain",
            message: "a disk has no target device".into(),
        })?;
    let format = child(disk, "driver")
        .and_then(|d| d.attribute("type"))
        .map(str::to_owned);
    Ok(DiskStats {
        target: target.to_owned(),
        device: disk.attribute("device").unwrap_or("disk").to_owned(),
        path: source_path(disk, &disk_type),
        format,
        readonly: child(disk, "readonly").is_some(),
        shareable: child(disk, "shareable").is_some(),
        backing_chain: backing_chain(disk),
        disk_type,
    })
}

/// The chain below `node`, following nested `<backingStore>` elements. An empty
/// `<backingStore/>` ends the chain.
fn backing_chain(node: Node) -> Vec<ChainLink> {
    let mut chain = Vec::new();
    let mut current = child(node, "backingStore");
    while let Some(store) = current {
        let store_type = store.attribute("type").unwrap_or("file");
        let Some(path) = source_path(store, store_type) else {
            break;
        };
        chain.push(ChainLink {
            path,
            format: child(store, "format")
                .and_then(|f| f.attribute("type"))
                .map(str::to_owned),
        });
        current = child(store, "backingStore");
    }
    chain
}

/// The path-like attribute of `<source>` that goes with the disk type.
fn source_path(node: Node, disk_type: &str) -> Option<String> {
    let source = child(node, "source")?;
    let attribute = match disk_type {
        "block" => "dev",
        "dir" => "dir",
        "network" => "name",
        "volume" => "volume",
        _ => "file",
    };
    source.attribute(attribute).map(str::to_owned)
}

/// The storage volume a disk's path names: `(domain, image, volume)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskVolume {
    /// The storage domain.
    pub domain: Uuid,
    /// The image.
    pub image: Uuid,
    /// The volume.
    pub volume: Uuid,
}

/// The volume a disk's path (its source, or a link of its backing chain) is on, by the one
/// layout every file domain has, whether the path goes through the pool's link or the
/// domain's mount: `<...>/<domain>/images/<image>/<volume>`, the three ids UUIDs. `None` for
/// any other path (a file outside the storage domains, a network disk): such a disk is on no
/// volume rvdsm knows. Only the spelling rvdsm gives those files counts (lowercase,
/// hyphenated): `{uuid}`, `urn:uuid:...` or upper case name other files.
pub fn disk_volume(path: &str) -> Option<DiskVolume> {
    let path = std::path::Path::new(path);
    let uuid = |p: Option<&std::path::Path>| {
        p.and_then(std::path::Path::file_name)
            .and_then(|n| n.to_str())
            .and_then(|n| {
                Uuid::parse_str(n)
                    .ok()
                    .filter(|u| u.hyphenated().to_string() == n)
            })
    };
    let image_dir = path.parent();
    let images = image_dir.and_then(std::path::Path::parent);
    if images.and_then(std::path::Path::file_name) != Some(std::ffi::OsStr::new("images")) {
        return None;
    }
    Some(DiskVolume {
        domain: uuid(images.and_then(std::path::Path::parent))?,
        image: uuid(image_dir)?,
        volume: uuid(Some(path))?,
    })
}

/// The host UUID from libvirt's capabilities document.
pub fn host_uuid(capabilities_xml: &str) -> Result<String, VirtError> {
    let doc = parse("capabilities", capabilities_xml)?;
    doc.descendants()
        .find(|n| n.has_tag_name("uuid") && n.parent().is_some_and(|p| p.has_tag_name("host")))
        .and_then(|n| n.text())
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| VirtError::Xml {
            what: "capabilities",
            message: "no host UUID".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = r#"<domain type='qemu'><name>g</name><devices>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source file='/sd/images/i/top' index='3'/>
        <backingStore type='file' index='2'>
          <format type='qcow2'/>
          <source file='/sd/images/i/mid'/>
          <backingStore type='file' index='1'>
            <format type='raw'/>
            <source file='/sd/images/i/base'/>
            <backingStore/>
          </backingStore>
        </backingStore>
        <target dev='vda' bus='virtio'/>
      </disk>
      <disk type='block' device='lun'>
        <driver name='qemu' type='raw'/>
        <source dev='/dev/sdb'/>
        <target dev='sda' bus='scsi'/>
        <shareable/>
      </disk>
      <disk type='file' device='cdrom'>
        <target dev='hdc' bus='ide'/>
        <readonly/>
      </disk>
    </devices></domain>"#;

    #[test]
    fn reads_disks_and_chains() {
        let disks = parse_disks(DOMAIN).unwrap();
        assert_eq!(disks.len(), 3);
        let vda = &disks[0];
        assert_eq!(vda.target, "vda");
        assert_eq!(vda.path.as_deref(), Some("/sd/images/i/top"));
        assert_eq!(vda.format.as_deref(), Some("qcow2"));
        let chain: Vec<_> = vda.backing_chain.iter().map(|l| l.path.as_str()).collect();
        assert_eq!(chain, ["/sd/images/i/mid", "/sd/images/i/base"]);
        assert_eq!(vda.backing_chain[1].format.as_deref(), Some("raw"));

        let lun = &disks[1];
        assert_eq!(
            (lun.device.as_str(), lun.disk_type.as_str()),
            ("lun", "block")
        );
        assert_eq!(lun.path.as_deref(), Some("/dev/sdb"));
        assert!(lun.shareable && !lun.readonly);

        let cdrom = &disks[2];
        assert!(cdrom.readonly && cdrom.path.is_none() && cdrom.backing_chain.is_empty());
    }

    #[test]
    fn disk_without_target_is_an_error() {
        let xml = "<domain><devices><disk type='file'/></devices></domain>";
        assert!(matches!(parse_disks(xml), Err(VirtError::Xml { .. })));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_disks("<domain").is_err());
        assert!(host_uuid("<capabilities><host/></capabilities>").is_err());
    }

    #[test]
    fn a_path_names_its_volume_only_by_the_domain_layout() {
        let (sd, img, vol) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let named = DiskVolume {
            domain: sd,
            image: img,
            volume: vol,
        };
        for prefix in ["/rhev/data-center/p", "/var/lib/rvdsm/repo/mnt/nfs"] {
            let path = format!("{prefix}/{sd}/images/{img}/{vol}");
            assert_eq!(disk_volume(&path), Some(named), "{path}");
        }
        for path in [
            format!("/x/{sd}/other/{img}/{vol}"),
            format!("/x/d/images/{img}/{vol}"),
            format!("/x/{sd}/images/i/{vol}"),
            format!("/x/{sd}/images/{img}/disk.qcow2"),
            format!("images/{img}/{vol}"),
            "/var/lib/libvirt/images/disk.qcow2".into(),
            String::new(),
        ] {
            assert_eq!(disk_volume(&path), None, "{path}");
        }
    }

    #[test]
    fn finds_host_uuid() {
        let caps = "<capabilities><host><uuid> 1b4e28ba-2fa1-11d2-883f-0016d3cca427 </uuid>\
                    </host><guest><uuid>no</uuid></guest></capabilities>";
        assert_eq!(
            host_uuid(caps).unwrap(),
            "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
        );
    }
}
