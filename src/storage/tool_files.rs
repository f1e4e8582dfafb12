//! The files of a storage domain that rvdsm hands to a tool which opens them itself, by name:
//! qemu-img (a copy, a commit, a create), QEMU (a VM's chain) and sanlock (a leases volume).
//! A co-tenant of a shared domain can plant a link at such a name, or a qcow2 header whose
//! backing file names a host file; the tool would follow either, as root.
//!
//! This module owns the rule for them: each file is first opened through the domain's
//! no-link rule (`domain_fs`: beneath the domain, no link at any component, a regular file)
//! and held. A tool that writes is handed the held descriptor itself by a name no one can
//! redirect (`/proc/<rvdsmd>/fd/<n>`); a tool that must resolve a chain by names gets them
//! only after the chain was checked ([`check_chain`]: every qcow2 header's backing file is
//! the bare UUID of the parent the metadata names, no external data file) and each name was
//! found to be the held file still ([`HeldFile::recheck`]) right before the tool starts.
//! Blocking.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::domain::Domain;
use super::error::StorageError;
use super::layout::DomainDir;
use super::volume::read_meta;
use crate::api::volume_types::{BLANK_UUID, VolumeFormat};

/// The longest chain walked: a loop in corrupt metadata must not hang the walk.
const MAX_CHAIN: usize = 1024;
/// `QFI\xfb`, the first bytes of every qcow2 image.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// qcow2 v3's incompatible feature "external data file": the guest's data would then be in
/// a file the header names, which QEMU opens by that name.
const EXTERNAL_DATA_FILE: u64 = 1 << 2;
/// The longest backing file name QEMU accepts.
const MAX_BACKING_NAME: u32 = 1023;
/// The header extension naming the backing file's format; without it QEMU probes the
/// backing file's content, which a guest (a raw parent's data) or a co-tenant writes.
const BACKING_FORMAT_EXTENSION: u32 = 0xE279_2ACA;
/// How much of the file the header and its extensions may take: they lie in the first
/// cluster, and rvdsm's own take a few hundred bytes.
const MAX_HEADER_AREA: usize = 64 << 10;

/// A file of a domain opened without following any link, known to be a regular file.
#[derive(Debug)]
pub struct HeldFile {
    file: File,
    path: PathBuf,
}

/// Why a file is refused, as an I/O error on it: a link on the way says so plainly.
fn refused(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_owned();
    move |err| {
        let link = matches!(
            err.raw_os_error(),
            Some(nix::libc::ELOOP | nix::libc::EXDEV)
        );
        let source = if link {
            std::io::Error::new(
                err.kind(),
                "a symbolic link is on the way (refused: rvdsm follows no link in a storage \
                 domain)",
            )
        } else {
            err
        };
        StorageError::Io { op, path, source }
    }
}

impl HeldFile {
    /// Opens `path` of the domain `dir` (for writing too when `write`), refusing a link at
    /// any component and anything but a regular file.
    pub fn open(dir: &DomainDir, path: &Path, write: bool) -> Result<Self, StorageError> {
        let file = dir
            .open_regular(path, write)
            .map_err(refused("open", path))?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Its path in the domain.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A name of the held file that a child of rvdsmd (running as root) opens without any
    /// name lookup in the domain: the descriptor's entry in rvdsmd's `/proc`. Valid while
    /// `self` lives.
    pub fn fd_name(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd())
    }

    /// Checks that its path still leads, without any link, to the held file: what a tool
    /// given the path now opens. Called right before the tool starts.
    pub fn recheck(&self, dir: &DomainDir) -> Result<(), StorageError> {
        match dir.is_still(&self.path, &self.file) {
            Ok(true) => Ok(()),
            Ok(false) => Err(StorageError::Io {
                op: "check",
                path: self.path.clone(),
                source: std::io::Error::other(
                    "replaced since it was checked (refused: another file is at its name)",
                ),
            }),
            Err(err) => Err(refused("check", &self.path)(err)),
        }
    }
}

/// Rechecks every held file (see [`HeldFile::recheck`]).
pub fn recheck_all(dir: &DomainDir, held: &[HeldFile]) -> Result<(), StorageError> {
    held.iter().try_for_each(|file| file.recheck(dir))
}

