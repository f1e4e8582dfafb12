//! A snapshot job from its start to its end: it waits for a place under the host-wide limit,
//! runs the decision logic ([`super::flow`]) against the hypervisor with each phase journaled
//! first, records how the snapshot was taken beside each base volume, and ends the job in the
//! journal, then in `Host.getJobs`, and in the operators' metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::SnapshotService;
use super::flow::{self, Plan, VmOps};
use super::journal::{Entry, Phase};
use super::memory::MemoryJob;
use super::rollback::Live;
use super::validate::Drive;
use crate::api::snapshot_types::{Consistency, SnapshotNote};
use crate::clock::epoch_secs;
use crate::jobs::journal::Finished;
use crate::jobs::results::{SnapshotResult, Switched};
use crate::jobs::vm_jobs::VmClaim;
use crate::services::storage::ImageRef;
use crate::virt::{
    DefinedSwitch, DiskSwitch, FreezeState, MemoryDump, PauseReport, RunState, VirtError,
    VirtErrorKind,
};

/// How a job ended: its result, or VDSM's code and message.
pub(super) type JobOutcome = Result<SnapshotResult, (i32, String)>;

impl SnapshotService {
    /// Runs a scheduled job to its end.
    pub(super) async fn run_job(
        &self,
        entry: Entry,
        claim: VmClaim,
        plan: Plan,
        drives: Vec<Drive>,
        skipped: Vec<Uuid>,
        memory: Option<MemoryJob>,
    ) {
        let job = entry.job;
        let _slot = self.jobs.run_slot(job).await;
        let _claim = claim;
        // The drives' images, for the whole job: no delete or create on them runs inside its
        // switch or its rollback (a delete's check for use would race the switch).
        let _images = self.storage.lock_images(images_of(&entry)).await;
        let started = Instant::now();
        if self.stopping.load(Ordering::SeqCst) {
            let message = "Snapshot failed: rvdsmd is stopping; nothing was switched";
            self.fail(&entry, false, message.to_owned()).await;
            return;
        }
        if Instant::now() > plan.switch_deadline {
            let message = "Snapshot failed: its timeout passed while it waited for its turn; \
                           nothing was switched";
            self.fail(&entry, false, message.to_owned()).await;
            return;
        }
        if drives.is_empty() {
            let result = SnapshotResult::NothingToSwitch {
                switched: Vec::new(),
                skipped,
            };
            self.finish_job(&entry, Ok(result)).await;
            return;
        }
        self.jobs.progress(job, 10);
        if let Some(memory) = &memory
            && let Err(why) = self.save_configuration(&entry, memory).await
        {
            self.discard_memory(&memory.journal()).await;
            let message = format!(
                "Snapshot failed: cannot write the configuration volume: {why}; nothing was \
                 switched"
            );
            self.fail(&entry, false, message).await;
            return;
        }
        let ops = Journaled {
            service: self,
            entry: &entry,
            unsettled: AtomicBool::new(false),
            memory: memory.as_ref(),
        };
        let result = flow::run(&ops, &plan).await;
        if ops.unsettled.load(Ordering::SeqCst) {
            self.freezes.guard(plan.vm).await;
        }
        // Settled, or the freeze service took the guest over.
        self.held_frozen().remove(&plan.vm);
        match result {
            Ok(outcome) => {
                let memory_result = match &memory {
                    Some(memory) => match self.finish_memory(memory, outcome.pause.clone()).await {
                        Ok(result) => Some(result),
                        Err(err) => {
                            self.discard_memory(&memory.journal()).await;
                            let message = format!(
                                "Snapshot failed: the disks switched, but the RAM cannot be \
                                 restored ({err}); its volumes are marked ILLEGAL"
                            );
                            self.fail(&entry, true, message).await;
                            return;
                        }
                    },
                    None => None,
                };
                let reason = outcome.reason.map(|r| wire_name(&r));
                let (_, unconfirmed_disks) = tokio::join!(
                    self.note_consistency(&entry, outcome.consistency, reason),
                    self.unconfirmed(plan.vm, &drives)
                );
                self.record_new_leaves(plan.vm, &drives, &unconfirmed_disks)
                    .await;
                tracing::info!(%job, consistency = ?outcome.consistency, reason = ?outcome.reason, total_ms = outcome.timings.total_ms, "snapshot done");
                record_outcome(&outcome, started.elapsed());
                let result = SnapshotResult::Switched(Switched {
                    consistency: outcome.consistency,
                    reason: outcome.reason,
                    timings: outcome.timings,
                    thaw_error: outcome.thaw_error,
                    switched: drives.iter().map(|d| d.volume).collect(),
                    skipped,
                    unconfirmed_disks,
                    memory: memory_result,
                });
                self.finish_job(&entry, Ok(result)).await;
            }
            Err(failure) => {
                record_failure(started.elapsed());
                if let Some(memory) = &entry.memory {
                    self.discard_memory(memory).await;
                }
                let message = match failure.libvirt_code {
                    Some(code) => format!(
                        "Snapshot failed: {} (libvirt error {code})",
                        failure.message
                    ),
                    None => format!("Snapshot failed: {}", failure.message),
                };
                self.fail(&entry, failure.switch_attempted, message).await;
            }
        }
    }

