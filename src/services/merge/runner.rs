//! A merge job from its commit's start to its end: libvirt's block job followed (its progress
//! into `Host.getJobs` and `vmJobs`) until it is ready to pivot (active layer) or gone
//! (internal volume); the pivot, a bounded number of times, then an abort and a truthful
//! failure; then the metadata brought to agree with the chain QEMU uses and `top` deleted.
//! Each phase is journaled before it begins.

use std::time::{Duration, Instant};

use super::journal::{Entry, Phase};
use super::{MergeError, MergeService};
use crate::api::types::VmStatus;
use crate::api::volume_types::Legality;
use crate::jobs::results::MergeResult;
use crate::jobs::vm_jobs::VmClaim;
use crate::services::storage::{ImageHandle, ImageLock, ImageRef, MergeMark};
use crate::storage::StorageError;
use crate::virt::{BlockJobEvent, Pivot, VirtError};

/// Pivots asked before the job gives up (VDSM retries forever: vdsm#197).
pub(super) const MAX_PIVOT_ATTEMPTS: u32 = 5;
/// Between two pivot attempts.
const PIVOT_RETRY: Duration = Duration::from_secs(1);
/// How long libvirt may take to show the disk on `base` after a pivot it reported done.
const PIVOT_SETTLE: Duration = Duration::from_secs(30);
/// How often the live XML is read meanwhile.
const PIVOT_SETTLE_POLL: Duration = Duration::from_millis(20);
/// How long libvirt may fail to answer (libvirtd restarting) before the job gives up.
const UNREADABLE_BUDGET: Duration = Duration::from_secs(300);

/// How a commit's phase ended.
enum CommitEnd {
    /// An active commit is ready to pivot.
    Ready,
    /// QEMU no longer uses `top`.
    Merged,
    /// Nothing was merged.
    Failed(MergeError),
}

/// The image the merge changes.
pub(super) fn drive_image(entry: &Entry) -> ImageRef {
    ImageRef::new(entry.drive.domain, entry.drive.image)
}

impl MergeService {
    /// The merge's image, whose lock the job holds from its start to its end (see
    /// [`Self::follow`]).
    fn image(&self, entry: &Entry) -> Result<ImageHandle, StorageError> {
        self.inner.storage.image(drive_image(entry))
    }

    /// Follows a started (or recovered) merge to its end, holding the VM and the image.
    pub(super) async fn follow(
        self,
        mut entry: Entry,
        held: (VmClaim, MergeMark),
        locks: Vec<ImageLock>,
    ) {
        let _held = (held, locks);
        match self.run_phases(&mut entry).await {
            Some(outcome) => self.end(&mut entry, outcome).await,
            None => {
                tracing::info!(job = %entry.job, "rvdsmd stopping: the merge is left to QEMU and resumed at the next start");
            }
        }
    }

    /// The phases from the journaled one on; `None` when the daemon stops meanwhile.
    async fn run_phases(&self, entry: &mut Entry) -> Option<Result<MergeResult, MergeError>> {
        if entry.phase == Phase::Commit {
            crate::failpoint::pause!("merge:committing");
            match self.wait_commit(entry).await? {
                CommitEnd::Failed(err) => return Some(Err(err)),
                CommitEnd::Merged => {}
                CommitEnd::Ready => {
                    if let Err(err) = self.enter(entry, Phase::Pivot).await {
                        return Some(Err(err));
                    }
                }
            }
        }
        let mut attempts = 0;
        if entry.phase == Phase::Pivot {
            match self.pivot(entry).await {
                Ok(made) => attempts = made,
                Err(err) => return Some(Err(err)),
            }
        }
        Some(self.clean_up(entry).await.map(|()| entry.result(attempts)))
    }

    /// Journals the next phase before it begins.
    async fn enter(&self, entry: &mut Entry, phase: Phase) -> Result<(), MergeError> {
        entry.phase = phase;
        self.write(entry)
            .await
            .map_err(|e| MergeError::failed(entry.job, format!("cannot journal the merge: {e}")))
    }

