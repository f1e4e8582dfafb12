//! Volumes of a file domain: metadata reads and atomic writes, chains (parents, children),
//! `Volume.getInfo`, and the steps of `Volume.create` with their rollback.
//!
//! Creation follows a stricter legality dance than VDSM's (which VDSM-REFERENCE §4.5 allows):
//! the `.meta` is written ILLEGAL before qemu-img runs and LEGAL only once the data file is
//! complete, so no reader ever sees a LEGAL volume with unfinished data. Each step is recorded
//! in [`CreateProgress`] *before* it is taken, and rollback undoes exactly what the record says,
//! so the same rollback serves a failed task and the recovery after a crash.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::domain::Domain;
use super::error::StorageError;
use super::meta::VolumeMeta;
use super::qemu_img::{self, QemuImgError};
use super::tool_files::HeldFile;
use crate::api::volume_types::{BLANK_UUID, Legality, Preallocation, VolumeFormat, VolumeRole};

/// Volume files are readable and writable by owner and group (qemu's group on real hosts).
pub(super) const VOLUME_MODE: u32 = 0o660;
/// Image directories, as VDSM makes them.
const IMAGE_DIR_MODE: u32 = 0o755;
/// Sizes are rounded up to this.
pub const SIZE_ALIGNMENT: u64 = 4096;

/// Reads a volume's metadata; a missing `.meta` means the volume does not exist.
pub fn read_meta(domain: &Domain, image: Uuid, volume: Uuid) -> Result<VolumeMeta, StorageError> {
    let path = domain.dir.meta(image, volume);
    let text = match domain.dir.read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StorageError::VolumeDoesNotExist(volume));
        }
        Err(e) => return Err(StorageError::io("read", &path)(e)),
    };
    VolumeMeta::parse(&text).map_err(|source| StorageError::MetadataRead { path, source })
}

/// Replaces a volume's metadata atomically.
pub fn write_meta(
    domain: &Domain,
    image: Uuid,
    volume: Uuid,
    meta: &VolumeMeta,
) -> Result<(), StorageError> {
    let text = meta.to_text().map_err(StorageError::MetadataOverflow)?;
    let path = domain.dir.meta(image, volume);
    domain
        .dir
        .write_atomic(&path, text.as_bytes(), VOLUME_MODE)
        .map_err(StorageError::io("write", &path))
}

/// The volumes of `image` whose parent is `volume`.
pub fn children(domain: &Domain, image: Uuid, volume: Uuid) -> Result<Vec<Uuid>, StorageError> {
    let mut found = Vec::new();
    for candidate in domain.volumes(image)? {
        match read_meta(domain, image, candidate) {
            Ok(meta) if meta.parent == volume => found.push(candidate),
            Ok(_) => {}
            // A volume whose metadata vanished meanwhile is no child.
            Err(StorageError::VolumeDoesNotExist(_)) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(found)
}

/// `{apparentsize, truesize}` of a data file, in bytes.
pub fn size(domain: &Domain, image: Uuid, volume: Uuid) -> Result<(u64, u64), StorageError> {
    let path = domain.dir.volume(image, volume);
    let stat = domain.dir.stat(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StorageError::VolumeDoesNotExist(volume)
        } else {
            StorageError::io("stat", &path)(e)
        }
    })?;
    Ok((stat.len(), stat.blocks() * 512))
}

/// A validated `Volume.create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The image (created if missing).
    pub image: Uuid,
    /// The new volume.
    pub volume: Uuid,
    /// Capacity in bytes, a multiple of 4 KiB.
    pub capacity: u64,
    /// Data format.
    pub format: VolumeFormat,
    /// Allocation.
    pub allocation: Preallocation,
    /// Content type.
    pub disk_type: String,
    /// Description (capped when written).
    pub description: String,
    /// The parent volume in the same image, if a snapshot volume.
    pub parent: Option<Uuid>,
    /// Whether the volume ends LEGAL.
    pub legal: bool,
    /// `SEQ`.
    pub sequence: u32,
}

