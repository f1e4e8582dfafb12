//! The domain XML a manager sends to `VM.create`, in oVirt's form: the libvirt definition with
//! an `ovirt-vm` metadata element that names, for each drive (by its target), the pool, domain,
//! image and volume it runs on. [`parse_engine_vm`] reads it; [`place_drives`] points each
//! such disk at its prepared volume (source, driver format, no stale `<backingStore>`) and
//! records the drive's volume chain in the drive's metadata, as VDSM records it, so that the
//! chain can be read back from libvirt alone ([`managed_drives`]). The document is parsed by a
//! real XML parser and edited at the byte ranges it reports; nothing else changes. Pure.

use roxmltree::{Document, Node};
use uuid::Uuid;

use super::{apply_edits, child, escape, find_disk, is_libvirt};
use crate::virt::error::VirtError;

/// oVirt's VM metadata namespace.
pub const OVIRT_VM_NS: &str = "http://ovirt.org/vm/1.0";

/// One drive the manager placed on a storage volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineDrive {
    /// The guest device (`vda`).
    pub target: String,
    /// `poolID`.
    pub pool: Uuid,
    /// `domainID`.
    pub domain: Uuid,
    /// `imageID`.
    pub image: Uuid,
    /// `volumeID`: the volume the VM writes to.
    pub volume: Uuid,
}

/// What `VM.create` needs of the definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineVm {
    /// `<uuid>`.
    pub uuid: Uuid,
    /// `<name>`.
    pub name: String,
    /// The drives on storage volumes.
    pub drives: Vec<EngineDrive>,
    /// Its `<lease>` devices: external leases its QEMU must hold while it runs.
    pub leases: Vec<EngineLease>,
}

/// A `<lease>` of the definition: `<key>` (the lease id; the VM's UUID for oVirt's VM lease)
/// in `<lockspace>` (the domain holding it). The manager leaves its `<target>` to the host,
/// as oVirt's engine does (`LEASE-PATH:...`, `LEASE-OFFSET:...` placeholders).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLease {
    /// `<lockspace>`: the storage domain.
    pub domain: Uuid,
    /// `<key>`: the lease.
    pub lease: Uuid,
}

/// A lease resolved on this host: where its sanlock resource is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedLease {
    /// Which lease.
    pub lease: EngineLease,
    /// The domain's leases volume.
    pub path: String,
    /// The lease's offset there.
    pub offset: u64,
}

/// A drive resolved on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedDrive {
    /// The guest device.
    pub target: String,
    /// The prepared path of the volume the VM writes to.
    pub path: String,
    /// Its format: `qcow2` or `raw`.
    pub format: String,
    /// The chain from the base to the leaf: `(volume, path)`.
    pub chain: Vec<(Uuid, String)>,
}

fn invalid(message: impl Into<String>) -> VirtError {
    VirtError::Xml {
        what: "domain",
        message: message.into(),
    }
}

