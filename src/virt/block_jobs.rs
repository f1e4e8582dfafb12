//! The block jobs of a live merge: libvirt's block commit of one disk (the active layer, a
//! two-phase job that ends with a pivot; or an internal volume, a job that ends by itself),
//! the job's progress and readiness as libvirt reports them, the pivot and the abort, and the
//! disk's chain as the live domain has it. Starting, pivoting and aborting change the VM, so
//! each runs once ([`Libvirt::call_once_on`]); reads may be retried.

use roxmltree::Document;
use uuid::Uuid;

use super::connection::Libvirt;
use super::domains::lookup;
use super::error::VirtError;
use super::ffi;

/// libvirt's code when a pivot is asked of a job not ready for it.
const BLOCK_COPY_ACTIVE: i32 = 83;

/// A block job on a disk, as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockJob {
    /// Bytes done.
    pub cur: u64,
    /// Bytes to do.
    pub end: u64,
    /// Speed limit in bytes per second (0: none).
    pub bandwidth: u64,
    /// An active commit whose copy phase is over: the live XML shows the disk's mirror
    /// ready, so a pivot can be asked (cur == end alone is not enough: libvirt bug 1376580).
    pub ready: bool,
}

/// How a pivot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pivot {
    /// libvirt switched the disk to the job's base.
    Done,
    /// The job was not ready: try again later.
    NotReady,
}

impl Libvirt {
    /// Starts libvirt's block commit of `top` into `base` on the disk `target` (both as the
    /// live XML names them); `active` when `top` is the disk's active layer.
    pub async fn block_commit(
        &self,
        vm: Uuid,
        target: String,
        base: String,
        top: String,
        bandwidth_mib: u64,
        active: bool,
    ) -> Result<(), VirtError> {
        self.call_once_on(vm, "start block commit", move |conn| {
            let domain = lookup(conn, vm)?;
            ffi::block_commit(&domain, &target, &base, &top, bandwidth_mib, active)
                .map_err(VirtError::from)
        })
        .await
    }

    /// The block job on the disk `target`, if one runs.
    pub async fn block_job(&self, vm: Uuid, target: String) -> Result<Option<BlockJob>, VirtError> {
        self.call("read block job", move |conn| {
            let domain = lookup(conn, vm)?;
            let Some(info) = ffi::block_job_info(&domain, &target)? else {
                return Ok(None);
            };
            let ready = info.end > 0 && info.cur == info.end && {
                let xml = domain
                    .xml_desc(0)
                    .map_err(|e| VirtError::libvirt("read domain XML", e))?;
                mirror_ready(&xml, &target)
            };
            Ok(Some(BlockJob {
                cur: info.cur,
                end: info.end,
                bandwidth: info.bandwidth,
                ready,
            }))
        })
        .await
    }

    /// Asks libvirt to switch the disk `target` to its active commit's base.
    pub async fn pivot(&self, vm: Uuid, target: String) -> Result<Pivot, VirtError> {
        self.call_once_on(vm, "pivot block job", move |conn| {
            let domain = lookup(conn, vm)?;
            match ffi::block_job_abort(&domain, &target, true) {
                Ok(()) => Ok(Pivot::Done),
                Err(err) if err.code == BLOCK_COPY_ACTIVE => Ok(Pivot::NotReady),
                Err(err) => Err(err.into()),
            }
        })
        .await
    }

    /// Cancels the block job on the disk `target`: the disk stays on its volume.
    pub async fn abort_block_job(&self, vm: Uuid, target: String) -> Result<(), VirtError> {
        self.call_once_on(vm, "abort block job", move |conn| {
            let domain = lookup(conn, vm)?;
            ffi::block_job_abort(&domain, &target, false).map_err(VirtError::from)
        })
        .await
    }
}

/// Whether the live XML shows the disk `target`'s mirror (an active commit's) ready to pivot.
fn mirror_ready(xml: &str, target: &str) -> bool {
    let Ok(doc) = Document::parse(xml) else {
        return false;
    };
    doc.descendants()
        .filter(|n| n.has_tag_name("disk"))
        .filter(|disk| {
            disk.children()
                .any(|c| c.has_tag_name("target") && c.attribute("dev") == Some(target))
        })
        .flat_map(|disk| disk.children().filter(|c| c.has_tag_name("mirror")))
        .any(|mirror| mirror.attribute("ready") == Some("yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ready_mirror_of_the_named_disk_counts() {
        let xml = |ready: &str| {
            format!(
                "<domain><devices>\
                 <disk type='file'><target dev='vdb'/><mirror type='file' job='active-commit' ready='yes'/></disk>\
                 <disk type='file'><source file='/a'/><target dev='vda'/>\
                 <mirror type='file' job='active-commit'{ready}><source file='/b'/></mirror></disk>\
                 </devices></domain>"
            )
        };
        assert!(mirror_ready(&xml(" ready='yes'"), "vda"));
        assert!(!mirror_ready(&xml(""), "vda"));
        assert!(!mirror_ready(&xml(" ready='pivot'"), "vda"));
        assert!(!mirror_ready("<domain/>", "vda"));
    }
}
