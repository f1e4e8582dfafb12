//! What a live snapshot needs of the storage: a new volume checked to be a usable target on
//! top of the base the VM uses, the new volume discarded when the switch did not happen, a
//! look at whether the guest wrote to it, and the note of how the snapshot was taken, kept
//! beside the base volume. Blocking file I/O, except [`has_data`] (qemu-img, async).

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::domain::Domain;
use super::error::StorageError;
use super::qemu_img;
use super::volume::{self, VOLUME_MODE};
use crate::api::snapshot_types::SnapshotNote;
use crate::api::volume_types::{Legality, VolumeFormat, VolumeRole};
use crate::fsutil::write_atomic;

/// The data files of `base` and of `volume`, once `volume` is checked to be a usable snapshot
/// target on top of `base`: it exists as a regular file, is LEGAL, a LEAF, COW, and its
/// parent is `base`.
pub fn check_target(
    domain: &Domain,
    image: Uuid,
    base: Uuid,
    volume: Uuid,
) -> Result<(PathBuf, PathBuf), StorageError> {
    volume::read_meta(domain, image, base)?;
    let meta = volume::read_meta(domain, image, volume)?;
    let refuse = |why: &str| StorageError::InvalidParameter(format!("volumeID={volume}: {why}"));
    if meta.legality != Legality::Legal {
        return Err(refuse("the new volume is not LEGAL"));
    }
    if meta.format != VolumeFormat::Cow {
        return Err(refuse("the new volume is not COW"));
    }
    if meta.role != VolumeRole::Leaf {
        return Err(refuse("the new volume is not a LEAF"));
    }
    if meta.parent != base {
        return Err(refuse(&format!(
            "its parent is {}, not the base volume {base}",
            meta.parent
        )));
    }
    let data = domain.dir.volume(image, volume);
    // A volume whose data file went missing is refused here, before any job or freeze,
    // rather than by the switch.
    match std::fs::symlink_metadata(&data) {
        Ok(m) if m.file_type().is_file() => {}
        _ => return Err(refuse("its data file is missing (or not a regular file)")),
    }
    Ok((domain.dir.volume(image, base), data))
}

/// Deletes a new volume a failed snapshot did not switch to; its parent becomes a LEAF again.
/// Idempotent, so that a rollback interrupted by a crash is finished by recovery.
pub fn discard(
    domain: &Domain,
    image: Uuid,
    volume: Uuid,
    parent: Uuid,
) -> Result<(), StorageError> {
    match volume::mark_illegal(domain, image, volume) {
        Ok(_) => volume::remove_files(domain, image, volume)?,
        // Gone already: a rollback interrupted after the `.meta` went.
        Err(StorageError::VolumeDoesNotExist(_)) => {}
        Err(err) => return Err(err),
    }
    // Again, in case an interrupted rollback removed the volume but not this step.
    let _lock = domain.lock().acquire()?;
    volume::recheck_leaf(domain, image, parent)
}

/// Whether the guest may have written to `volume`: its own layer holds data (read with
/// `qemu-img map`, sharing the image with a writer that may exist). A new volume a VM never
/// switched to holds none.
pub async fn has_data(
    domain: &Domain,
    image: Uuid,
    volume: Uuid,
    timeout: Duration,
) -> Result<bool, StorageError> {
    let dir = domain.dir.image(image);
    let name = volume.hyphenated().to_string();
    let args = ["map", "-U", "-f", "qcow2", "--output=json", name.as_str()];
    let inspect = |message: String| StorageError::Inspect { volume, message };
    let out = qemu_img::run(&args, &dir, timeout, &CancellationToken::new())
        .await
        .map_err(|e| inspect(e.to_string()))?;
    let extents: Vec<serde_json::Value> =
        serde_json::from_str(&out).map_err(|e| inspect(format!("qemu-img map output: {e}")))?;
    Ok(extents.iter().any(|e| e["depth"] == 0 && e["data"] == true))
}

/// Records durably how the snapshot on top of `volume` was taken.
pub fn write_note(
    domain: &Domain,
    image: Uuid,
    volume: Uuid,
    note: &SnapshotNote,
) -> Result<(), StorageError> {
    let path = domain.dir.snapshot_note(image, volume);
    let bytes = serde_json::to_vec_pretty(note).unwrap_or_default();
    write_atomic(&path, &bytes, VOLUME_MODE).map_err(StorageError::io("write", &path))
}

/// The note of [`write_note`], if any.
pub fn read_note(domain: &Domain, image: Uuid, volume: Uuid) -> Option<SnapshotNote> {
    let bytes = std::fs::read(domain.dir.snapshot_note(image, volume)).ok()?;
    serde_json::from_slice(&bytes).ok()
}