/// Reads the VM's identity and its storage drives.
pub fn parse_engine_vm(xml: &str) -> Result<EngineVm, VirtError> {
    let doc = Document::parse(xml).map_err(|e| invalid(e.to_string()))?;
    let root = doc.root_element();
    if !is_libvirt(root, "domain") {
        return Err(invalid("the document is not a <domain>"));
    }
    let text_of = |name: &str| child(root, name).and_then(|n| n.text()).map(str::trim);
    let uuid = text_of("uuid")
        .ok_or_else(|| invalid("the domain has no <uuid>"))
        .and_then(|t| Uuid::parse_str(t).map_err(|e| invalid(format!("<uuid>: {e}"))))?;
    let name = text_of("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("the domain has no <name>"))?
        .to_owned();
    let vms = child(root, "metadata").map_or(0, |m| {
        m.children()
            .filter(|n| {
                n.tag_name().name() == "vm" && n.tag_name().namespace() == Some(OVIRT_VM_NS)
            })
            .count()
    });
    if vms > 1 {
        return Err(invalid("the metadata has a second <ovirt-vm:vm>"));
    }
    let mut named = std::collections::HashSet::new();
    if let Some(twice) = metadata_devices(&doc)
        .iter()
        .filter_map(|d| d.attribute("name"))
        .find(|name| !named.insert(*name))
    {
        return Err(invalid(format!(
            "the metadata describes device {twice} twice"
        )));
    }
    let mut drives = Vec::new();
    for device in metadata_devices(&doc) {
        if device.attribute("devtype") != Some("disk") {
            continue;
        }
        let Some(target) = device.attribute("name") else {
            continue;
        };
        let ids = drive_ids(device, target)?;
        // A drive without the ids is not on a storage domain (a CD-ROM): the definition's
        // admission decides whether its disk may stay.
        let Some([pool, domain, image, volume]) = ids else {
            continue;
        };
        if find_disk(&doc, target).is_none() {
            return Err(invalid(format!(
                "the metadata names drive {target}, which has no <disk>"
            )));
        }
        drives.push(EngineDrive {
            target: target.to_owned(),
            pool,
            domain,
            image,
            volume,
        });
    }
    let leases = lease_nodes(&doc)
        .into_iter()
        .map(|node| {
            let id = |tag: &str| {
                child(node, tag)
                    .and_then(|n| n.text())
                    .and_then(|t| Uuid::parse_str(t.trim()).ok())
                    .ok_or_else(|| invalid(format!("a <lease> needs a UUID in <{tag}>")))
            };
            Ok(EngineLease {
                domain: id("lockspace")?,
                lease: id("key")?,
            })
        })
        .collect::<Result<_, VirtError>>()?;
    Ok(EngineVm {
        uuid,
        name,
        drives,
        leases,
    })
}

/// The four ids of a drive's metadata (`poolID`, `domainID`, `imageID`, `volumeID`), `None`
/// when it has none; each at most once and a UUID, or the definition is refused.
fn drive_ids(device: Node, target: &str) -> Result<Option<[Uuid; 4]>, VirtError> {
    const TAGS: [&str; 4] = ["poolID", "domainID", "imageID", "volumeID"];
    let mut ids = [Uuid::nil(); 4];
    let mut found = 0;
    for (tag, id) in TAGS.iter().zip(ids.iter_mut()) {
        let mut nodes = device.children().filter(|n| {
            n.tag_name().name() == *tag && n.tag_name().namespace() == Some(OVIRT_VM_NS)
        });
        let Some(node) = nodes.next() else { continue };
        if nodes.next().is_some() {
            return Err(invalid(format!("drive {target} has a second <{tag}>")));
        }
        let text = node.text().map_or("", str::trim);
        *id = Uuid::parse_str(text)
            .map_err(|e| invalid(format!("drive {target}: <{tag}> {text:?}: {e}")))?;
        found += 1;
    }
    match found {
        0 => Ok(None),
        4 => Ok(Some(ids)),
        _ => Err(invalid(format!(
            "drive {target} names only some of {TAGS:?}"
        ))),
    }
}

/// The definition with each placed lease's `<target>` pointing at its sanlock resource.
pub fn place_leases(xml: &str, placed: &[PlacedLease]) -> Result<String, VirtError> {
    let doc = Document::parse(xml).map_err(|e| invalid(e.to_string()))?;
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    for node in lease_nodes(&doc) {
        let text = |tag: &str| child(node, tag).and_then(|n| n.text()).map(str::trim);
        let Some(lease) = placed.iter().find(|p| {
            text("key") == Some(p.lease.lease.to_string().as_str())
                && text("lockspace") == Some(p.lease.domain.to_string().as_str())
        }) else {
            continue;
        };
        let target = format!(
            "<target path='{}' offset='{}'/>",
            escape(&lease.path),
            lease.offset
        );
        match child(node, "target") {
            Some(old) => edits.push((old.range(), target)),
            None => {
                let at = node.range().end - "</lease>".len();
                edits.push((at..at, target));
            }
        }
    }
    Ok(apply_edits(xml, edits))
}

/// The `<lease>` devices of the definition.
fn lease_nodes<'a, 'input>(doc: &'a Document<'input>) -> Vec<Node<'a, 'input>> {
    child(doc.root_element(), "devices")
        .map(|d| d.children().filter(|n| is_libvirt(*n, "lease")).collect())
        .unwrap_or_default()
}

/// The definition with each placed drive's disk pointed at its volume and its chain recorded
/// in the drive's metadata (any chain already there is replaced).
pub fn place_drives(xml: &str, placed: &[PlacedDrive]) -> Result<String, VirtError> {
    let doc = Document::parse(xml).map_err(|e| invalid(e.to_string()))?;
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    let devices = metadata_devices(&doc);
    for drive in placed {
        let disk = find_disk(&doc, &drive.target)
            .ok_or_else(|| invalid(format!("no disk with target {}", drive.target)))?;
        if disk.attribute("type").unwrap_or("file") != "file" {
            return Err(invalid(format!(
                "disk {} is not a file disk; a file storage domain's volume is a file",
                drive.target
            )));
        }
        let source = format!("<source file='{}'/>", escape(&drive.path));
        match child(disk, "source") {
            Some(old) => edits.push((old.range(), source)),
            None => edits.push((insert_point(disk), source)),
        }
        let driver = format!("<driver name='qemu' type='{}'/>", escape(&drive.format));
        match child(disk, "driver") {
            Some(old) => edits.push((old.range(), driver_with_type(old, &drive.format))),
            None => edits.push((insert_point(disk), driver)),
        }
        if let Some(backing) = child(disk, "backingStore") {
            edits.push((backing.range(), String::new()));
        }
        let device = devices
            .iter()
            .find(|d| d.attribute("name") == Some(drive.target.as_str()))
            .ok_or_else(|| invalid(format!("no metadata for drive {}", drive.target)))?;
        let prefix = device.tag_name().namespace().map_or("", |_| "ovirt-vm:");
        let chain = chain_xml(prefix, drive);
        match ns_child(*device, "volumeChain") {
            Some(old) => edits.push((old.range(), chain)),
            None => {
                let at = device.range().end - format!("</{prefix}device>").len();
                edits.push((at..at, chain));
            }
        }
    }
    Ok(apply_edits(xml, edits))
}

/// The definition with a new VM generation id: any `<genid>` there is replaced by an empty
/// one, which libvirt fills with a fresh UUID when the VM is defined.
pub fn with_new_genid(xml: &str) -> Result<String, VirtError> {
    let doc = Document::parse(xml).map_err(|e| invalid(e.to_string()))?;
    let root = doc.root_element();
    let (range, text) = match child(root, "genid") {
        Some(old) => (old.range(), "<genid/>".to_owned()),
        None => {
            let uuid = child(root, "uuid").ok_or_else(|| invalid("no <uuid>"))?;
            (uuid.range().end..uuid.range().end, "<genid/>".to_owned())
        }
    };
    let mut out = xml.to_owned();
    out.replace_range(range, &text);
    Ok(out)
}

/// The drives rvdsm placed, with their recorded chains, read from a (live) definition.
pub fn managed_drives(xml: &str) -> Result<Vec<(EngineDrive, Vec<Uuid>)>, VirtError> {
    let engine = parse_engine_vm(xml)?;
    let doc = Document::parse(xml).map_err(|e| invalid(e.to_string()))?;
    let devices = metadata_devices(&doc);
    Ok(engine
        .drives
        .into_iter()
        .map(|drive| {
            let chain = devices
                .iter()
                .find(|d| d.attribute("name") == Some(drive.target.as_str()))
                .and_then(|d| ns_child(*d, "volumeChain"))
                .map(|c| {
                    c.children()
                        .filter(|n| n.tag_name().name() == "volumeChainNode")
                        .filter_map(|n| ns_child(n, "volumeID").and_then(|v| v.text()))
                        .filter_map(|t| Uuid::parse_str(t.trim()).ok())
                        .collect()
                })
                .unwrap_or_default();
            (drive, chain)
        })
        .collect())
}

/// A drive that now writes to a new leaf (after a snapshot's switch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLeaf {
    /// The guest device.
    pub target: String,
    /// The new leaf volume.
    pub volume: Uuid,
    /// Its path, as the VM names it.
    pub path: String,
}

