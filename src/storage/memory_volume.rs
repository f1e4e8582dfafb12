//! The two volumes a memory snapshot or a hibernation writes, as the manager created them:
//! the RAM dump and the configuration ([`super::memory_state`]). Each is checked before use — a
//! RAW volume alone in its image (no parent, no child), LEGAL, not a template, its data file a
//! regular file reached without a link — and held open, so that libvirt writes and reads the
//! held file through rvdsmd's descriptor, whatever another host does to the names meanwhile.
//!
//! A RAW file volume's size is its capacity. libvirt truncates the dump file to what it
//! writes; rvdsm gives it its capacity back afterwards (sparse), and refuses a dump that grew
//! past it. Blocking: callers run these off the reactor.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use uuid::Uuid;

use super::domain::Domain;
use super::error::StorageError;
use super::tool_files::HeldFile;
use super::volume;
use crate::api::volume_types::{Legality, VolumeFormat, VolumeRole};

/// What the configuration is padded to (VDSM aligns its own to 4 KiB for qemu-img's sake).
const ALIGNMENT: usize = 4096;

/// A checked memory volume, held open.
#[derive(Debug)]
pub struct MemoryVolume {
    /// The image.
    pub image: Uuid,
    /// The volume.
    pub volume: Uuid,
    /// Its capacity in bytes (the metadata's).
    pub capacity: u64,
    /// Its data file's path in the domain, to compare with the disks VMs use.
    pub path: PathBuf,
    held: HeldFile,
}

impl MemoryVolume {
    /// The name libvirt opens the held file by (`/proc/<pid>/fd/<n>`).
    pub fn fd_name(&self) -> String {
        self.held.fd_name()
    }

    /// The data file's size now.
    pub fn size_now(&self) -> Result<u64, StorageError> {
        self.held
            .file()
            .metadata()
            .map(|m| m.len())
            .map_err(StorageError::io("stat", &self.path))
    }
}

fn refused(volume: Uuid, why: impl std::fmt::Display) -> StorageError {
    StorageError::MemoryVolume(format!("volume {volume}: {why}"))
}

/// Opens `volume` of `image` as a memory volume, checked (see the module's rules).
pub fn open(domain: &Domain, image: Uuid, volume: Uuid) -> Result<MemoryVolume, StorageError> {
    let meta = volume::read_meta(domain, image, volume)?;
    if meta.format != VolumeFormat::Raw {
        return Err(refused(
            volume,
            "is not RAW; a memory volume is a RAW volume",
        ));
    }
    if meta.parent != Uuid::nil() {
        return Err(refused(
            volume,
            "has a parent; a memory volume is alone in its image",
        ));
    }
    if !volume::children(domain, image, volume)?.is_empty() || meta.role == VolumeRole::Shared {
        return Err(refused(volume, "is a template or has children"));
    }
    if meta.legality != Legality::Legal {
        return Err(refused(volume, "is ILLEGAL"));
    }
    let others: Vec<Uuid> = domain
        .volumes(image)?
        .into_iter()
        .filter(|v| *v != volume)
        .collect();
    if !others.is_empty() {
        return Err(refused(volume, "shares its image with other volumes"));
    }
    let path = domain.dir.volume(image, volume);
    let held = HeldFile::open(&domain.dir, &path, true)?;
    Ok(MemoryVolume {
        image,
        volume,
        capacity: meta.capacity,
        path,
        held,
    })
}

/// Writes `bytes` at the start of the configuration volume, zero-padded to 4 KiB, durably.
pub fn write_conf(vol: &MemoryVolume, bytes: &[u8]) -> Result<(), StorageError> {
    let padded_len = bytes.len().div_ceil(ALIGNMENT) * ALIGNMENT;
    if padded_len as u64 > vol.capacity {
        return Err(refused(
            vol.volume,
            format!(
                "too small for the configuration: {} bytes needed, {} available",
                padded_len, vol.capacity
            ),
        ));
    }
    let mut padded = bytes.to_vec();
    padded.resize(padded_len, 0);
    let file = vol.held.file();
    file.write_all_at(&padded, 0)
        .and_then(|()| file.sync_all())
        .map_err(StorageError::io("write", &vol.path))
}

/// The first `limit` bytes of the configuration volume (fewer when it is smaller).
pub fn read_conf(vol: &MemoryVolume, limit: usize) -> Result<Vec<u8>, StorageError> {
    let mut file = vol.held.file();
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.take(limit as u64).read_to_end(&mut bytes))
        .map_err(StorageError::io("read", &vol.path))?;
    Ok(bytes)
}

/// Ends a dump: its size in bytes, once the file has its capacity back. A dump larger than
/// its volume is refused (the manager sized the volume for less than the guest saved).
pub fn finish_dump(vol: &MemoryVolume) -> Result<u64, StorageError> {
    let written = vol.size_now()?;
    if written > vol.capacity {
        return Err(refused(
            vol.volume,
            format!(
                "the dump ({written} bytes) outgrew its volume ({} bytes)",
                vol.capacity
            ),
        ));
    }
    let mut file = vol.held.file();
    file.set_len(vol.capacity)
        .and_then(|()| file.flush())
        .and_then(|()| file.sync_all())
        .map_err(StorageError::io("resize", &vol.path))?;
    Ok(written)
}

/// Marks a memory volume ILLEGAL: what it holds must never be restored (a dump cut short, a
/// configuration of a snapshot that failed).
pub fn mark_unusable(domain: &Domain, image: Uuid, volume: Uuid) -> Result<(), StorageError> {
    let _lock = domain.lock().acquire()?;
    let mut meta = volume::read_meta(domain, image, volume)?;
    meta.legality = Legality::Illegal;
    volume::write_meta(domain, image, volume, &meta)
}
