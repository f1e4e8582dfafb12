//! Storage tasks as VDSM has them (VDSM-REFERENCE §5.1): an id returned at once, a state a
//! manager polls, a result that stays until `Task.clear`, and `Task.stop`.
//!
//! Every task is persisted (one record per task in the [`super::journal::Journal`] of
//! `<state_dir>/tasks/`, replaced atomically at each change) together with the progress of its
//! work, so that after a restart of rvdsmd
//! an unfinished task is rolled back and reported, never forgotten.
//!
//! On a shared pool the SPM writes each record to the master domain's `master/tasks/` too.
//! `Task.clear` there leaves a tombstone (`<id>.cleared`, fsynced, written before the record
//! goes), so that no later SPM, the host that began the task included, recovers a cleared task
//! again; tombstones older than [`TOMBSTONE_MAX_AGE`] (by the time written in them) are
//! pruned when a host becomes the SPM.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::journal::{Journal, JournalRecord};
use crate::storage::shared_records::SharedRecords;
use crate::storage::volume::{CreateProgress, CreateRequest};

/// How long the tombstone of a task cleared on a shared pool is kept: longer than any host
/// is expected to stay away and come back with its own record of the task.
pub const TOMBSTONE_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a tombstone holds: which task, and when it was cleared (epoch seconds, the clearing
/// host's clock), by which its age is judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Tombstone {
    id: Uuid,
    cleared_at: u64,
}

/// A task's internal state (VDSM's names, the subset rvdsm goes through).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Working.
    Running,
    /// Asked to stop; rolling back.
    Aborting,
    /// Done, successfully.
    Finished,
    /// Failed and rolled back cleanly.
    Recovered,
    /// Failed and the rollback failed too.
    Failed,
}

impl TaskState {
    /// Whether the task is over (it may then be cleared).
    pub fn is_done(self) -> bool {
        matches!(self, Self::Finished | Self::Recovered | Self::Failed)
    }

    /// VDSM's wire `(taskState, taskResult)`.
    pub fn wire(self) -> (&'static str, &'static str) {
        match self {
            Self::Running => ("running", ""),
            Self::Aborting => ("aborting", ""),
            Self::Finished => ("finished", "success"),
            Self::Recovered => ("finished", "cleanSuccess"),
            Self::Failed => ("finished", "cleanFailure"),
        }
    }
}

/// The work a task does, with what a rollback needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum TaskWork {
    /// `Volume.create`.
    CreateVolume {
        /// The storage domain.
        domain: Uuid,
        /// What is created.
        request: CreateRequest,
        /// Which steps were started.
        progress: CreateProgress,
    },
    /// `Volume.delete`.
    DeleteVolume {
        /// The storage domain.
        domain: Uuid,
        /// The image.
        image: Uuid,
        /// The volume.
        volume: Uuid,
        /// The volume was marked ILLEGAL: from here the delete only goes forward.
        started: bool,
    },
    /// `Image.deleteVolumes`.
    DeleteVolumes {
        /// The storage domain.
        domain: Uuid,
        /// The image.
        image: Uuid,
        /// The volumes, leaf first.
        volumes: Vec<Uuid>,
        /// The first volume was marked ILLEGAL: from here the delete only goes forward.
        started: bool,
    },
    /// `StoragePool.prepareMerge`.
    PrepareMerge {
        /// The storage domain.
        domain: Uuid,
        /// The image.
        image: Uuid,
    },
    /// `StoragePool.finalizeMerge`.
    FinalizeMerge {
        /// The storage domain.
        domain: Uuid,
        /// The image.
        image: Uuid,
        /// The volume that received the data.
        base: Uuid,
        /// The volume merged away.
        top: Uuid,
        /// The volume based on `top`, rebased on `base`.
        child: Option<Uuid>,
        /// The rebase was started: from here the finalize only goes forward.
        started: bool,
    },
    /// `StoragePool.spmStart`: nothing to undo after a restart (the SPM lease goes with the
    /// process that held it).
    SpmStart {
        /// The pool.
        pool: Uuid,
    },
    /// `StoragePool.switchMaster`: nothing to undo after a restart (the new master is written
    /// first with the higher version: an interrupted move leaves it the one verified master,
    /// and the SDM leases go with the process that held them).
    SwitchMaster {
        /// The pool.
        pool: Uuid,
        /// The master it moves from.
        old: Uuid,
        /// The master it moves to.
        new: Uuid,
    },
    /// `Lease.create`: nothing to undo (a resource written without its record is a free
    /// slot).
    CreateLease {
        /// The storage domain.
        domain: Uuid,
        /// The lease.
        lease: Uuid,
    },
    /// `Lease.delete`: nothing to undo (the record goes first).
    DeleteLease {
        /// The storage domain.
        domain: Uuid,
        /// The lease.
        lease: Uuid,
    },
    /// `Image.delete`.
    DeleteImage {
        /// The storage domain.
        domain: Uuid,
        /// The image.
        image: Uuid,
        /// The first volume was marked ILLEGAL: from here the delete only goes forward.
        started: bool,
    },
}