/// The domain's `ovirt-vm` metadata element with each drive of `leaves` on its new leaf: its
/// `volumeID` is the new volume and its recorded chain ends with it, as VDSM updates them
/// after a snapshot. `None` when the domain has no such metadata (a VM rvdsm did not create)
/// or none of the drives is in it. The element comes out self-contained (its namespace
/// declared on it), ready for `virDomainSetMetadata`.
pub fn metadata_with_new_leaves(
    domain_xml: &str,
    leaves: &[NewLeaf],
) -> Result<Option<String>, VirtError> {
    let doc = Document::parse(domain_xml).map_err(|e| invalid(e.to_string()))?;
    let Some(vm) = ovirt_vm_element(&doc) else {
        return Ok(None);
    };
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    for leaf in leaves {
        let Some(device) = vm.children().find(|d| {
            d.tag_name().name() == "device" && d.attribute("name") == Some(leaf.target.as_str())
        }) else {
            continue;
        };
        if let Some(text) = ns_child(device, "volumeID").and_then(|v| v.first_child()) {
            edits.push((text.range(), leaf.volume.to_string()));
        }
        if let Some(chain) = ns_child(device, "volumeChain") {
            let raw = &domain_xml[chain.range()];
            let prefix = raw[1..]
                .split([' ', '>', '/'])
                .next()
                .and_then(|name| name.split_once(':'))
                .map_or(String::new(), |(p, _)| format!("{p}:"));
            if let Some(end) = raw.rfind("</") {
                let at = chain.range().start + end;
                edits.push((
                    at..at,
                    format!(
                        "<{prefix}volumeChainNode><{prefix}volumeID>{}</{prefix}volumeID>\
                         <{prefix}path>{}</{prefix}path></{prefix}volumeChainNode>",
                        leaf.volume,
                        escape(&leaf.path)
                    ),
                ));
            }
        }
    }
    Ok(edited_element(domain_xml, vm, edits))
}

