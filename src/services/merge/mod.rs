//! `VM.merge`: deleting a snapshot of a running VM by merging its volume (`top`) into its
//! parent (`base`) with libvirt's block commit, as VDSM's live merge does, then deleting
//! `top`. The active layer's commit ends with a pivot of the disk to `base`; an internal
//! volume's commit rebases its child on `base` by itself. One room per phase:
//!
//! - this file: the service and the request's checks, up to the commit's start;
//! - `runner.rs`: the job from the commit's start to its end (progress, pivot, cleanup);
//! - `recovery.rs`: the merges a restart of rvdsmd interrupted, ended by what the domain and
//!   the images show;
//! - `journal.rs`: the journal of intent each phase is written to first;
//! - `error.rs`: VDSM's codes.
//!
//! Safety: the job holds the VM (no snapshot, freeze or `VM.destroy` meanwhile) and the
//! image's lock from the checks to its end; `base`'s snapshot note says its revert outcome is
//! unknown from before the commit begins (a merge that ends gives it `top`'s note, or none);
//! the leaf is ILLEGAL only between a ready commit and its pivot, LEGAL again when the pivot
//! is known not to have happened, and left ILLEGAL when nothing can tell any more (the VM and
//! its definition gone); `top` is deleted only once QEMU no longer uses it.

mod error;
#[cfg(test)]
mod fake_tests;
mod journal;
mod recovery;
mod runner;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::merge_types::{DriveSpec, MergeParams, VmBlockJob};
use crate::api::types::VmStatus;
use crate::jobs::block_jobs::BlockJobTable;
use crate::jobs::journal::Finished;
use crate::jobs::kind::JobKind;
use crate::jobs::results::MergeResult;
use crate::jobs::vm_jobs::{JobError, JobRegistry};
use crate::services::storage::ImageRef;
use crate::services::{Monitor, StorageService};
use crate::virt::xml::{DiskVolume, disk_volume};
use crate::virt::{BlockJobEvent, Conflict, SharedHypervisor, VirtError};

pub use error::MergeError;
/// A merge a previous run left, as its journal has it.
pub(crate) use journal::Entry as InterruptedMerge;
use journal::{Entry, Journal, Phase};

/// Live merges and their jobs; cheap to clone.
#[derive(Clone)]
pub struct MergeService {
    inner: Arc<Inner>,
}

struct Inner {
    hypervisor: SharedHypervisor,
    storage: StorageService,
    jobs: JobRegistry,
    journal: Journal,
    block_jobs: BlockJobTable,
    monitor: Monitor,
    /// Cancelled when the daemon stops: jobs stop following QEMU (which goes on) and stay
    /// journaled for the next start.
    stop: CancellationToken,
    /// How often a running commit is read (libvirt's block job events wake it sooner).
    poll: Duration,
    /// libvirt's block job events, when the daemon watches them.
    block_job_events: Option<tokio::sync::broadcast::Sender<BlockJobEvent>>,
}

/// A disk's chain as the live domain has it, leaf first: `(volume, path as libvirt names it)`.
type LiveChain = Vec<(Uuid, String)>;

impl MergeService {
    /// The service, its journal in `journal_dir`; returns the records a previous run left,
    /// for [`MergeService::recover`]. Merges waiting for a commit wake on the libvirt block
    /// job events published on `block_job_events` (when the daemon watches them), else on
    /// their next poll. Blocking.
    pub fn open(
        (hypervisor, storage, monitor): (SharedHypervisor, StorageService, Monitor),
        jobs: JobRegistry,
        block_jobs: BlockJobTable,
        block_job_events: Option<tokio::sync::broadcast::Sender<BlockJobEvent>>,
        journal_dir: &std::path::Path,
    ) -> std::io::Result<(Self, Vec<Entry>)> {
        let (journal, entries) = Journal::open(journal_dir, "merge")?;
        let service = Self {
            inner: Arc::new(Inner {
                hypervisor,
                storage,
                jobs,
                journal,
                block_jobs,
                monitor,
                stop: CancellationToken::new(),
                poll: Duration::from_millis(500),
                block_job_events,
            }),
        };
        Ok((service, entries))
    }