    /// Follows libvirt's block job until it is ready to pivot or gone.
    async fn wait_commit(&self, entry: &Entry) -> Option<CommitEnd> {
        let hv = &self.inner.hypervisor;
        let mut unreadable_since: Option<Instant> = None;
        let mut events = self.inner.block_job_events.as_ref().map(|e| e.subscribe());
        loop {
            tokio::select! {
                () = self.inner.stop.cancelled() => return None,
                () = tokio::time::sleep(self.inner.poll) => {}
                event = next_event(&mut events, entry) => {
                    if event.is_none() {
                        // The sender is gone: polling only from now on.
                        events = None;
                    }
                }
            }
            match hv.block_job(entry.vm, entry.target.clone()).await {
                Ok(Some(job)) => {
                    unreadable_since = None;
                    self.inner
                        .jobs
                        .progress_of(entry.job, job.cur as f64, job.end as f64);
                    self.inner.block_jobs.progress(
                        entry.vm,
                        entry.job,
                        job.cur,
                        job.end,
                        job.bandwidth >> 20,
                    );
                    if entry.active && job.ready {
                        return Some(CommitEnd::Ready);
                    }
                }
                Ok(None) => {
                    if let Some(end) = self.commit_gone(entry).await {
                        return Some(end);
                    }
                }
                Err(err) => {
                    if self.vm_running(entry).await == Some(false)
                        && let Some(end) = self.commit_gone(entry).await
                    {
                        return Some(end);
                    }
                    let since = *unreadable_since.get_or_insert_with(Instant::now);
                    tracing::warn!(job = %entry.job, error = %err, "cannot read the merge's block job");
                    if since.elapsed() > UNREADABLE_BUDGET {
                        return Some(CommitEnd::Failed(MergeError::failed(
                            entry.job,
                            format!(
                                "libvirt did not tell the commit's state for {UNREADABLE_BUDGET:?}: {err}"
                            ),
                        )));
                    }
                }
            }
        }
    }

    /// Whether the VM runs (or is paused): its block jobs can then be asked. `None` when
    /// libvirt cannot tell (libvirtd restarting): nothing is decided on that.
    async fn vm_running(&self, entry: &Entry) -> Option<bool> {
        match self.inner.hypervisor.read_view(entry.vm).await {
            Ok(Some(view)) => Some(matches!(view.status, VmStatus::Up | VmStatus::Paused)),
            Ok(None) => Some(false),
            Err(_) => None,
        }
    }

    /// The commit's job is gone: whether QEMU still uses `top` tells if it merged. `None`
    /// when libvirt cannot tell yet.
    async fn commit_gone(&self, entry: &Entry) -> Option<CommitEnd> {
        let job = entry.job;
        if self.vm_running(entry).await? {
            return match self.live_uses_top(entry).await {
                Ok(false) => Some(CommitEnd::Merged),
                Err(MergeError::Virt(err)) => {
                    tracing::warn!(%job, error = %err, "cannot read the disk's chain yet");
                    None
                }
                Ok(true) => Some(CommitEnd::Failed(MergeError::failed(
                    job,
                    format!(
                        "no block commit runs on the disk and the volume is still in its chain \
                         (the commit never started, was cancelled, or QEMU failed: see \
                         libvirtd's log); {}",
                        base_left(entry)
                    ),
                ))),
                Err(err) => Some(CommitEnd::Failed(err)),
            };
        }
        // A stopped VM: its images tell. An active commit that never pivoted left the VM on
        // `top`; an internal one merged if `top`'s child is based on `base` now.
        let merged = match entry.child {
            Some(child) if !entry.active => match self.image(entry) {
                Ok(image) => image
                    .backing_of(child)
                    .await
                    .map(|backing| backing == Some(entry.base)),
                Err(err) => Err(err),
            },
            _ => Ok(false),
        };
        Some(match merged {
            Ok(true) => CommitEnd::Merged,
            Ok(false) => CommitEnd::Failed(MergeError::failed(
                job,
                format!(
                    "the VM stopped before the merge ended; nothing was merged and volume {} \
                     stays in the chain; {}",
                    entry.top,
                    base_left(entry)
                ),
            )),
            Err(err) => CommitEnd::Failed(MergeError::storage(job, err)),
        })
    }

    /// Whether the disk's chain, as the domain has it now (live, or defined for a stopped
    /// VM), still holds `top`.
    async fn live_uses_top(&self, entry: &Entry) -> Result<bool, MergeError> {
        let disk = self
            .inner
            .hypervisor
            .disk(entry.vm, entry.target.clone())
            .await?
            .ok_or_else(|| {
                MergeError::failed(entry.job, format!("disk {} is gone", entry.target))
            })?;
        let top = entry.top.to_string();
        let named = |path: &str| {
            std::path::Path::new(path)
                .file_name()
                .and_then(|f| f.to_str())
                == Some(top.as_str())
        };
        Ok(disk.path.as_deref().is_some_and(named)
            || disk.backing_chain.iter().any(|link| named(&link.path)))
    }

    /// Whether the disk is on `base` now (the pivot happened).
    async fn pivoted(&self, entry: &Entry) -> bool {
        matches!(self.disk_on_base(entry).await, Ok(Some(true)))
    }

