//! Images as a whole: deleting every volume of one, preparing one for a VM (every volume
//! usable, a path through the pool's link as VDSM's paths are), and telling whether a VM uses
//! any of its volumes. Blocking file I/O: callers run these off the reactor.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::domain::Domain;
use super::error::StorageError;
use super::volume;
use crate::api::volume_types::Legality;

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
