//! A definition kept beside saved RAM: the guest's RAM size (what a dump must have room for)
//! and the definition as a restore takes it back: every disk's `<backingStore>` removed (rvdsm
//! records chains itself) and what libvirt writes into a running domain's definition by itself
//! (the emulator's host path), so that it passes `VM.create`'s checks as a manager's would. Pure.

use roxmltree::Document;

use super::{apply_edits, child, is_libvirt};
use crate::virt::error::VirtError;

/// Devices libvirt writes into a running domain's definition by itself, that a restore gets
/// back from it the same way: the host's emulator binary (a host path, which rvdsm's checks
/// refuse in a manager's definition).
const LIBVIRT_ADDS: &[&str] = &["emulator"];

fn invalid(message: impl Into<String>) -> VirtError {
    VirtError::Xml {
        what: "domain",
        message: message.into(),
    }
}

/// The guest's RAM in bytes, from the domain's `<memory>` (libvirt's units; KiB when none).
pub fn memory_bytes(xml: &str) -> Result<u64, VirtError> {
    let doc = Document::parse(xml).map_err(|e| invalid(e.to_string()))?;
    let memory = child(doc.root_element(), "memory").ok_or_else(|| invalid("no <memory>"))?;
    let value: u64 = memory
        .text()
        .unwrap_or_default()
        .trim()
        .parse()
        .map_err(|_| invalid("<memory> is not a whole number"))?;
    let unit = memory.attribute("unit").unwrap_or("KiB");
    let scale: u64 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        other => return Err(invalid(format!("<memory> has an unknown unit {other:?}"))),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| invalid("<memory> overflows"))
}

/// The definition as a restore takes it back (see the module's documentation).
pub fn restorable(xml: &str) -> Result<String, VirtError> {
    let doc = Document::parse(xml).map_err(|e| invalid(e.to_string()))?;
    let Some(devices) = child(doc.root_element(), "devices") else {
        return Ok(xml.to_owned());
    };
    let backing_stores = devices
        .children()
        .filter(|d| is_libvirt(*d, "disk"))
        .filter_map(|disk| child(disk, "backingStore"));
    let added_by_libvirt = devices
        .children()
        .filter(|d| LIBVIRT_ADDS.iter().any(|name| is_libvirt(*d, name)));
    let edits = backing_stores
        .chain(added_by_libvirt)
        .map(|node| (node.range(), String::new()))
        .collect();
    Ok(apply_edits(xml, edits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_sizes_in_libvirt_units() {
        let xml = |m: &str| format!("<domain><name>x</name>{m}</domain>");
        assert_eq!(
            memory_bytes(&xml("<memory unit='KiB'>262144</memory>")).unwrap(),
            256 << 20
        );
        assert_eq!(
            memory_bytes(&xml("<memory>1024</memory>")).unwrap(),
            1 << 20
        );
        assert_eq!(
            memory_bytes(&xml("<memory unit='GiB'>1</memory>")).unwrap(),
            1 << 30
        );
        assert!(memory_bytes(&xml("<memory unit='parsec'>1</memory>")).is_err());
        assert!(memory_bytes(&xml("<memory unit='TiB'>99999999999</memory>")).is_err());
        assert!(memory_bytes(&xml("")).is_err());
    }

    #[test]
    fn backing_stores_go_and_nothing_else_changes() {
        let xml = "<domain><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
                   <disk type='file'><source file='/a'/>\
                   <backingStore type='file'><source file='/b'/><backingStore/></backingStore>\
                   <target dev='vda'/></disk><disk><backingStore/><target dev='vdb'/></disk>\
                   </devices></domain>";
        assert_eq!(
            restorable(xml).unwrap(),
            "<domain><devices><disk type='file'><source file='/a'/>\
             <target dev='vda'/></disk><disk><target dev='vdb'/></disk>\
             </devices></domain>"
        );
    }
}
