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
pub mod rules;

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use roxmltree::{Document, Node};
use uuid::Uuid;

use super::error::VirtError;
use super::vm_xml::{PlacedDrive, apply_edits, child, is_libvirt as is};
use super::xml_edit::escape;
pub use host_files::HostFile;

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

/// libvirt's directory for the files it names itself (agent channel sockets).
const LIBVIRT_QEMU_DIR: &str = "/var/lib/libvirt/qemu/";

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

/// Whether the definition is read as the manager sent it, or as libvirt gives it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Input,
    Defined,
}

/// The document's shape: `<domain>` in no namespace, every element outside `<metadata>` in
/// no namespace, the children of `<domain>`, `<os>` and `<devices>` in the allowlists, and no
/// second element where libvirt reads one.
fn check_shape(root: Node, mode: Mode) -> Result<(), VirtError> {
    if root.tag_name().namespace().is_some() || root.tag_name().name() != "domain" {
        return Err(refused(
            describe(root),
            "the definition must be a libvirt <domain>",
        ));
    }
    check_namespaces(root)?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for node in elements(root) {
        let name = node.tag_name().name();
        if !rules::DOMAIN_CHILDREN.contains(&name) {
            return Err(refused(
                describe(node),
                "rvdsm does not accept this element",
            ));
        }
        let count = counts.entry(name).or_default();
        *count += 1;
        if *count > 1 && !rules::REPEATABLE_DOMAIN_CHILDREN.contains(&name) {
            return Err(refused(describe(node), "a second one; libvirt reads one"));
        }
    }
    if let Some(os) = child(root, "os") {
        for node in elements(os) {
            if !rules::OS_CHILDREN.contains(&node.tag_name().name()) {
                return Err(refused(
                    describe(node),
                    "rvdsm does not accept this element",
                ));
            }
        }
        check_singletons(
            os,
            &["type", "loader", "nvram", "kernel", "initrd", "cmdline"],
        )?;
        if let Some(loader) = child(os, "loader") {
            check_loader(loader)?;
        }
    }
    check_host_reach(root)?;
    for device in child(root, "devices").into_iter().flat_map(elements) {
        let name = device.tag_name().name();
        if !rules::DEVICES.contains(&name) || (mode == Mode::Input && name == "emulator") {
            return Err(refused(
                describe(device),
                "rvdsm does not accept this device: it could reach host files or devices",
            ));
        }
        check_device(device)?;
    }
    Ok(())
}

/// A firmware image is shared by every VM of the host: a writable flash on it would let a
/// guest rewrite it (a `pflash` loader must be read-only; a `rom` one is).
fn check_loader(loader: Node) -> Result<(), VirtError> {
    let read_only = loader.attribute("readonly") == Some("yes");
    if (loader.attribute("type") == Some("pflash") && !read_only)
        || loader.attribute("readonly") == Some("no")
    {
        return Err(refused(
            describe(loader),
            "a firmware loader must be read-only (readonly='yes'): the file is the host's",
        ));
    }
    Ok(())
}

/// What a definition may ask of the host beyond files: its VM's cgroup stays in libvirt's
/// machine slice, and no vCPU or I/O thread runs at a real-time priority that starves the
/// host.
fn check_host_reach(root: Node) -> Result<(), VirtError> {
    if let Some(partition) = child(root, "resource").and_then(|r| child(r, "partition")) {
        let name = partition.text().map(str::trim).unwrap_or("");
        if name != "/machine" && !name.starts_with("/machine/") {
            return Err(refused(
                describe(partition),
                format!("{name:?}: a VM's cgroup stays under /machine"),
            ));
        }
    }
    if let Some(cputune) = child(root, "cputune") {
        for node in elements(cputune) {
            let scheduler = node.attribute("scheduler").unwrap_or("");
            if matches!(scheduler, "fifo" | "rr") {
                return Err(refused(
                    describe(node),
                    format!("scheduler {scheduler:?}: a real-time vCPU starves the host"),
                ));
            }
        }
    }
    Ok(())
}

/// Every element outside `<metadata>` is libvirt's, in no namespace, with no namespaced
/// attribute: libvirt ignores what is in another namespace, so rvdsm must not read it as
/// libvirt's either (a decoy `<x:disk>`), and `<qemu:commandline>` passes QEMU arguments.
fn check_namespaces(root: Node) -> Result<(), VirtError> {
    let mut stack: Vec<Node> = vec![root];
    while let Some(node) = stack.pop() {
        if node.tag_name().namespace().is_some() {
            return Err(refused(
                describe(node),
                "an element in another namespace than libvirt's",
            ));
        }
        if let Some(attribute) = node.attributes().find(|a| a.namespace().is_some()) {
            return Err(refused(
                describe(node),
                format!("its attribute {} is in another namespace", attribute.name()),
            ));
        }
        stack.extend(elements(node).filter(|n| !(node == root && is(*n, "metadata"))));
    }
    Ok(())
}