    /// Stops following the running merges: QEMU finishes their commits; the next start
    /// ends them from the journal.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    /// `VM.merge`: checks the request against the live domain and the metadata, journals the
    /// job, starts libvirt's commit, and follows it in the background.
    pub async fn merge(&self, p: MergeParams) -> Result<(), MergeError> {
        let job = p.job.unwrap_or_else(Uuid::new_v4);
        let fail = |reason: String| MergeError::failed(job, reason);
        let view = self
            .inner
            .hypervisor
            .read_view(p.vm_id)
            .await?
            .ok_or_else(|| VirtError::NoSuchDomain {
                uuid: p.vm_id.to_string(),
            })?;
        if p.base == p.top {
            return Err(fail(
                "baseVolUUID and topVolUUID are the same volume".into(),
            ));
        }
        if let Some(given) = p.job {
            self.inner
                .jobs
                .check_new(given)
                .map_err(|e| fail(e.to_string()))?;
        }
        if !matches!(view.status, VmStatus::Up | VmStatus::Paused) {
            return Err(fail(format!(
                "the VM is {:?}: a live merge needs a running VM (a stopped VM's snapshots \
                 are merged with SDM.merge)",
                view.status
            )));
        }
        let claim = self
            .inner
            .jobs
            .claim_vm(p.vm_id)
            .map_err(|e| fail(e.to_string()))?;
        let (target, chain) = self.find_disk(p.vm_id, &p.drive, job).await?;
        let top_at = chain.iter().position(|(v, _)| *v == p.top).ok_or_else(|| {
            fail(format!(
                "topVolUUID {} is not in disk {target}'s chain",
                p.top
            ))
        })?;
        let (base, base_path) = chain.get(top_at + 1).cloned().ok_or_else(|| {
            fail(format!(
                "topVolUUID {} is the base of disk {target}'s chain",
                p.top
            ))
        })?;
        if base != p.base {
            return Err(fail(format!(
                "baseVolUUID {} is not topVolUUID's backing volume in disk {target}'s chain \
                 ({base} is): only a volume and its parent are merged",
                p.base
            )));
        }
        let live_child = top_at.checked_sub(1).map(|i| chain[i].0);
        let (domain, image) = (p.drive.domain, p.drive.image);
        // Held until the merge ends: no copy reads a chain being merged, nor is it merged
        // while a copy reads it.
        let mark = self
            .inner
            .storage
            .merging(ImageRef::new(domain, image))
            .map_err(|e| MergeError::storage(job, e))?;
        let image = self
            .inner
            .storage
            .open_image(ImageRef::new(domain, image))
            .await
            .map_err(|e| MergeError::storage(job, e))?;
        let pair = image
            .merge_pair(p.base, p.top)
            .await
            .map_err(|e| MergeError::storage(job, e))?;
        let bitmaps = image
            .bitmaps(p.top)
            .await
            .map_err(|e| MergeError::storage(job, e))?;
        if pair.child != live_child {
            return Err(fail(format!(
                "the metadata bases {:?} on topVolUUID, the VM's disk {:?}",
                pair.child, live_child
            )));
        }
        match self
            .inner
            .hypervisor
            .conflict(p.vm_id, vec![target.clone()])
            .await?
        {
            None => {}
            Some(Conflict::Migration) => return Err(fail("the VM is migrating".into())),
            Some(Conflict::BlockJob(disk)) => {
                return Err(fail(format!("disk {disk} has a block job running")));
            }
        }
        self.inner
            .jobs
            .add(job, Some(p.vm_id), JobKind::LiveMerge)
            .map_err(|e| fail(e.to_string()))?;
        let mut entry = Entry {
            job,
            vm: p.vm_id,
            target: target.clone(),
            drive: p.drive,
            base: p.base,
            top: p.top,
            child: live_child,
            active: top_at == 0,
            bandwidth: p.bandwidth,
            base_path,
            top_path: chain[top_at].1.clone(),
            bitmaps,
            phase: Phase::Commit,
        };
        if let Err(err) = self.write(&entry).await {
            let err = fail(format!("cannot journal the job: {err}"));
            self.end(&mut entry, Err(err.clone())).await;
            return Err(err);
        }
        self.show(&entry);
        crate::failpoint::pause!("merge:journaled");
        // Before the commit's first write into `base`: a failed, cancelled or interrupted
        // commit leaves `base` holding data of two instants, and its note must not promise
        // a clean revert any more (a crash before this line leaves it true: nothing began).
        let marked = image.note_merge_begun(p.base, p.top, p.vm_id).await;
        if let Err(err) = marked {
            let err = fail(format!(
                "cannot mark the base's snapshot note before the commit, so it was not begun: {err}"
            ));
            self.end(&mut entry, Err(err.clone())).await;
            return Err(err);
        }
        tracing::info!(%job, vm = %p.vm_id, disk = %target, base = %p.base, top = %p.top, active = entry.active, "live merge starting");
        let started = self
            .inner
            .hypervisor
            .block_commit(
                p.vm_id,
                target,
                entry.base_path.clone(),
                entry.top_path.clone(),
                p.bandwidth,
                entry.active,
            )
            .await;
        if let Err(err) = started {
            let err = fail(format!(
                "libvirt refused the commit: {err}; volume {}'s snapshot note stays marked \
                 unknown (an error after a timeout may hide a commit that began)",
                p.base
            ));
            self.end(&mut entry, Err(err.clone())).await;
            return Err(err);
        }
        self.inner.jobs.mark_running(job);
        let service = self.clone();
        let locks = image.into_lock().into_iter().collect();
        tokio::spawn(async move { service.follow(entry, (claim, mark), locks).await });
        Ok(())
    }