/// One task, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task id.
    pub id: Uuid,
    /// The verb that started it.
    pub verb: String,
    /// Its state.
    pub state: TaskState,
    /// 0, or VDSM's code of the error that ended it.
    pub code: i32,
    /// The error text, if it failed.
    pub error: String,
    /// Its work and progress.
    pub work: TaskWork,
}

impl TaskRecord {
    /// VDSM's status message.
    pub fn message(&self) -> String {
        match self.state {
            TaskState::Running | TaskState::Aborting => "running job 1 of 1".into(),
            TaskState::Finished => "1 jobs completed successfully".into(),
            TaskState::Recovered | TaskState::Failed => {
                format!("value={} abortedcode={}", self.error, self.code)
            }
        }
    }
}

/// A task's record stays until `Task.clear` (VDSM's rule), however long ago it ended: the
/// journal never prunes it.
impl JournalRecord for TaskRecord {
    fn id(&self) -> Uuid {
        self.id
    }
}

/// Why a task call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// No such task (401).
    #[error("Task id unknown: ('{0}',)")]
    Unknown(Uuid),
    /// Not allowed in the task's state (410).
    #[error("Operation is not allowed in this task state: ('{0}',)")]
    State(String),
    /// The task could not be persisted (407).
    #[error("Cannot persist task {id}: {message}")]
    Persist {
        /// The task.
        id: Uuid,
        /// Why.
        message: String,
    },
}

struct Entry {
    record: TaskRecord,
    stop: CancellationToken,
}

/// All tasks of the host.
#[derive(Clone)]
pub struct TaskManager {
    journal: Journal<TaskRecord>,
    // A std mutex: held only to read or change a record and write its small file.
    tasks: Arc<Mutex<HashMap<Uuid, Entry>>>,
    /// While this host is the SPM of a shared pool: the master domain's task directory, where
    /// each record is written too, so that the next SPM can end what this one left.
    shared: Arc<Mutex<Option<SharedRecords>>>,
}

impl TaskManager {
    /// Opens the task directory, loading every persisted task. Unfinished ones are returned
    /// separately: the caller rolls them back and then calls [`TaskManager::end`].
    pub fn open(dir: &Path) -> Result<(Self, Vec<TaskRecord>), TaskError> {
        let (journal, records) =
            Journal::<TaskRecord>::open(dir, "task").map_err(|e| TaskError::Persist {
                id: Uuid::nil(),
                message: format!("{}: {e}", dir.display()),
            })?;
        let mut tasks = HashMap::new();
        let mut unfinished = Vec::new();
        for record in records {
            if !record.state.is_done() {
                unfinished.push(record.clone());
            }
            tasks.insert(
                record.id,
                Entry {
                    record,
                    stop: CancellationToken::new(),
                },
            );
        }
        let manager = Self {
            journal,
            tasks: Arc::new(Mutex::new(tasks)),
            shared: Arc::default(),
        };
        Ok((manager, unfinished))
    }

    /// Writes every record from now on to `dir` as well (the SPM's shared task directory), or
    /// stops doing so (`None`).
    pub fn share_to(&self, dir: Option<SharedRecords>) -> Result<(), TaskError> {
        if let Some(dir) = &dir {
            dir.ensure().map_err(|e| TaskError::Persist {
                id: Uuid::nil(),
                message: format!("{}: {e}", dir.path().display()),
            })?;
        }
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = dir;
        Ok(())
    }