    /// Moves the recorded chains of a VM rvdsm created to the new volumes it switched to (a
    /// VM without rvdsm's drive metadata is left alone). A failure is logged: the switch
    /// stands, and libvirt's own chain says what the VM runs on.
    async fn record_new_leaves(&self, vm: Uuid, drives: &[Drive], unconfirmed: &[String]) {
        // The cache knows whether the VM carries rvdsm's metadata: no libvirt call otherwise.
        if let Some(monitor) = &self.monitor
            && monitor
                .view(vm)
                .is_some_and(|v| !v.xml.contains(crate::virt::vm_xml::OVIRT_VM_NS))
        {
            return;
        }
        let leaves = drives
            .iter()
            .filter(|d| !unconfirmed.contains(&d.target))
            .map(|d| crate::virt::vm_xml::NewLeaf {
                target: d.target.clone(),
                volume: d.volume,
                path: d.new_path.clone(),
            })
            .collect();
        if let Err(err) = self.hypervisor.record_new_leaves(vm, leaves).await {
            tracing::warn!(%vm, error = %err, "cannot record the new volumes in the VM's metadata");
        }
    }

    /// The targets the live domain does not show on their new volume right after a switch
    /// libvirt reported done (none when the domain cannot be read: the switch stands).
    async fn unconfirmed(&self, vm: Uuid, drives: &[Drive]) -> Vec<String> {
        let live = self.read_live(vm).await;
        drives
            .iter()
            .filter(|d| match &live {
                Live::Disks(disks) => disks.get(&d.target) != Some(&d.new_real),
                Live::Gone | Live::Unreadable(_) => false,
            })
            .map(|d| d.target.clone())
            .collect()
    }

    /// Writes beside each base volume how the snapshot on top of it was taken (shown by
    /// `Volume.getInfo`); a failure is logged (the snapshot stands).
    pub(super) async fn note_consistency(
        &self,
        entry: &Entry,
        consistency: Consistency,
        reason: Option<String>,
    ) {
        for drive in &entry.drives {
            let note = SnapshotNote {
                consistency,
                reason: reason.clone(),
                time: epoch_secs(),
                vm_id: entry.vm,
                volume: drive.volume,
            };
            let written = match self.storage.image(ImageRef::new(drive.domain, drive.image)) {
                Ok(image) => image.write_snapshot_note(drive.base, note).await,
                Err(err) => Err(err),
            };
            if let Err(err) = written {
                tracing::warn!(job = %entry.job, error = %err, "cannot record the snapshot's consistency");
            }
        }
    }

    /// Journals a phase of a job; a failure is logged (the job goes on, less protected).
    pub(super) async fn record(&self, entry: &Entry, phase: Phase) {
        let entry = Entry {
            phase,
            ..entry.clone()
        };
        if let Err(err) = self.write_journal(entry).await {
            tracing::error!(error = %err, "cannot write the snapshot journal");
        }
    }

