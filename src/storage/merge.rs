//! What merging a snapshot away changes in a domain's metadata: the pair checked before a
//! merge (`top` a LEGAL child of a LEGAL `base`, nothing else based on `base`), `base`'s
//! snapshot note marked before a live commit begins (its instant may be overwritten from
//! then on), the leaf marked ILLEGAL before an active commit's pivot (and LEGAL again when
//! the pivot fails), and the merged `top` unlinked once QEMU no longer uses it: its child (if
//! any) based on `base`, `base` taking its place (its capacity, its role, its snapshot note),
//! then `top` deleted. Every step is idempotent, so recovery after a crash finishes it.
//! Blocking file I/O.

use uuid::Uuid;

use super::domain::Domain;
use super::error::StorageError;
use super::meta::VolumeMeta;
use super::snapshot_volume;
use super::volume::{self, children, read_meta, write_meta};
use crate::api::snapshot_types::SnapshotNote;
use crate::api::volume_types::{Legality, VolumeRole};

/// A checked merge of `top` into `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergePair {
    /// The volume based on `top`, if `top` is not the leaf.
    pub child: Option<Uuid>,
    /// `top`'s metadata.
    pub top: VolumeMeta,
    /// `base`'s metadata.
    pub base: VolumeMeta,
}

/// Checks that `top` can be merged into `base`: both LEGAL and not shared templates, `top`'s
/// parent is `base`, `top` has at most one child, and `base` has no child but `top` (data
/// committed into `base` would change what another branch of the image sees).
pub fn check_pair(
    domain: &Domain,
    image: Uuid,
    base: Uuid,
    top: Uuid,
) -> Result<MergePair, StorageError> {
    let refuse = |why: String| StorageError::InvalidParameter(why);
    // QEMU reopens the base by its name to write into it (a live commit), and qemu-img opens
    // the chain by names (a cold one): every name must still lead, without a link, to the
    // volume the metadata and the qcow2 headers say.
    super::tool_files::check_chain(domain, image, top)?;
    let top_meta = read_meta(domain, image, top)?;
    let base_meta = read_meta(domain, image, base)?;
    if top_meta.parent != base {
        return Err(refuse(format!(
            "topVolUUID={top}: its parent is {}, not the base {base}",
            top_meta.parent
        )));
    }
    for (id, meta) in [(top, &top_meta), (base, &base_meta)] {
        if meta.legality != Legality::Legal {
            return Err(refuse(format!("volume {id} is ILLEGAL")));
        }
        if meta.role == VolumeRole::Shared {
            return Err(refuse(format!("volume {id} is a shared template")));
        }
    }
    let siblings: Vec<Uuid> = children(domain, image, base)?
        .into_iter()
        .filter(|c| *c != top)
        .collect();
    if !siblings.is_empty() {
        return Err(refuse(format!(
            "baseVolUUID={base}: other volumes are based on it ({siblings:?}); committing into \
             it would change what they hold"
        )));
    }
    let above = children(domain, image, top)?;
    if above.len() > 1 {
        return Err(refuse(format!(
            "topVolUUID={top}: several volumes are based on it ({above:?})"
        )));
    }
    Ok(MergePair {
        child: above.first().copied(),
        top: top_meta,
        base: base_meta,
    })
}

/// Marks `base`'s snapshot note before a live commit of `top` into it begins, durably
/// (written, synced, renamed): from the commit's first write on, `base` may hold data of two
/// instants, and a failed, cancelled or interrupted commit leaves it so. The note then says
/// that a revert to it is unknown ([`SnapshotNote::merge_begun`]), never `clean`; a merge
/// that ends replaces it ([`unlink_merged`]). Written even when `base` had no note.
pub fn note_merge_begun(
    domain: &Domain,
    image: Uuid,
    base: Uuid,
    top: Uuid,
    vm: Uuid,
) -> Result<(), StorageError> {
    read_meta(domain, image, base)?;
    let note = SnapshotNote::merge_begun(vm, top, crate::clock::epoch_secs());
    snapshot_volume::write_note(domain, image, base, &note)
}