/// What a qcow2 header says of the files QEMU would open beside the image.
#[derive(Debug, PartialEq, Eq)]
struct Qcow2Refs {
    /// The backing file's name, as written.
    backing: Option<Vec<u8>>,
    /// The image keeps its data in an external file named in the header.
    external_data: bool,
    /// The backing file's format, as the header extension names it.
    backing_format: Option<Vec<u8>>,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

/// Reads the references of the qcow2 image `file` from its header; `None` for an empty file.
fn qcow2_refs(file: &File) -> Result<Option<Qcow2Refs>, String> {
    let mut header = [0u8; 104];
    let read = file
        .read_at(&mut header, 0)
        .map_err(|e| format!("cannot read its header: {e}"))?;
    if read == 0 {
        return Ok(None);
    }
    if read < 72 || header[..4] != QCOW2_MAGIC {
        return Err("it is not a qcow2 image (its metadata says COW)".into());
    }
    let version = u32_at(&header, 4);
    let (offset, size) = (u64_at(&header, 8), u32_at(&header, 16));
    let external_data = version >= 3 && read >= 80 && u64_at(&header, 72) & EXTERNAL_DATA_FILE != 0;
    if offset == 0 || size == 0 {
        return Ok(Some(Qcow2Refs {
            backing: None,
            external_data,
            backing_format: None,
        }));
    }
    if size > MAX_BACKING_NAME {
        return Err(format!("its backing file name is {size} bytes long"));
    }
    let mut name = vec![0u8; size as usize];
    file.read_exact_at(&mut name, offset)
        .map_err(|e| format!("cannot read its backing file name: {e}"))?;
    let header_length = if version >= 3 && read >= 104 {
        u32_at(&header, 100) as usize
    } else {
        72
    };
    Ok(Some(Qcow2Refs {
        backing: Some(name),
        external_data,
        backing_format: backing_format(file, header_length)?,
    }))
}

/// The backing format the header extensions (after the fixed header, up to the end marker)
/// name; `None` without that extension.
fn backing_format(file: &File, header_length: usize) -> Result<Option<Vec<u8>>, String> {
    let mut area = vec![0u8; MAX_HEADER_AREA];
    let read = file
        .read_at(&mut area, 0)
        .map_err(|e| format!("cannot read its header extensions: {e}"))?;
    let area = &area[..read];
    let mut at = header_length;
    let mut found = None;
    loop {
        if at + 8 > area.len() {
            return Err("its header extensions run past their area".into());
        }
        let (kind, length) = (u32_at(area, at), u32_at(area, at + 4) as usize);
        if kind == 0 {
            return Ok(found);
        }
        let data = at + 8;
        let end = data
            .checked_add(length)
            .filter(|end| *end <= area.len())
            .ok_or("a header extension runs past its area")?;
        if kind == BACKING_FORMAT_EXTENSION {
            found = Some(area[data..end].to_vec());
        }
        at = data + length.div_ceil(8) * 8;
    }
}

/// Checks what the header of a COW volume names against its metadata: a backing file that is
/// exactly the bare UUID of `parent` (none for a base), and no external data file. An empty
/// file names nothing and passes.
fn check_header(
    file: &File,
    volume: Uuid,
    parent: Uuid,
    parent_format: Option<&str>,
) -> Result<(), StorageError> {
    let inspect = |message: String| StorageError::Inspect { volume, message };
    let Some(refs) = qcow2_refs(file).map_err(inspect)? else {
        // Not written yet (a create's reserved file): it names nothing, and QEMU refuses it.
        return Ok(());
    };
    if refs.external_data {
        return Err(inspect(
            "its qcow2 header names an external data file (refused: QEMU would open it by \
             name)"
                .into(),
        ));
    }
    let expected = (parent != BLANK_UUID).then(|| parent.hyphenated().to_string());
    let found = refs
        .backing
        .as_deref()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    if found == expected {
        let format = refs.backing_format.as_deref().map(String::from_utf8_lossy);
        if format.as_deref() == parent_format || refs.backing.is_none() {
            return Ok(());
        }
        return Err(inspect(format!(
            "its qcow2 header reads its backing file as {} where the parent is {} (refused: \
             QEMU would read the parent's data as that format, or probe it)",
            format.map_or_else(|| "a probed format".to_owned(), |f| format!("{f:?}")),
            parent_format.unwrap_or("nothing"),
        )));
    }
    let wanted = expected.map_or_else(|| "none".to_owned(), |p| format!("{p:?}"));
    Err(inspect(format!(
        "its qcow2 header names the backing file {} where its metadata names {wanted} \
         (refused: only the bare UUID of its parent in the same image is used)",
        found.map_or_else(|| "none".to_owned(), |f| format!("{f:?}")),
    )))
}

/// Checks the chain of `top` in `image`, from `top` down to its base, before a tool reads or
/// writes it: each volume's data file opened without any link and a regular file, and each
/// COW volume's backing file the bare UUID of the parent its metadata names, no external
/// data file. Returns the held files, `top` first, for [`recheck_all`] right before the tool
/// starts.
pub fn check_chain(domain: &Domain, image: Uuid, top: Uuid) -> Result<Vec<HeldFile>, StorageError> {
    let mut held: Vec<HeldFile> = Vec::new();
    let mut seen = Vec::new();
    let mut current = top;
    loop {
        if seen.len() >= MAX_CHAIN || seen.contains(&current) {
            return Err(StorageError::Inspect {
                volume: top,
                message: format!("its chain loops or exceeds {MAX_CHAIN} volumes"),
            });
        }
        seen.push(current);
        let meta = read_meta(domain, image, current)?;
        let file = HeldFile::open(&domain.dir, &domain.dir.volume(image, current), false)?;
        if meta.format == VolumeFormat::Cow {
            let parent_format = if meta.parent == BLANK_UUID {
                None
            } else {
                Some(read_meta(domain, image, meta.parent)?.format.qemu_name())
            };
            check_header(file.file(), current, meta.parent, parent_format)?;
        }
        held.push(file);
        if meta.parent == BLANK_UUID {
            return Ok(held);
        }
        current = meta.parent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2(dir: &Path, name: &str, backing: Option<&str>) -> File {
        qcow2_on(dir, name, backing, "raw")
    }

    /// A qcow2 image whose header names `backing` (if any), read as `format`.
    fn qcow2_on(dir: &Path, name: &str, backing: Option<&str>, format: &str) -> File {
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if let Some(b) = backing {
            args.extend(["-b", b, "-F", format, "-u"]);
        }
        args.extend([name, "1M"]);
        let status = std::process::Command::new("qemu-img")
            .args(&args)
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(status.success());
        File::open(dir.join(name)).unwrap()
    }

    #[test]
    fn a_header_must_name_exactly_the_parent() {
        let dir = tempfile::tempdir().unwrap();
        let (volume, parent) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let base = qcow2(dir.path(), "base", None);
        check_header(&base, volume, BLANK_UUID, None).unwrap();
        assert!(check_header(&base, volume, parent, Some("raw")).is_err());
        let good = qcow2(dir.path(), "good", Some(&parent.to_string()));
        check_header(&good, volume, parent, Some("raw")).unwrap();
        assert!(check_header(&good, volume, BLANK_UUID, None).is_err());
        for bad in [
            "/etc/passwd".to_owned(),
            format!("../{parent}"),
            format!("../other/{parent}"),
            r#"json:{"file.filename":"/etc/passwd"}"#.to_owned(),
        ] {
            let file = qcow2(dir.path(), "bad", Some(&bad));
            let err = check_header(&file, volume, parent, Some("raw")).unwrap_err();
            assert!(
                err.to_string().contains("names the backing file"),
                "{bad}: {err}"
            );
            std::fs::remove_file(dir.path().join("bad")).unwrap();
        }
        // A reserved, not yet written file names nothing.
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        check_header(
            &File::open(dir.path().join("empty")).unwrap(),
            volume,
            parent,
            Some("raw"),
        )
        .unwrap();
        std::fs::write(dir.path().join("raw"), b"not qcow2").unwrap();
        let raw = File::open(dir.path().join("raw")).unwrap();
        assert!(check_header(&raw, volume, BLANK_UUID, None).is_err());
    }

    /// A raw parent read as qcow2 would let its content (a guest's writes, or a co-tenant's)
    /// name any backing file: the header's backing format must be the parent's.
    #[test]
    fn the_backing_format_must_be_the_parents() {
        let dir = tempfile::tempdir().unwrap();
        let (volume, parent) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let name = parent.to_string();
        let as_qcow2 = qcow2_on(dir.path(), "as-qcow2", Some(&name), "qcow2");
        check_header(&as_qcow2, volume, parent, Some("qcow2")).unwrap();
        let err = check_header(&as_qcow2, volume, parent, Some("raw")).unwrap_err();
        assert!(
            err.to_string().contains("reads its backing file as"),
            "{err}"
        );
    }

    #[test]
    fn an_external_data_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "data_file=data",
                "img",
                "1M",
            ])
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let file = File::open(dir.path().join("img")).unwrap();
        let err = check_header(&file, Uuid::from_u128(1), BLANK_UUID, None).unwrap_err();
        assert!(err.to_string().contains("external data file"), "{err}");
    }
}
