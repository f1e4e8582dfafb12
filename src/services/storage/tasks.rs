//! `Task.getStatus`, `Task.getInfo`, `Task.clear`, `Task.stop` and
//! `Host.getAllTasksStatuses`, in VDSM's shapes.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{StorageService, on_tasks};
use crate::api::ApiError;
use crate::api::storage_types::{TaskInfo, TaskParams, TaskStatus};
use crate::jobs::tasks::TaskRecord;

impl StorageService {
    /// `Task.getStatus`. Off the reactor, as every call on the task manager: its lock is held
    /// while a task's file is fsynced.
    pub async fn task_status(&self, p: TaskParams) -> Result<TaskStatus, ApiError> {
        let record = on_tasks(&self.inner.tasks, move |t| t.get(p.task)).await?;
        Ok(status_of(&record))
    }

    /// `Task.getInfo`.
    pub async fn task_info(&self, p: TaskParams) -> Result<TaskInfo, ApiError> {
        let record = on_tasks(&self.inner.tasks, move |t| t.get(p.task)).await?;
        Ok(TaskInfo {
            id: record.id,
            verb: record.verb,
        })
    }

    /// `Task.clear`.
    pub async fn task_clear(&self, p: TaskParams) -> Result<(), ApiError> {
        Ok(on_tasks(&self.inner.tasks, move |t| t.clear(p.task)).await?)
    }

    /// `Task.stop`.
    pub async fn task_stop(&self, p: TaskParams) -> Result<(), ApiError> {
        Ok(on_tasks(&self.inner.tasks, move |t| t.stop(p.task)).await?)
    }

    /// When the daemon stops: every running task is stopped (rolled back now rather than at
    /// the next start) and given until `deadline` to end.
    /// Stopping a task persists its record (an fsync, on the shared domain too) and reading
    /// them waits for any persist under way: off the reactor, and never waited for past
    /// `deadline`, so a hung mount cannot hold the daemon's shutdown.
    pub async fn stop(&self, deadline: std::time::Instant) {
        let deadline = tokio::time::Instant::from_std(deadline);
        let stopping = on_tasks(&self.inner.tasks, |t| Ok(t.stop_all()));
        if let Ok(Ok(stopped)) = tokio::time::timeout_at(deadline, stopping).await
            && !stopped.is_empty()
        {
            tracing::warn!(tasks = ?stopped, "rvdsmd is stopping: running tasks stopped");
        }
        loop {
            let at_work = on_tasks(&self.inner.tasks, |t| Ok(t.any_at_work()));
            if !matches!(
                tokio::time::timeout_at(deadline, at_work).await,
                Ok(Ok(true))
            ) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// `Host.getAllTasksStatuses`.
    pub async fn all_task_statuses(&self) -> Result<BTreeMap<Uuid, TaskStatus>, ApiError> {
        let records = on_tasks(&self.inner.tasks, |t| Ok(t.all())).await?;
        Ok(records.iter().map(|r| (r.id, status_of(r))).collect())
    }

    /// Every task's status, read where blocking is fine (the metrics' scrape thread).
    pub fn all_task_statuses_blocking(&self) -> BTreeMap<Uuid, TaskStatus> {
        self.inner
            .tasks
            .all()
            .iter()
            .map(|r| (r.id, status_of(r)))
            .collect()
    }
}

fn status_of(record: &TaskRecord) -> TaskStatus {
    let (state, result) = record.state.wire();
    TaskStatus {
        task_id: record.id,
        task_state: state.to_owned(),
        task_result: result.to_owned(),
        code: record.code,
        message: record.message(),
    }
}