/// Which steps of a create were started; persisted before each step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateProgress {
    /// The image directory did not exist and is being created.
    pub image_dir: bool,
    /// The data file is being created (after the check that none was there).
    pub data_file: bool,
    /// The `.meta` file is being written.
    pub meta: bool,
    /// The parent is being turned INTERNAL.
    pub parent_internal: bool,
    /// The `.lease` file is being created.
    pub lease: bool,
    /// The create's nonce, chosen before its first file and written beside the volume
    /// (`<vol>.creating`) before the data file; `None` in records made before nonces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<Uuid>,
}

/// Checks a create against the domain as it is now. Repeated under the lock when the task runs.
pub fn check_create(
    domain: &Domain,
    request: &CreateRequest,
) -> Result<Option<VolumeMeta>, StorageError> {
    let (image, volume) = (request.image, request.volume);
    let names = [
        domain.dir.volume(image, volume),
        domain.dir.meta(image, volume),
        domain.dir.lease(image, volume),
        domain.dir.creation_nonce(image, volume),
    ];
    // Anything at one of the volume's names (a link too, even a dangling one) holds it.
    let taken = |path: &std::path::Path| !matches!(domain.dir.stat(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    if names.iter().any(|name| taken(name)) {
        return Err(StorageError::VolumeAlreadyExists(request.volume));
    }
    let Some(parent_id) = request.parent else {
        return Ok(None);
    };
    let parent = read_meta(domain, request.image, parent_id)?;
    if parent.legality != Legality::Legal {
        return Err(StorageError::IllegalParent(parent_id));
    }
    if request.format != VolumeFormat::Cow {
        return Err(StorageError::IncorrectFormat(
            "a volume with a parent must be COW".into(),
        ));
    }
    // An INTERNAL parent takes another child, as VDSM allows: a preview of an older
    // snapshot is a second child of it, so an image is a tree.
    if request.capacity < parent.capacity {
        return Err(StorageError::Size(format!(
            "capacity {} is smaller than the parent's {}",
            request.capacity, parent.capacity
        )));
    }
    // The new volume's chain must be what its metadata says: no link, no foreign backing
    // file in a header, before anything is created on it.
    super::tool_files::check_chain(domain, request.image, parent_id)?;
    Ok(Some(parent))
}

/// Persists a create's progress; must succeed before the step it announces is taken.
pub type Recorder<'a> = dyn FnMut(&CreateProgress) -> Result<(), StorageError> + Send + 'a;

/// The first step of a create, under the lock: the image directory, an empty data file
/// (O_EXCL), the `.meta` ILLEGAL, and the parent INTERNAL. Blocks (lock, fsync).
pub fn reserve(
    domain: &Domain,
    request: &CreateRequest,
    progress: &mut CreateProgress,
    record: &mut Recorder,
) -> Result<(), StorageError> {
    let lock = domain.lock().acquire()?;
    // Refuses an image path that would lead out of the domain, under the lock.
    domain.has_image(request.image)?;
    let parent = check_create(domain, request)?;
    let image_dir = domain.dir.image(request.image);
    if !domain.has_image(request.image)? {
        progress.image_dir = true;
        record(progress)?;
        domain
            .dir
            .ensure_dir(&image_dir, IMAGE_DIR_MODE)
            .map_err(StorageError::io("create", &image_dir))?;
    }
    let nonce = Uuid::new_v4();
    progress.nonce = Some(nonce);
    record(progress)?;
    if let Err(err) = write_nonce(domain, request, nonce) {
        if matches!(err, StorageError::VolumeAlreadyExists(_)) {
            // Someone else's file: never ours to delete.
            progress.nonce = None;
            record(progress)?;
        }
        return Err(err);
    }
    progress.data_file = true;
    record(progress)?;
    let data = domain.dir.volume(request.image, request.volume);
    if let Err(e) = domain.dir.create_exclusive(&data, VOLUME_MODE) {
        // Someone else's file: never ours to delete.
        progress.data_file = false;
        record(progress)?;
        return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
            StorageError::VolumeAlreadyExists(request.volume)
        } else {
            StorageError::io("create", &data)(e)
        });
    }
    progress.meta = true;
    record(progress)?;
    write_meta(
        domain,
        request.image,
        request.volume,
        &new_meta(domain, request, Legality::Illegal),
    )?;
    if let (Some(parent_id), Some(mut parent)) = (request.parent, parent)
        && parent.role == VolumeRole::Leaf
    {
        progress.parent_internal = true;
        record(progress)?;
        parent.role = VolumeRole::Internal;
        write_meta(domain, request.image, parent_id, &parent)?;
    }
    drop(lock);
    crate::failpoint::pause_thread!("create:reserved");
    Ok(())
}

