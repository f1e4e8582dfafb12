//! `VM.snapshot`: check the request against the live domain and the storage domain, register a
//! job, take the snapshot ([`flow`]), and leave nothing behind when it fails: the VM on its old
//! volumes, thawed, the new volumes deleted unless the live domain shows a disk already uses
//! one. Also `Host.getJobs`.

pub mod flow;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use crate::api::ApiError;
use crate::api::codes;
use crate::api::vm_types::{GetJobsParams, SnapshotParams};
use crate::jobs::journal::{Entry, Journal, JournalDrive, Phase};
use crate::jobs::vm_jobs::{JobError, JobInfo, JobRegistry, VmClaim};
use crate::services::{FreezeService, StorageService};
use crate::virt::{Conflict, DiskSwitch, FreezeState, Hypervisor, RunState, VirtError};

use flow::{Plan, VmOps};

/// VDSM's SnapshotFailed.
const SNAPSHOT_FAILED: i32 = codes::SNAPSHOT_FAILED;
/// VDSM's MigrationInProgress.
const MIGRATION_IN_PROGRESS: i32 = codes::MIGRATION_IN_PROGRESS;

/// One drive of a validated request.
#[derive(Debug, Clone)]
struct Drive {
    domain: Uuid,
    image: Uuid,
    base: Uuid,
    volume: Uuid,
    target: String,
    /// The path the VM uses now (as the VM names it).
    old_path: String,
    /// The new volume's path, in the same style as the old one.
    new_path: String,
    /// The new volume's canonical path, to recognize it in the live domain.
    new_real: Option<PathBuf>,
}

/// Snapshots and their jobs.
#[derive(Clone)]
pub struct SnapshotService {
    hypervisor: Hypervisor,
    storage: StorageService,
    jobs: JobRegistry,
    journal: Journal,
    freezes: FreezeService,
    agent_timeout: Duration,
}

/// What the live domain shows of a VM's disks, after a switch that may have happened.
enum Live {
    /// Each disk target and the canonical path it uses now.
    Disks(HashMap<String, Option<PathBuf>>),
    /// libvirt answers, and the VM no longer exists: nothing runs on any of its volumes.
    Gone,
    /// libvirt does not answer, or still runs a snapshot on the VM (why): nothing can be
    /// decided yet.
    Unreadable(String),
}

impl SnapshotService {
    /// A service driving `hypervisor` and `storage`, with `jobs` shared with `VM.freeze` and
    /// its journal of intent in `journal`; `freezes` takes over the freezes it cannot undo.
    /// Returns the entries a previous run left, for [`SnapshotService::recover`].
    pub fn open(
        hypervisor: Hypervisor,
        storage: StorageService,
        jobs: JobRegistry,
        freezes: FreezeService,
        journal_dir: &Path,
        agent_timeout: Duration,
    ) -> std::io::Result<(Self, Vec<Entry>)> {
        let (journal, entries) = Journal::open(journal_dir)?;
        let service = Self {
            hypervisor,
            storage,
            jobs,
            journal,
            freezes,
            agent_timeout,
        };
        Ok((service, entries))
    }

    /// Ends the jobs a previous run of rvdsmd left: a finished one is shown again; an
    /// interrupted one has its guest thawed if it may have frozen it, and keeps its new
    /// volumes if the live domain uses them (the job is done, its consistency unknown) or
    /// loses them if not (the job failed and was rolled back). When libvirt does not answer,
    /// or still runs a snapshot on the VM, such a job stays running and is ended once that is
    /// over. The daemon answers 99 to all but `Host.ping2` until this returns.
    pub async fn recover(&self, entries: Vec<Entry>) {
        if crate::failpoint::reached("recovery") {
            // Test seam: stay in recovery (the gate answers 99) until killed.
            std::future::pending::<()>().await;
        }
        for entry in entries {
            let outcome = match entry.phase.clone() {
                Phase::Finished { outcome, .. } => outcome,
                Phase::Scheduled | Phase::Freezing => {
                    if entry.phase == Phase::Freezing {
                        self.thaw_if_frozen(entry.vm).await;
                    }
                    match self.settled_live(entry.vm).await {
                        Live::Unreadable(why) => {
                            tracing::warn!(job = %entry.job, vm = %entry.vm, %why, "interrupted snapshot not settled yet: the job is ended once it is");
                            self.resume_later(entry);
                            continue;
                        }
                        live => self.end_interrupted(&entry, &live).await,
                    }
                }
            };
            let outcome = outcome.map_err(|(code, message)| JobError { code, message });
            self.jobs.restore(entry.job, entry.vm, outcome);
        }
    }