    /// Writes a journal entry durably, off the reactor (it fsyncs).
    pub(super) async fn write_journal(&self, entry: Entry) -> Result<(), String> {
        let journal = self.journal.clone();
        match tokio::task::spawn_blocking(move || journal.write(&entry)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Ends a job: journaled as finished, then shown as such by `Host.getJobs`.
    pub(super) async fn finish_job(&self, entry: &Entry, outcome: JobOutcome) {
        let end = Finished::now(outcome);
        // The outcome made durable and the cache refreshed (a manager reading the VM after
        // the job's event sees its new chain), side by side.
        let refreshed = async {
            if let Some(monitor) = &self.monitor {
                monitor.refresh(entry.vm).await;
            }
        };
        tokio::join!(self.record(entry, Phase::Finished(end.clone())), refreshed);
        self.jobs.finish(entry.job, end.job_outcome());
        self.journal.prune_now_and_then();
    }
}

/// The hypervisor, with the journal written before the freeze: from then on, a frozen guest
/// found after a crash may be this job's doing.
struct Journaled<'a> {
    service: &'a SnapshotService,
    entry: &'a Entry,
    /// Set when a freeze or thaw failed and the guest may be frozen (now, or later when a
    /// hung agent wakes and runs the freeze it was sent); cleared by a thaw or a "thawed"
    /// status. Set at the end: the freeze service guards the guest.
    unsettled: AtomicBool,
    /// The memory volumes of a snapshot with memory, watched while libvirt writes the dump.
    memory: Option<&'a MemoryJob>,
}

impl VmOps for Journaled<'_> {
    async fn run_state(&self, vm: Uuid) -> Result<RunState, VirtError> {
        self.service.hypervisor.run_state(vm).await
    }
    async fn set_agent_timeout(&self, vm: Uuid, t: Duration) -> Result<(), VirtError> {
        self.service.hypervisor.set_agent_timeout(vm, t).await
    }
    async fn freeze_state(&self, vm: Uuid, t: Duration) -> Result<FreezeState, VirtError> {
        let state = self.service.hypervisor.freeze_state(vm, t).await;
        if state == Ok(FreezeState::Thawed) {
            self.unsettled.store(false, Ordering::SeqCst);
            self.service.held_frozen().remove(&vm);
        }
        state
    }
    async fn record_freeze_intent(&self, _: Uuid) -> Result<(), String> {
        let entry = Entry {
            phase: Phase::Freezing,
            ..self.entry.clone()
        };
        self.service.write_journal(entry).await
    }
    async fn disown_freeze(&self, vm: Uuid) -> Result<(), String> {
        self.unsettled.store(false, Ordering::SeqCst);
        self.service.held_frozen().remove(&vm);
        let entry = Entry {
            phase: Phase::Scheduled,
            ..self.entry.clone()
        };
        self.service.write_journal(entry).await
    }
    async fn freeze(&self, vm: Uuid) -> Result<u32, VirtError> {
        crate::failpoint::pause!("snapshot:before-freeze");
        // Before the call: a freeze that reports an error may still take effect.
        self.service.held_frozen().insert(vm);
        let frozen = self.service.hypervisor.freeze(vm, Vec::new()).await;
        if let Err(err) = &frozen {
            // Unless the agent certainly did not run it (none there, or refused at once).
            let not_run = matches!(
                err.kind(),
                VirtErrorKind::AgentUnsupported | VirtErrorKind::AgentFrozen
            );
            self.unsettled.store(!not_run, Ordering::SeqCst);
            if not_run {
                self.service.held_frozen().remove(&vm);
            }
        }
        frozen
    }
    async fn thaw(&self, vm: Uuid) -> Result<u32, VirtError> {
        let thawed = self.service.hypervisor.thaw(vm, Vec::new()).await;
        self.unsettled.store(thawed.is_err(), Ordering::SeqCst);
        if thawed.is_ok() {
            self.service.held_frozen().remove(&vm);
        }
        thawed
    }
    async fn external_snapshot(
        &self,
        vm: Uuid,
        switches: Vec<DiskSwitch>,
        all_targets: Vec<String>,
    ) -> Result<(), VirtError> {
        self.service
            .hypervisor
            .external_snapshot(vm, switches, all_targets)
            .await
    }
    async fn memory_snapshot(
        &self,
        vm: Uuid,
        switches: Vec<DiskSwitch>,
        all_targets: Vec<String>,
        dump: MemoryDump,
    ) -> Result<PauseReport, VirtError> {
        let memory = self.memory.ok_or_else(|| VirtError::Refused {
            element: "the snapshot".into(),
            reason: "a snapshot with memory without memory volumes".into(),
        })?;
        crate::failpoint::pause!("snapshot:before-dump");
        self.service
            .watched_memory_snapshot(vm, switches, all_targets, dump, memory)
            .await
    }
    async fn switch_defined_disks(
        &self,
        vm: Uuid,
        switches: Vec<DefinedSwitch>,
    ) -> Result<(), VirtError> {
        self.service
            .hypervisor
            .switch_defined_disks(vm, switches)
            .await
    }
}

/// The images a job changes: `(domain, image)` of each drive, and its memory volumes'.
pub(super) fn images_of(entry: &Entry) -> Vec<ImageRef> {
    let memory = entry.memory.iter().flat_map(|m| {
        [m.dump.0, m.conf.0]
            .into_iter()
            .map(|image| ImageRef::new(m.domain, image))
    });
    entry
        .drives
        .iter()
        .map(|d| ImageRef::new(d.domain, d.image))
        .chain(memory)
        .collect()
}

/// Adds a switched snapshot to the operators' metrics.
fn record_outcome(outcome: &flow::Outcome, took: Duration) {
    let metrics = crate::metrics::global();
    let labels = crate::metrics::SnapshotLabels {
        outcome: "done".into(),
        consistency: wire_name(&outcome.consistency),
    };
    metrics.snapshots.get_or_create(&labels).inc();
    metrics
        .snapshot_seconds
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
    if outcome.timings.freeze_ms > 0.0 {
        metrics
            .freeze_seconds
            .observe(outcome.timings.freeze_ms / 1000.0);
    }
    if outcome.timings.frozen_ms > 0.0 {
        metrics
            .frozen_window_seconds
            .observe(outcome.timings.frozen_ms / 1000.0);
    }
    if let Some(reason) = &outcome.reason {
        let reason = wire_name(reason);
        if reason == "agent-not-responding" {
            metrics.agent_timeouts.inc();
        }
        metrics
            .fallbacks
            .get_or_create(&crate::metrics::ReasonLabel { reason })
            .inc();
    }
}

/// Adds a failed snapshot to the operators' metrics.
fn record_failure(took: Duration) {
    let metrics = crate::metrics::global();
    let labels = crate::metrics::SnapshotLabels {
        outcome: "failed".into(),
        consistency: "none".into(),
    };
    metrics.snapshots.get_or_create(&labels).inc();
    metrics
        .snapshot_seconds
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
}

/// The name serde gives a unit variant (`quiesced`, `agent-not-responding`, ...).
fn wire_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