/// The second step: qemu-img writes the data file (and preallocates it), outside the lock.
pub async fn write_data(
    domain: &Domain,
    request: &CreateRequest,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<(), StorageError> {
    if crate::failpoint::reached!("create:writing") {
        // Test seam for Task.stop: wait here as a long qemu-img run would.
        stop.cancelled().await;
        return Err(StorageError::Aborted);
    }
    let image_dir = domain.dir.image(request.image);
    let capacity = request.capacity.to_string();
    let preallocation = match request.allocation {
        Preallocation::Preallocated => "preallocation=falloc",
        Preallocation::Sparse => "preallocation=off",
    };
    let parent_name;
    let mut args = vec!["create", "-q", "-f", request.format.qemu_name()];
    match (request.format, request.parent) {
        (VolumeFormat::Raw, _) => args.extend(["-o", preallocation]),
        (VolumeFormat::Cow, None) => args.extend(["-o", "compat=1.1", "-o", preallocation]),
        (VolumeFormat::Cow, Some(parent)) => {
            // Relative backing file: the bare parent UUID, resolved in the image directory
            // (VDSM's rule since BZ 1333627), so the chain survives a different mount point.
            parent_name = parent.hyphenated().to_string();
            let parent_format = read_meta(domain, request.image, parent)?.format.qemu_name();
            args.extend(["-o", "compat=1.1", "-o", preallocation]);
            args.extend(["-b", &parent_name, "-F", parent_format, "-u"]);
        }
    }
    // qemu-img writes the data file `reserve` created through rvdsm's descriptor of it: a
    // link planted at its name since is refused here, and none can be planted afterwards.
    let data = domain.dir.volume(request.image, request.volume);
    let held = {
        let (dir, data) = (domain.dir.clone(), data.clone());
        tokio::task::spawn_blocking(move || HeldFile::open(&dir, &data, true))
            .await
            .map_err(|e| StorageError::Creation(format!("open panicked: {e}")))??
    };
    let target = held.fd_name();
    args.extend([target.as_str(), capacity.as_str()]);
    let written = qemu_img::run(&args, &image_dir, timeout, stop).await;
    drop(held);
    written.map_err(|err| match err {
        QemuImgError::Stopped => StorageError::Aborted,
        other if request.parent.is_some() => StorageError::Clone(other.to_string()),
        other => StorageError::Creation(other.to_string()),
    })?;
    // The mode and the sync by name, through the no-link rule: a link planted at the name
    // meanwhile is refused. fsync can take long on a slow mount: off the reactor.
    let dir = domain.dir.clone();
    let synced = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || dir.chmod_and_sync(&data, VOLUME_MODE)).await
    };
    synced
        .map_err(|e| StorageError::Creation(format!("sync panicked: {e}")))?
        .map_err(StorageError::io("chmod and sync", &data))?;
    crate::failpoint::pause_thread!("create:data-written");
    Ok(())
}

/// The last step: the `.lease` file, then the `.meta` with its final legality; blocks.
pub fn publish(
    domain: &Domain,
    request: &CreateRequest,
    progress: &mut CreateProgress,
    record: &mut Recorder,
) -> Result<(), StorageError> {
    let lock = domain.lock().acquire()?;
    progress.lease = true;
    record(progress)?;
    let lease = domain.dir.lease(request.image, request.volume);
    domain
        .dir
        .create_exclusive(&lease, VOLUME_MODE)
        .map_err(StorageError::io("create", &lease))?;
    domain.format_volume_lease(request.volume, &lease)?;
    let legality = if request.legal {
        Legality::Legal
    } else {
        Legality::Illegal
    };
    let meta = new_meta(domain, request, legality);
    write_meta(domain, request.image, request.volume, &meta)?;
    // Published: from here no record may roll the volume back.
    let nonce = domain.dir.creation_nonce(request.image, request.volume);
    domain
        .dir
        .remove(&nonce)
        .map_err(StorageError::io("remove", &nonce))?;
    drop(lock);
    crate::failpoint::pause_thread!("create:published");
    Ok(())
}

