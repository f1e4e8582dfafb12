//! Task records read from a shared pool are claims, not orders. A record under the master
//! domain's `master/tasks` was written by another host (or by anyone who can write the
//! export), and this host's own record of a task may be stale once other SPMs have worked on
//! the image: before a destructive recovery step (a create's rollback, a begun delete's
//! finish) the disk must still say what the record says. Each function here checks one such
//! step and then takes it; a claim that cannot be verified deletes nothing.
//!
//! - A create's rollback needs the create's nonce: recorded in the task before its first
//!   file and written beside the volume (`<vol>.creating`) before its data file, removed when
//!   the volume is published. Files of the volume are removed only when that file holds the
//!   record's nonce and the volume is not LEGAL; a record without a nonce (older than nonces)
//!   removes nothing.
//! - A begun delete is finished only on volumes that are ILLEGAL (a delete marks each volume
//!   ILLEGAL before its files go), carry no creation nonce, have no child outside the delete
//!   and that no VM of this host uses; every volume is checked before any file goes, so one
//!   LEGAL volume (the record says the delete began, the disk does not) keeps them all.
//! - A finalize whose rebase had begun is finished forward only once its merged volume is
//!   ILLEGAL or gone (see [`finalize_begun`]).

use std::path::PathBuf;

use uuid::Uuid;

use crate::api::volume_types::Legality;
use crate::storage::domain::Domain;
use crate::storage::volume::{self, CreateProgress, CreateRequest};
use crate::storage::{StorageError, image};

/// The image paths VMs of this host use, or why libvirt could not tell.
pub(super) type InUse = Result<Vec<PathBuf>, String>;

