//! What `VM.create` accepts of a manager's domain XML, and the check of what libvirt made of
//! it. A manager is trusted to run VMs on this host's volumes, not to name host files: QEMU
//! runs as root on some hosts (and libvirt chowns what a disk names on others), so a path in
//! the definition is a path QEMU opens.
//!
//! [`admit`] reads the definition with exact namespaces (a `<disk>` in another namespace is not
//! a disk to libvirt, so it must not be one to rvdsm either) and refuses, naming the element:
//! an element outside the allowlists of [`rules`] or in a foreign namespace (`<qemu:commandline>`),
//! a second element where one is expected, a disk that is neither a managed drive nor an empty
//! CD-ROM, any `<backingStore>` (rvdsm records chains itself), and every attribute or text that
//! names a host path, except those rvdsm places: the drives' sources (by the caller, from the
//! volumes), the serial console's log or socket and the agent channel's socket (named here,
//! never where the XML says), the NVRAM file, and kernel, initrd and firmware files, which must
//! lie in directories of the configuration ([`host_files`] checks them on disk).
//! [`verify_defined`] reads libvirt's own parse of the definition back, before the start, and
//! checks that every disk is the one rvdsm placed and every host path one rvdsm chose.

pub mod depth;
pub mod host_files;
mod placement;
pub mod rules;
mod shape;
mod verify;

use std::collections::HashSet;
use std::path::PathBuf;

use roxmltree::{Document, Node};
use uuid::Uuid;

use super::error::VirtError;
use super::xml::{apply_edits, child, is_libvirt as is};
pub use host_files::HostFile;
use placement::Placement;
use shape::{Mode, check_shape};
pub use verify::{Expected, verify_defined};

/// Where a VM's host files may be, and where rvdsm puts those it names (the configuration's
/// `[vm]` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFileRules {
    /// Directories a VM may boot a kernel and initrd from (direct kernel boot).
    pub boot_dirs: Vec<PathBuf>,
    /// Directories of firmware images (`<loader>`, the NVRAM template).
    pub firmware_dirs: Vec<PathBuf>,
    /// Where a serial console's log goes: `<dir>/<vmUUID>.log`.
    pub console_log_dir: PathBuf,
    /// Where a serial console's socket goes: `<dir>/<vmUUID>.sock` (ovirt-vmconsole's).
    pub console_socket_dir: PathBuf,
    /// Where libvirt keeps NVRAM files: `<dir>/<vmUUID>.fd`.
    pub nvram_dir: PathBuf,
}

impl VmFileRules {
    /// The rules of the configuration's `[vm]` section.
    pub fn from_config(vm: &crate::config::VmConfig) -> Self {
        Self {
            boot_dirs: vm.boot_dirs.clone(),
            firmware_dirs: vm.firmware_dirs.clone(),
            console_log_dir: vm.console_log_dir.clone(),
            console_socket_dir: vm.console_socket_dir.clone(),
            // libvirt's own directory for NVRAM files (qemu.conf's nvram_dir default).
            nvram_dir: PathBuf::from("/var/lib/libvirt/qemu/nvram"),
        }
    }
}

/// A definition rvdsm can place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The definition with rvdsm's paths in place of the manager's (drives apart).
    pub xml: String,
    /// The host files the VM reads, each to be checked on disk before the start.
    pub host_files: Vec<HostFile>,
    /// The host paths rvdsm chose for the VM (console log or socket, NVRAM).
    pub placed: Vec<PathBuf>,
}

fn refused(element: impl Into<String>, reason: impl Into<String>) -> VirtError {
    VirtError::Refused {
        element: element.into(),
        reason: reason.into(),
    }
}

