//! The domain's external leases volume, `dom_md/xleases`, in VDSM's format (its
//! `storage/xlease.py`): lease slots of 1 MiB; slot 1 holds an index mapping a lease id (a
//! VM's UUID, for VM leases) to the slot of its sanlock resource. VDSM's hosts and rvdsm's
//! read each other's index.
//!
//! This module owns the bytes of the index and the order of the two writes of an add or a
//! remove; the sanlock resource in a slot is written by the caller (the storage module never
//! sees sanlock). Adds and removes run on the SPM under the domain's lock; lookups on any host.
//!
//! Layout (alignment 1 MiB): slot 0 unused (VDSM's lockspace is in `ids`), slot 1 the index,
//! slot 2 reserved for sanlock, slot 3 + n the lease of record n. The index: 512 bytes of
//! metadata (magic, version, lockspace, mtime, updating flag), then 64-byte records (resource
//! name, its offset for humans, flags). An empty record is a free slot. A record's slot is
//! computed from its position, never read from the record: two records cannot share a slot.
//!
//! The volume is opened once per operation through the domain's no-link rule and read and
//! written through that descriptor only; sanlock, which opens it by name, gets the name only
//! after it was found to be the same regular file right before (a co-tenant could plant a
//! link there: a host file grown to 1 GiB and overwritten).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::domain::{Domain, LEASE_ALIGNMENT};
use super::error::StorageError;
use super::tool_files::HeldFile;

/// The size VDSM gives a file domain's `xleases` (sparse): 1021 leases at 1 MiB alignment.
pub const VOLUME_SIZE: u64 = 1 << 30;
/// Slots before the first lease: lockspace, index, sanlock's own.
const RESERVED_SLOTS: u64 = 3;
const METADATA_SIZE: usize = 512;
const RECORD_SIZE: usize = 64;
/// The index VDSM reads: 62 blocks of 4 KiB, whatever the domain's block size.
const INDEX_SIZE: usize = 62 * 4096;
const MAX_RECORDS: usize = (INDEX_SIZE - METADATA_SIZE) / RECORD_SIZE;
const INDEX_MAGIC: u32 = 0x1215_2016;
const INDEX_VERSION: u32 = 1;
const NAME_SIZE: usize = 48;
const FLAG_NONE: u8 = b'-';
const FLAG_UPDATING: u8 = b'u';

/// The domain's leases volume and its index, as read when opened.
pub struct Xleases {
    file: File,
    path: PathBuf,
    alignment: u64,
    block_size: usize,
    lockspace: String,
    index: Vec<u8>,
    /// Records that have a slot inside the volume.
    usable: usize,
}

/// One lease found in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSlot {
    /// The lease's id (the sanlock resource's name).
    pub lease: Uuid,
    /// The volume holding it.
    pub path: PathBuf,
    /// Its offset there.
    pub offset: u64,
}

fn invalid(path: &Path, why: impl std::fmt::Display) -> StorageError {
    StorageError::LeasesVolume(format!("{}: {why}", path.display()))
}

/// The index's first 512 bytes.
fn metadata_bytes(lockspace: &str, mtime: u64, updating: bool) -> [u8; METADATA_SIZE] {
    let mut out = [0u8; METADATA_SIZE];
    out[0..4].copy_from_slice(&INDEX_MAGIC.to_be_bytes());
    out[5..9].copy_from_slice(format!("{INDEX_VERSION:04}").as_bytes());
    out[10..10 + lockspace.len()].copy_from_slice(lockspace.as_bytes());
    out[59..69].copy_from_slice(format!("{mtime:010}").as_bytes());
    out[70] = if updating { FLAG_UPDATING } else { FLAG_NONE };
    out[METADATA_SIZE - 1] = b'\n';
    out
}