/// The domain's `ovirt-vm` metadata element after a merge took `merged` out of the drive
/// `target`'s chain: its chain node goes, and when it was the drive's volume (an active
/// merge), the drive's `volumeID` becomes `base`. `None` when there is nothing to change.
pub fn metadata_after_merge(
    domain_xml: &str,
    target: &str,
    merged: Uuid,
    base: Uuid,
) -> Result<Option<String>, VirtError> {
    let doc = Document::parse(domain_xml).map_err(|e| invalid(e.to_string()))?;
    let Some(vm) = ovirt_vm_element(&doc) else {
        return Ok(None);
    };
    let Some(device) = vm
        .children()
        .find(|d| d.tag_name().name() == "device" && d.attribute("name") == Some(target))
    else {
        return Ok(None);
    };
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    let merged_text = merged.to_string();
    let names_merged = |node: Node| {
        node.first_child()
            .and_then(|t| t.text())
            .is_some_and(|t| t.trim() == merged_text)
    };
    if let Some(volume) = ns_child(device, "volumeID")
        && names_merged(volume)
        && let Some(text) = volume.first_child()
    {
        edits.push((text.range(), base.to_string()));
    }
    if let Some(chain) = ns_child(device, "volumeChain") {
        for node in chain
            .children()
            .filter(|n| n.tag_name().name() == "volumeChainNode")
        {
            if ns_child(node, "volumeID").is_some_and(names_merged) {
                edits.push((node.range(), String::new()));
            }
        }
    }
    Ok(edited_element(domain_xml, vm, edits))
}

/// `saved_xml` with its `ovirt-vm` metadata element replaced by `engine_xml`'s (made
/// self-contained): the manager's drive metadata (the volumes the VM is to run on now) in a
/// definition saved earlier. Both must have one.
pub fn with_metadata_of(saved_xml: &str, engine_xml: &str) -> Result<String, VirtError> {
    let engine = Document::parse(engine_xml).map_err(|e| invalid(e.to_string()))?;
    let engine_vm = ovirt_vm_element(&engine)
        .ok_or_else(|| invalid("the manager's XML has no ovirt-vm metadata"))?;
    let start = engine_vm.range().start;
    let element = edited_element(engine_xml, engine_vm, vec![(start..start, String::new())])
        .ok_or_else(|| invalid("the manager's ovirt-vm metadata cannot be taken out"))?;
    let saved = Document::parse(saved_xml).map_err(|e| invalid(e.to_string()))?;
    let saved_vm = ovirt_vm_element(&saved)
        .ok_or_else(|| invalid("the saved definition has no ovirt-vm metadata"))?;
    Ok(apply_edits(saved_xml, vec![(saved_vm.range(), element)]))
}

