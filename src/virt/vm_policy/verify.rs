//! The check of what libvirt made of a definition: its own parse (the inactive XML, read back
//! after the define, before the start) must hold every drive rvdsm placed on its exact volume
//! and format with no backing chain given, and no host path but those rvdsm chose. libvirt's
//! parser, not rvdsm's, decides what QEMU opens.

use std::collections::HashSet;

use roxmltree::{Document, Node};

use super::shape::{Mode, check_shape};
use super::{check_empty_cdrom, describe, disk_target, elements, is, is_in, path_refs, refused};
use crate::virt::VirtError;
use crate::virt::vm_xml::PlacedDrive;
use crate::virt::xml::child;

/// libvirt's directory for the files it names itself (agent channel sockets).
const LIBVIRT_QEMU_DIR: &str = "/var/lib/libvirt/qemu/";

/// What the definition libvirt made must hold: the placed drives and no host path but these.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// The drives rvdsm placed.
    pub drives: Vec<PlacedDrive>,
    /// Every other host path the definition may name: host files rvdsm checked, paths it
    /// chose, the leases' volumes.
    pub paths: HashSet<String>,
}

/// Checks libvirt's parse of a definition (its inactive XML, read back after the define)
/// against what rvdsm placed: every disk is a placed drive on its exact volume and format with
/// no backing chain given, or an empty CD-ROM; every host path is one rvdsm chose; nothing
/// outside the allowlists.
pub fn verify_defined(xml: &str, expected: &Expected) -> Result<(), VirtError> {
    let doc = Document::parse(xml).map_err(|e| refused("libvirt's definition", e.to_string()))?;
    let root = doc.root_element();
    check_shape(root, Mode::Defined)?;
    let mut seen = HashSet::new();
    let disks = child(root, "devices")
        .into_iter()
        .flat_map(elements)
        .filter(|n| is(*n, "disk"));
    for disk in disks {
        let target = disk_target(disk)?;
        if !seen.insert(target.to_owned()) {
            return Err(refused(
                format!("disk {target}"),
                "its target is used twice",
            ));
        }
        match expected.drives.iter().find(|d| d.target == target) {
            Some(drive) => verify_drive(disk, drive)?,
            None => check_empty_cdrom(disk, target)?,
        }
    }
    if let Some(drive) = expected.drives.iter().find(|d| !seen.contains(&d.target)) {
        return Err(refused(
            format!("disk {}", drive.target),
            "libvirt's definition lost it",
        ));
    }
    let drive_paths: HashSet<&str> = expected.drives.iter().map(|d| d.path.as_str()).collect();
    for (node, what, value) in path_refs(root) {
        let known = drive_paths.contains(value.as_str())
            || expected.paths.contains(&value)
            || is(node, "emulator")
            || (is_in(node, "channel") && value.starts_with(LIBVIRT_QEMU_DIR));
        if !known {
            return Err(refused(
                describe(node),
                format!(
                    "libvirt's definition names the host path {value:?} in its {what}, which rvdsm did not place"
                ),
            ));
        }
    }
    Ok(())
}

fn verify_drive(disk: Node, drive: &PlacedDrive) -> Result<(), VirtError> {
    let what = || format!("disk {}", drive.target);
    if disk.attribute("type").unwrap_or("file") != "file" {
        return Err(refused(what(), "libvirt defined it as another disk type"));
    }
    let source = child(disk, "source").and_then(|s| s.attribute("file"));
    if source != Some(drive.path.as_str()) {
        return Err(refused(
            what(),
            format!(
                "libvirt's definition has it on {source:?}, rvdsm placed it on {:?}",
                drive.path
            ),
        ));
    }
    let format = child(disk, "driver").and_then(|d| d.attribute("type"));
    if format != Some(drive.format.as_str()) {
        return Err(refused(
            what(),
            format!(
                "libvirt's definition reads it as {format:?}, the volume is {}",
                drive.format
            ),
        ));
    }
    if child(disk, "backingStore").is_some_and(|b| b.has_children()) {
        return Err(refused(
            what(),
            "libvirt's definition gives it a backing chain",
        ));
    }
    Ok(())
}
