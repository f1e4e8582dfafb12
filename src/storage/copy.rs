//! A full copy of a volume's chain into another volume (`SDM.copy_data`): the chain as the
//! guest sees it, collapsed by `qemu-img convert` into the destination's format, at the
//! lowest I/O priority, with its progress, bounded by a deadline and stoppable; and the mark
//! that a copy was not booted yet (its first boot gets a new VM generation id).

use uuid::Uuid;

use super::domain::Domain;
use super::error::StorageError;
use super::layout::DomainDir;
use super::qemu_img::{self, QemuImgError};
use super::tool_files::{HeldFile, check_chain, recheck_all};
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

/// The files a copy hands to qemu-img, checked: the source's chain (read by names) and the
/// destination (written through this descriptor).
pub struct CopyFiles {
    chain: Vec<HeldFile>,
    target: HeldFile,
}

/// Checks the files of a copy (see [`super::tool_files`]): the source's chain and the
/// destination's opened without any link, regular files, their qcow2 headers naming only
/// their parents; the destination held open for writing. Blocks.
pub fn check_files(
    source: Endpoint<'_>,
    destination: Endpoint<'_>,
) -> Result<CopyFiles, StorageError> {
    let chain = check_chain(source.domain, source.image, source.volume)?;
    check_chain(destination.domain, destination.image, destination.volume)?;
    let dst = destination
        .domain
        .dir
        .volume(destination.image, destination.volume);
    let target = HeldFile::open(&destination.domain.dir, &dst, true)?;
    Ok(CopyFiles { chain, target })
}

/// Checks that the source chain's names still lead to the checked files; right before
/// qemu-img opens them. Blocks.
fn recheck(source: &DomainDir, files: CopyFiles) -> Result<CopyFiles, StorageError> {
    recheck_all(source, &files.chain)?;
    Ok(files)
}

/// Copies what the guest sees through `source` (its whole chain) into `destination`, which
/// must exist (created by `Volume.create`) with a capacity no smaller than the source's,
/// through `files` ([`check_files`]).
pub async fn convert(
    source: Endpoint<'_>,
    destination: Endpoint<'_>,
    files: CopyFiles,
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
    let files = {
        let dir = source.domain.dir.clone();
        tokio::task::spawn_blocking(move || recheck(&dir, files))
            .await
            .map_err(|e| StorageError::Copy(format!("check panicked: {e}")))??
    };
    // The source by its name in the image directory (its backing files are found beside
    // it); the destination by rvdsm's descriptor, which no link can redirect.
    let src = files.chain[0].path().to_string_lossy().into_owned();
    let dst = files.target.fd_name();
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
    let copied = qemu_img::run_with_progress(&args, &dir, timeout, stop, progress).await;
    drop(files);
    copied.map_err(|e| match e {
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