/// A record: `name` (empty for a free slot) and the offset written beside it.
fn record_bytes(name: &str, offset: u64) -> [u8; RECORD_SIZE] {
    let mut out = [0u8; RECORD_SIZE];
    out[..name.len()].copy_from_slice(name.as_bytes());
    out[49..60].copy_from_slice(format!("{offset:011}").as_bytes());
    out[61] = FLAG_NONE;
    out[62] = FLAG_NONE;
    out[63] = b'\n';
    out
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Xleases {
    /// Formats the index of the empty or new leases volume `file` (at `path`, opened for
    /// reading and writing) for the domain `lockspace`: every record free, the volume grown
    /// to [`VOLUME_SIZE`]. Refuses a volume that holds a valid index already (formatting
    /// forgets every lease). Blocks.
    pub fn format(
        file: &File,
        path: &Path,
        lockspace: Uuid,
        alignment: u64,
    ) -> Result<(), StorageError> {
        if Self::read_index(file, path, alignment).is_ok_and(|(_, index)| index.is_some()) {
            return Err(invalid(
                path,
                "holds an index already; formatting would lose its leases",
            ));
        }
        let lockspace = lockspace.to_string();
        let mut index = vec![0u8; INDEX_SIZE];
        index[..METADATA_SIZE].copy_from_slice(&metadata_bytes(&lockspace, now(), false));
        let free = record_bytes("", 0);
        for record in index[METADATA_SIZE..].chunks_exact_mut(RECORD_SIZE) {
            record.copy_from_slice(&free);
        }
        let size = file
            .metadata()
            .map_err(StorageError::io("stat", path))?
            .len();
        if size < VOLUME_SIZE {
            file.set_len(VOLUME_SIZE)
                .map_err(StorageError::io("grow", path))?;
        }
        file.write_all_at(&index, alignment)
            .map_err(StorageError::io("write", path))?;
        file.sync_all().map_err(StorageError::io("fsync", path))
    }

    /// The index, or `None` when the volume was never formatted (too short or zeroed).
    fn read_index(
        file: &File,
        path: &Path,
        alignment: u64,
    ) -> Result<(u64, Option<Vec<u8>>), StorageError> {
        let size = file
            .metadata()
            .map_err(StorageError::io("stat", path))?
            .len();
        if size < alignment + INDEX_SIZE as u64 {
            return Ok((size, None));
        }
        let mut index = vec![0u8; INDEX_SIZE];
        file.read_exact_at(&mut index, alignment)
            .map_err(StorageError::io("read", path))?;
        if index[..METADATA_SIZE].iter().all(|b| *b == 0) {
            return Ok((size, None));
        }
        Ok((size, Some(index)))
    }

    /// Whether the volume `file` (at `path`) holds an index (valid or not). Blocks.
    pub fn formatted(file: &File, path: &Path, alignment: u64) -> Result<bool, StorageError> {
        Ok(Self::read_index(file, path, alignment)?.1.is_some())
    }

    /// Reads the index of the volume `file` (at `path`; opened for writing too if records
    /// are to be written) of a domain with `alignment` and `block_size`. Blocks.
    pub fn open(
        file: File,
        path: &Path,
        alignment: u64,
        block_size: u32,
    ) -> Result<Self, StorageError> {
        let (size, index) = Self::read_index(&file, path, alignment)?;
        let index = index.ok_or_else(|| invalid(path, "no index: the volume is not formatted"))?;
        let meta = &index[..METADATA_SIZE];
        let magic = u32::from_be_bytes([meta[0], meta[1], meta[2], meta[3]]);
        if magic != INDEX_MAGIC {
            return Err(invalid(path, format_args!("bad magic {magic:#x}")));
        }
        if &meta[5..9] != format!("{INDEX_VERSION:04}").as_bytes() {
            return Err(invalid(path, "unsupported index version"));
        }
        if meta[70] == FLAG_UPDATING {
            return Err(invalid(
                path,
                "the index was left updating; it must be formatted or rebuilt",
            ));
        }
        let lockspace = std::str::from_utf8(&meta[10..58])
            .map_err(|_| invalid(path, "lockspace is not text"))?
            .trim_end_matches('\0')
            .to_owned();
        let slots = (size / alignment).saturating_sub(RESERVED_SLOTS);
        Ok(Self {
            file,
            path: path.to_owned(),
            alignment,
            block_size: usize::try_from(block_size.max(512)).unwrap_or(512),
            lockspace,
            index,
            usable: MAX_RECORDS.min(usize::try_from(slots).unwrap_or(usize::MAX)),
        })
    }

    /// The lockspace (the domain's UUID) the index was formatted for.
    pub fn lockspace(&self) -> &str {
        &self.lockspace
    }

    fn record(&self, n: usize) -> &[u8] {
        let start = METADATA_SIZE + n * RECORD_SIZE;
        &self.index[start..start + RECORD_SIZE]
    }

    fn name_of(&self, n: usize) -> &[u8] {
        let name = &self.record(n)[..NAME_SIZE];
        let end = name.iter().position(|b| *b == 0).unwrap_or(NAME_SIZE);
        &name[..end]
    }

    fn offset_of(&self, n: usize) -> u64 {
        (RESERVED_SLOTS + n as u64) * self.alignment
    }

    /// The record of `lease`; a record left `updating` by an older VDSM counts as absent.
    fn find(&self, lease: Uuid) -> Option<usize> {
        let name = lease.to_string();
        (0..MAX_RECORDS).find(|n| self.name_of(*n) == name.as_bytes())
    }

    fn slot(&self, lease: Uuid, n: usize) -> LeaseSlot {
        LeaseSlot {
            lease,
            path: self.path.clone(),
            offset: self.offset_of(n),
        }
    }

    /// Where `lease` lives (VDSM's 936 when it does not exist).
    pub fn lookup(&self, lease: Uuid) -> Result<LeaseSlot, StorageError> {
        match self.find(lease) {
            Some(n) if self.record(n)[61] != FLAG_UPDATING => Ok(self.slot(lease, n)),
            _ => Err(StorageError::NoSuchLease(lease)),
        }
    }

    /// Every lease of the index.
    pub fn leases(&self) -> Vec<LeaseSlot> {
        (0..MAX_RECORDS)
            .filter_map(|n| {
                let name = std::str::from_utf8(self.name_of(n)).ok()?;
                Some(self.slot(Uuid::parse_str(name).ok()?, n))
            })
            .collect()
    }

    /// Adds `lease`: `write_resource` formats the sanlock resource in the slot found, then
    /// the record makes it visible. A failure before the record is written leaves the index
    /// as it was (the slot stays free). Blocks.
    pub fn add(
        &mut self,
        lease: Uuid,
        write_resource: impl FnOnce(&LeaseSlot) -> Result<(), StorageError>,
    ) -> Result<LeaseSlot, StorageError> {
        let n = match self.find(lease) {
            Some(n) if self.record(n)[61] != FLAG_UPDATING => {
                return Err(StorageError::LeaseExists(lease));
            }
            // Half made by an older VDSM: made again in place.
            Some(n) => n,
            None => (0..self.usable)
                .find(|n| self.name_of(*n).is_empty())
                .ok_or_else(|| {
                    invalid(
                        &self.path,
                        format_args!("no free lease slot for {lease} (all {} used)", self.usable),
                    )
                })?,
        };
        let slot = self.slot(lease, n);
        write_resource(&slot)?;
        self.write_record(n, &record_bytes(&lease.to_string(), slot.offset))?;
        Ok(slot)
    }

    /// Removes `lease`: its record is freed first (the lease is gone from then on), then
    /// `clear_resource` clears its slot; a failure of the second only leaves an unreachable
    /// resource behind. Blocks.
    pub fn remove(
        &mut self,
        lease: Uuid,
        clear_resource: impl FnOnce(&LeaseSlot) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let n = self.find(lease).ok_or(StorageError::NoSuchLease(lease))?;
        let slot = self.slot(lease, n);
        self.write_record(n, &record_bytes("", 0))?;
        if let Err(err) = clear_resource(&slot) {
            tracing::warn!(%lease, error = %err, "lease removed from the index; its sanlock area was not cleared");
        }
        Ok(())
    }

    /// Writes record `n` by rewriting the whole block that holds it (one block write is
    /// atomic on the storage VDSM supports), then syncs.
    fn write_record(&mut self, n: usize, record: &[u8; RECORD_SIZE]) -> Result<(), StorageError> {
        let start = METADATA_SIZE + n * RECORD_SIZE;
        let mut updated = self.index.clone();
        updated[start..start + RECORD_SIZE].copy_from_slice(record);
        let block = start - start % self.block_size;
        let file = &self.file;
        file.write_all_at(
            &updated[block..block + self.block_size],
            self.alignment + block as u64,
        )
        .map_err(StorageError::io("write", &self.path))?;
        file.sync_data()
            .map_err(StorageError::io("fsync", &self.path))?;
        self.index = updated;
        Ok(())
    }
}

/// The domain's leases volume, opened without following any link (for writing too when
/// `write`), a regular file.
fn volume_of(domain: &Domain, write: bool) -> Result<HeldFile, StorageError> {
    HeldFile::open(&domain.dir, &domain.dir.dom_md().join("xleases"), write)
}

/// The domain's leases volume read from `held`, its index checked to be the domain's.
fn open_of(domain: &Domain, held: &HeldFile) -> Result<Xleases, StorageError> {
    let file = held
        .file()
        .try_clone()
        .map_err(StorageError::io("open", held.path()))?;
    let index = Xleases::open(file, held.path(), LEASE_ALIGNMENT, domain.block_size)?;
    if index.lockspace() != domain.uuid.to_string() {
        return Err(invalid(
            &index.path,
            format_args!(
                "formatted for lockspace {:?}, not this domain's",
                index.lockspace()
            ),
        ));
    }
    Ok(index)
}

/// The lease manager external leases need: only a shared domain's (sanlock) has one.
pub fn manager_of(domain: &Domain) -> Result<&dyn super::lock::SharedLeases, StorageError> {
    domain.shared().ok_or_else(|| {
        StorageError::LeasesVolume(format!(
            "domain {} is not shared through sanlock on this host: external leases need \
             [cluster] host_id and StoragePool.connect",
            domain.uuid
        ))
    })
}

/// Where `lease` lives in `domain`. Blocks.
pub fn lookup(domain: &Domain, lease: Uuid) -> Result<LeaseSlot, StorageError> {
    open_of(domain, &volume_of(domain, false)?)?.lookup(lease)
}

/// Creates `lease` in `domain` under its metadata lock: its sanlock resource formatted in a
/// free slot, then its record. A leases volume a domain was created with empty (before rvdsm
/// formatted them) gets its index first. Blocks.
pub fn create(domain: &Domain, lease: Uuid) -> Result<LeaseSlot, StorageError> {
    let manager = manager_of(domain)?;
    let _lock = domain.lock().acquire()?;
    let held = volume_of(domain, true)?;
    if !Xleases::formatted(held.file(), held.path(), LEASE_ALIGNMENT)? {
        tracing::info!(domain = %domain.uuid, "formatting the external leases volume");
        Xleases::format(held.file(), held.path(), domain.uuid, LEASE_ALIGNMENT)?;
    }
    open_of(domain, &held)?.add(lease, |slot| {
        held.recheck(&domain.dir)?;
        manager
            .format_lease(lease, &slot.path, slot.offset)
            .map_err(|e| StorageError::LeasesVolume(format!("lease {lease}: {e}")))
    })
}

/// Deletes `lease` from `domain` under its metadata lock. Blocks.
pub fn delete(domain: &Domain, lease: Uuid) -> Result<(), StorageError> {
    let manager = manager_of(domain)?;
    let _lock = domain.lock().acquire()?;
    let held = volume_of(domain, true)?;
    open_of(domain, &held)?.remove(lease, |slot| {
        held.recheck(&domain.dir)?;
        manager
            .clear_lease(lease, &slot.path, slot.offset)
            .map_err(StorageError::LeasesVolume)
    })
}

/// The hosts holding `lease` and, when held, its version. Blocks.
pub fn status(
    domain: &Domain,
    lease: Uuid,
) -> Result<(LeaseSlot, Vec<u64>, Option<u64>), StorageError> {
    let manager = manager_of(domain)?;
    let held = volume_of(domain, false)?;
    let slot = open_of(domain, &held)?.lookup(lease)?;
    held.recheck(&domain.dir)?;
    let (owners, version) = manager
        .lease_status(lease, &slot.path, slot.offset)
        .map_err(|e| StorageError::LeasesVolume(format!("lease {lease}: {e}")))?;
    Ok((slot, owners, version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    const ALIGN: u64 = 1 << 20;
    /// [`ALIGN`] as an index into the volume's bytes.
    const AT: usize = 1 << 20;

    fn formatted(dir: &tempfile::TempDir) -> (PathBuf, Uuid) {
        let path = dir.path().join("xleases");
        let domain = Uuid::new_v4();
        Xleases::format(&rw(&path), &path, domain, ALIGN).unwrap();
        (path, domain)
    }

    fn rw(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    fn open(path: &Path, block_size: u32) -> Result<Xleases, StorageError> {
        Xleases::open(rw(path), path, ALIGN, block_size)
    }

    #[test]
    fn format_writes_vdsm_metadata_and_free_records() {
        let dir = tempfile::tempdir().unwrap();
        let (path, domain) = formatted(&dir);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, VOLUME_SIZE);
        let meta = &bytes[AT..AT + 512];
        assert_eq!(&meta[0..4], &[0x12, 0x15, 0x20, 0x16]);
        assert_eq!(&meta[5..9], b"0001");
        assert_eq!(&meta[10..46], domain.to_string().as_bytes());
        assert_eq!(meta[70], b'-');
        assert_eq!(meta[511], b'\n');
        let first = &bytes[AT + 512..AT + 576];
        assert_eq!(&first[49..60], b"00000000000");
        assert_eq!(&first[61..64], b"--\n");
        let index = open(&path, 512).unwrap();
        assert_eq!(index.lockspace(), domain.to_string());
        assert!(index.leases().is_empty());
        assert_eq!(index.usable, 1021);
    }

    #[test]
    fn format_refuses_an_index_holding_leases() {
        let dir = tempfile::tempdir().unwrap();
        let (path, domain) = formatted(&dir);
        let err = Xleases::format(&rw(&path), &path, domain, ALIGN).unwrap_err();
        assert!(matches!(err, StorageError::LeasesVolume(_)), "{err}");
    }

    #[test]
    fn add_lookup_remove_round_trip_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = formatted(&dir);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut index = open(&path, 4096).unwrap();
        let slot_a = index.add(a, |_| Ok(())).unwrap();
        let slot_b = index.add(b, |_| Ok(())).unwrap();
        assert_eq!(slot_a.offset, 3 * ALIGN);
        assert_eq!(slot_b.offset, 4 * ALIGN);
        assert!(matches!(
            index.add(a, |_| Ok(())),
            Err(StorageError::LeaseExists(id)) if id == a
        ));
        // What another host reads.
        let other = open(&path, 4096).unwrap();
        assert_eq!(other.lookup(b).unwrap(), slot_b);
        let record = &std::fs::read(&path).unwrap()[AT + 512 + 64..][..64];
        assert_eq!(&record[..36], b.to_string().as_bytes());
        assert_eq!(&record[49..60], format!("{:011}", 4 * ALIGN).as_bytes());
        let mut cleared = None;
        index
            .remove(a, |slot| {
                cleared = Some(slot.offset);
                Ok(())
            })
            .unwrap();
        assert_eq!(cleared, Some(3 * ALIGN));
        let reread = open(&path, 4096).unwrap();
        assert!(matches!(
            reread.lookup(a),
            Err(StorageError::NoSuchLease(_))
        ));
        assert_eq!(reread.leases(), vec![slot_b]);
        // The freed slot is the next one used.
        let mut index = reread;
        assert_eq!(
            index.add(Uuid::new_v4(), |_| Ok(())).unwrap().offset,
            3 * ALIGN
        );
    }

    #[test]
    fn a_failed_resource_write_leaves_the_index_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = formatted(&dir);
        let before = std::fs::read(&path).unwrap();
        let mut index = open(&path, 512).unwrap();
        let lease = Uuid::new_v4();
        let err = index
            .add(lease, |_| {
                Err(StorageError::LeasesVolume("sanlock said no".into()))
            })
            .unwrap_err();
        assert!(err.to_string().contains("sanlock said no"));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert!(index.lookup(lease).is_err());
    }

    #[test]
    fn an_unformatted_or_foreign_volume_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xleases");
        std::fs::write(&path, b"").unwrap();
        let err = open(&path, 512).err().unwrap();
        assert!(err.to_string().contains("not formatted"), "{err}");
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(4 * ALIGN).unwrap();
        file.write_all_at(b"garbage", ALIGN).unwrap();
        let err = open(&path, 512).err().unwrap();
        assert!(err.to_string().contains("bad magic"), "{err}");
    }

    #[test]
    fn a_full_volume_refuses_a_new_lease() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = formatted(&dir);
        // A volume with room for one lease.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4 * ALIGN)
            .unwrap();
        let mut index = open(&path, 512).unwrap();
        index.add(Uuid::new_v4(), |_| Ok(())).unwrap();
        let err = index.add(Uuid::new_v4(), |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("no free lease slot"), "{err}");
    }
}
