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
        }));
    }
    if size > MAX_BACKING_NAME {
        return Err(format!("its backing file name is {size} bytes long"));
    }
    let mut name = vec![0u8; size as usize];
    file.read_exact_at(&mut name, offset)
        .map_err(|e| format!("cannot read its backing file name: {e}"))?;
    Ok(Some(Qcow2Refs {
        backing: Some(name),
        external_data,
    }))
}

/// Checks what the header of a COW volume names against its metadata: a backing file that is
/// exactly the bare UUID of `parent` (none for a base), and no external data file. An empty
/// file names nothing and passes.
fn check_header(file: &File, volume: Uuid, parent: Uuid) -> Result<(), StorageError> {
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
        return Ok(());
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
            check_header(file.file(), current, meta.parent)?;
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
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if let Some(b) = backing {
            args.extend(["-b", b, "-F", "raw", "-u"]);
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
        check_header(&base, volume, BLANK_UUID).unwrap();
        assert!(check_header(&base, volume, parent).is_err());
        let good = qcow2(dir.path(), "good", Some(&parent.to_string()));
        check_header(&good, volume, parent).unwrap();
        assert!(check_header(&good, volume, BLANK_UUID).is_err());
        for bad in [
            "/etc/passwd".to_owned(),
            format!("../{parent}"),
            format!("../other/{parent}"),
            r#"json:{"file.filename":"/etc/passwd"}"#.to_owned(),
        ] {
            let file = qcow2(dir.path(), "bad", Some(&bad));
            let err = check_header(&file, volume, parent).unwrap_err();
            assert!(err.to_string().contains("refused"), "{bad}: {err}");
            std::fs::remove_file(dir.path().join("bad")).unwrap();
        }
        // A reserved, not yet written file names nothing.
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        check_header(
            &File::open(dir.path().join("empty")).unwrap(),
            volume,
            parent,
        )
        .unwrap();
        std::fs::write(dir.path().join("raw"), b"not qcow2").unwrap();
        let raw = File::open(dir.path().join("raw")).unwrap();
        assert!(check_header(&raw, volume, BLANK_UUID).is_err());
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
        let err = check_header(&file, Uuid::from_u128(1), BLANK_UUID).unwrap_err();
        assert!(err.to_string().contains("external data file"), "{err}");
    }
}
