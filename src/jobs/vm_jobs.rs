//! Virt jobs as VDSM has them (VDSM-REFERENCE §5.2): `Host.getJobs` shows each job with its
//! status (`pending`, `running`, `done`, `failed`), `job_type`, `description` and error; a
//! finished job stays visible for an hour, since a manager treats a missing job as failed.
//! Also: one operation at a time per VM, and a host-wide limit on concurrent snapshots, the
//! excess waiting as `pending`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::kind::JobKind;
use super::results::JobResult;
use crate::events::EventBus;

/// How long finished jobs stay visible (VDSM's `autodelete_delay`).
pub const KEEP_FINISHED: Duration = Duration::from_secs(JobKeepAlive::SECONDS);

/// The visibility window of finished jobs, in seconds, for records kept on disk.
pub struct JobKeepAlive;

impl JobKeepAlive {
    /// One hour, as VDSM.
    pub const SECONDS: u64 = 3600;
}

/// A job's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for a place under the host-wide limit.
    Pending,
    /// Working.
    Running,
    /// Succeeded.
    Done,
    /// Failed.
    Failed,
}

/// A job's error, as VDSM reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobError {
    /// VDSM's code.
    pub code: i32,
    /// The message.
    pub message: String,
}

/// `HostJobInfo`, plus rvdsm's `result`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobInfo {
    /// The job id.
    pub id: Uuid,
    /// Its status.
    pub status: JobStatus,
    /// What the job is (its description and job type, shown).
    #[serde(skip)]
    pub kind: JobKind,
    /// `snapshot_vm`, ...: the kind's.
    pub description: &'static str,
    /// `virt`, or `storage` for the SDM jobs (`SDM.merge`, `SDM.copy_data`): the kind's.
    pub job_type: &'static str,
    /// 0-100.
    pub progress: u8,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// What it did (consistency, timings, volumes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    /// The VM it works on (virt jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<Uuid>,
}

/// Why a job cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobRefusal {
    /// A job with this id is still known (VDSM answers 100).
    #[error("Job {0} exists")]
    Exists(Uuid),
    /// Another operation on the VM is in progress.
    #[error("VM {0} is busy: another snapshot, freeze, merge or destroy is in progress")]
    VmBusy(Uuid),
}

struct Entry {
    info: JobInfo,
    finished: Option<Instant>,
}

/// The host's virt jobs.
#[derive(Clone)]
pub struct JobRegistry {
    // A std mutex: held only to read or update a record, never across an await.
    jobs: Arc<Mutex<HashMap<Uuid, Entry>>>,
    busy: Arc<Mutex<HashSet<Uuid>>>,
    limit: Arc<Semaphore>,
    events: EventBus,
}

/// Marks a VM busy while alive; frees it when dropped, however the job ends.
pub struct VmClaim {
    vm: Uuid,
    busy: Arc<Mutex<HashSet<Uuid>>>,
}

impl Drop for VmClaim {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.vm);
    }
}

impl JobRegistry {
    /// A registry running at most `parallel` snapshots at once.
    pub fn new(parallel: usize) -> Self {
        Self {
            jobs: Arc::default(),
            busy: Arc::default(),
            limit: Arc::new(Semaphore::new(parallel.max(1))),
            events: EventBus::default(),
        }
    }

    /// Announces every terminal transition on `events` (`|jobs|status|<id>`).
    #[must_use]
    pub fn with_events(mut self, events: EventBus) -> Self {
        self.events = events;
        self
    }