/// Why a recovery step claimed by a record was not taken (or failed).
#[derive(Debug, thiserror::Error)]
pub(super) enum ClaimError {
    /// The disk does not show what the record claims.
    #[error("the record does not match the disk, nothing deleted: {0}")]
    Unverified(String),
    /// The record names a domain outside this host's pool.
    #[error("storage domain {0} is not a domain of this host's pool, nothing deleted")]
    OutsidePool(Uuid),
    /// Whether a VM uses the volumes is unknown.
    #[error("cannot tell whether a VM uses the image ({0}), nothing deleted")]
    InUseUnknown(String),
    /// The storage refused or failed a step.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Rolls back a create as its record describes, once the volume is shown to be that create's:
/// its nonce file holds the record's nonce and it is not LEGAL. When none of the volume's
/// files is there, only the harmless steps run (an empty image directory the create made, a
/// parent left INTERNAL without children). Blocks.
pub(super) fn rollback_create(
    domain: &Domain,
    request: &CreateRequest,
    progress: &CreateProgress,
) -> Result<(), ClaimError> {
    let (image, vol) = (request.image, request.volume);
    let on_disk = volume::creation_nonce(domain, image, vol)?;
    let ours = progress.nonce.is_some() && on_disk == progress.nonce;
    if !ours {
        if volume_present(domain, image, vol)? || on_disk.is_some() {
            let why = match progress.nonce {
                None => format!(
                    "the record of volume {vol}'s create has no creation nonce (made before \
                     nonces): the volume is kept"
                ),
                Some(_) => format!(
                    "volume {vol} does not carry this create's nonce (published, or another \
                     create's): it is kept"
                ),
            };
            return Err(ClaimError::Unverified(why));
        }
        let harmless = CreateProgress {
            image_dir: progress.image_dir,
            parent_internal: progress.parent_internal,
            ..CreateProgress::default()
        };
        return Ok(volume::rollback(domain, request, &harmless)?);
    }
    match volume::read_meta(domain, image, vol) {
        Ok(meta) if meta.legality == Legality::Legal => Err(ClaimError::Unverified(format!(
            "volume {vol} is LEGAL (its create was published): it is kept"
        ))),
        Ok(_) | Err(StorageError::VolumeDoesNotExist(_)) => {
            Ok(volume::rollback(domain, request, progress)?)
        }
        Err(err) => Err(err.into()),
    }
}

/// Finishes a begun delete of `volumes` (leaf first) of `image`: each volume still there must
/// be ILLEGAL, childless and not in a create (no creation nonce beside it), and no VM of this
/// host may use any of them. Blocks.
pub(super) fn finish_volumes_delete(
    domain: &Domain,
    image: Uuid,
    volumes: &[Uuid],
    in_use: &InUse,
) -> Result<(), ClaimError> {
    let mut present = Vec::with_capacity(volumes.len());
    for vol in volumes {
        let meta = domain.dir.meta(image, *vol);
        match domain.dir.stat(&meta) {
            Ok(_) => present.push(*vol),
            // Its `.meta` goes last: the delete had removed it already.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("stat", &meta)(e).into()),
        }
    }
    if present.is_empty() {
        return Ok(());
    }
    let in_use = in_use
        .as_ref()
        .map_err(|e| ClaimError::InUseUnknown(e.clone()))?;
    image::refuse_if_in_use(domain, image, &present, in_use)?;
    // Every volume is checked before any is removed: a claim the disk refuses for one volume
    // deletes none of the others.
    for vol in &present {
        check_deletable(domain, image, *vol, &present)?;
    }
    for vol in &present {
        volume::remove_files(domain, image, *vol)?;
    }
    Ok(())
}

/// Whether the disk confirms that a begun delete may remove `vol`: ILLEGAL, not in a create
/// (no creation nonce beside it), and no child outside the volumes being deleted.
fn check_deletable(
    domain: &Domain,
    image: Uuid,
    vol: Uuid,
    deleted: &[Uuid],
) -> Result<(), ClaimError> {
    let meta = volume::read_meta(domain, image, vol)?;
    if meta.legality == Legality::Legal {
        return Err(ClaimError::Unverified(format!(
            "the record says the delete began, but volume {vol} is LEGAL: it is kept"
        )));
    }
    if volume::creation_nonce(domain, image, vol)?.is_some() {
        // Being created, or a create's leftover its own record rolls back: no delete's.
        return Err(ClaimError::Unverified(format!(
            "volume {vol} is ILLEGAL because a create of it has not ended: it is kept"
        )));
    }
    let children = volume::children(domain, image, vol)?;
    if children.iter().any(|c| !deleted.contains(c)) {
        return Err(ClaimError::Unverified(format!(
            "volume {vol} still has children: it is kept"
        )));
    }
    Ok(())
}

/// Finishes a begun `Image.delete`: every volume as [`finish_volumes_delete`] checks it, then
/// the image directory. An image that is gone already needs nothing. Blocks.
pub(super) fn finish_image_delete(
    domain: &Domain,
    image: Uuid,
    in_use: &InUse,
) -> Result<(), ClaimError> {
    if !domain.has_image(image)? {
        return Ok(());
    }
    let volumes = volume::leaf_first(domain, image)?;
    finish_volumes_delete(domain, image, &volumes, in_use)?;
    let dir = domain.dir.image(image);
    domain
        .dir
        .remove_dir(&dir)
        .map_err(StorageError::io("remove image directory", &dir))?;
    Ok(())
}

/// Whether a finalize the record says had begun its rebase may be finished forward (the
/// merged `top` unlinked): only when `top` is gone or ILLEGAL already, which a finalize makes
/// it once the rebase is done. A LEGAL `top` is kept (the finalize can be asked again: its
/// steps are idempotent); nothing else shows that `top`'s data is in `base`. Blocks.
pub(super) fn finalize_begun(domain: &Domain, image: Uuid, top: Uuid) -> Result<(), ClaimError> {
    match volume::read_meta(domain, image, top) {
        Ok(meta) if meta.legality == Legality::Legal => Err(ClaimError::Unverified(format!(
            "the record says the finalize's rebase began, but the merged volume {top} is \
             LEGAL: it is kept (finalize the merge again)"
        ))),
        Ok(_) | Err(StorageError::VolumeDoesNotExist(_)) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Whether any file of the volume is there (data, `.meta` or `.lease`).
fn volume_present(domain: &Domain, image: Uuid, vol: Uuid) -> Result<bool, StorageError> {
    for path in [
        domain.dir.volume(image, vol),
        domain.dir.meta(image, vol),
        domain.dir.lease(image, vol),
    ] {
        match domain.dir.stat(&path) {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("stat", &path)(e)),
        }
    }
    Ok(false)
}
