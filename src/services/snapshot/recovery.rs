//! Crash recovery: the jobs a previous run of rvdsmd left in the journal are ended truthfully.
//! A finished one is shown again; an interrupted one has its guest thawed if it may have frozen
//! it, and keeps its new volumes if the live domain uses them (done, consistency unknown) or
//! loses them if not (failed, rolled back). While libvirt does not answer, or still runs a
//! snapshot on the VM, such a job stays running and is ended once that is over.

use uuid::Uuid;

use super::SnapshotService;
use super::journal::{Entry, Phase};
use super::rollback::{Live, why_kept};
use super::runner::{JobOutcome, images_of};
use crate::api::codes;
use crate::api::snapshot_types::Consistency;
use crate::jobs::journal::Finished;
use crate::jobs::kind::JobKind;
use crate::jobs::results::SnapshotResult;
use crate::virt::{FreezeState, VirtError};

impl SnapshotService {
    /// Ends the jobs a previous run of rvdsmd left (see the module's documentation). The
    /// daemon answers 99 to all but `Host.ping2` until this returns.
    pub async fn recover(&self, entries: Vec<Entry>) {
        if crate::failpoint::reached!("recovery:start") {
            // Test seam: stay in recovery (the gate answers 99) until killed.
            std::future::pending::<()>().await;
        }
        for entry in entries {
            let end = match entry.phase.clone() {
                Phase::Finished(end) => end,
                Phase::Scheduled | Phase::Freezing => {
                    if entry.phase == Phase::Freezing {
                        self.thaw_if_frozen(entry.vm).await;
                    }
                    if !self.storage.may_change(domains_of(&entry)) {
                        // On a shared domain, before StoragePool.connect has joined its
                        // lockspace: a rollback now could not delete the new volumes.
                        tracing::warn!(job = %entry.job, vm = %entry.vm, "interrupted snapshot waits for this host's lease in its domains' lockspaces");
                        self.resume_later(entry);
                        continue;
                    }
                    match self.settled_live(entry.vm).await {
                        Live::Unreadable(why) => {
                            tracing::warn!(job = %entry.job, vm = %entry.vm, %why, "interrupted snapshot not settled yet: the job is ended once it is");
                            self.resume_later(entry);
                            continue;
                        }
                        live => Finished::now(self.end_interrupted(&entry, &live).await),
                    }
                }
            };
            self.jobs.restore(
                entry.job,
                Some(entry.vm),
                JobKind::Snapshot,
                end.job_outcome(),
            );
        }
    }

    /// Shows an interrupted job as running, and ends it once this host may change its domains'
    /// metadata and libvirt answers again and runs no snapshot on the VM.
    fn resume_later(&self, entry: Entry) {
        let claim = self.jobs.claim_vm(entry.vm).ok();
        if self
            .jobs
            .add(entry.job, Some(entry.vm), JobKind::Snapshot)
            .is_err()
        {
            return;
        }
        let service = self.clone();
        tokio::spawn(async move {
            let _claim = claim;
            let _slot = service.jobs.run_slot(entry.job).await;
            service.storage.wait_may_change(domains_of(&entry)).await;
            let live = service.wait_live(entry.vm).await;
            let outcome = service.end_interrupted(&entry, &live).await;
            service.finish_job(&entry, outcome).await;
        });
    }

    /// Ends an interrupted job by what `live` shows, and journals the outcome.
    async fn end_interrupted(&self, entry: &Entry, live: &Live) -> JobOutcome {
        let _images = self.storage.lock_images(images_of(entry)).await;
        let rollback = self.roll_back(entry, live).await;
        let all_kept = rollback.kept.len() == entry.drives.len();
        let switched = all_kept && matches!(live, Live::Disks(_));
        if let Some(memory) = &entry.memory {
            // libvirt switches the disks only once the RAM is saved: switched, the dump is
            // whole; else it is cut short and must never be restored.
            if switched {
                self.finish_interrupted_dump(memory).await;
            } else {
                self.discard_memory(memory).await;
            }
        }
        let outcome = if switched {
            self.note_consistency(entry, Consistency::Unknown, Some("recovered".into()))
                .await;
            Ok(SnapshotResult::Recovered {
                consistency: Consistency::Unknown,
                recovered: true,
                switched: rollback.kept,
            })
        } else {
            Err((
                codes::SNAPSHOT_FAILED,
                format!(
                    "Snapshot failed: interrupted by a restart of rvdsmd; rolled back \
                     (deleted {:?}, kept {:?}{})",
                    rollback.deleted,
                    rollback.kept,
                    why_kept(&rollback, live)
                ),
            ))
        };
        tracing::warn!(job = %entry.job, vm = %entry.vm, ok = outcome.is_ok(), "snapshot job interrupted by a restart recovered");
        let phase = Phase::Finished(Finished::now(outcome.clone()));
        self.record(entry, phase).await;
        outcome
    }

    /// Thaws a guest that an interrupted job may have frozen, after checking it is frozen;
    /// when that cannot be done now, the freeze service keeps trying.
    async fn thaw_if_frozen(&self, vm: Uuid) {
        let _ = self
            .hypervisor
            .set_agent_timeout(vm, self.agent_timeout)
            .await;
        match self.hypervisor.freeze_state(vm, self.agent_timeout).await {
            Ok(FreezeState::Thawed) | Err(VirtError::NoSuchDomain { .. }) => {}
            Ok(FreezeState::Frozen) => {
                tracing::warn!(%vm, "thawing a guest an interrupted snapshot froze");
                if let Err(err) = self.hypervisor.thaw(vm, Vec::new()).await {
                    tracing::error!(%vm, error = %err, "thaw after restart failed");
                    self.freezes.guard(vm).await;
                }
            }
            Err(_) => self.freezes.guard(vm).await,
        }
    }
}

/// The domains of an interrupted job's volumes.
fn domains_of(entry: &Entry) -> Vec<Uuid> {
    let mut domains: Vec<Uuid> = entry.drives.iter().map(|d| d.domain).collect();
    domains.sort_unstable();
    domains.dedup();
    domains
}
