//! `VM.snapshot` and `Host.getJobs`: a request is checked against the live domain and the
//! storage domain, registered as a job and journaled, then taken in the background; when it
//! fails, nothing is left behind: the VM on its old volumes, thawed, the new volumes deleted
//! unless the live domain shows a disk already uses one. One room per phase:
//!
//! - this file: the service and its entry point (checks, scheduling);
//! - `validate.rs`: the request's parameters and drives, before anything changes;
//! - [`journal`]: the job's records in the journal of intent;
//! - `runner.rs`: the job from its start to its end, each phase journaled first;
//! - `memory.rs`: the RAM dump and configuration volumes of a snapshot with memory;
//! - [`flow`]: the decision logic (quiesce, switch, thaw), against a small hypervisor trait,
//!   unit-tested with a recording fake (`fake.rs`);
//! - `rollback.rs`: reading the live domain after a failure, and deciding what to keep;
//! - `recovery.rs`: ending the jobs a crash of rvdsmd interrupted.

mod error;
#[cfg(test)]
mod fake;
pub mod flow;
pub mod journal;
mod memory;
mod recovery;
mod rollback;
mod runner;
mod validate;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::api::vm_types::{GetJobsParams, SnapshotParams};
use crate::jobs::kind::JobKind;
use crate::jobs::vm_jobs::{JobError, JobInfo, JobRegistry, JobStatus};
use crate::services::storage::ImageRef;
use crate::services::{FreezeService, StorageService};
use crate::virt::{Conflict, DefinedSwitch, DiskSwitch, SharedHypervisor};

pub use error::SnapshotError;
use flow::Plan;
use journal::{Entry, Journal, JournalDrive, Phase};
use validate::{Checked, Drive};

/// VDSM's `freeze_timeout` default, in minutes.
const DEFAULT_FREEZE_TIMEOUT_MINUTES: u64 = 8;
/// VDSM's `timeout` default, in minutes.
const DEFAULT_TIMEOUT_MINUTES: u64 = 30;

/// Snapshots and their jobs.
#[derive(Clone)]
pub struct SnapshotService {
    hypervisor: SharedHypervisor,
    storage: StorageService,
    jobs: JobRegistry,
    journal: Journal,
    freezes: FreezeService,
    agent_timeout: Duration,
    /// Set when the daemon stops: a job that has not begun fails without touching the VM.
    stopping: Arc<AtomicBool>,
    /// The VMs a job may hold frozen now (from just before its freeze until its thaw), so
    /// that a stopping daemon thaws them even when their job cannot end in time.
    frozen: Arc<Mutex<HashSet<Uuid>>>,
    /// The monitoring cache, re-read for the job's VM before the job is shown ended, so that
    /// `Host.dumpxmls` and `VM.getStats` show the new chain as soon as the job is done.
    monitor: Option<crate::services::Monitor>,
    /// Snapshots with memory: the default mode, the live dump's bound.
    memory: crate::config::SnapshotConfig,
}

impl SnapshotService {
    /// A service driving `hypervisor` and `storage`, with `jobs` shared with `VM.freeze` and
    /// its journal of intent in `journal`; `freezes` takes over the freezes it cannot undo.
    /// Returns the entries a previous run left, for [`SnapshotService::recover`].
    pub fn open(
        hypervisor: SharedHypervisor,
        storage: StorageService,
        jobs: JobRegistry,
        freezes: FreezeService,
        journal_dir: &Path,
        agent_timeout: Duration,
    ) -> std::io::Result<(Self, Vec<Entry>)> {
        let (journal, entries) = Journal::open(journal_dir, "snapshot job")?;
        let service = Self {
            hypervisor,
            storage,
            jobs,
            journal,
            freezes,
            agent_timeout,
            stopping: Arc::default(),
            frozen: Arc::default(),
            monitor: None,
            memory: crate::config::SnapshotConfig::default(),
        };
        Ok((service, entries))
    }

    /// The service, with the configuration's settings for snapshots with memory.
    pub fn with_memory_settings(mut self, settings: crate::config::SnapshotConfig) -> Self {
        self.memory = settings;
        self
    }