/// Checks a manager's definition against the allowlists and places the host paths rvdsm
/// names (see the module's documentation). `managed` are the targets of the drives the
/// definition's oVirt metadata places on volumes.
pub fn admit(
    xml: &str,
    vm: Uuid,
    managed: &[&str],
    rules: &VmFileRules,
) -> Result<Admitted, VirtError> {
    if !depth::within_depth(xml) {
        return Err(refused(
            "the definition",
            format!("it nests elements deeper than {} levels", depth::MAX_DEPTH),
        ));
    }
    let doc = Document::parse(xml).map_err(|e| refused("the definition", e.to_string()))?;
    let root = doc.root_element();
    check_shape(root, Mode::Input)?;
    let mut placement = Placement::new(vm, rules);
    if let Some(os) = child(root, "os") {
        placement.os(os)?;
    }
    if let Some(devices) = child(root, "devices") {
        let mut targets = HashSet::new();
        for device in elements(devices) {
            placement.device(device, managed, &mut targets)?;
        }
        if let Some(missing) = managed.iter().find(|t| !targets.contains(**t)) {
            return Err(refused(
                format!("drive {missing}"),
                "the oVirt metadata names it and no <disk> has that target",
            ));
        }
    }
    for (node, what, value) in path_refs(root) {
        if !placement.skips(node) {
            return Err(refused(
                describe(node),
                format!(
                    "its {what} names the host path {value:?}: rvdsm places a VM's files itself"
                ),
            ));
        }
    }
    Ok(Admitted {
        xml: apply_edits(xml, placement.edits),
        host_files: placement.host_files,
        placed: placement.placed,
    })
}

/// A disk that is not a managed drive: a CD-ROM with nothing in it.
fn check_empty_cdrom(disk: Node, target: &str) -> Result<(), VirtError> {
    if disk.attribute("device") != Some("cdrom") {
        return Err(refused(
            format!("disk {target}"),
            "it names no volume in the oVirt metadata: a disk is a managed drive or an empty CD-ROM",
        ));
    }
    let source = child(disk, "source");
    if source.is_some_and(|s| {
        s.attributes()
            .any(|a| a.name() != "startupPolicy" && a.name() != "index" && !a.value().is_empty())
    }) {
        return Err(refused(
            format!("disk {target}"),
            "a CD-ROM with media; rvdsm starts VMs with empty CD-ROMs only",
        ));
    }
    Ok(())
}

fn disk_target<'a>(disk: Node<'a, '_>) -> Result<&'a str, VirtError> {
    child(disk, "target")
        .and_then(|t| t.attribute("dev"))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| refused(describe(disk), "a disk without a target device"))
}

/// Every host path the document names outside `<metadata>`: path attributes of any element,
/// a `<source dev=...>`, the text of path elements, an RNG's device. `(node, what, value)`.
fn path_refs<'a, 'input>(root: Node<'a, 'input>) -> Vec<(Node<'a, 'input>, String, String)> {
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        for attribute in node.attributes() {
            let name = attribute.name();
            // By name, and by value: an attribute naming an absolute path is a host path
            // whatever its name (libvirt keeps adding such attributes).
            let names_path = rules::PATH_ATTRIBUTES.contains(&name)
                || (name == "dev" && is(node, "source"))
                || attribute.value().trim_start().starts_with('/');
            if names_path && !attribute.value().is_empty() {
                found.push((
                    node,
                    format!("attribute {name}"),
                    attribute.value().to_owned(),
                ));
            }
        }
        let name = node.tag_name().name();
        let is_rng_backend = name == "backend" && is_in(node, "rng");
        if rules::PATH_ELEMENTS.contains(&name) || is_rng_backend {
            let text = node.text().map_or("", str::trim);
            let rng_ok = is_rng_backend && (text.is_empty() || rules::RNG_SOURCES.contains(&text));
            if !text.is_empty() && !rng_ok {
                found.push((node, "text".to_owned(), text.to_owned()));
            }
        }
        stack.extend(elements(node).filter(|n| !(node == root && is(*n, "metadata"))));
    }
    found
}

/// `<name>` with the device it is in, for messages: `<source> in <serial>`.
fn describe(node: Node) -> String {
    let name = |n: Node| match n.tag_name().namespace() {
        Some(ns) => format!("<{{{ns}}}{}>", n.tag_name().name()),
        None => format!("<{}>", n.tag_name().name()),
    };
    match node
        .parent_element()
        .filter(|p| !is(*p, "domain") && !is(*p, "devices"))
    {
        Some(parent) => format!("{} in {}", name(node), name(parent)),
        None => name(node),
    }
}

fn elements<'a, 'input>(node: Node<'a, 'input>) -> impl Iterator<Item = Node<'a, 'input>> {
    node.children().filter(Node::is_element)
}

fn is_in(node: Node, name: &str) -> bool {
    node.ancestors().skip(1).any(|a| is(a, name))
}

#[cfg(test)]
mod tests;
