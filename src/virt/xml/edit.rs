//! Editing a stopped VM's definition for an offline snapshot: each switched disk, found by its
//! target in the parsed document, gets the new volume as its source and `qcow2` as its driver
//! type (the new volume is a qcow2 overlay, whatever the base was: a `raw` driver would show
//! the guest the qcow2 container as its disk, and its writes would corrupt the overlay), and
//! loses any `<backingStore>` (libvirt then reads the chain from the overlay). The document is
//! parsed by a real XML parser and edited at the byte ranges it reports, so nothing else of the
//! definition changes. Pure: tested without libvirt.

use roxmltree::{Document, Node};

use super::{apply_edits, child, escape, find_disk};
use crate::virt::error::VirtError;

/// One disk of a stopped VM to point at its new volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinedSwitch {
    /// The guest device (`vda`).
    pub target: String,
    /// The source the definition must name now (else the switch is refused).
    pub old_path: String,
    /// The new volume: a qcow2 overlay on `old_path`.
    pub new_path: String,
}

/// A replacement of a byte range of the document by a text.
type Edit = (std::ops::Range<usize>, String);

/// The domain XML with each switch applied (see the module's documentation).
pub fn switch_disk_sources(xml: &str, switches: &[DefinedSwitch]) -> Result<String, VirtError> {
    let invalid = |message: String| VirtError::Xml {
        what: "domain",
        message,
    };
    let doc = Document::parse(xml).map_err(|e| invalid(e.to_string()))?;
    let mut edits = Vec::new();
    for switch in switches {
        let disk = find_disk(&doc, &switch.target)
            .ok_or_else(|| invalid(format!("no disk with target {}", switch.target)))?;
        let source = child(disk, "source")
            .and_then(|s| s.attribute_node("file"))
            .ok_or_else(|| invalid(format!("disk {} has no file source", switch.target)))?;
        if source.value() != switch.old_path {
            return Err(invalid(format!(
                "disk {} uses {}, not {}",
                switch.target,
                source.value(),
                switch.old_path
            )));
        }
        edits.push((source.range_value(), escape(&switch.new_path)));
        edits.push(driver_edit(disk)?);
        if let Some(backing) = child(disk, "backingStore") {
            edits.push((backing.range(), String::new()));
        }
    }
    Ok(apply_edits(xml, edits))
}

/// Sets the disk's driver type to qcow2: the attribute's value, or a new attribute, or a new
/// `<driver>` element before the source.
fn driver_edit(disk: Node) -> Result<Edit, VirtError> {
    const QCOW2: &str = "qcow2";
    match child(disk, "driver") {
        Some(driver) => match driver.attribute_node("type") {
            Some(kind) => Ok((kind.range_value(), QCOW2.to_owned())),
            None => {
                // Right after `<driver`.
                let at = driver.range().start + "<driver".len();
                Ok((at..at, format!(" type='{QCOW2}'")))
            }
        },
        None => {
            let at = child(disk, "source").map_or(disk.range().end, |s| s.range().start);
            Ok((at..at, format!("<driver name='qemu' type='{QCOW2}'/>")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = r#"<domain type='kvm'>
  <name>g</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='/d/images/i/base'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type="file" device="disk">
      <driver name="qemu"/>
      <source file="/d/images/j/base"/>
      <target dev="vdb" bus="virtio"/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/d/images/i/base'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
  </devices>
</domain>"#;

    fn switch(target: &str, old: &str, new: &str) -> DefinedSwitch {
        DefinedSwitch {
            target: target.into(),
            old_path: old.into(),
            new_path: new.into(),
        }
    }

    fn disks(xml: &str) -> Vec<(String, Option<String>, Option<String>, bool)> {
        let doc = Document::parse(xml).unwrap();
        let devices = child(doc.root_element(), "devices").unwrap();
        devices
            .children()
            .filter(|d| d.has_tag_name("disk"))
            .map(|d| {
                (
                    child(d, "target")
                        .unwrap()
                        .attribute("dev")
                        .unwrap()
                        .to_owned(),
                    child(d, "source")
                        .and_then(|s| s.attribute("file"))
                        .map(str::to_owned),
                    child(d, "driver")
                        .and_then(|s| s.attribute("type"))
                        .map(str::to_owned),
                    child(d, "backingStore").is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn a_raw_disk_switched_to_an_overlay_gets_a_qcow2_driver_and_only_it_changes() {
        let out = switch_disk_sources(
            DOMAIN,
            &[switch("vda", "/d/images/i/base", "/d/images/i/new")],
        )
        .unwrap();
        let after = disks(&out);
        assert_eq!(
            after[0],
            (
                "vda".into(),
                Some("/d/images/i/new".into()),
                Some("qcow2".into()),
                false
            )
        );
        assert_eq!(after[1..], disks(DOMAIN)[1..], "other disks untouched");
        assert!(out.contains("cache='none'"), "the rest of the driver kept");
    }

    #[test]
    fn a_driver_without_type_or_no_driver_at_all_gets_one() {
        let out = switch_disk_sources(
            DOMAIN,
            &[
                switch("vdb", "/d/images/j/base", "/d/images/j/n\"ew"),
                switch("vdc", "/d/images/i/base", "/d/images/i/other"),
            ],
        )
        .unwrap();
        let after = disks(&out);
        assert_eq!(after[1].1.as_deref(), Some("/d/images/j/n\"ew"), "escaped");
        assert_eq!(after[1].2.as_deref(), Some("qcow2"));
        assert_eq!(after[2].1.as_deref(), Some("/d/images/i/other"));
        assert_eq!(after[2].2.as_deref(), Some("qcow2"));
        assert_eq!(
            after[0],
            disks(DOMAIN)[0],
            "vda shares vdc's base, yet is untouched"
        );
    }

    #[test]
    fn a_disk_not_on_the_expected_volume_is_refused() {
        let err = switch_disk_sources(DOMAIN, &[switch("vda", "/elsewhere", "/n")]).unwrap_err();
        assert!(err.to_string().contains("uses /d/images/i/base"), "{err}");
        assert!(switch_disk_sources(DOMAIN, &[switch("vdz", "/x", "/n")]).is_err());
    }
}
