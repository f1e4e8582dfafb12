//! The shape a definition must have, read as the manager sent it or as libvirt gives it back:
//! libvirt's elements in no namespace, the children of `<domain>`, `<os>` and `<devices>` in
//! the allowlists of [`super::rules`], one element where libvirt reads one, and each device's
//! own limits (types, read-only firmware, no render node, no real-time scheduler...).

use std::collections::HashMap;

use roxmltree::Node;

use super::{describe, elements, is, refused, rules};
use crate::virt::VirtError;
use crate::virt::xml::child;

/// Whether the definition is read as the manager sent it, or as libvirt gives it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Input,
    Defined,
}

/// The document's shape: `<domain>` in no namespace, every element outside `<metadata>` in
/// no namespace, the children of `<domain>`, `<os>` and `<devices>` in the allowlists, and no
/// second element where libvirt reads one.
pub(super) fn check_shape(root: Node, mode: Mode) -> Result<(), VirtError> {
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
        let name = partition.text().map_or("", str::trim);
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
            let source = backend.and_then(|b| b.text()).map_or("", str::trim);
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