/// Per-device rules that hold in the input and in libvirt's parse alike.
fn check_device(device: Node) -> Result<(), VirtError> {
    let kind = device.attribute("type").unwrap_or("");
    let allowed = |ok: &[&str]| -> Result<(), VirtError> {
        if ok.contains(&kind) {
            Ok(())
        } else {
            Err(refused(
                describe(device),
                format!("type {kind:?}; rvdsm accepts {ok:?}"),
            ))
        }
    };
    match device.tag_name().name() {
        "disk" => {
            allowed(&["file", "block"])?;
            check_singletons(device, &["source", "target", "driver", "backingStore"])?;
            if let Some(mirror) = child(device, "mirror") {
                return Err(refused(
                    describe(mirror),
                    "a disk's mirror is rvdsm's to start",
                ));
            }
        }
        "interface" => allowed(rules::INTERFACE_TYPES)?,
        "serial" | "console" => {
            allowed(rules::CONSOLE_TYPES)?;
            if let Some(log) = child(device, "log") {
                return Err(refused(describe(log), "a console log is rvdsm's to place"));
            }
        }
        "channel" => {
            allowed(&["unix", "spicevmc", "spiceport", "qemu-vdagent"])?;
            if kind == "unix" {
                let target = child(device, "target");
                let name = target.and_then(|t| t.attribute("name")).unwrap_or("");
                if target.and_then(|t| t.attribute("type")) != Some("virtio")
                    || !rules::is_channel_name(name)
                {
                    return Err(refused(
                        describe(device),
                        "a unix channel must be a virtio port with a plain name",
                    ));
                }
            }
        }
        "redirdev" => allowed(&["spicevmc"])?,
        "smartcard" => {
            if device.attribute("mode") != Some("passthrough") {
                return Err(refused(
                    describe(device),
                    "only a SPICE passthrough smartcard",
                ));
            }
            allowed(&["spicevmc"])?;
        }
        "rng" => {
            let backend = child(device, "backend");
            let model = backend.and_then(|b| b.attribute("model"));
            let source = backend.and_then(|b| b.text()).map(str::trim).unwrap_or("");
            if model != Some("random")
                || !(source.is_empty() || rules::RNG_SOURCES.contains(&source))
            {
                return Err(refused(
                    describe(device),
                    format!("an RNG reads one of {:?}", rules::RNG_SOURCES),
                ));
            }
        }
        "memory" => {
            let model = device.attribute("model").unwrap_or("");
            if !matches!(model, "dimm" | "virtio-mem") {
                return Err(refused(
                    describe(device),
                    format!(
                        "memory model {model:?}: only dimm and virtio-mem, which need no host file"
                    ),
                ));
            }
        }
        "tpm" if child(device, "backend").and_then(|b| b.attribute("type")) != Some("emulator") => {
            return Err(refused(describe(device), "only an emulated TPM"));
        }
        "audio" => allowed(&["none", "spice"])?,
        "graphics" => {
            allowed(&["vnc", "spice"])?;
            if let Some(gl) = child(device, "gl") {
                return Err(refused(
                    describe(gl),
                    "OpenGL opens a host render node; rvdsm starts VMs without it",
                ));
            }
        }
        "video"
            if child(device, "driver").and_then(|d| d.attribute("name")) == Some("vhostuser") =>
        {
            return Err(refused(
                describe(device),
                "a vhost-user GPU runs a host helper; rvdsm starts VMs without it",
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Refuses a second child of `node` named one of `names`.
fn check_singletons(node: Node, names: &[&str]) -> Result<(), VirtError> {
    for name in names {
        if let Some(second) = elements(node).filter(|n| is(*n, name)).nth(1) {
            return Err(refused(
                describe(second),
                format!("a second one in {}; libvirt reads one", describe(node)),
            ));
        }
    }
    Ok(())
}

/// The placement of a definition's host paths, built while its devices are checked.
struct Placement<'r> {
    vm: Uuid,
    rules: &'r VmFileRules,
    edits: Vec<(Range<usize>, String)>,
    host_files: Vec<HostFile>,
    placed: Vec<PathBuf>,
    /// Nodes whose host paths this placement replaces or checked (by their byte range).
    handled: HashSet<Range<usize>>,
    /// The manager's names for the console log, one file per VM.
    console_logs: HashSet<String>,
}

impl<'r> Placement<'r> {
    fn new(vm: Uuid, rules: &'r VmFileRules) -> Self {
        Self {
            vm,
            rules,
            edits: Vec::new(),
            host_files: Vec::new(),
            placed: Vec::new(),
            handled: HashSet::new(),
            console_logs: HashSet::new(),
        }
    }

    fn skips(&self, node: Node) -> bool {
        self.handled.contains(&node.range())
    }

    fn replace(&mut self, node: Node, text: String) {
        self.handled.insert(node.range());
        self.edits.push((node.range(), text));
    }

    /// `<os>`: the kernel, initrd and firmware must be files of the configured directories;
    /// the NVRAM file is the VM's own, named by rvdsm.
    fn os(&mut self, os: Node) -> Result<(), VirtError> {
        for node in elements(os) {
            let dirs = match node.tag_name().name() {
                "kernel" | "initrd" => &self.rules.boot_dirs,
                "loader" => &self.rules.firmware_dirs,
                "nvram" => {
                    self.nvram(node)?;
                    continue;
                }
                _ => continue,
            };
            if node.children().count() > 1 {
                // libvirt joins every text and drops comments; rvdsm checks one text.
                return Err(refused(describe(node), "a path must be one plain text"));
            }
            let path = node.text().map(str::trim).unwrap_or("");
            let file = HostFile::inside(describe(node), Path::new(path), dirs)?;
            self.host_files.push(file);
            self.handled.insert(node.range());
        }
        Ok(())
    }

    fn nvram(&mut self, node: Node) -> Result<(), VirtError> {
        let path = self.rules.nvram_dir.join(format!("{}.fd", self.vm));
        let mut text = String::from("<nvram");
        if let Some(template) = node.attribute("template") {
            let file = HostFile::inside(
                format!("{} template", describe(node)),
                Path::new(template),
                &self.rules.firmware_dirs,
            )?;
            text.push_str(&format!(" template='{}'", escape(template)));
            self.host_files.push(file);
        }
        text.push_str(&format!(">{}</nvram>", escape(&path.to_string_lossy())));
        self.placed.push(path);
        self.replace(node, text);
        Ok(())
    }

    fn device(
        &mut self,
        device: Node,
        managed: &[&str],
        targets: &mut HashSet<String>,
    ) -> Result<(), VirtError> {
        match device.tag_name().name() {
            "disk" => {
                let target = disk_target(device)?;
                if !targets.insert(target.to_owned()) {
                    return Err(refused(
                        format!("disk {target}"),
                        "its target is used twice",
                    ));
                }
                if let Some(backing) = child(device, "backingStore") {
                    return Err(refused(
                        describe(backing),
                        format!(
                            "disk {target}: rvdsm records a drive's chain from its volumes; \
                             a definition gives none"
                        ),
                    ));
                }
                if managed.contains(&target) {
                    if device.attribute("device").unwrap_or("disk") != "disk"
                        || device.attribute("type").unwrap_or("file") != "file"
                    {
                        return Err(refused(
                            format!("disk {target}"),
                            "a drive on a file domain's volume is a file disk",
                        ));
                    }
                    if let Some(source) = child(device, "source") {
                        self.handled.insert(source.range());
                    }
                    Ok(())
                } else {
                    check_empty_cdrom(device, target)
                }
            }
            "serial" | "console" => self.console(device),
            "channel" if device.attribute("type") == Some("unix") => {
                self.place_source(device, "<source mode='bind'/>".to_owned());
                Ok(())
            }
            "lease" => {
                // Its target is placed on the domain's leases volume (`place_leases`).
                if let Some(target) = child(device, "target") {
                    self.handled.insert(target.range());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A serial port or console: a log file or a socket named by rvdsm, or a pseudo-terminal.
    fn console(&mut self, device: Node) -> Result<(), VirtError> {
        let (path, source) = match device.attribute("type") {
            Some("file") => {
                let given = child(device, "source")
                    .and_then(|s| s.attribute("path"))
                    .unwrap_or("");
                self.console_logs.insert(given.to_owned());
                if self.console_logs.len() > 1 {
                    return Err(refused(
                        describe(device),
                        "a second console log file; rvdsm keeps one per VM",
                    ));
                }
                let path = self.rules.console_log_dir.join(format!("{}.log", self.vm));
                let source = format!("<source path='{}'/>", escape(&path.to_string_lossy()));
                (path, source)
            }
            Some("unix") => {
                let path = self
                    .rules
                    .console_socket_dir
                    .join(format!("{}.sock", self.vm));
                let source = format!(
                    "<source mode='bind' path='{}'/>",
                    escape(&path.to_string_lossy())
                );
                (path, source)
            }
            _ => return Ok(()),
        };
        self.place_source(device, source);
        if !self.placed.contains(&path) {
            self.placed.push(path);
        }
        Ok(())
    }

    /// Replaces the device's `<source>` (or adds one) by `source`.
    fn place_source(&mut self, device: Node, source: String) {
        match child(device, "source") {
            Some(old) => self.replace(old, source),
            None => {
                let at = device
                    .first_child()
                    .map_or(device.range().end, |c| c.range().start);
                self.edits.push((at..at, source));
            }
        }
    }
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
            let text = node.text().map(str::trim).unwrap_or("");
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