    /// The service, re-reading each job's VM into `monitor` when the job ends.
    pub fn with_monitor(mut self, monitor: crate::services::Monitor) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// `VM.snapshot`: validates, registers the job, returns once it is scheduled.
    pub async fn snapshot(&self, p: SnapshotParams) -> Result<(), SnapshotError> {
        if let Err(err) = validate::check_params(&p) {
            // As VDSM, an unknown VM is reported before what is wrong with the request.
            if let Ok(None) = self.hypervisor.read_view(p.vm_id).await {
                return Err(crate::virt::VirtError::NoSuchDomain {
                    uuid: p.vm_id.to_string(),
                }
                .into());
            }
            return Err(err);
        }
        // A retried job id is answered first: a retry after a crash must not run the job
        // twice, and "job exists" tells the manager where to look (Host.getJobs).
        if let Some(job) = p.job {
            self.jobs.check_new(job)?;
        }
        let claim = self.jobs.claim_vm(p.vm_id)?;
        let checked = self.check_drives(&p).await?;
        let memory = self
            .check_memory(&p, &checked.drives, &checked.skipped)
            .await?;
        if let Some(copied) = checked.drives.iter().find(|d| {
            self.storage
                .is_being_copied(ImageRef::new(d.domain, d.image))
        }) {
            return Err(SnapshotError::invalid(format!(
                "image {} is being copied (SDM.copy_data): its chain cannot change until the \
                 copy ends",
                copied.image
            )));
        }
        let targets = checked.drives.iter().map(|d| d.target.clone()).collect();
        match self.hypervisor.conflict(p.vm_id, targets).await? {
            None => {}
            Some(Conflict::Migration) => return Err(SnapshotError::MigrationInProgress),
            Some(Conflict::BlockJob(target)) => {
                return Err(SnapshotError::invalid(format!(
                    "disk {target} has a block job (copy, commit or mirror) running"
                )));
            }
        }
        let job = p.job.unwrap_or_else(Uuid::new_v4);
        self.jobs.add(job, Some(p.vm_id), JobKind::Snapshot)?;
        let mut entry = journal_entry(job, p.vm_id, &checked.drives);
        entry.memory = memory.as_ref().map(memory::MemoryJob::journal);
        if let Err(message) = self.write_journal(entry.clone()).await {
            let error = JobError {
                code: crate::api::codes::GENERAL,
                message: "cannot journal the job".into(),
            };
            self.jobs.finish(job, Err(error));
            return Err(SnapshotError::Journal { job, message });
        }
        let plan = self.plan(&p, &checked, memory.as_ref());
        let Checked {
            drives, skipped, ..
        } = checked;
        tracing::info!(%job, vm = %p.vm_id, drives = drives.len(), skipped = skipped.len(), "VM.snapshot job scheduled");
        let service = self.clone();
        tokio::spawn(async move {
            service
                .run_job(entry, claim, plan, drives, skipped, memory)
                .await
        });
        Ok(())
    }

    /// What the job switches, and how.
    fn plan(
        &self,
        p: &SnapshotParams,
        checked: &Checked,
        memory: Option<&memory::MemoryJob>,
    ) -> Plan {
        // Bounded by `validate::check_params`: the arithmetic below cannot overflow. The job's
        // `timeout` is enforced where stopping is safe: a job still waiting for its turn past
        // it fails untouched, and the switch is not attempted past it (a switch under way is
        // never cut).
        let minutes = |value: Option<i64>, default| {
            value
                .map_or(default, i64::unsigned_abs)
                .min(validate::MAX_TIMEOUT_MINUTES.unsigned_abs())
        };
        let freeze_minutes = minutes(p.freeze_timeout, DEFAULT_FREEZE_TIMEOUT_MINUTES)
            .min(minutes(p.timeout, DEFAULT_TIMEOUT_MINUTES));
        Plan {
            vm: p.vm_id,
            switches: checked
                .drives
                .iter()
                .map(|d| DiskSwitch {
                    target: d.target.clone(),
                    new_path: d.new_path.clone(),
                })
                .collect(),
            defined_switches: checked
                .drives
                .iter()
                .map(|d| DefinedSwitch {
                    target: d.target.clone(),
                    old_path: d.old_path.clone(),
                    new_path: d.new_path.clone(),
                })
                .collect(),
            all_targets: checked.all_targets.clone(),
            quiesce: p.quiesce.unwrap_or_default(),
            frozen_by_caller: p.frozen.unwrap_or(false),
            agent_timeout: self.agent_timeout,
            switch_deadline: Instant::now() + Duration::from_secs(60 * freeze_minutes),
            // A dump's length grows with the guest: bounded by the job's own timeout.
            memory: memory.map(|m| {
                let minutes = minutes(p.timeout, DEFAULT_TIMEOUT_MINUTES);
                m.dump_target(Duration::from_secs(60 * minutes))
            }),
        }
    }

    /// When the daemon stops: jobs not begun yet fail without touching their VM, running
    /// ones get until `deadline` to end, and any guest a job may still hold frozen is thawed
    /// (its job, journaled, is ended at the next start).
    pub async fn stop(&self, deadline: Instant) {
        self.stopping.store(true, Ordering::SeqCst);
        let busy = || {
            self.jobs
                .list(None, &[])
                .values()
                .any(|j| matches!(j.status, JobStatus::Pending | JobStatus::Running))
        };
        while busy() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let frozen: Vec<Uuid> = self.held_frozen().iter().copied().collect();
        let thaws = frozen.into_iter().map(|vm| async move {
            tracing::warn!(%vm, "rvdsmd is stopping with a snapshot in its frozen window: thawing the guest");
            if let Err(err) = self.hypervisor.thaw(vm, Vec::new()).await {
                tracing::error!(%vm, error = %err, "cannot thaw the guest before stopping; the next start will");
            }
        });
        futures_util::future::join_all(thaws).await;
    }

    fn held_frozen(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.frozen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Host.getJobs`.
    pub fn jobs(&self, p: GetJobsParams) -> HashMap<Uuid, JobInfo> {
        self.jobs
            .list(p.job_type.as_deref(), p.job_ids.as_deref().unwrap_or(&[]))
    }
}

/// The journal's first entry for a job: what it is about to switch.
fn journal_entry(job: Uuid, vm: Uuid, drives: &[Drive]) -> Entry {
    Entry {
        job,
        vm,
        drives: drives
            .iter()
            .map(|d| JournalDrive {
                domain: d.domain,
                image: d.image,
                base: d.base,
                volume: d.volume,
                target: d.target.clone(),
                new_path: d.new_path.clone(),
            })
            .collect(),
        memory: None,
        phase: Phase::Scheduled,
    }
}