fn new_meta(domain: &Domain, request: &CreateRequest, legality: Legality) -> VolumeMeta {
    VolumeMeta {
        capacity: request.capacity,
        ctime: crate::clock::epoch_secs(),
        description: request.description.clone(),
        disk_type: request.disk_type.clone(),
        domain: domain.uuid,
        format: request.format,
        generation: 0,
        image: request.image,
        legality,
        parent: request.parent.unwrap_or(BLANK_UUID),
        sequence: request.sequence,
        allocation: request.allocation,
        role: VolumeRole::Leaf,
    }
}

/// Writes the create's nonce beside the volume (`<vol>.creating`, `O_EXCL`), durably.
fn write_nonce(domain: &Domain, request: &CreateRequest, nonce: Uuid) -> Result<(), StorageError> {
    use std::io::Write;
    let path = domain.dir.creation_nonce(request.image, request.volume);
    let mut file = domain
        .dir
        .create_exclusive(&path, VOLUME_MODE)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                StorageError::VolumeAlreadyExists(request.volume)
            } else {
                StorageError::io("create", &path)(e)
            }
        })?;
    file.write_all(nonce.hyphenated().to_string().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(StorageError::io("write", &path))?;
    let image_dir = domain.dir.image(request.image);
    domain
        .dir
        .sync_dir(&image_dir)
        .map_err(StorageError::io("sync", &image_dir))
}

/// The nonce of the create that is making `volume` (`<vol>.creating`), if one is there.
pub fn creation_nonce(
    domain: &Domain,
    image: Uuid,
    volume: Uuid,
) -> Result<Option<Uuid>, StorageError> {
    let path = domain.dir.creation_nonce(image, volume);
    match domain.dir.read_to_string(&path) {
        // Unreadable text is no nonce of ours: it proves nothing.
        Ok(text) => Ok(Uuid::parse_str(text.trim()).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io("read", &path)(e)),
    }
}

/// Undoes what `progress` says was started, in reverse: `.lease`, data file, `.meta` last;
/// the parent LEAF again if it has no other child; the image directory if it was created for
/// this volume and is empty. Safe to run twice and after a crash at any point.
pub fn rollback(
    domain: &Domain,
    request: &CreateRequest,
    progress: &CreateProgress,
) -> Result<(), StorageError> {
    let _lock = domain.lock().acquire()?;
    let (image, volume) = (request.image, request.volume);
    if progress.lease {
        let lease = domain.dir.lease(image, volume);
        domain
            .dir
            .remove(&lease)
            .map_err(StorageError::io("remove", &lease))?;
    }
    if progress.data_file {
        let data = domain.dir.volume(image, volume);
        domain
            .dir
            .remove(&data)
            .map_err(StorageError::io("remove", &data))?;
    }
    if progress.meta {
        let meta = domain.dir.meta(image, volume);
        domain
            .dir
            .remove(&meta)
            .map_err(StorageError::io("remove", &meta))?;
    }
    // The nonce goes last: a crash before it leaves what a recovery needs to prove the rest.
    if progress.nonce.is_some() {
        let nonce = domain.dir.creation_nonce(image, volume);
        domain
            .dir
            .remove(&nonce)
            .map_err(StorageError::io("remove", &nonce))?;
    }
    if let Some(parent_id) = request.parent.filter(|_| progress.parent_internal) {
        recheck_leaf(domain, image, parent_id)?;
    }
    let image_dir = domain.dir.image(image);
    if progress.image_dir {
        // Fails harmlessly when something else is in it.
        let _ = domain.dir.remove_dir(&image_dir);
        let images = domain.dir.images();
        domain
            .dir
            .sync_dir(&images)
            .map_err(StorageError::io("sync", &images))?;
    } else {
        // The removals above, made durable.
        domain
            .dir
            .sync_dir(&image_dir)
            .map_err(StorageError::io("sync", &image_dir))?;
    }
    Ok(())
}

/// Makes `volume` a LEAF again if it is INTERNAL and has no children left.
pub fn recheck_leaf(domain: &Domain, image: Uuid, volume: Uuid) -> Result<(), StorageError> {
    let mut meta = match read_meta(domain, image, volume) {
        Ok(meta) => meta,
        Err(StorageError::VolumeDoesNotExist(_)) => return Ok(()),
        Err(err) => return Err(err),
    };
    if meta.role == VolumeRole::Internal && children(domain, image, volume)?.is_empty() {
        meta.role = VolumeRole::Leaf;
        write_meta(domain, image, volume, &meta)?;
    }
    Ok(())
}