/// `<metadata><ovirt-vm:vm>`, if the domain has it.
fn ovirt_vm_element<'a, 'input>(doc: &'a Document<'input>) -> Option<Node<'a, 'input>> {
    child(doc.root_element(), "metadata").and_then(|m| {
        m.children()
            .find(|n| n.tag_name().name() == "vm" && n.tag_name().namespace() == Some(OVIRT_VM_NS))
    })
}

/// The text of `vm` (an element of `domain_xml`) with `edits` (ranges of `domain_xml`)
/// applied, made self-contained (its namespace declared on it) for `virDomainSetMetadata`;
/// `None` without edits.
fn edited_element(
    domain_xml: &str,
    vm: Node,
    mut edits: Vec<(std::ops::Range<usize>, String)>,
) -> Option<String> {
    if edits.is_empty() {
        return None;
    }
    let base = vm.range().start;
    edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
    let mut element = domain_xml[vm.range()].to_owned();
    for (range, text) in edits {
        element.replace_range(range.start - base..range.end - base, &text);
    }
    let name_end = element[1..]
        .find([' ', '>', '/'])
        .map_or(element.len(), |i| i + 1);
    let qualified = &element[1..name_end];
    if let Some((prefix, _)) = qualified.split_once(':') {
        let declaration = format!("xmlns:{prefix}=");
        if !element[..element.find('>').unwrap_or(element.len())].contains(&declaration) {
            element.insert_str(name_end, &format!(" {declaration}\"{OVIRT_VM_NS}\""));
        }
    }
    Some(element)
}

fn chain_xml(prefix: &str, drive: &PlacedDrive) -> String {
    let mut out = format!("<{prefix}volumeChain>");
    for (volume, path) in &drive.chain {
        out.push_str(&format!(
            "<{prefix}volumeChainNode><{prefix}volumeID>{volume}</{prefix}volumeID>\
             <{prefix}path>{}</{prefix}path></{prefix}volumeChainNode>",
            escape(path)
        ));
    }
    out.push_str(&format!("</{prefix}volumeChain>"));
    out
}

/// An existing `<driver>` with its `type` set to `format`, other attributes kept.
fn driver_with_type(driver: Node, format: &str) -> String {
    let mut out = String::from("<driver");
    for attr in driver.attributes().filter(|a| a.name() != "type") {
        out.push_str(&format!(" {}='{}'", attr.name(), escape(attr.value())));
    }
    out.push_str(&format!(" type='{}'/>", escape(format)));
    out
}

/// Right after the disk's start tag.
fn insert_point(disk: Node) -> std::ops::Range<usize> {
    let at = disk
        .first_child()
        .map_or(disk.range().end, |c| c.range().start);
    at..at
}

/// The `<ovirt-vm:device>` elements of `<metadata><ovirt-vm:vm>`.
fn metadata_devices<'a, 'input>(doc: &'a Document<'input>) -> Vec<Node<'a, 'input>> {
    let Some(vm) = ovirt_vm_element(doc) else {
        return Vec::new();
    };
    vm.children()
        .filter(|n| {
            n.tag_name().name() == "device" && n.tag_name().namespace() == Some(OVIRT_VM_NS)
        })
        .collect()
}