    /// The VM's disk on `drive`'s volume: its target and its chain as the live domain has it.
    async fn find_disk(
        &self,
        vm: Uuid,
        drive: &DriveSpec,
        job: Uuid,
    ) -> Result<(String, LiveChain), MergeError> {
        let (_, disks) = self.inner.hypervisor.domain_disks(vm).await?;
        for disk in disks {
            let Some(source) = disk.path.clone() else {
                continue;
            };
            let paths =
                std::iter::once(source).chain(disk.backing_chain.into_iter().map(|l| l.path));
            let chain: LiveChain = paths
                .map_while(|path| disk_volume(&path).map(|v| (v.volume, path)))
                .collect();
            let on_drive = chain.first().and_then(|(_, path)| disk_volume(path))
                == Some(DiskVolume {
                    domain: drive.domain,
                    image: drive.image,
                    volume: drive.volume,
                });
            if on_drive {
                return Ok((disk.target, chain));
            }
        }
        Err(MergeError::NoSuchDrive {
            reason: format!(
                "the VM has no disk on volume {} of image {}",
                drive.volume, drive.image
            ),
            job,
        })
    }

    /// Shows the job in the VM's `vmJobs`.
    fn show(&self, entry: &Entry) {
        let Some((job_type, block_job_type)) = JobKind::LiveMerge.vm_block_job() else {
            return;
        };
        self.inner.block_jobs.set(
            entry.vm,
            VmBlockJob {
                id: entry.job,
                job_type,
                block_job_type,
                drive: entry.target.clone(),
                image: entry.drive.image,
                bandwidth: entry.bandwidth,
                cur: "0".into(),
                end: "0".into(),
            },
        );
    }

    /// Journals `entry`.
    async fn write(&self, entry: &Entry) -> std::io::Result<()> {
        let journal = self.inner.journal.clone();
        let entry = entry.clone();
        tokio::task::spawn_blocking(move || journal.write(&entry))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Ends the job: journaled as finished, shown in `Host.getJobs` (with its event), gone
    /// from `vmJobs`.
    async fn end(&self, entry: &mut Entry, outcome: Result<MergeResult, MergeError>) {
        let recorded = outcome.clone().map_err(|e| e.code_and_message());
        entry.phase = Phase::Finished(Finished::now(recorded));
        if let Err(err) = self.write(entry).await {
            tracing::error!(job = %entry.job, error = %err, "cannot journal the merge's end");
        }
        self.inner.journal.prune_now_and_then();
        self.inner.block_jobs.remove(entry.vm, entry.job);
        match outcome {
            Ok(result) => {
                tracing::info!(job = %entry.job, vm = %entry.vm, "live merge done");
                self.inner.jobs.finish(entry.job, Ok(result.into()));
            }
            Err(err) => {
                let (code, message) = err.code_and_message();
                tracing::warn!(job = %entry.job, vm = %entry.vm, %message, "live merge failed");
                self.inner
                    .jobs
                    .finish(entry.job, Err(JobError { code, message }));
            }
        }
    }
}