    /// Shows an interrupted job as running, and ends it once libvirt answers again and runs
    /// no snapshot on the VM.
    fn resume_later(&self, entry: Entry) {
        let claim = self.jobs.claim_vm(entry.vm).ok();
        if self.jobs.add(entry.job, entry.vm, "snapshot_vm").is_err() {
            return;
        }
        let service = self.clone();
        tokio::spawn(async move {
            let _claim = claim;
            let _slot = service.jobs.run_slot(entry.job).await;
            let live = service.wait_live(entry.vm).await;
            let outcome = service.end_interrupted(&entry, &live).await;
            service.finish_job(&entry, outcome).await;
        });
    }

    /// Ends an interrupted job by what `live` shows, and journals the outcome.
    async fn end_interrupted(
        &self,
        entry: &Entry,
        live: &Live,
    ) -> Result<serde_json::Value, (i32, String)> {
        let rollback = self.roll_back(entry, live).await;
        let outcome = if rollback.kept.len() == entry.drives.len() && matches!(live, Live::Disks(_))
        {
            self.note_consistency(entry, json!("unknown"), json!("recovered"))
                .await;
            Ok(json!({"consistency": "unknown", "recovered": true, "switched": rollback.kept}))
        } else {
            Err((
                SNAPSHOT_FAILED,
                format!(
                    "Snapshot failed: interrupted by a restart of rvdsmd; rolled back \
                     (deleted {:?}, kept {:?}{})",
                    rollback.deleted,
                    rollback.kept,
                    rollback.why_kept(live)
                ),
            ))
        };
        tracing::warn!(job = %entry.job, vm = %entry.vm, ok = outcome.is_ok(), "snapshot job interrupted by a restart recovered");
        self.record(
            entry,
            Phase::Finished {
                at: crate::clock::epoch_secs(),
                outcome: outcome.clone(),
            },
        )
        .await;
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

    /// Deletes the new volumes no disk uses (as `live` shows), keeps the others.
    async fn roll_back(&self, entry: &Entry, live: &Live) -> Rollback {
        let new_real = new_volumes_real(entry).await;
        let mut rollback = Rollback::default();
        for (drive, real) in entry.drives.iter().zip(&new_real) {
            let keep = match live {
                Live::Disks(disks) => must_keep(Some(disks), &drive.target, real),
                Live::Unreadable(_) => true,
                // No VM runs on it any more: it matters only if the guest wrote to it.
                Live::Gone => self
                    .storage
                    .volume_has_data(drive.domain, drive.image, drive.volume)
                    .await
                    .unwrap_or(real.is_some()),
            };
            if keep {
                rollback.kept.push(drive.volume);
                continue;
            }
            match self
                .storage
                .discard_volume(drive.domain, drive.image, drive.volume, drive.base)
                .await
            {
                Ok(()) => rollback.deleted.push(drive.volume),
                Err(err) => {
                    tracing::error!(volume = %drive.volume, error = %err, "cannot delete the new volume of a failed snapshot");
                    rollback.errors.push(format!("{}: {err}", drive.volume));
                }
            }
        }
        if !rollback.deleted.is_empty() {
            crate::metrics::global().rollbacks.inc();
        }
        rollback
    }

    /// Writes beside each base volume how the snapshot on top of it was taken (shown by
    /// `Volume.getInfo`); a failure is logged (the snapshot stands).
    async fn note_consistency(
        &self,
        entry: &Entry,
        consistency: serde_json::Value,
        reason: serde_json::Value,
    ) {
        for drive in &entry.drives {
            let note = json!({
                "consistency": consistency,
                "reason": reason,
                "time": crate::clock::epoch_secs(),
                "vmId": entry.vm,
                "volumeID": drive.volume,
            });
            if let Err(err) = self
                .storage
                .note_snapshot(drive.domain, drive.image, drive.base, note)
                .await
            {
                tracing::warn!(job = %entry.job, error = %err, "cannot record the snapshot's consistency");
            }
        }
    }

    /// Journals a phase of a job; a failure is logged (the job goes on, less protected).
    async fn record(&self, entry: &Entry, phase: Phase) {
        let entry = Entry {
            phase,
            ..entry.clone()
        };
        if let Err(err) = self.write_journal(entry).await {
            tracing::error!(error = %err, "cannot write the snapshot journal");
        }
    }

    /// Writes a journal entry durably, off the reactor (it fsyncs).
    async fn write_journal(&self, entry: Entry) -> Result<(), String> {
        let journal = self.journal.clone();
        match tokio::task::spawn_blocking(move || journal.write(&entry)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Ends a job: journaled as finished, then shown as such by `Host.getJobs`.
    async fn finish_job(&self, entry: &Entry, outcome: Result<serde_json::Value, (i32, String)>) {
        let at = crate::clock::epoch_secs();
        self.record(
            entry,
            Phase::Finished {
                at,
                outcome: outcome.clone(),
            },
        )
        .await;
        let outcome = outcome.map_err(|(code, message)| JobError { code, message });
        self.jobs.finish(entry.job, outcome);
    }

    /// `VM.snapshot`: validates, registers the job, returns once it is scheduled.
    pub async fn snapshot(&self, p: SnapshotParams) -> Result<(), ApiError> {
        for (name, value) in [("timeout", p.timeout), ("freeze_timeout", p.freeze_timeout)] {
            if value.is_some_and(|v| v <= 0) {
                return Err(ApiError::invalid_parameter(format!(
                    "{name} must be positive"
                )));
            }
        }
        if p.snap_memory.as_deref().is_some_and(|m| !m.is_empty()) {
            return Err(ApiError::invalid_parameter(
                "memory snapshots (snapMemory) are not supported",
            ));
        }
        if p.drives.is_empty() {
            return Err(ApiError::invalid_parameter("snapDrives is empty"));
        }
        // A retried job id is answered first: a retry after a crash must not run the job
        // twice, and "job exists" tells the manager where to look (Host.getJobs).
        if let Some(job) = p.job {
            self.jobs.check_new(job)?;
        }
        let claim = self.jobs.claim_vm(p.vm_id)?;
        let (to_switch, skipped, all_targets) = self.check_drives(&p).await?;
        let targets = to_switch.iter().map(|d| d.target.clone()).collect();
        match self.hypervisor.conflict(p.vm_id, targets).await? {
            None => {}
            Some(Conflict::Migration) => {
                return Err(ApiError::Coded {
                    code: MIGRATION_IN_PROGRESS,
                    message: "Command not supported during migration".into(),
                });
            }
            Some(Conflict::BlockJob(target)) => {
                return Err(ApiError::invalid_parameter(format!(
                    "disk {target} has a block job (copy, commit or mirror) running"
                )));
            }
        }
        let job = p.job.unwrap_or_else(Uuid::new_v4);
        self.jobs.add(job, p.vm_id, "snapshot_vm")?;
        let entry = Entry {
            job,
            vm: p.vm_id,
            drives: to_switch
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
            phase: Phase::Scheduled,
        };
        if let Err(err) = self.write_journal(entry.clone()).await {
            self.jobs.finish(
                job,
                Err(JobError {
                    code: codes::GENERAL,
                    message: "cannot journal the job".into(),
                }),
            );
            return Err(ApiError::Coded {
                code: codes::GENERAL,
                message: format!("General Exception: cannot journal snapshot job {job}: {err}"),
            });
        }
        let plan = Plan {
            vm: p.vm_id,
            switches: to_switch
                .iter()
                .map(|d| DiskSwitch {
                    target: d.target.clone(),
                    new_path: d.new_path.clone(),
                })
                .collect(),
            defined_switches: to_switch
                .iter()
                .map(|d| (d.old_path.clone(), d.new_path.clone()))
                .collect(),
            all_targets,
            quiesce: p.quiesce.unwrap_or_default(),
            frozen_by_caller: p.frozen.unwrap_or(false),
            agent_timeout: self.agent_timeout,
            switch_deadline: Instant::now()
                + Duration::from_secs(60 * p.freeze_timeout.unwrap_or(8).unsigned_abs()),
        };
        tracing::info!(%job, vm = %p.vm_id, drives = to_switch.len(), skipped = skipped.len(), "VM.snapshot job scheduled");
        let service = self.clone();
        tokio::spawn(async move {
            service
                .run_job(entry, claim, plan, to_switch, skipped)
                .await
        });
        Ok(())
    }

    /// Maps each requested drive to the VM's disk using its base volume. A drive whose new
    /// volume the VM already uses is skipped (an idempotent retry). Returns the drives to
    /// switch, the skipped volumes, and every disk target of the VM.
    async fn check_drives(
        &self,
        p: &SnapshotParams,
    ) -> Result<(Vec<Drive>, Vec<Uuid>, Vec<String>), ApiError> {
        let (_, disks) = self.hypervisor.domain_disks(p.vm_id).await?;
        let disk_paths: Vec<PathBuf> = disks
            .iter()
            .map(|d| PathBuf::from(d.path.clone().unwrap_or_default()))
            .collect();
        let disk_real = canonical_all(disk_paths).await;
        let mut switch = Vec::new();
        let mut skipped = Vec::new();
        for drive in &p.drives {
            if drive.guid.is_some() {
                return Err(ApiError::invalid_parameter(
                    "direct LUN disks cannot be snapshotted",
                ));
            }
            let (Some(domain), Some(image), Some(base), Some(volume)) =
                (drive.domain, drive.image, drive.base, drive.volume)
            else {
                return Err(ApiError::invalid_parameter(
                    "each drive needs domainID, imageID, baseVolumeID and volumeID",
                ));
            };
            let (base_path, new_path) = self
                .storage
                .snapshot_target(domain, image, base, volume)
                .await?;
            let real = canonical_all(vec![base_path, new_path]).await;
            let (base_real, new_real) = (real[0].clone(), real[1].clone());
            let uses = |wanted: &Option<PathBuf>| {
                disks
                    .iter()
                    .zip(&disk_real)
                    .find(|(_, real)| real.is_some() && *real == wanted)
                    .map(|(disk, _)| disk)
            };
            if let Some(disk) = uses(&new_real) {
                tracing::info!(target = %disk.target, %volume, "drive already uses the new volume; skipped");
                skipped.push(volume);
                continue;
            }
            let Some(disk) = uses(&base_real) else {
                return Err(ApiError::invalid_parameter(format!(
                    "base volume {base} is not used by VM {}",
                    p.vm_id
                )));
            };
            if disk.shareable || disk.device == "lun" || disk.disk_type != "file" {
                return Err(ApiError::invalid_parameter(format!(
                    "disk {} is {}: only unshared file volumes can be snapshotted",
                    disk.target,
                    if disk.shareable {
                        "shareable"
                    } else {
                        "not a file volume"
                    }
                )));
            }
            let old_path = disk.path.clone().unwrap_or_default();
            let new_in_style = Path::new(&old_path)
                .with_file_name(volume.hyphenated().to_string())
                .to_string_lossy()
                .into_owned();
            switch.push(Drive {
                domain,
                image,
                base,
                volume,
                target: disk.target.clone(),
                old_path,
                new_path: new_in_style,
                new_real,
            });
        }
        let all_targets = disks.into_iter().map(|d| d.target).collect();
        Ok((switch, skipped, all_targets))
    }

    async fn run_job(
        &self,
        entry: Entry,
        claim: VmClaim,
        plan: Plan,
        drives: Vec<Drive>,
        skipped: Vec<Uuid>,
    ) {
        let job = entry.job;
        let _slot = self.jobs.run_slot(job).await;
        let _claim = claim;
        let started = std::time::Instant::now();
        if drives.is_empty() {
            let result = json!({"switched": [], "skipped": skipped});
            self.finish_job(&entry, Ok(result)).await;
            return;
        }
        self.jobs.progress(job, 10);
        let ops = Journaled {
            service: self,
            entry: &entry,
            unsettled: AtomicBool::new(false),
        };
        let result = flow::run(&ops, &plan).await;
        if ops.unsettled.load(Ordering::SeqCst) {
            self.freezes.guard(plan.vm).await;
        }
        match result {
            Ok(outcome) => {
                let switched: Vec<Uuid> = drives.iter().map(|d| d.volume).collect();
                self.note_consistency(&entry, json!(outcome.consistency), json!(outcome.reason))
                    .await;
                let live = self.read_live(plan.vm).await;
                let unconfirmed: Vec<&str> = drives
                    .iter()
                    .filter(|d| match &live {
                        Live::Disks(disks) => disks.get(&d.target) != Some(&d.new_real),
                        Live::Gone | Live::Unreadable(_) => false,
                    })
                    .map(|d| d.target.as_str())
                    .collect();
                tracing::info!(%job, consistency = ?outcome.consistency, reason = ?outcome.reason, total_ms = outcome.timings.total_ms, "snapshot done");
                record_outcome(&outcome, started.elapsed());
                let result = json!({
                    "consistency": outcome.consistency,
                    "reason": outcome.reason,
                    "timings": outcome.timings,
                    "thawError": outcome.thaw_error,
                    "switched": switched,
                    "skipped": skipped,
                    "unconfirmedDisks": unconfirmed,
                });
                self.finish_job(&entry, Ok(result)).await;
            }
            Err(failure) => {
                record_failure(started.elapsed());
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

    /// Ends a failed job: reads the live domain (when the switch was attempted, waiting for
    /// libvirt if it does not answer: the outcome must be exact), keeps a new volume a disk
    /// already uses, deletes the others.
    async fn fail(&self, entry: &Entry, switch_attempted: bool, message: String) {
        tracing::warn!(job = %entry.job, %message, "snapshot failed; rolling back");
        let live = if switch_attempted {
            // A switch that timed out may still happen: `wait_live` first waits until libvirt
            // returns from it.
            self.wait_live(entry.vm).await
        } else {
            Live::Disks(HashMap::new())
        };
        if let Live::Disks(disks) = &live
            && switched_all(entry, disks).await
        {
            // The switch happened after all (it outlived its timeout): the job is done, with
            // no claim on consistency, since the freeze, if any, ended before it.
            tracing::warn!(job = %entry.job, "the switch completed after its error; the job is done");
            let switched: Vec<Uuid> = entry.drives.iter().map(|d| d.volume).collect();
            let result =
                json!({"consistency": "unknown", "switched": switched, "lateSwitch": message});
            self.note_consistency(entry, json!("unknown"), json!("late-switch"))
                .await;
            self.finish_job(entry, Ok(result)).await;
            return;
        }
        crate::failpoint::pause("snapshot:rolling-back").await;
        let rollback = self.roll_back(entry, &live).await;
        self.jobs.set_result(
            entry.job,
            json!({"kept": rollback.kept, "deleted": rollback.deleted, "cleanupErrors": rollback.errors}),
        );
        let message = format!("{message}{}", rollback.why_kept(&live));
        self.finish_job(entry, Err((SNAPSHOT_FAILED, message)))
            .await;
    }

    /// The VM's disks as the live domain shows them now.
    async fn read_live(&self, vm: Uuid) -> Live {
        match self.hypervisor.domain_disks(vm).await {
            Ok((_, disks)) => {
                let paths = disks
                    .iter()
                    .map(|d| PathBuf::from(d.path.clone().unwrap_or_default()))
                    .collect();
                let real = canonical_all(paths).await;
                Live::Disks(disks.into_iter().map(|d| d.target).zip(real).collect())
            }
            Err(VirtError::NoSuchDomain { .. }) => Live::Gone,
            Err(err) => Live::Unreadable(format!("cannot read the VM's disks: {err}")),
        }
    }

    /// The VM's disks once no snapshot runs on it in libvirt. A switch a killed rvdsmd
    /// started goes on in libvirtd while its QEMU does not answer: judged before it ends, the
    /// VM would be seen on its old volumes and the new one deleted under the switch.
    async fn settled_live(&self, vm: Uuid) -> Live {
        // Our own calls that timed out on the VM (a switch, an earlier probe) are waited for
        // first: one blocked thread per VM at most.
        self.hypervisor.settled(vm).await;
        match self.hypervisor.snapshot_running(vm).await {
            Ok(false) | Err(VirtError::NoSuchDomain { .. }) => self.read_live(vm).await,
            Ok(true) => Live::Unreadable("libvirt still runs a snapshot on the VM".to_owned()),
            Err(err) => Live::Unreadable(format!("cannot read the VM's libvirt job: {err}")),
        }
    }

    /// The VM's disks, waiting (with backoff) while libvirt does not answer or still runs a
    /// snapshot on the VM.
    async fn wait_live(&self, vm: Uuid) -> Live {
        let mut wait = Duration::from_millis(500);
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            match self.settled_live(vm).await {
                Live::Unreadable(why) => {
                    // Logged at powers of two: libvirtd may stay away for hours.
                    if attempt.is_power_of_two() {
                        tracing::warn!(%vm, %why, attempt, "waiting until the VM can be judged");
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
                live => return live,
            }
        }
    }

    /// `Host.getJobs`.
    pub fn jobs(&self, p: GetJobsParams) -> HashMap<Uuid, JobInfo> {
        self.jobs
            .list(p.job_type.as_deref(), p.job_ids.as_deref().unwrap_or(&[]))
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
        }
        state
    }
    async fn freeze(&self, vm: Uuid) -> Result<u32, VirtError> {
        self.service.record(self.entry, Phase::Freezing).await;
        crate::failpoint::pause("snapshot:before-freeze").await;
        let frozen = self.service.hypervisor.freeze(vm, Vec::new()).await;
        if frozen.is_err() {
            self.unsettled.store(true, Ordering::SeqCst);
        }
        frozen
    }
    async fn thaw(&self, vm: Uuid) -> Result<u32, VirtError> {
        let thawed = self.service.hypervisor.thaw(vm, Vec::new()).await;
        self.unsettled.store(thawed.is_err(), Ordering::SeqCst);
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
    async fn switch_defined_disks(
        &self,
        vm: Uuid,
        switches: Vec<(String, String)>,
    ) -> Result<(), VirtError> {
        self.service
            .hypervisor
            .switch_defined_disks(vm, switches)
            .await
    }
}

/// Whether every drive of `entry` uses its new volume in `disks`.
async fn switched_all(entry: &Entry, disks: &HashMap<String, Option<PathBuf>>) -> bool {
    let new_real = new_volumes_real(entry).await;
    entry
        .drives
        .iter()
        .zip(&new_real)
        .all(|(d, real)| real.is_some() && disks.get(&d.target) == Some(real))
}

/// What a rollback did.
#[derive(Debug, Default)]
struct Rollback {
    kept: Vec<Uuid>,
    deleted: Vec<Uuid>,
    errors: Vec<String>,
}

impl Rollback {
    /// Why volumes were kept, for the job's message ("" when none was).
    fn why_kept(&self, live: &Live) -> &'static str {
        if self.kept.is_empty() {
            return "";
        }
        match live {
            Live::Disks(_) => "; the VM uses the kept volumes",
            Live::Gone => "; the VM is gone and the kept volumes hold its writes",
            Live::Unreadable(_) => "; the VM cannot be read, so its volumes are kept",
        }
    }
}

/// Whether a failed snapshot must keep the new volume of the disk `target`: when the live
/// domain shows the disk already uses it, or when the live domain could not be read (never
/// delete a volume the VM may be writing to).
fn must_keep(
    live: Option<&HashMap<String, Option<PathBuf>>>,
    target: &str,
    new_real: &Option<PathBuf>,
) -> bool {
    match live {
        Some(live) => new_real.is_some() && live.get(target) == Some(new_real),
        None => true,
    }
}

/// The canonical path of each new volume of `entry` (`None` for one that is gone).
async fn new_volumes_real(entry: &Entry) -> Vec<Option<PathBuf>> {
    canonical_all(
        entry
            .drives
            .iter()
            .map(|d| PathBuf::from(&d.new_path))
            .collect(),
    )
    .await
}

/// The canonical form of each path (`None` for one that does not resolve), computed off the
/// reactor: resolving a path can block on a slow mount.
async fn canonical_all(paths: Vec<PathBuf>) -> Vec<Option<PathBuf>> {
    let count = paths.len();
    tokio::task::spawn_blocking(move || {
        paths
            .iter()
            .map(|p| std::fs::canonicalize(p).ok())
            .collect()
    })
    .await
    .unwrap_or_else(|_| vec![None; count])
}

/// Adds a switched snapshot to the operators' metrics.
fn record_outcome(outcome: &flow::Outcome, took: std::time::Duration) {
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

/// The name serde gives a unit variant (`quiesced`, `agent-not-responding`, ...).
fn wire_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Adds a failed snapshot to the operators' metrics.
fn record_failure(took: std::time::Duration) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_keeps_what_the_vm_uses_and_anything_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        let new = dir.path().join("new");
        std::fs::write(&old, b"").unwrap();
        std::fs::write(&new, b"").unwrap();
        let real = |path: &Path| std::fs::canonicalize(path).ok();
        let on = |path: &Path| HashMap::from([("vda".to_owned(), real(path))]);
        let new_real = real(&new);

        assert!(
            must_keep(Some(&on(&new)), "vda", &new_real),
            "the VM writes to it"
        );
        assert!(
            !must_keep(Some(&on(&old)), "vda", &new_real),
            "the VM stayed on its volume"
        );
        assert!(
            !must_keep(Some(&HashMap::new()), "vda", &new_real),
            "switch never attempted"
        );
        assert!(must_keep(None, "vda", &new_real), "live domain unreadable");
        let missing = dir.path().join("missing");
        assert!(!must_keep(Some(&on(&missing)), "vda", &real(&missing)));
    }
}
