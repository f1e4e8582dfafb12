//! libvirt's XML, read and edited as text by a real parser (roxmltree), with one set of
//! helpers: elements found as libvirt reads them (in no namespace), a disk found by its
//! target, edits applied at the byte ranges the parse reports (nothing else of a document
//! changes), attribute values escaped. Pure functions over text, tested without libvirt.
//!
//! - [`disks`]: a domain's disks with their backing chains, the host UUID;
//! - [`vm`]: oVirt's `VM.create` definition: drives and leases read, placed, recorded;
//! - [`edit`]: a stopped VM's definition switched to a snapshot's new volumes.
//! - [`saved`]: a definition kept beside saved RAM.

pub mod disks;
pub mod edit;
pub mod saved;
pub mod vm;

pub use disks::{DiskVolume, disk_volume, host_uuid, parse_disks};

use roxmltree::{Document, Node};

use super::error::VirtError;

/// Parses `text`, a document of kind `what` (named in the error).
pub(crate) fn parse<'a>(what: &'static str, text: &'a str) -> Result<Document<'a>, VirtError> {
    Document::parse(text).map_err(|e| VirtError::Xml {
        what,
        message: e.to_string(),
    })
}

/// The child `name` of a libvirt element: in no namespace, as libvirt reads it (an `<x:disk>`
/// is not a disk to libvirt, so it must not be one here).
pub(crate) fn child<'a, 'input>(node: Node<'a, 'input>, name: &str) -> Option<Node<'a, 'input>> {
    node.children().find(|n| is_libvirt(*n, name))
}

/// Whether `node` is libvirt's element `name` (in no namespace).
pub(crate) fn is_libvirt(node: Node, name: &str) -> bool {
    node.is_element() && node.tag_name().namespace().is_none() && node.tag_name().name() == name
}

/// The domain's `<disk>` whose `<target dev>` is `target`.
pub(crate) fn find_disk<'a, 'input>(
    doc: &'a Document<'input>,
    target: &str,
) -> Option<Node<'a, 'input>> {
    child(doc.root_element(), "devices")?.children().find(|d| {
        is_libvirt(*d, "disk")
            && child(*d, "target").and_then(|t| t.attribute("dev")) == Some(target)
    })
}

/// `xml` with each byte range replaced by its text (ranges from one parse, not overlapping).
pub(crate) fn apply_edits(xml: &str, mut edits: Vec<(std::ops::Range<usize>, String)>) -> String {
    edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
    let mut out = xml.to_owned();
    for (range, text) in edits {
        out.replace_range(range, &text);
    }
    out
}

/// Text as an XML attribute value (either quote).
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('\'', "&apos;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_in_another_namespace_are_not_libvirt_s() {
        let xml = "<domain xmlns:x='urn:x'><devices>\
                   <x:disk><target dev='vda'/></x:disk>\
                   <disk><target dev='vdb'/></disk></devices></domain>";
        let doc = parse("domain", xml).unwrap();
        assert!(find_disk(&doc, "vda").is_none());
        assert!(find_disk(&doc, "vdb").is_some());
    }

    #[test]
    fn edits_apply_from_the_end_and_escape_quotes() {
        let out = apply_edits("abcdef", vec![(1..2, "X".into()), (4..6, "YZW".into())]);
        assert_eq!(out, "aXcdYZW");
        assert_eq!(escape("a'b\"<&>"), "a&apos;b&quot;&lt;&amp;&gt;");
    }
}