/// A volume's legality; `None` when it is gone.
pub fn legality(
    domain: &Domain,
    image: Uuid,
    volume: Uuid,
) -> Result<Option<Legality>, StorageError> {
    match read_meta(domain, image, volume) {
        Ok(meta) => Ok(Some(meta.legality)),
        Err(StorageError::VolumeDoesNotExist(_)) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Sets a volume's legality (the leaf ILLEGAL before a pivot, LEGAL again after a failed
/// one). A volume already gone is left alone.
pub fn set_legality(
    domain: &Domain,
    image: Uuid,
    volume: Uuid,
    legality: Legality,
) -> Result<(), StorageError> {
    let _lock = domain.lock().acquire()?;
    let mut meta = match read_meta(domain, image, volume) {
        Ok(meta) => meta,
        Err(StorageError::VolumeDoesNotExist(_)) => return Ok(()),
        Err(err) => return Err(err),
    };
    if meta.legality != legality {
        meta.legality = legality;
        write_meta(domain, image, volume, &meta)?;
    }
    Ok(())
}

/// Takes the merged `top` out of the image once QEMU no longer uses it (the live chain, or
/// the qemu images of a stopped VM, go from `base` to `top`'s child): the child is based on
/// `base`; `base` grows to `top`'s capacity and takes `top`'s snapshot note, or none when
/// `top` had none (an internal merge: `base` now holds the data of `top`'s snapshot instant,
/// not its own) or drops its own (an active merge: `base` is the leaf); `top` is marked
/// ILLEGAL, then its files go. Idempotent.
pub fn unlink_merged(
    domain: &Domain,
    image: Uuid,
    base: Uuid,
    top: Uuid,
) -> Result<(), StorageError> {
    {
        let _lock = domain.lock().acquire()?;
        let mut top_meta = match read_meta(domain, image, top) {
            Ok(meta) => meta,
            // Gone already: an earlier run got past this step.
            Err(StorageError::VolumeDoesNotExist(_)) => return Ok(()),
            Err(err) => return Err(err),
        };
        let above = children(domain, image, top)?;
        for child in &above {
            let mut meta = read_meta(domain, image, *child)?;
            meta.parent = base;
            write_meta(domain, image, *child, &meta)?;
        }
        // An internal merge whether `top`'s child was just rebased or an interrupted run
        // rebased it already.
        let internal = children(domain, image, base)?.iter().any(|c| *c != top);
        let mut base_meta = read_meta(domain, image, base)?;
        base_meta.capacity = base_meta.capacity.max(top_meta.capacity);
        let base_note = domain.dir.snapshot_note(image, base);
        match snapshot_volume::read_note(domain, image, top) {
            Some(note) if internal => {
                snapshot_volume::write_note(domain, image, base, &note)?;
            }
            // Its own note told of an instant it no longer holds.
            _ if internal => remove_note(domain, &base_note)?,
            _ => {
                base_meta.role = VolumeRole::Leaf;
                remove_note(domain, &base_note)?;
            }
        }
        write_meta(domain, image, base, &base_meta)?;
        if top_meta.legality != Legality::Illegal {
            top_meta.legality = Legality::Illegal;
            write_meta(domain, image, top, &top_meta)?;
        }
    }
    volume::remove_files(domain, image, top)
}

/// Removes a snapshot note (one already gone is fine).
fn remove_note(domain: &Domain, note: &std::path::Path) -> Result<(), StorageError> {
    domain
        .dir
        .remove(note)
        .map(drop)
        .map_err(StorageError::io("remove", note))
}

/// A cold merge's data step: `top`'s data written into `base` (`qemu-img commit -d`: `top`
/// is left as it was, so an interrupted commit leaves the chain readable), with its
/// progress; then, if asked, `top`'s dirty bitmaps merged into `base`'s (which `qemu-img
/// commit` does not do). The VM must be stopped.
pub async fn commit(
    domain: &Domain,
    image: Uuid,
    base: Uuid,
    top: Uuid,
    merge_bitmaps: bool,
    (timeout, stop): (std::time::Duration, &tokio_util::sync::CancellationToken),
    progress: impl FnMut(f64) + Send,
) -> Result<(), StorageError> {
    let dir = domain.dir.image(image);
    let (base_name, top_name) = (base.hyphenated().to_string(), top.hyphenated().to_string());
    let args = [
        "commit", "-p", "-d", "-f", "qcow2", "-b", &base_name, &top_name,
    ];
    let failed = |e: super::qemu_img::QemuImgError| match e {
        super::qemu_img::QemuImgError::Stopped => StorageError::Aborted,
        other => StorageError::Merge(other.to_string()),
    };
    super::qemu_img::run_with_progress(&args, &dir, timeout, stop, progress)
        .await
        .map_err(failed)?;
    if merge_bitmaps {
        for bitmap in bitmaps(domain, image, top, timeout).await? {
            if !bitmaps(domain, image, base, timeout)
                .await?
                .contains(&bitmap)
            {
                let add = ["bitmap", "--add", "-f", "qcow2", &base_name, &bitmap];
                super::qemu_img::run(&add, &dir, timeout, stop)
                    .await
                    .map_err(failed)?;
            }
            let merge = [
                "bitmap", "--merge", &bitmap, "-b", &top_name, "-F", "qcow2", "-f", "qcow2",
                &base_name, &bitmap,
            ];
            super::qemu_img::run(&merge, &dir, timeout, stop)
                .await
                .map_err(failed)?;
        }
    }
    Ok(())
}

/// The names of a qcow2 volume's persistent dirty bitmaps.
pub async fn bitmaps(
    domain: &Domain,
    image: Uuid,
    volume: Uuid,
    timeout: std::time::Duration,
) -> Result<Vec<String>, StorageError> {
    let info = info(domain, image, volume, timeout).await?;
    Ok(info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["name"].as_str().map(str::to_owned))
        .collect())
}

/// Points `child`'s qcow2 header at `base` as its backing file (`qemu-img rebase -u`: the
/// header only; `base` must already hold what `child`'s old backing held). Idempotent.
pub async fn rebase_onto(
    domain: &Domain,
    image: Uuid,
    child: &super::tool_files::HeldFile,
    base: Uuid,
    timeout: std::time::Duration,
) -> Result<(), StorageError> {
    let dir = domain.dir.image(image);
    let base_name = base.hyphenated().to_string();
    // The child by rvdsm's own descriptor: no name in the domain is looked up, so a link
    // planted at the child's name since it was opened cannot redirect the write.
    let child_name = child.fd_name();
    let base_format = read_meta(domain, image, base)?.format.qemu_name();
    let args = [
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-b",
        &base_name,
        "-F",
        base_format,
        &child_name,
    ];
    super::qemu_img::run(
        &args,
        &dir,
        timeout,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .map(drop)
    .map_err(|e| StorageError::Merge(e.to_string()))
}

/// `qemu-img info` of a volume (its own layer, shared with a writer that may exist).
async fn info(
    domain: &Domain,
    image: Uuid,
    volume: Uuid,
    timeout: std::time::Duration,
) -> Result<serde_json::Value, StorageError> {
    let dir = domain.dir.image(image);
    let name = volume.hyphenated().to_string();
    let args = ["info", "-U", "--output=json", name.as_str()];
    let inspect = |message: String| StorageError::Inspect { volume, message };
    let out = super::qemu_img::run(
        &args,
        &dir,
        timeout,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .map_err(|e| inspect(e.to_string()))?;
    serde_json::from_str(&out).map_err(|e| inspect(format!("qemu-img info output: {e}")))
}

/// The volume `volume`'s data file names as its backing file (`qemu-img info`, sharing the
/// image with a writer that may exist), by its file name; `None` for a base volume. What a
/// stopped VM's chain really is after an interrupted merge.
pub async fn backing_of(
    domain: &Domain,
    image: Uuid,
    volume: Uuid,
    timeout: std::time::Duration,
) -> Result<Option<Uuid>, StorageError> {
    let info = info(domain, image, volume, timeout).await?;
    let inspect = |message: String| StorageError::Inspect { volume, message };
    let Some(backing) = info["backing-filename"].as_str() else {
        return Ok(None);
    };
    let file = std::path::Path::new(backing)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    Uuid::parse_str(file).map(Some).map_err(|_| {
        inspect(format!(
            "its backing file {backing:?} is not a volume of the image"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::snapshot_types::{Consistency, SnapshotNote};
    use crate::storage::domain::NewDomain;
    use crate::storage::layout::Repository;
    use crate::storage::volume::{CreateProgress, CreateRequest};

    struct Image {
        _dir: tempfile::TempDir,
        domain: Domain,
        image: Uuid,
    }

    /// A domain with a chain `ids[0] <- ids[1] <- ...` of metadata-only volumes (empty data
    /// files: the unlinking reads no data).
    fn chain(ids: &[Uuid]) -> Image {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("sd");
        std::fs::create_dir(&data).unwrap();
        let new = NewDomain {
            uuid: Uuid::from_u128(7),
            kind: crate::storage::domain::DomainType::LocalFs,
            remote_path: data.to_str().unwrap().to_owned(),
            name: "merge test".into(),
            block_size: 512,
            max_hosts: 250,
        };
        let domain = Domain::create(
            &Repository::new(dir.path().join("repo")),
            &new,
            Some(Uuid::from_u128(8)),
        )
        .unwrap();
        let image = Uuid::from_u128(9);
        for (i, id) in ids.iter().enumerate() {
            let request = CreateRequest {
                image,
                volume: *id,
                capacity: (1 + i as u64) << 20,
                format: crate::api::volume_types::VolumeFormat::Cow,
                allocation: crate::api::volume_types::Preallocation::Sparse,
                disk_type: "DATA".into(),
                description: String::new(),
                parent: i.checked_sub(1).map(|p| ids[p]),
                legal: true,
                sequence: 0,
            };
            let mut progress = CreateProgress::default();
            volume::reserve(&domain, &request, &mut progress, &mut |_| Ok(())).unwrap();
            volume::publish(&domain, &request, &mut progress, &mut |_| Ok(())).unwrap();
        }
        Image {
            _dir: dir,
            domain,
            image,
        }
    }

    fn note(volume: Uuid) -> SnapshotNote {
        SnapshotNote {
            consistency: Consistency::Quiesced,
            reason: None,
            time: 1,
            vm_id: Uuid::nil(),
            volume,
        }
    }

    #[test]
    fn an_internal_merge_relinks_the_child_and_moves_the_note() {
        let [a, b, c] = [1, 2, 3].map(Uuid::from_u128);
        let t = chain(&[a, b, c]);
        let (d, i) = (&t.domain, t.image);
        snapshot_volume::write_note(d, i, b, &note(c)).unwrap();
        note_merge_begun(d, i, a, b, Uuid::nil()).unwrap();
        let pair = check_pair(d, i, a, b).unwrap();
        assert_eq!(pair.child, Some(c));
        unlink_merged(d, i, a, b).unwrap();
        unlink_merged(d, i, a, b).unwrap();
        assert_eq!(read_meta(d, i, c).unwrap().parent, a);
        assert_eq!(read_meta(d, i, a).unwrap().role, VolumeRole::Internal);
        assert_eq!(read_meta(d, i, a).unwrap().capacity, 2 << 20);
        assert_eq!(snapshot_volume::read_note(d, i, a), Some(note(c)));
        assert!(matches!(
            read_meta(d, i, b),
            Err(StorageError::VolumeDoesNotExist(_))
        ));
        assert_eq!(d.volumes(i).unwrap().len(), 2);
    }

    #[test]
    fn an_internal_merge_interrupted_after_the_rebase_is_finished_as_internal() {
        let [a, b, c] = [1, 2, 3].map(Uuid::from_u128);
        let t = chain(&[a, b, c]);
        let (d, i) = (&t.domain, t.image);
        snapshot_volume::write_note(d, i, b, &note(c)).unwrap();
        // A crash after the child was rebased, before the rest.
        let mut child = read_meta(d, i, c).unwrap();
        child.parent = a;
        write_meta(d, i, c, &child).unwrap();
        unlink_merged(d, i, a, b).unwrap();
        assert_eq!(read_meta(d, i, a).unwrap().role, VolumeRole::Internal);
        assert_eq!(snapshot_volume::read_note(d, i, a), Some(note(c)));
        assert_eq!(d.volumes(i).unwrap().len(), 2);
    }

    #[test]
    fn an_active_merge_makes_the_base_the_leaf() {
        let [a, b] = [1, 2].map(Uuid::from_u128);
        let t = chain(&[a, b]);
        let (d, i) = (&t.domain, t.image);
        snapshot_volume::write_note(d, i, a, &note(b)).unwrap();
        note_merge_begun(d, i, a, b, Uuid::nil()).unwrap();
        set_legality(d, i, b, Legality::Illegal).unwrap();
        unlink_merged(d, i, a, b).unwrap();
        let base = read_meta(d, i, a).unwrap();
        assert_eq!(base.role, VolumeRole::Leaf);
        assert_eq!(base.legality, Legality::Legal);
        assert_eq!(snapshot_volume::read_note(d, i, a), None);
        assert_eq!(d.volumes(i).unwrap(), vec![a]);
    }

    #[test]
    fn a_merge_begun_marks_the_base_unknown_until_it_ends() {
        let [a, b, c] = [1, 2, 3].map(Uuid::from_u128);
        let t = chain(&[a, b, c]);
        let (d, i) = (&t.domain, t.image);
        snapshot_volume::write_note(d, i, a, &note(b)).unwrap();
        assert_eq!(
            snapshot_volume::read_note(d, i, a)
                .unwrap()
                .revert_boot()
                .outcome,
            "clean"
        );
        note_merge_begun(d, i, a, b, Uuid::from_u128(9)).unwrap();
        let marked = snapshot_volume::read_note(d, i, a).unwrap();
        assert_eq!(marked.revert_boot().outcome, "unknown");
        assert_eq!(marked.reason.as_deref(), Some(SnapshotNote::MERGING));
        assert_eq!(marked.volume, b);
        // A merge that fails leaves the mark; one that ends gives the base the top's note,
        // or none when the top had none: its own told of an instant it no longer holds.
        unlink_merged(d, i, a, b).unwrap();
        assert_eq!(snapshot_volume::read_note(d, i, a), None);
        assert!(note_merge_begun(d, i, Uuid::from_u128(4), c, Uuid::nil()).is_err());
    }

    #[test]
    fn pairs_that_would_change_another_branch_are_refused() {
        let [a, b, c] = [1, 2, 3].map(Uuid::from_u128);
        let t = chain(&[a, b, c]);
        let (d, i) = (&t.domain, t.image);
        assert!(check_pair(d, i, a, c).is_err(), "not adjacent");
        set_legality(d, i, b, Legality::Illegal).unwrap();
        assert!(check_pair(d, i, a, b).is_err(), "ILLEGAL top");
        set_legality(d, i, b, Legality::Legal).unwrap();
        // A second child of the base (a preview branch).
        let mut branch = read_meta(d, i, b).unwrap();
        branch.parent = a;
        write_meta(d, i, Uuid::from_u128(4), &branch).unwrap();
        assert!(
            check_pair(d, i, a, b).is_err(),
            "the base has another child"
        );
    }
}
