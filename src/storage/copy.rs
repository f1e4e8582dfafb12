//! A full copy of a volume's chain into another volume (`SDM.copy_data`): the chain as the
//! guest sees it, collapsed by `qemu-img convert` into the destination's format, at the
//! lowest I/O priority, with its progress, bounded by a deadline and stoppable; and the mark
//! that a copy was not booted yet (its first boot gets a new VM generation id).

use uuid::Uuid;

use super::domain::Domain;
use super::error::StorageError;
use super::qemu_img::{self, QemuImgError};
use super::volume::read_meta;

/// One end of a copy.
#[derive(Clone, Copy)]
pub struct Endpoint<'a> {
    /// The domain.
    pub domain: &'a Domain,
    /// The image.
    pub image: Uuid,
    /// The volume.
    pub volume: Uuid,
}

/// Copies what the guest sees through `source` (its whole chain) into `destination`, which
/// must exist (created by `Volume.create`) with a capacity no smaller than the source's.
pub async fn convert(
    source: Endpoint<'_>,
    destination: Endpoint<'_>,
    (timeout, stop): (std::time::Duration, &tokio_util::sync::CancellationToken),
    progress: impl FnMut(f64) + Send,
) -> Result<(), StorageError> {
    let src_meta = read_meta(source.domain, source.image, source.volume)?;
    let dst_meta = read_meta(destination.domain, destination.image, destination.volume)?;
    if dst_meta.capacity < src_meta.capacity {
        return Err(StorageError::Size(format!(
            "the destination's capacity {} is smaller than the source's {}",
            dst_meta.capacity, src_meta.capacity
        )));
    }
    let src = source.domain.dir.volume(source.image, source.volume);
    let dst = destination
        .domain
        .dir
        .volume(destination.image, destination.volume);
    let (src, dst) = (src.to_string_lossy(), dst.to_string_lossy());
    let args = [
        "convert",
        "-p",
        "-f",
        src_meta.format.qemu_name(),
        "-O",
        dst_meta.format.qemu_name(),
        // qemu-img convert writes with cache=unsafe by default, never flushing: the job would
        // be done (and the volume LEGAL) before its data is on disk.
        "-t",
        "writeback",
        // The destination exists (its size and allocation are the volume's): write into it.
        "-n",
        &src,
        &dst,
    ];
    let dir = source.domain.dir.image(source.image);
    qemu_img::run_with_progress(&args, &dir, timeout, stop, progress)
        .await
        .map_err(|e| match e {
            QemuImgError::Stopped => StorageError::Aborted,
            other => StorageError::Copy(other.to_string()),
        })
}

/// Marks `volume` as a full copy not yet booted (see [`Domain`]'s `clone_mark`).
pub fn mark_clone(domain: &Domain, image: Uuid, volume: Uuid) -> Result<(), StorageError> {
    let path = domain.dir.clone_mark(image, volume);
    domain
        .dir
        .write_atomic(&path, b"{}", super::volume::VOLUME_MODE)
        .map_err(StorageError::io("write", &path))
}

/// Whether `volume` carries the mark of [`mark_clone`].
pub fn is_unbooted_clone(domain: &Domain, image: Uuid, volume: Uuid) -> bool {
    domain
        .dir
        .stat(&domain.dir.clone_mark(image, volume))
        .is_ok()
}

/// Removes the mark of [`mark_clone`] (a VM booted on the volume).
pub fn clear_clone_mark(domain: &Domain, image: Uuid, volume: Uuid) -> Result<(), StorageError> {
    let path = domain.dir.clone_mark(image, volume);
    domain
        .dir
        .remove(&path)
        .map(drop)
        .map_err(StorageError::io("remove", &path))
}
