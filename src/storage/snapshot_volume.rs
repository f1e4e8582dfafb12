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
    match domain.dir.stat(&data) {
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
    Ok(extents.iter().any(allocated_in_top_layer))
}

/// Whether a `qemu-img map` extent is allocated in the image's own layer (depth 0). Zeroes the
/// guest wrote, and ranges it discarded, are allocated as zero clusters (`present`, `zero`,
/// not `data`): they hide the backing file's data, so they are the guest's writes too.
fn allocated_in_top_layer(extent: &serde_json::Value) -> bool {
    extent["depth"] == 0
        && (extent["present"] == true
            // Before `present` existed (qemu < 6.1), only data extents were told apart.
            || (extent.get("present").is_none() && extent["data"] == true))
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
    domain
        .dir
        .write_atomic(&path, &bytes, VOLUME_MODE)
        .map_err(StorageError::io("write", &path))
}

/// The note of [`write_note`], if any.
pub fn read_note(domain: &Domain, image: Uuid, volume: Uuid) -> Option<SnapshotNote> {
    let bytes = domain
        .dir
        .read(&domain.dir.snapshot_note(image, volume))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn zero_clusters_of_the_top_layer_are_the_guests_writes() {
        let zeroed = json!({"depth": 0, "present": true, "zero": true, "data": false});
        let written = json!({"depth": 0, "present": true, "zero": false, "data": true});
        let backing = json!({"depth": 1, "present": true, "zero": false, "data": true});
        let hole = json!({"depth": 0, "present": false, "zero": true, "data": false});
        let old_qemu = json!({"depth": 0, "zero": false, "data": true});
        assert!(allocated_in_top_layer(&zeroed));
        assert!(allocated_in_top_layer(&written));
        assert!(allocated_in_top_layer(&old_qemu));
        assert!(!allocated_in_top_layer(&backing));
        assert!(!allocated_in_top_layer(&hole));
    }

    /// With the real qemu-img and qemu-io: a new overlay holds nothing of its own; zeroes
    /// written, or a range discarded, make it hold the guest's writes.
    #[tokio::test]
    async fn written_zeroes_and_discards_count_as_data() {
        let dir = tempfile::tempdir().unwrap();
        let run = |program: &str, args: &[&str]| {
            let out = std::process::Command::new(program)
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{program} {args:?}: {out:?}");
        };
        run("qemu-img", &["create", "-q", "-f", "qcow2", "base", "1M"]);
        run("qemu-io", &["-c", "write -P 7 0 1M", "base"]);
        for (name, writes) in [
            ("new", None),
            ("zeroed", Some("write -z 0 64k")),
            ("discarded", Some("discard 64k 64k")),
        ] {
            run(
                "qemu-img",
                &[
                    "create", "-q", "-f", "qcow2", "-b", "base", "-F", "qcow2", name,
                ],
            );
            if let Some(command) = writes {
                run("qemu-io", &["-c", command, name]);
            }
            let args = ["map", "-U", "-f", "qcow2", "--output=json", name];
            let timeout = Duration::from_secs(30);
            let out = qemu_img::run(&args, dir.path(), timeout, &CancellationToken::new())
                .await
                .unwrap();
            let extents: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
            let has_data = extents.iter().any(allocated_in_top_layer);
            assert_eq!(has_data, writes.is_some(), "{name}: {out}");
        }
    }
}