    /// Where the domain shows the disk: `Some(true)` on `base` (the pivot happened),
    /// `Some(false)` still on `top` (live, or in a stopped VM's definition, which libvirt
    /// rewrites at a pivot), `None` when the VM, with its definition, or the disk is gone:
    /// then nothing tells any more whether QEMU pivoted.
    async fn disk_on_base(&self, entry: &Entry) -> Result<Option<bool>, VirtError> {
        let base = entry.base.to_string();
        match self
            .inner
            .hypervisor
            .disk(entry.vm, entry.target.clone())
            .await
        {
            Ok(Some(disk)) => Ok(Some(
                disk.path
                    .as_deref()
                    .and_then(|p| std::path::Path::new(p).file_name())
                    .and_then(|f| f.to_str())
                    == Some(base.as_str()),
            )),
            Ok(None) | Err(VirtError::NoSuchDomain { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The active commit's pivot: the leaf ILLEGAL first (a crash then leaves it unusable
    /// rather than stale), at most [`MAX_PIVOT_ATTEMPTS`] pivots, then an abort and the leaf
    /// LEGAL again. Returns the attempts made.
    async fn pivot(&self, entry: &Entry) -> Result<u32, MergeError> {
        let top = entry.top;
        let hv = &self.inner.hypervisor;
        // A recovered job may find the pivot done already.
        if self.pivoted(entry).await {
            return Ok(0);
        }
        if self.vm_running(entry).await == Some(false) {
            // A recovered job may have asked the pivot before the VM stopped.
            return self
                .settle_unpivoted(entry, 0, "the VM stopped before the pivot")
                .await;
        }
        let image = self
            .image(entry)
            .map_err(|e| MergeError::storage(entry.job, e))?;
        image
            .set_legality(top, Legality::Illegal)
            .await
            .map_err(|e| MergeError::storage(entry.job, e))?;
        crate::failpoint::pause!("merge:ready");
        let mut last = String::new();
        for attempt in 1..=MAX_PIVOT_ATTEMPTS {
            match hv.pivot(entry.vm, entry.target.clone()).await {
                Ok(Pivot::Done) => {
                    crate::failpoint::pause!("merge:pivot-asked");
                    if self.wait_pivoted(entry).await {
                        return Ok(attempt);
                    }
                    last = format!(
                        "libvirt reported the pivot done but the disk is not on {} after {PIVOT_SETTLE:?}",
                        entry.base
                    );
                }
                Ok(Pivot::NotReady) => last = "the commit was not ready".into(),
                Err(err) => last = err.to_string(),
            }
            // An error may come after the switch (a lost connection): look before retrying.
            if self.pivoted(entry).await {
                return Ok(attempt);
            }
            if self.vm_running(entry).await == Some(false) {
                // A stopped VM pivots no more; what is left of it tells whether it did.
                let why = format!("the VM stopped during the pivot (last: {last})");
                return self.settle_unpivoted(entry, attempt, &why).await;
            }
            tracing::warn!(job = %entry.job, attempt, reason = %last, "pivot failed");
            tokio::time::sleep(PIVOT_RETRY).await;
        }
        let aborted = hv.abort_block_job(entry.vm, entry.target.clone()).await;
        let abort_note = match aborted {
            Ok(()) => "the commit was cancelled".to_owned(),
            Err(err) => format!("cancelling the commit failed too ({err})"),
        };
        let why =
            format!("the pivot failed {MAX_PIVOT_ATTEMPTS} times (last: {last}); {abort_note}");
        self.settle_unpivoted(entry, MAX_PIVOT_ATTEMPTS, &why).await
    }

    /// Ends a pivot not seen done by what the domain shows, waiting (bounded) while libvirt
    /// does not answer: the disk on `base` after all is a pivot made (`Ok(attempts)`); on
    /// `top`, the leaf is LEGAL again ([`Self::keep_top`]); the VM gone with its definition,
    /// nothing can tell, and the leaf stays as it is ([`Self::top_unknown`]).
    async fn settle_unpivoted(
        &self,
        entry: &Entry,
        attempts: u32,
        why: &str,
    ) -> Result<u32, MergeError> {
        let since = Instant::now();
        loop {
            match self.disk_on_base(entry).await {
                Ok(Some(true)) => return Ok(attempts),
                Ok(Some(false)) => return Err(self.keep_top(entry, why).await),
                Ok(None) => return Err(self.top_unknown(entry, why).await),
                Err(err) if since.elapsed() > UNREADABLE_BUDGET => {
                    let why = format!(
                        "{why}; libvirt did not show the disk for {UNREADABLE_BUDGET:?} ({err})"
                    );
                    return Err(self.top_unknown(entry, &why).await);
                }
                Err(err) => {
                    tracing::warn!(job = %entry.job, error = %err, "cannot read the disk to judge the pivot");
                    tokio::time::sleep(PIVOT_RETRY).await;
                }
            }
        }
    }

    /// The failure of a merge whose pivot nothing can judge any more. A leaf marked ILLEGAL
    /// for the pivot stays ILLEGAL: if QEMU pivoted, the guest's later writes are in `base`
    /// only and the leaf is stale; unusable is better than stale (VDSM's order, and what
    /// `Image.reconcileVolumeChain` expects). A leaf still LEGAL was never offered to a pivot
    /// (it is marked first), so the VM was still on it.
    async fn top_unknown(&self, entry: &Entry, why: &str) -> MergeError {
        let (top, base) = (entry.top, entry.base);
        let legality = match self.image(entry) {
            Ok(image) => image.legality(top).await,
            Err(err) => Err(err),
        };
        let tail = match legality {
            Ok(Some(Legality::Legal)) => {
                format!("no pivot was asked: the VM was on volume {top}, which stays LEGAL")
            }
            Ok(_) => format!(
                "the VM is gone with its definition, so whether QEMU pivoted to volume {base} \
                 cannot be told: volume {top} stays ILLEGAL (if it pivoted, {base} holds every \
                 write and {top} is stale); Image.reconcileVolumeChain leaves it out"
            ),
            Err(err) => format!("volume {top}'s legality cannot be read ({err}): left as it is"),
        };
        MergeError::failed(entry.job, format!("{why}; {tail}"))
    }

    /// The failure of a merge whose pivot did not happen: the leaf is LEGAL again, and the VM
    /// stays on it.
    async fn keep_top(&self, entry: &Entry, why: &str) -> MergeError {
        let top = entry.top;
        let restored = match self.image(entry) {
            Ok(image) => image.set_legality(top, Legality::Legal).await,
            Err(err) => Err(err),
        };
        let tail = match restored {
            Ok(()) => format!("the VM stays on volume {top}, which is LEGAL"),
            Err(err) => format!("volume {top} could not be made LEGAL again: {err}"),
        };
        MergeError::failed(entry.job, format!("{why}; {tail}"))
    }

    /// Waits (bounded) until the domain shows the disk on `base` (libvirt updates the live
    /// XML right after a pivot it reports done, or within milliseconds).
    async fn wait_pivoted(&self, entry: &Entry) -> bool {
        let deadline = Instant::now() + PIVOT_SETTLE;
        while Instant::now() < deadline {
            match self.disk_on_base(entry).await {
                Ok(Some(true)) => return true,
                // Gone: nothing will show it.
                Ok(None) => return false,
                Ok(Some(false)) | Err(_) => {}
            }
            tokio::time::sleep(PIVOT_SETTLE_POLL).await;
        }
        false
    }

    /// QEMU no longer uses `top`: the metadata follows (child rebased or `base` the leaf),
    /// `top` is deleted, the VM's recorded chain drops it.
    async fn clean_up(&self, entry: &mut Entry) -> Result<(), MergeError> {
        // Journaled at once: after a pivot, what a crash leaves is judged by this phase, and
        // a stopped, undefined VM would no longer tell whether the pivot happened.
        if entry.phase != Phase::Cleanup
            && let Err(err) = self.enter(entry, Phase::Cleanup).await
        {
            // QEMU has moved on: the metadata must follow it all the same.
            tracing::error!(job = %entry.job, error = %err, "going on with the merge's cleanup unjournaled");
        }
        crate::failpoint::pause!("merge:pivoted");
        self.image(entry)
            .map_err(|e| MergeError::storage(entry.job, e))?
            .unlink_merged(entry.base, entry.top)
            .await
            .map_err(|e| MergeError::storage(entry.job, e))?;
        let recorded = self
            .inner
            .hypervisor
            .record_merge(entry.vm, entry.target.clone(), entry.top, entry.base)
            .await;
        if let Err(err) = recorded {
            tracing::warn!(job = %entry.job, error = %err, "cannot record the merged chain in the VM's definition");
        }
        self.inner.monitor.refresh(entry.vm).await;
        Ok(())
    }
}

/// What a commit that did not end leaves in `base`, for the job's error.
fn base_left(entry: &Entry) -> String {
    format!(
        "if the commit began, volume {} may hold part of {}'s data (its snapshot note, marked \
         before the commit, says a revert to it is unknown, not clean)",
        entry.base, entry.top
    )
}

/// The next block job event on the merge's disk (`None` once no events can come; pending
/// forever without a subscription, so that the poll alone paces the wait).
async fn next_event(
    events: &mut Option<tokio::sync::broadcast::Receiver<BlockJobEvent>>,
    entry: &Entry,
) -> Option<BlockJobEvent> {
    let Some(events) = events else {
        return std::future::pending().await;
    };
    loop {
        match events.recv().await {
            Ok(event) if event.vm == entry.vm && event.disk == entry.target => return Some(event),
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        }
    }
}