/// The child `name` of an oVirt metadata element, in oVirt's namespace only.
fn ns_child<'a, 'input>(node: Node<'a, 'input>, name: &str) -> Option<Node<'a, 'input>> {
    node.children()
        .find(|n| n.tag_name().name() == name && n.tag_name().namespace() == Some(OVIRT_VM_NS))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "00000000-0000-0000-0000-0000000000a1";
    const SD: &str = "00000000-0000-0000-0000-0000000000b2";
    const IMG: &str = "00000000-0000-0000-0000-0000000000c3";
    const VOL: &str = "00000000-0000-0000-0000-0000000000d4";

    fn engine_xml() -> String {
        format!(
            r#"<domain type="kvm" xmlns:ovirt-vm="http://ovirt.org/vm/1.0">
  <name>web</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <metadata>
    <ovirt-vm:vm>
      <ovirt-vm:device devtype="disk" name="vda">
        <ovirt-vm:poolID>{POOL}</ovirt-vm:poolID>
        <ovirt-vm:domainID>{SD}</ovirt-vm:domainID>
        <ovirt-vm:imageID>{IMG}</ovirt-vm:imageID>
        <ovirt-vm:volumeID>{VOL}</ovirt-vm:volumeID>
      </ovirt-vm:device>
      <ovirt-vm:device devtype="disk" name="sdc"/>
    </ovirt-vm:vm>
  </metadata>
  <devices>
    <disk type="file" device="disk" snapshot="no">
      <target dev="vda" bus="virtio"/>
      <source file="/rhev/data-center/{POOL}/{SD}/images/{IMG}/{VOL}"/>
      <driver name="qemu" io="threads" type="raw" cache="none"/>
    </disk>
    <disk type="file" device="cdrom"><target dev="sdc" bus="sata"/><readonly/></disk>
  </devices>
</domain>"#
        )
    }

    const LEASE_XML: &str = "<lease><key>11111111-2222-3333-4444-555555555555</key>\
        <lockspace>00000000-0000-0000-0000-0000000000b2</lockspace>\
        <target offset=\"LEASE-OFFSET:x\" path=\"LEASE-PATH:x\"/></lease>";

    #[test]
    fn an_engine_lease_is_read_and_its_target_placed() {
        let xml = engine_xml().replace("</devices>", &format!("{LEASE_XML}</devices>"));
        let vm = parse_engine_vm(&xml).unwrap();
        let lease = EngineLease {
            domain: Uuid::parse_str(SD).unwrap(),
            lease: vm.uuid,
        };
        assert_eq!(vm.leases, vec![lease]);
        let placed = PlacedLease {
            lease,
            path: "/rhev/sd/dom_md/xleases".into(),
            offset: 3 << 20,
        };
        let out = place_leases(&xml, &[placed]).unwrap();
        assert!(
            out.contains("<target path='/rhev/sd/dom_md/xleases' offset='3145728'/></lease>"),
            "{out}"
        );
        assert!(!out.contains("LEASE-PATH"), "{out}");
        // A lease with no target gets one.
        let bare = xml.replace(
            "<target offset=\"LEASE-OFFSET:x\" path=\"LEASE-PATH:x\"/>",
            "",
        );
        let out = place_leases(&bare, &[placed_again(lease)]).unwrap();
        assert!(out.contains("offset='3145728'/></lease>"), "{out}");
    }

    fn placed_again(lease: EngineLease) -> PlacedLease {
        PlacedLease {
            lease,
            path: "/x".into(),
            offset: 3 << 20,
        }
    }

    #[test]
    fn a_lease_without_uuids_is_refused() {
        let xml = engine_xml().replace(
            "</devices>",
            "<lease><key>vm</key><lockspace>sd</lockspace></lease></devices>",
        );
        let err = parse_engine_vm(&xml).unwrap_err();
        assert!(err.to_string().contains("<lockspace>"), "{err}");
    }

    #[test]
    fn engine_xml_names_the_drives() {
        let vm = parse_engine_vm(&engine_xml()).unwrap();
        assert_eq!(vm.name, "web");
        assert_eq!(vm.uuid.to_string(), "11111111-2222-3333-4444-555555555555");
        assert_eq!(vm.drives.len(), 1, "the CD-ROM has no ids: {vm:?}");
        assert_eq!(vm.drives[0].target, "vda");
        assert_eq!(vm.drives[0].volume.to_string(), VOL);
    }

    #[test]
    fn placing_points_the_disk_at_its_volume_and_records_the_chain() {
        let base = Uuid::from_u128(7);
        let leaf = Uuid::parse_str(VOL).unwrap();
        let placed = PlacedDrive {
            target: "vda".into(),
            path: "/run/rvdsm/leaf".into(),
            format: "qcow2".into(),
            chain: vec![
                (base, "/run/rvdsm/base".into()),
                (leaf, "/run/rvdsm/leaf".into()),
            ],
        };
        let xml = place_drives(&engine_xml(), &[placed]).unwrap();
        let disks = crate::virt::xml::parse_disks(&xml).unwrap();
        assert_eq!(disks[0].path.as_deref(), Some("/run/rvdsm/leaf"));
        assert_eq!(disks[0].format.as_deref(), Some("qcow2"));
        assert!(
            xml.contains("io='threads'"),
            "other driver attributes stay: {xml}"
        );
        let managed = managed_drives(&xml).unwrap();
        assert_eq!(managed[0].1, vec![base, leaf]);
        // Placing again replaces the chain instead of adding one.
        let again = place_drives(
            &xml,
            &[PlacedDrive {
                target: "vda".into(),
                path: "/p".into(),
                format: "raw".into(),
                chain: vec![(leaf, "/p".into())],
            }],
        )
        .unwrap();
        assert_eq!(managed_drives(&again).unwrap()[0].1, vec![leaf]);
        assert_eq!(again.matches("volumeChain>").count(), 2, "{again}");
    }

    #[test]
    fn a_snapshot_moves_the_recorded_drive_to_its_new_leaf() {
        let base = Uuid::parse_str(VOL).unwrap();
        let placed = PlacedDrive {
            target: "vda".into(),
            path: "/p/base".into(),
            format: "qcow2".into(),
            chain: vec![(base, "/p/base".into())],
        };
        let xml = place_drives(&engine_xml(), &[placed]).unwrap();
        let top = Uuid::from_u128(99);
        let leaf = NewLeaf {
            target: "vda".into(),
            volume: top,
            path: "/p/top".into(),
        };
        let element = metadata_with_new_leaves(&xml, std::slice::from_ref(&leaf))
            .unwrap()
            .unwrap();
        assert!(
            element.starts_with("<ovirt-vm:vm xmlns:ovirt-vm=\"http://ovirt.org/vm/1.0\""),
            "{element}"
        );
        // Put back into a domain, the element reads as the drive on its new leaf.
        let domain = format!(
            "<domain><name>x</name><uuid>11111111-2222-3333-4444-555555555555</uuid><metadata>{element}</metadata><devices><disk type='file' device='disk'><target dev='vda'/></disk></devices></domain>"
        );
        let managed = managed_drives(&domain).unwrap();
        assert_eq!(managed[0].0.volume, top);
        assert_eq!(managed[0].1, vec![base, top]);
        let unmanaged = "<domain><name>x</name></domain>";
        assert_eq!(metadata_with_new_leaves(unmanaged, &[leaf]).unwrap(), None);
    }

    #[test]
    fn bad_definitions_are_refused() {
        assert!(parse_engine_vm("<domain><name>x</name></domain>").is_err());
        assert!(parse_engine_vm("<vm/>").is_err());
        let orphan = engine_xml().replace(r#"dev="vda""#, r#"dev="vdq""#);
        let err = parse_engine_vm(&orphan).unwrap_err();
        assert!(err.to_string().contains("vda"), "{err}");
    }

    #[test]
    fn a_new_genid_replaces_the_old_one_or_follows_the_uuid() {
        let xml = engine_xml();
        let fresh = with_new_genid(&xml).unwrap();
        assert!(fresh.contains("555555555555</uuid><genid/>"), "{fresh}");
        let old = xml.replace(
            "</uuid>",
            "</uuid>\n  <genid>aaaaaaaa-2222-3333-4444-555555555555</genid>",
        );
        let renewed = with_new_genid(&old).unwrap();
        assert!(!renewed.contains("aaaaaaaa"), "{renewed}");
        assert_eq!(renewed.matches("<genid/>").count(), 1, "{renewed}");
        assert!(with_new_genid("<domain/>").is_err());
    }
}