    /// The unfinished records of the shared task directory: what an SPM that stopped left.
    /// Blocks (file I/O).
    pub fn shared_unfinished(&self) -> Vec<TaskRecord> {
        let Some(dir) = self
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return Vec::new();
        };
        let records = dir.all(".json").unwrap_or_else(|err| {
            tracing::warn!(dir = %dir.path().display(), error = %err, "shared tasks unreadable");
            Vec::new()
        });
        records
            .into_iter()
            .filter_map(|(name, bytes)| {
                let record = serde_json::from_slice::<TaskRecord>(&bytes).ok()?;
                // Cleared and tombstoned by the name its id gives: one under another name
                // would be recovered again and again.
                (name == format!("{}.json", record.id.hyphenated())).then_some(record)
            })
            .filter(|r| !r.state.is_done() && !has_tombstone(&dir, r.id))
            .collect()
    }

    /// Whether `id` was cleared on the shared pool (its tombstone is in the shared task
    /// directory). Blocks (file I/O).
    pub fn shared_cleared(&self, id: Uuid) -> bool {
        // Only a tombstone read whole: this answer makes a host forget its own record, which
        // an unreadable name (a hiccup of the mount, something planted there) must not do.
        self.shared_dir()
            .is_some_and(|dir| matches!(dir.read(&tombstone_name(id)), Ok(Some(_))))
    }

    /// Removes the tombstones of the shared task directory older than `max_age`, and any
    /// file there named as one that holds no tombstone (not rvdsm's); returns how many.
    /// Blocks (file I/O).
    pub fn prune_tombstones(&self, max_age: Duration) -> usize {
        let Some(dir) = self.shared_dir() else {
            return 0;
        };
        let now = crate::clock::epoch_secs();
        tombstones(&dir)
            .into_iter()
            .filter(|(_, stone)| {
                stone
                    .as_ref()
                    .is_none_or(|s| now.saturating_sub(s.cleared_at) > max_age.as_secs())
            })
            .filter(|(name, _)| dir.remove(name).is_ok_and(|removed| removed))
            .count()
    }

    /// Forgets a task of this host that was cleared on the shared pool while this host was
    /// away (its record here is stale: the pool's task list no longer has it).
    pub fn forget(&self, id: Uuid) -> Result<(), TaskError> {
        let mut tasks = self.lock();
        self.journal.remove(id).map_err(|e| TaskError::Persist {
            id,
            message: e.to_string(),
        })?;
        tasks.remove(&id);
        Ok(())
    }

    fn shared_dir(&self) -> Option<SharedRecords> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The shared record of `id`, if there is one.
    pub fn shared_record(&self, id: Uuid) -> Option<TaskRecord> {
        let dir = self
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let bytes = dir.read(&format!("{}.json", id.hyphenated())).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Takes over an unfinished task another run of an SPM left (this host's before a restart
    /// or another host's): registered here as it was, to be recovered and ended.
    pub fn adopt(&self, record: TaskRecord) -> Result<(), TaskError> {
        let mut tasks = self.lock();
        if tasks.contains_key(&record.id) {
            return Ok(());
        }
        self.persist(&record)?;
        tasks.insert(
            record.id,
            Entry {
                record,
                stop: CancellationToken::new(),
            },
        );
        Ok(())
    }

    /// Registers and persists a new running task; returns its stop token.
    pub fn start(
        &self,
        id: Uuid,
        verb: &str,
        work: TaskWork,
    ) -> Result<CancellationToken, TaskError> {
        let record = TaskRecord {
            id,
            verb: verb.to_owned(),
            state: TaskState::Running,
            code: 0,
            error: String::new(),
            work,
        };
        let mut tasks = self.lock();
        if tasks.contains_key(&id) {
            return Err(TaskError::State(format!("task {id} exists")));
        }
        self.persist(&record)?;
        let stop = CancellationToken::new();
        tasks.insert(
            id,
            Entry {
                record,
                stop: stop.clone(),
            },
        );
        Ok(stop)
    }

    /// Records new progress of a running task (durably, before the step it announces).
    pub fn update_work(&self, id: Uuid, work: TaskWork) -> Result<(), TaskError> {
        let mut tasks = self.lock();
        let entry = tasks.get_mut(&id).ok_or(TaskError::Unknown(id))?;
        let mut record = entry.record.clone();
        record.work = work;
        self.persist(&record)?;
        entry.record = record;
        Ok(())
    }

    /// Ends a task: `Ok` finished, or failed with `(code, error)` and rolled back (`clean`)
    /// or not.
    pub fn end(&self, id: Uuid, outcome: Result<(), (i32, String, bool)>) -> Result<(), TaskError> {
        let mut tasks = self.lock();
        let entry = tasks.get_mut(&id).ok_or(TaskError::Unknown(id))?;
        let mut record = entry.record.clone();
        match outcome {
            Ok(()) => record.state = TaskState::Finished,
            Err((code, error, clean)) => {
                record.state = if clean {
                    TaskState::Recovered
                } else {
                    TaskState::Failed
                };
                record.code = code;
                record.error = error;
            }
        }
        self.persist(&record)?;
        entry.record = record;
        Ok(())
    }

    /// A task's record.
    pub fn get(&self, id: Uuid) -> Result<TaskRecord, TaskError> {
        self.lock()
            .get(&id)
            .map(|e| e.record.clone())
            .ok_or(TaskError::Unknown(id))
    }

    /// Every task's record.
    pub fn all(&self) -> Vec<TaskRecord> {
        self.lock().values().map(|e| e.record.clone()).collect()
    }

    /// Forgets a finished task (`Task.clear`).
    pub fn clear(&self, id: Uuid) -> Result<(), TaskError> {
        {
            let tasks = self.lock();
            let entry = tasks.get(&id).ok_or(TaskError::Unknown(id))?;
            if !entry.record.state.is_done() {
                let (state, _) = entry.record.state.wire();
                return Err(TaskError::State(format!("can't clean in state {state}")));
            }
        }
        // The files without the lock: a shared domain's hung mount must not hold every other
        // task's verb behind this one (a done task changes no more, so nothing moves meanwhile).
        let shared = self.shared_dir();
        if let Some(dir) = &shared {
            // The tombstone first: once it is there, no SPM recovers the task again, whatever
            // record of it a host still holds.
            write_tombstone(dir, id)?;
        }
        self.journal.remove(id).map_err(|e| TaskError::Persist {
            id,
            message: e.to_string(),
        })?;
        if let Some(dir) = &shared {
            // A record another SPM may still read: gone once its task is cleared (a crash
            // before this leaves it beside its tombstone, which wins).
            let _ = dir.remove(&format!("{}.json", id.hyphenated()));
        }
        self.lock().remove(&id);
        Ok(())
    }

    /// Asks every running task to stop (as `Task.stop`), when the daemon stops: each is rolled
    /// back now rather than at the next start. Returns the tasks asked.
    pub fn stop_all(&self) -> Vec<Uuid> {
        let running: Vec<Uuid> = self
            .lock()
            .values()
            .filter(|e| e.record.state == TaskState::Running)
            .map(|e| e.record.id)
            .collect();
        running
            .into_iter()
            .filter(|id| self.stop(*id).is_ok())
            .collect()
    }

    /// Whether any task is still at work (running or aborting).
    pub fn any_at_work(&self) -> bool {
        self.lock().values().any(|e| !e.record.state.is_done())
    }

    /// Asks a running task to stop (`Task.stop`); a finished one is left as it is.
    pub fn stop(&self, id: Uuid) -> Result<(), TaskError> {
        let mut tasks = self.lock();
        let entry = tasks.get_mut(&id).ok_or(TaskError::Unknown(id))?;
        if entry.record.state == TaskState::Running {
            let mut record = entry.record.clone();
            record.state = TaskState::Aborting;
            self.persist(&record)?;
            entry.record = record;
            entry.stop.cancel();
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn persist(&self, record: &TaskRecord) -> Result<(), TaskError> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| TaskError::Persist {
            id: record.id,
            message: e.to_string(),
        })?;
        self.journal.write(record).map_err(|e| TaskError::Persist {
            id: record.id,
            message: e.to_string(),
        })?;
        let shared = self
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(dir) = shared
            && !matches!(
                record.work,
                TaskWork::SpmStart { .. } | TaskWork::SwitchMaster { .. }
            )
        {
            let name = format!("{}.json", record.id.hyphenated());
            dir.write(&name, &bytes).map_err(|e| TaskError::Persist {
                id: record.id,
                message: format!("{}/{name}: {e}", dir.path().display()),
            })?;
        }
        Ok(())
    }
}

/// The extension of a tombstone in the shared task directory (`<id>.cleared`).
const TOMBSTONE_EXTENSION: &str = "cleared";

fn tombstone_name(id: Uuid) -> String {
    format!("{}.{TOMBSTONE_EXTENSION}", id.hyphenated())
}

fn has_tombstone(dir: &SharedRecords, id: Uuid) -> bool {
    // Unreadable counts as there: a tombstone only ever stops a recovery.
    !matches!(dir.read(&tombstone_name(id)), Ok(None))
}

/// Every record named as a tombstone in `dir`, with the tombstone it holds (`None`: not one).
fn tombstones(dir: &SharedRecords) -> Vec<(String, Option<Tombstone>)> {
    dir.all(&format!(".{TOMBSTONE_EXTENSION}"))
        .unwrap_or_default()
        .into_iter()
        .map(|(name, bytes)| (name, serde_json::from_slice(&bytes).ok()))
        .collect()
}

/// Writes the tombstone of `id` in `dir`, atomically and durably.
fn write_tombstone(dir: &SharedRecords, id: Uuid) -> Result<(), TaskError> {
    let tombstone = Tombstone {
        id,
        cleared_at: crate::clock::epoch_secs(),
    };
    let persist = |message: String| TaskError::Persist { id, message };
    let bytes = serde_json::to_vec(&tombstone).map_err(|e| persist(e.to_string()))?;
    let name = tombstone_name(id);
    dir.write(&name, &bytes)
        .map_err(|e| persist(format!("{}/{name}: {e}", dir.path().display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::volume_types::{Preallocation, VolumeFormat};

    fn work() -> TaskWork {
        TaskWork::CreateVolume {
            domain: Uuid::from_u128(1),
            request: CreateRequest {
                image: Uuid::from_u128(2),
                volume: Uuid::from_u128(3),
                capacity: 4096,
                format: VolumeFormat::Cow,
                allocation: Preallocation::Sparse,
                disk_type: "DATA".into(),
                description: String::new(),
                parent: None,
                legal: true,
                sequence: 0,
            },
            progress: CreateProgress::default(),
        }
    }

    #[test]
    fn lifecycle_with_vdsm_wire_states() {
        let dir = tempfile::tempdir().unwrap();
        let (tasks, unfinished) = TaskManager::open(dir.path()).unwrap();
        assert!(unfinished.is_empty());
        let id = Uuid::new_v4();
        tasks.start(id, "Volume.create", work()).unwrap();
        assert_eq!(tasks.get(id).unwrap().message(), "running job 1 of 1");
        assert!(matches!(tasks.clear(id).unwrap_err(), TaskError::State(_)));
        tasks
            .end(id, Err((212, "Volume already exists".into(), true)))
            .unwrap();
        let record = tasks.get(id).unwrap();
        assert_eq!(record.state.wire(), ("finished", "cleanSuccess"));
        assert_eq!(
            record.message(),
            "value=Volume already exists abortedcode=212"
        );
        tasks.clear(id).unwrap();
        assert!(matches!(tasks.get(id).unwrap_err(), TaskError::Unknown(_)));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn unfinished_tasks_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (tasks, _) = TaskManager::open(dir.path()).unwrap();
        let running = Uuid::new_v4();
        let done = Uuid::new_v4();
        tasks.start(running, "Volume.create", work()).unwrap();
        let mut progressed = work();
        if let TaskWork::CreateVolume { progress, .. } = &mut progressed {
            progress.data_file = true;
        }
        tasks.update_work(running, progressed.clone()).unwrap();
        tasks.start(done, "Volume.create", work()).unwrap();
        tasks.end(done, Ok(())).unwrap();
        drop(tasks);

        let (tasks, unfinished) = TaskManager::open(dir.path()).unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].id, running);
        assert_eq!(unfinished[0].work, progressed);
        assert_eq!(tasks.get(done).unwrap().state, TaskState::Finished);
    }

    #[test]
    fn a_task_cleared_on_a_shared_pool_leaves_a_tombstone_that_outlives_its_record() {
        let (dir, mount) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let domain = crate::storage::layout::DomainDir::new(mount.path(), Uuid::new_v4());
        std::fs::create_dir(domain.root()).unwrap();
        let records = SharedRecords::new(domain, "tasks");
        let shared = records.path();
        let (tasks, _) = TaskManager::open(dir.path()).unwrap();
        tasks.share_to(Some(records)).unwrap();
        let id = Uuid::new_v4();
        tasks.start(id, "Volume.create", work()).unwrap();
        let record = shared.join(format!("{id}.json"));
        let unfinished = std::fs::read(&record).unwrap();
        tasks
            .end(id, Err((411, "interrupted".into(), true)))
            .unwrap();
        assert!(!tasks.shared_cleared(id));
        tasks.clear(id).unwrap();
        assert!(tasks.shared_cleared(id));
        assert!(!record.exists());

        // Its unfinished record met again (a crash between tombstone and removal, or a host
        // that kept one): not work left over.
        std::fs::write(&record, &unfinished).unwrap();
        assert!(tasks.shared_unfinished().is_empty());

        // A recent tombstone stays; one cleared longer ago than the limit goes, and so does a
        // file named as one that holds none.
        assert_eq!(tasks.prune_tombstones(TOMBSTONE_MAX_AGE), 0);
        let garbage = shared.join(tombstone_name(Uuid::new_v4()));
        std::fs::write(&garbage, "not a tombstone").unwrap();
        let old = Uuid::new_v4();
        let stone = serde_json::to_vec(&Tombstone {
            id: old,
            cleared_at: crate::clock::epoch_secs() - TOMBSTONE_MAX_AGE.as_secs() - 60,
        })
        .unwrap();
        std::fs::write(shared.join(tombstone_name(old)), stone).unwrap();
        assert!(tasks.shared_cleared(old));
        assert_eq!(tasks.prune_tombstones(TOMBSTONE_MAX_AGE), 2);
        assert!(!garbage.exists());
        assert!(!tasks.shared_cleared(old));
        assert!(tasks.shared_cleared(id));
    }

    #[test]
    fn forget_drops_a_local_record_whatever_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let (tasks, _) = TaskManager::open(dir.path()).unwrap();
        let id = Uuid::new_v4();
        tasks.start(id, "Volume.create", work()).unwrap();
        tasks.forget(id).unwrap();
        assert!(matches!(tasks.get(id).unwrap_err(), TaskError::Unknown(_)));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn stop_cancels_only_running_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let (tasks, _) = TaskManager::open(dir.path()).unwrap();
        let id = Uuid::new_v4();
        let token = tasks.start(id, "Volume.create", work()).unwrap();
        tasks.stop(id).unwrap();
        assert!(token.is_cancelled());
        assert_eq!(tasks.get(id).unwrap().state, TaskState::Aborting);
        assert!(matches!(
            tasks.stop(Uuid::new_v4()).unwrap_err(),
            TaskError::Unknown(_)
        ));
    }

    /// Records exactly as the release before the one journal wrote them (serialized with its
    /// types, pasted verbatim) read into the same meaning, and a restart finds them: the
    /// unfinished one to roll back, the ended one kept until `Task.clear`, never pruned.
    #[test]
    fn records_of_the_previous_release_read_the_same() {
        let recovered = r#"{
  "id": "00000000-0000-0000-0000-000000000040",
  "verb": "Volume.delete",
  "state": "recovered",
  "code": 411,
  "error": "Interrupted",
  "work": {
    "kind": "deleteVolume",
    "domain": "00000000-0000-0000-0000-000000000001",
    "image": "00000000-0000-0000-0000-000000000002",
    "volume": "00000000-0000-0000-0000-000000000003",
    "started": false
  }
}"#;
        let running = r#"{
  "id": "00000000-0000-0000-0000-000000000041",
  "verb": "Volume.create",
  "state": "running",
  "code": 0,
  "error": "",
  "work": {
    "kind": "createVolume",
    "domain": "00000000-0000-0000-0000-000000000001",
    "request": {
      "image": "00000000-0000-0000-0000-000000000002",
      "volume": "00000000-0000-0000-0000-000000000003",
      "capacity": 4096,
      "format": "COW",
      "allocation": "SPARSE",
      "disk_type": "DATA",
      "description": "",
      "parent": null,
      "legal": true,
      "sequence": 0
    },
    "progress": {
      "image_dir": false,
      "data_file": false,
      "meta": false,
      "parent_internal": false,
      "lease": false
    }
  }
}"#;
        let u = Uuid::from_u128;
        let want_recovered = TaskRecord {
            id: u(0x40),
            verb: "Volume.delete".into(),
            state: TaskState::Recovered,
            code: 411,
            error: "Interrupted".into(),
            work: TaskWork::DeleteVolume {
                domain: u(1),
                image: u(2),
                volume: u(3),
                started: false,
            },
        };
        let want_running = TaskRecord {
            id: u(0x41),
            verb: "Volume.create".into(),
            state: TaskState::Running,
            code: 0,
            error: String::new(),
            work: work(),
        };
        let dir = tempfile::tempdir().unwrap();
        for (text, want) in [(recovered, &want_recovered), (running, &want_running)] {
            let read: TaskRecord = serde_json::from_str(text).unwrap();
            assert_eq!(&read, want, "{text}");
            assert_eq!(serde_json::to_string_pretty(&read).unwrap(), text);
            std::fs::write(dir.path().join(format!("{}.json", read.id)), text).unwrap();
        }
        let (tasks, unfinished) = TaskManager::open(dir.path()).unwrap();
        assert_eq!(unfinished, [want_running]);
        assert_eq!(tasks.get(u(0x40)).unwrap(), want_recovered);
    }
}
