//! Images as a whole: their name ([`ImageRef`]), deleting every volume of
//! one, preparing one for a VM (every volume usable, a path through the pool's link as VDSM's
//! paths are, its chain read), and telling whether a VM uses any of its volumes. Blocking file
//! I/O: callers run these off the reactor (the [`ImageHandle`] does).

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::domain::Domain;
use super::error::StorageError;
use super::{snapshot_volume, tool_files, volume};
use crate::api::volume_types::{BLANK_UUID, Legality, VolumeRole};

pub use super::image_handle::{ImageHandle, ImageLock, ImageLocks};
pub use super::image_marks::{CopyReading, ImageActivity, MergeMark};

/// An image: its domain and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// The storage domain.
    pub domain: Uuid,
    /// The image in it.
    pub image: Uuid,
}

impl ImageRef {
    /// The image `image` of `domain`.
    pub fn new(domain: Uuid, image: Uuid) -> Self {
        Self { domain, image }
    }
}

/// A drive's volume, ready for a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedDrive {
    /// The path the VM uses (through the pool's link).
    pub path: String,
    /// `qcow2` or `raw`.
    pub format: &'static str,
    /// `(volume, path)` from the base to `path`'s volume.
    pub chain: Vec<(Uuid, String)>,
}

/// The longest chain walked: a loop in corrupt metadata must not hang the walk.
const MAX_CHAIN: usize = 1024;

/// Deletes every volume of an image, leaf first, then the image directory. Idempotent, so
/// that recovery can finish an interrupted delete.
pub fn remove(domain: &Domain, image: Uuid) -> Result<(), StorageError> {
    for volume in volume::leaf_first(domain, image)? {
        volume::mark_illegal(domain, image, volume)?;
        volume::remove_files(domain, image, volume)?;
    }
    let dir = domain.dir.image(image);
    domain
        .dir
        .remove_dir(&dir)
        .map_err(StorageError::io("remove image directory", &dir))
}

/// Checks that `volume` exists and that every volume of the image is LEGAL (unless
/// `allow_illegal`), then returns the volume's path through the pool's link to the domain
/// (`<pool_dir>/<domain>/images/<image>/<volume>`), making the link if needed.
pub fn prepare(
    domain: &Domain,
    pool_dir: &Path,
    image: Uuid,
    volume: Uuid,
    allow_illegal: bool,
) -> Result<PathBuf, StorageError> {
    volume::read_meta(domain, image, volume)?;
    for candidate in domain.volumes(image)? {
        let meta = volume::read_meta(domain, image, candidate)?;
        if meta.legality != Legality::Legal && !allow_illegal {
            return Err(StorageError::PrepareIllegal(candidate));
        }
    }
    let link = pool_dir.join(domain.uuid.hyphenated().to_string());
    if std::fs::read_link(&link).ok().as_deref() != Some(domain.dir.root()) {
        std::fs::create_dir_all(pool_dir).map_err(StorageError::io("create", pool_dir))?;
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(domain.dir.root(), &link)
            .map_err(StorageError::io("link", &link))?;
    }
    Ok(link
        .join("images")
        .join(image.hyphenated().to_string())
        .join(volume.hyphenated().to_string()))
}

/// Refuses (in use) when one of `volumes` of the image is among `in_use` (paths VMs use,
/// compared once canonical: a VM may name a volume through the pool's link).
pub fn refuse_if_in_use(
    domain: &Domain,
    image: Uuid,
    volumes: &[Uuid],
    in_use: &[PathBuf],
) -> Result<(), StorageError> {
    let in_use: Vec<_> = in_use
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    for volume in volumes {
        if let Ok(path) = std::fs::canonicalize(domain.dir.volume(image, *volume))
            && in_use.contains(&path)
        {
            return Err(StorageError::InUse(*volume));
        }
    }
    Ok(())
}

/// Prepares `volume` of the image for a VM (every volume LEGAL, the pool's link made, the
/// chain checked as [`tool_files::check_chain`] does) and reads its chain from the base up.
pub fn prepare_drive(
    domain: &Domain,
    pool_dir: &Path,
    image: Uuid,
    volume: Uuid,
) -> Result<PreparedDrive, StorageError> {
    // QEMU opens the chain by names, as root: each data file must be a regular file reached
    // without a link, each qcow2 header name only its parent.
    tool_files::check_chain(domain, image, volume)?;
    let leaf = prepare(domain, pool_dir, image, volume, false)?;
    let image_dir = leaf.parent().map(Path::to_path_buf);
    let path_of = |v: Uuid| {
        image_dir.as_ref().map_or_else(String::new, |d| {
            d.join(v.hyphenated().to_string())
                .to_string_lossy()
                .into_owned()
        })
    };
    let format = volume::read_meta(domain, image, volume)?.format.qemu_name();
    let mut chain = vec![(volume, path_of(volume))];
    let mut current = volume;
    loop {
        let parent = volume::read_meta(domain, image, current)?.parent;
        if parent == BLANK_UUID {
            break;
        }
        if chain.len() >= MAX_CHAIN || chain.iter().any(|(v, _)| *v == parent) {
            return Err(StorageError::Inspect {
                volume,
                message: format!("its chain loops or exceeds {MAX_CHAIN} volumes"),
            });
        }
        chain.push((parent, path_of(parent)));
        current = parent;
    }
    chain.reverse();
    Ok(PreparedDrive {
        path: leaf.to_string_lossy().into_owned(),
        format,
        chain,
    })
}

/// Refuses a volume a VM must not write to: one that is not a LEAF (the backing file of a
/// snapshot: writing it corrupts every volume above), or one with children (a leaf whose
/// metadata lags behind a snapshot made on it).
pub fn check_writable_leaf(domain: &Domain, image: Uuid, volume: Uuid) -> Result<(), StorageError> {
    let meta = volume::read_meta(domain, image, volume)?;
    if meta.role != VolumeRole::Leaf || !volume::children(domain, image, volume)?.is_empty() {
        return Err(StorageError::HasChildren(volume));
    }
    Ok(())
}

/// Whether `volume` branches off a snapshot: its parent's snapshot note names another volume
/// (the one the snapshot's VM switched to), so `volume` is a preview or a linked clone.
pub fn is_snapshot_branch(
    domain: &Domain,
    image: Uuid,
    volume: Uuid,
) -> Result<bool, StorageError> {
    let parent = volume::read_meta(domain, image, volume)?.parent;
    Ok(parent != BLANK_UUID
        && snapshot_volume::read_note(domain, image, parent)
            .is_some_and(|note| note.volume != volume))
}
