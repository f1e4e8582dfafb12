//! The placement of a definition's host paths, built while its devices are admitted: the
//! serial console's log or socket and the agent channel's socket named by rvdsm, the NVRAM file
//! the VM's own, kernel, initrd and firmware files taken only from configured directories, and
//! the nodes whose paths rvdsm replaces or checked remembered, so that no other host path
//! passes.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use roxmltree::Node;
use uuid::Uuid;

use super::{HostFile, VmFileRules, check_empty_cdrom, describe, disk_target, elements, refused};
use crate::virt::VirtError;
use crate::virt::xml::child;
use crate::virt::xml::escape;

/// The placement of a definition's host paths, built while its devices are checked.
pub(super) struct Placement<'r> {
    vm: Uuid,
    rules: &'r VmFileRules,
    /// Byte-range edits of the definition: rvdsm's paths in place of the manager's.
    pub(super) edits: Vec<(Range<usize>, String)>,
    /// The host files the definition reads, to check on disk.
    pub(super) host_files: Vec<HostFile>,
    /// The host paths rvdsm chose for the VM.
    pub(super) placed: Vec<PathBuf>,
    /// Nodes whose host paths this placement replaces or checked (by their byte range).
    handled: HashSet<Range<usize>>,
    /// The manager's names for the console log, one file per VM.
    console_logs: HashSet<String>,
}

impl<'r> Placement<'r> {
    pub(super) fn new(vm: Uuid, rules: &'r VmFileRules) -> Self {
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

    pub(super) fn skips(&self, node: Node) -> bool {
        self.handled.contains(&node.range())
    }

    fn replace(&mut self, node: Node, text: String) {
        self.handled.insert(node.range());
        self.edits.push((node.range(), text));
    }

    /// `<os>`: the kernel, initrd and firmware must be files of the configured directories;
    /// the NVRAM file is the VM's own, named by rvdsm.
    pub(super) fn os(&mut self, os: Node) -> Result<(), VirtError> {
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
            let path = node.text().map_or("", str::trim);
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

    pub(super) fn device(
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