    /// Claims a VM for one operation; refused while another runs on it.
    pub fn claim_vm(&self, vm: Uuid) -> Result<VmClaim, JobRefusal> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if !busy.insert(vm) {
            return Err(JobRefusal::VmBusy(vm));
        }
        Ok(VmClaim {
            vm,
            busy: Arc::clone(&self.busy),
        })
    }

    /// What holds `vm` (for a refusal): its pending or running job, named with its id, or
    /// an operation without a job (a `VM.freeze` call, a `VM.destroy`).
    pub fn holder_of(&self, vm: Uuid) -> String {
        let jobs = self.lock();
        let mut active = jobs.values().filter(|e| {
            e.info.vm_id == Some(vm)
                && matches!(e.info.status, JobStatus::Pending | JobStatus::Running)
        });
        match active.next() {
            Some(e) if e.info.kind == JobKind::LiveMerge => {
                format!("a live merge (job {}) is running on the VM", e.info.id)
            }
            Some(e) => format!(
                "job {} ({}) is running on the VM",
                e.info.id, e.info.description
            ),
            None => "another operation (a freeze or a destroy) is in progress on the VM".into(),
        }
    }

    /// Whether a job (a snapshot) is pending or running on `vm`.
    pub fn busy_with_job(&self, vm: Uuid) -> bool {
        self.lock().values().any(|e| {
            e.info.vm_id == Some(vm)
                && matches!(e.info.status, JobStatus::Pending | JobStatus::Running)
        })
    }

    /// Registers a pending job of `kind`, on `vm` if it works on one.
    pub fn add(&self, id: Uuid, vm: Option<Uuid>, kind: JobKind) -> Result<(), JobRefusal> {
        let mut jobs = self.lock();
        purge(&mut jobs);
        if jobs.contains_key(&id) {
            return Err(JobRefusal::Exists(id));
        }
        jobs.insert(
            id,
            Entry {
                info: JobInfo {
                    id,
                    status: JobStatus::Pending,
                    kind,
                    description: kind.description(),
                    job_type: kind.job_type().as_str(),
                    progress: 0,
                    error: None,
                    result: None,
                    vm_id: vm,
                },
                finished: None,
            },
        );
        Ok(())
    }

    /// Refuses an id that a job has (running, or ended and still visible).
    pub fn check_new(&self, id: Uuid) -> Result<(), JobRefusal> {
        let mut jobs = self.lock();
        purge(&mut jobs);
        if jobs.contains_key(&id) {
            return Err(JobRefusal::Exists(id));
        }
        Ok(())
    }

    /// Waits for a place under the host-wide limit, then marks the job running.
    pub async fn run_slot(&self, id: Uuid) -> OwnedSemaphorePermit {
        let permit = Arc::clone(&self.limit)
            .acquire_owned()
            .await
            .expect("the job semaphore is never closed");
        self.update(id, |info| info.status = JobStatus::Running);
        permit
    }

    /// Sets a running job's progress.
    pub fn progress(&self, id: Uuid, progress: u8) {
        self.update(id, |info| info.progress = progress.min(100));
    }

    /// Sets a running job's progress from `done` of `total` (bytes, percents...), kept
    /// below 100 until the job ends.
    pub fn progress_of(&self, id: Uuid, done: f64, total: f64) {
        let percent = if total > 0.0 {
            done / total * 100.0
        } else {
            0.0
        };
        let shown = (0..100u8)
            .rev()
            .find(|p| f64::from(*p) <= percent)
            .unwrap_or(0);
        self.progress(id, shown);
    }

    /// Ends a job, and announces it.
    pub fn finish(&self, id: Uuid, outcome: Result<JobResult, JobError>) {
        let mut jobs = self.lock();
        let ended = jobs.get_mut(&id).map(|entry| {
            match outcome {
                Ok(result) => {
                    entry.info.status = JobStatus::Done;
                    entry.info.progress = 100;
                    entry.info.result = Some(result);
                }
                Err(error) => {
                    entry.info.status = JobStatus::Failed;
                    entry.info.error = Some(error);
                }
            }
            entry.finished = Some(Instant::now());
            entry.info.clone()
        });
        drop(jobs);
        if let Some(info) = ended {
            self.announce(&info);
        }
    }

    /// VDSM's `|jobs|status|<id>` carries the job's info itself (id, status, job_type,
    /// description, error...), flat, plus `notify_time`.
    fn announce(&self, info: &JobInfo) {
        let params = match serde_json::to_value(info) {
            Ok(Value::Object(fields)) => fields,
            _ => serde_json::Map::new(),
        };
        self.events
            .publish(crate::api::events::job_status(info.id), params);
    }

    /// Marks a job running without a place under the host-wide limit (a merge: its work is
    /// QEMU's, not rvdsm's).
    pub fn mark_running(&self, id: Uuid) {
        self.update(id, |info| info.status = JobStatus::Running);
    }

    /// Shows a job a previous run of rvdsmd ended (or that recovery ended) under its id.
    pub fn restore(
        &self,
        id: Uuid,
        vm: Option<Uuid>,
        kind: JobKind,
        outcome: Result<JobResult, JobError>,
    ) {
        if self.add(id, vm, kind).is_ok() {
            self.finish(id, outcome);
        }
    }

    /// Attaches a result to a failed job too (what was kept or deleted).
    pub fn set_result(&self, id: Uuid, result: JobResult) {
        self.update(id, |info| info.result = Some(result));
    }

    /// `Host.getJobs`: filtered by type and ids (empty: all).
    pub fn list(&self, job_type: Option<&str>, ids: &[Uuid]) -> HashMap<Uuid, JobInfo> {
        let mut jobs = self.lock();
        purge(&mut jobs);
        jobs.values()
            .filter(|e| job_type.is_none_or(|t| e.info.job_type == t))
            .filter(|e| ids.is_empty() || ids.contains(&e.info.id))
            .map(|e| (e.info.id, e.info.clone()))
            .collect()
    }

    fn update(&self, id: Uuid, change: impl FnOnce(&mut JobInfo)) {
        if let Some(entry) = self.lock().get_mut(&id) {
            change(&mut entry.info);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn purge(jobs: &mut HashMap<Uuid, Entry>) {
    jobs.retain(|_, e| e.finished.is_none_or(|t| t.elapsed() < KEEP_FINISHED));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::kind::JobType;

    #[tokio::test]
    async fn lifecycle_and_refusals() {
        let jobs = JobRegistry::new(1);
        let (id, vm) = (Uuid::new_v4(), Uuid::new_v4());
        jobs.add(id, Some(vm), JobKind::Snapshot).unwrap();
        assert_eq!(
            jobs.add(id, Some(vm), JobKind::Snapshot),
            Err(JobRefusal::Exists(id))
        );
        assert_eq!(
            jobs.list(Some(JobType::Virt.as_str()), &[id])[&id].status,
            JobStatus::Pending
        );
        let permit = jobs.run_slot(id).await;
        assert_eq!(jobs.list(None, &[])[&id].status, JobStatus::Running);
        jobs.finish(
            id,
            Err(JobError {
                code: 48,
                message: "Snapshot failed".into(),
            }),
        );
        drop(permit);
        let info = &jobs.list(None, &[id])[&id];
        assert_eq!(info.status, JobStatus::Failed);
        assert_eq!(info.error.as_ref().unwrap().code, 48);
        assert!(jobs.list(Some(JobType::Storage.as_str()), &[]).is_empty());
    }

    #[test]
    fn one_operation_per_vm() {
        let jobs = JobRegistry::new(4);
        let vm = Uuid::new_v4();
        let claim = jobs.claim_vm(vm).unwrap();
        assert!(matches!(jobs.claim_vm(vm), Err(JobRefusal::VmBusy(_))));
        assert!(
            jobs.claim_vm(Uuid::new_v4()).is_ok(),
            "other VMs are independent"
        );
        drop(claim);
        assert!(jobs.claim_vm(vm).is_ok());
    }

    #[test]
    fn the_holder_of_a_vm_is_named_for_a_refusal() {
        let jobs = JobRegistry::new(4);
        let (vm, merge, snapshot) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert!(jobs.holder_of(vm).contains("another operation"));
        jobs.add(merge, Some(vm), JobKind::LiveMerge).unwrap();
        jobs.mark_running(merge);
        let holder = jobs.holder_of(vm);
        assert!(holder.contains("live merge") && holder.contains(&merge.to_string()));
        jobs.finish(
            merge,
            Err(JobError {
                code: 52,
                message: "Merge failed".into(),
            }),
        );
        jobs.add(snapshot, Some(vm), JobKind::Snapshot).unwrap();
        assert!(jobs.holder_of(vm).contains(JobKind::Snapshot.description()));
        assert!(jobs.holder_of(Uuid::new_v4()).contains("another operation"));
    }

    #[tokio::test]
    async fn host_limit_keeps_the_excess_pending() {
        let jobs = JobRegistry::new(1);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        jobs.add(a, Some(Uuid::new_v4()), JobKind::Snapshot)
            .unwrap();
        jobs.add(b, Some(Uuid::new_v4()), JobKind::Snapshot)
            .unwrap();
        let first = jobs.run_slot(a).await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), jobs.run_slot(b)).await;
        assert!(waiting.is_err());
        assert_eq!(jobs.list(None, &[b])[&b].status, JobStatus::Pending);
        drop(first);
        let _second = jobs.run_slot(b).await;
        assert_eq!(jobs.list(None, &[b])[&b].status, JobStatus::Running);
    }
}