/// Checks a delete: the volume exists and nothing is based on it.
pub fn check_delete(
    domain: &Domain,
    image: Uuid,
    volume: Uuid,
) -> Result<VolumeMeta, StorageError> {
    let meta = read_meta(domain, image, volume)?;
    if meta.role == VolumeRole::Shared {
        return Err(StorageError::InvalidParameter(format!(
            "volumeID={volume}: a shared template volume cannot be deleted"
        )));
    }
    if !children(domain, image, volume)?.is_empty() {
        return Err(StorageError::HasChildren(volume));
    }
    Ok(meta)
}

/// Marks a volume ILLEGAL before its files go, so that nobody uses a half-deleted volume
/// (VDSM's order, §4.5); blocks.
pub fn mark_illegal(
    domain: &Domain,
    image: Uuid,
    volume: Uuid,
) -> Result<VolumeMeta, StorageError> {
    let _lock = domain.lock().acquire()?;
    let mut meta = check_delete(domain, image, volume)?;
    meta.legality = Legality::Illegal;
    write_meta(domain, image, volume, &meta)?;
    Ok(meta)
}

/// Removes an ILLEGAL volume's files: data, `.lease` and `.snapshot` note, then `.meta` last;
/// then its parent becomes a LEAF again if it has no other child. Idempotent, so that recovery
/// after a crash can finish it; blocks.
pub fn remove_files(domain: &Domain, image: Uuid, volume: Uuid) -> Result<(), StorageError> {
    let parent = match read_meta(domain, image, volume) {
        Ok(meta) => Some(meta.parent).filter(|p| *p != BLANK_UUID),
        Err(StorageError::VolumeDoesNotExist(_)) => None,
        Err(err) => return Err(err),
    };
    crate::failpoint::pause_thread!("delete:illegal");
    let note = domain.dir.snapshot_note(image, volume);
    for path in [
        domain.dir.volume(image, volume),
        domain.dir.lease(image, volume),
        domain.dir.clone_mark(image, volume),
        domain.dir.creation_nonce(image, volume),
        note.clone(),
        with_suffix(&note, ".new"),
    ] {
        domain
            .dir
            .remove(&path)
            .map_err(StorageError::io("remove", &path))?;
    }
    crate::failpoint::pause_thread!("delete:data-removed");
    let _lock = domain.lock().acquire()?;
    let meta = domain.dir.meta(image, volume);
    // A `.meta.new` a crash left mid-write goes too, before the `.meta` that names the volume.
    let meta_new = with_suffix(&meta, ".new");
    domain
        .dir
        .remove(&meta_new)
        .map_err(StorageError::io("remove", &meta_new))?;
    domain
        .dir
        .remove(&meta)
        .map_err(StorageError::io("remove", &meta))?;
    let image_dir = domain.dir.image(image);
    domain
        .dir
        .sync_dir(&image_dir)
        .map_err(StorageError::io("sync", &image_dir))?;
    if let Some(parent) = parent {
        recheck_leaf(domain, image, parent)?;
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name (the temporary name of an atomic write).
fn with_suffix(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// The volumes of an image ordered leaf first, so that deleting in this order never leaves a
/// volume whose parent is gone.
pub fn leaf_first(domain: &Domain, image: Uuid) -> Result<Vec<Uuid>, StorageError> {
    let volumes = domain.volumes(image)?;
    let mut parents = std::collections::HashMap::new();
    for volume in &volumes {
        parents.insert(*volume, read_meta(domain, image, *volume)?.parent);
    }
    let depth = |mut volume: Uuid| {
        let mut depth = 0usize;
        while let Some(parent) = parents.get(&volume).filter(|p| **p != BLANK_UUID) {
            depth += 1;
            volume = *parent;
            if depth > volumes.len() {
                break; // A loop in broken metadata must not hang the delete.
            }
        }
        depth
    };
    let mut ordered = volumes.clone();
    ordered.sort_by_key(|v| std::cmp::Reverse(depth(*v)));
    Ok(ordered)
}
