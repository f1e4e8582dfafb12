//! Storage verbs: domains, images, volumes and their tasks. Every request is checked before
//! anything changes; `Volume.create` runs as a persisted task whose failure, stop or
//! interruption rolls it back; the tasks a previous run left unfinished are ended when the
//! daemon starts. The file and qemu-img work is the storage module's; this one decides and
//! renders VDSM's shapes.
//!
//! - this file: the service, its lookups and the recovery of interrupted tasks;
//! - [`validate`]: requests into what the storage module takes (pure, unit-tested);
//! - [`domains`]: domain and image verbs (`StorageDomain.*`, `Image.prepare`...);
//! - [`volumes`]: `Volume.create` and the deletes, as tasks, and `Volume.getInfo`;
//! - [`error`]: what the functions other services call fail with;
//! - [`images`]: the images other services change (a live snapshot, a live merge,
//!   `VM.create`): their locks, their [`ImageHandle`]s, the copy and merge marks;
//! - [`cold_merge`]: `StoragePool.prepareMerge`/`finalizeMerge`, `Image.reconcileVolumeChain`,
//!   and what the SDM jobs (cold merge, copy) ask of the storage;
//! - [`pool`]: hosts sharing the pool's domains: `StoragePool.connect`, `disconnect`,
//!   `spmStart`, `spmStop`, `getSpmStatus`, `Host.getStorageRepoStats`, and the SPM check of
//!   the pool's metadata verbs;
//! - [`pool_record`]: the pool on storage and its master: `StoragePool.create/getInfo/
//!   switchMaster/destroy`, and the master's check every pool verb makes;
//! - [`pool_domains`]: a domain's life in the pool: `StorageDomain.attach/activate/
//!   deactivate/detach/format`;
//! - [`leases`]: `Lease.*`, the external (VM) leases;
//! - [`claims`]: the checks of the disk before a recovery a shared pool's record asks for;
//! - [`tasks`]: `Task.*` and `Host.getAllTasksStatuses`.

mod claims;
mod cold_merge;
mod domains;
pub mod error;
#[cfg(test)]
mod fake_tests;
mod images;
mod leases;
mod memory;
mod pool;
mod pool_domains;
mod pool_record;
mod tasks;
mod validate;
mod volumes;

pub use crate::storage::image::{CopyReading, ImageHandle, ImageLock, ImageRef, MergeMark};
pub use error::StorageServiceError;
pub use memory::{MemoryVolumeId, dump_room_needed, memory_volume_in_use};

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use uuid::Uuid;

use crate::api::ApiError;
use crate::cluster::Cluster;
use crate::jobs::tasks::{TaskError, TaskManager, TaskRecord, TaskWork};
use crate::services::errors::storage_code;
use crate::storage::domain::Domain;
use crate::storage::image::{ImageActivity, ImageLocks};
use crate::storage::layout::Repository;
use crate::storage::shared_records::SharedRecords;
use crate::storage::{StorageError, image, volume};
use crate::virt::SharedHypervisor;

/// The storage side of the host.
#[derive(Clone)]
pub struct StorageService {
    inner: Arc<Inner>,
}

struct Inner {
    repo: Repository,
    hypervisor: SharedHypervisor,
    pool: Uuid,
    // A std lock: held only to look a domain up or insert one, never across I/O.
    domains: RwLock<HashMap<Uuid, Arc<Domain>>>,
    tasks: TaskManager,
    qemu_img_timeout: Duration,
    /// One exclusive lock per image, held by every task that changes the image for its whole
    /// run (as VDSM's image resource): a delete never runs inside a create, nor a create on a
    /// parent a delete is removing. A std lock guards the map only.
    image_locks: ImageLocks,
    /// Images a full copy is reading now or a merge is changing: a copy and a merge of one
    /// image exclude each other (the chain must not change under a copy), and snapshots wait
    /// for the copies to end.
    activity: ImageActivity,
    /// Interrupted tasks that recovery finishes forward once the daemon runs (they need
    /// qemu-img): finalized merges whose rebase had begun.
    to_finish: std::sync::Mutex<Vec<TaskRecord>>,
    /// The leases of hosts sharing domains; `None` when this host runs alone.
    cluster: Option<Cluster>,
    /// The pool's master domain and its version, as the last `StoragePool.connect` verified
    /// them.
    master: std::sync::Mutex<Option<(Uuid, i64)>>,
    /// Read by each verb between its SPM check and its task's start; written by `spmStop`.
    spm_work: Arc<tokio::sync::RwLock<()>>,
    /// Interrupted tasks of a host sharing its domains, recovered once it is the SPM.
    deferred: std::sync::Mutex<Vec<TaskRecord>>,
}

/// Settings of the storage service.
#[derive(Debug, Clone)]
pub struct StorageSettings<'a> {
    /// The storage repository.
    pub repository: &'a Path,
    /// The host's pool.
    pub pool: Uuid,
    /// Where tasks are persisted.
    pub tasks_dir: &'a Path,
    /// Bound of one qemu-img run.
    pub qemu_img_timeout: Duration,
    /// The hypervisor, asked whether a VM uses a volume before it is deleted.
    pub hypervisor: SharedHypervisor,
    /// This host among the hosts sharing domains; `None`: it runs alone.
    pub cluster: Option<Cluster>,
}

impl StorageService {
    /// Attaches the domains found under the repository and rolls back the tasks a previous
    /// run left unfinished (on a host sharing its domains: once it is the SPM again, see
    /// `take_over_tasks`). Blocks (file I/O): call it before serving, off the reactor.
    pub fn open(settings: &StorageSettings) -> Result<Self, StorageServiceError> {
        let repo = Repository::new(settings.repository);
        let domains: HashMap<Uuid, Arc<Domain>> = Domain::discover(&repo)
            .into_iter()
            .map(|mut d| {
                if let Some(cluster) = &settings.cluster {
                    d.share(cluster.domain_leases(d.uuid, d.block_size));
                }
                (d.uuid, Arc::new(d))
            })
            .collect();
        for domain in domains.values() {
            tracing::info!(domain = %domain.uuid, root = %domain.dir.root().display(), "storage domain attached");
        }
        let (tasks, unfinished) = TaskManager::open(settings.tasks_dir)?;
        let service = Self {
            inner: Arc::new(Inner {
                repo,
                hypervisor: settings.hypervisor.clone(),
                pool: settings.pool,
                domains: RwLock::new(domains),
                tasks,
                qemu_img_timeout: settings.qemu_img_timeout,
                image_locks: ImageLocks::default(),
                activity: ImageActivity::default(),
                to_finish: std::sync::Mutex::default(),
                cluster: settings.cluster.clone(),
                master: std::sync::Mutex::default(),
                spm_work: Arc::default(),
                deferred: std::sync::Mutex::default(),
            }),
        };
        if service.inner.cluster.is_some() {
            // Another host may be the SPM now, changing these images: only the SPM undoes
            // what an SPM task left, as VDSM's new SPM recovers the pool's tasks.
            if !unfinished.is_empty() {
                tracing::warn!(
                    tasks = unfinished.len(),
                    "interrupted tasks wait for this host to be the SPM again"
                );
            }
            *service
                .inner
                .deferred
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = unfinished;
        } else {
            // Alone, its own state directory is the only writer of these records and nothing
            // else changes its domains: they are trusted.
            for record in unfinished {
                service.recover(&record, None);
            }
        }
        Ok(service)
    }

    /// Once this host is the SPM of its shared pool: its task records go to the master
    /// domain's `master/tasks` too, and it ends the tasks that the SPMs before it left
    /// unfinished, its own from before a restart and other hosts' alike (rolled back, or
    /// finished forward). One of its own that another SPM ended already is only marked
    /// ended, and one cleared on the pool since (its tombstone) is forgotten: what that SPM
    /// did since stays. Every destructive step is checked against the disk first (see
    /// [`claims`]). Blocking file I/O runs off the reactor.
    pub(crate) async fn take_over_tasks(&self, master: Uuid) {
        let dir = match self.domain(master) {
            Ok(domain) => SharedRecords::new(domain.dir.clone(), "tasks"),
            Err(err) => {
                tracing::error!(error = %err, "no master domain: tasks not shared");
                return;
            }
        };
        let deferred = std::mem::take(
            &mut *self
                .inner
                .deferred
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        // Asked once, before the records are read: a begun delete is finished only on
        // volumes no VM of this host uses.
        let in_use: claims::InUse = self
            .inner
            .hypervisor
            .disk_paths_in_use()
            .await
            .map(|paths| paths.into_iter().map(std::path::PathBuf::from).collect())
            .map_err(|e| e.to_string());
        let service = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            let tasks = &service.inner.tasks;
            if let Err(err) = tasks.share_to(Some(dir)) {
                tracing::error!(error = %err, "cannot share the SPM's tasks");
            }
            let pruned = tasks.prune_tombstones(crate::jobs::tasks::TOMBSTONE_MAX_AGE);
            if pruned > 0 {
                tracing::info!(pruned, "old tombstones of cleared tasks removed");
            }
            // Tasks this process runs now are not left over: never recovered under them.
            let running: Vec<Uuid> = tasks
                .all()
                .into_iter()
                .filter(|t| !t.state.is_done() && !deferred.iter().any(|d| d.id == t.id))
                .map(|t| t.id)
                .collect();
            let left: Vec<TaskRecord> = tasks
                .shared_unfinished()
                .into_iter()
                .filter(|t| !running.contains(&t.id))
                .collect();
            for record in &deferred {
                if left.iter().any(|l| l.id == record.id) {
                    continue;
                }
                if tasks.shared_cleared(record.id) {
                    tracing::warn!(task = %record.id, "interrupted task ended and cleared on the pool meanwhile: forgotten, not recovered again");
                    if let Err(err) = tasks.forget(record.id) {
                        tracing::error!(task = %record.id, error = %err, "cannot forget the cleared task");
                    }
                    continue;
                }
                match tasks.shared_record(record.id) {
                    Some(ended) if ended.state.is_done() => {
                        tracing::warn!(task = %record.id, "interrupted task already ended by the SPM that followed");
                        let outcome = Err((ended.code, ended.error, true));
                        if let Err(err) = tasks.end(record.id, outcome) {
                            tracing::error!(task = %record.id, error = %err, "cannot record the task's end");
                        }
                    }
                    _ => service.recover(record, Some(&in_use)),
                }
            }
            for record in left {
                tracing::warn!(task = %record.id, verb = %record.verb, "taking over a task an earlier SPM left");
                match tasks.adopt(record.clone()) {
                    Ok(()) => service.recover(&record, Some(&in_use)),
                    Err(err) => tracing::error!(task = %record.id, error = %err, "cannot take the task over"),
                }
            }
        })
        .await;
        if let Err(err) = done {
            tracing::error!(error = %err, "recovery of interrupted tasks panicked");
        }
        self.finish_interrupted().await;
    }

    /// Runs `work` as a task of `verb` (registered with `first` as its work), ending it with
    /// the work's outcome; returns the task id at once.
    pub(super) async fn run_task<S, F, Fut>(
        &self,
        verb: &'static str,
        s: S,
        first: TaskWork,
        work: F,
    ) -> Result<Uuid, StorageServiceError>
    where
        S: Send + 'static,
        F: FnOnce(StorageService, S, Uuid) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), ApiError>> + Send,
    {
        let task = Uuid::new_v4();
        on_tasks(&self.inner.tasks, move |t| t.start(task, verb, first)).await?;
        tracing::info!(%task, verb, "task started");
        let service = self.clone();
        tokio::spawn(async move {
            let outcome = work(service.clone(), s, task)
                .await
                .map_err(|e| (e.code(), e.to_string(), true));
            if let Err(err) = &outcome {
                tracing::warn!(%task, verb, error = %err.1, "task failed");
            }
            if let Err(err) = on_tasks(&service.inner.tasks, move |t| t.end(task, outcome)).await {
                tracing::error!(%task, error = %err, "cannot record the task's end");
            }
        });
        Ok(task)
    }

    /// Records the end of the task `task` (`verb` names it in the log): its outcome as
    /// VDSM's task result.
    pub(super) async fn end_task(
        &self,
        task: Uuid,
        verb: &'static str,
        outcome: Result<(), ApiError>,
    ) {
        let outcome = outcome.map_err(|e| {
            tracing::warn!(%task, error = %e, "{verb} failed");
            (e.code(), e.to_string(), true)
        });
        if let Err(err) = on_tasks(&self.inner.tasks, move |t| t.end(task, outcome)).await {
            tracing::error!(%task, error = %err, "cannot record the task's end");
        }
    }

    /// The task records go to `master`'s `master/tasks` from now on (the master moved).
    pub(crate) fn share_tasks_in(&self, master: Uuid) {
        let Ok(domain) = self.domain(master) else {
            return;
        };
        let dir = SharedRecords::new(domain.dir.clone(), "tasks");
        if let Err(err) = self.inner.tasks.share_to(Some(dir)) {
            tracing::error!(error = %err, "cannot share tasks in the new master");
        }
    }

    /// When this host stops being the SPM: its task records stay on this host only.
    pub(crate) fn stop_sharing_tasks(&self) {
        if let Err(err) = self.inner.tasks.share_to(None) {
            tracing::error!(error = %err, "cannot stop sharing tasks");
        }
    }

    /// The host's pool.
    pub fn pool(&self) -> Uuid {
        self.inner.pool
    }

    /// Ends a task interrupted by a restart: a create is rolled back; a delete that had begun
    /// is finished (its volumes were already ILLEGAL), one that had not is dropped untouched.
    /// `checked`: the record comes from a shared pool (or may be stale there), and each
    /// destructive step is taken only once the disk matches it ([`claims`], with the paths VMs
    /// use); a claim that does not hold ends the task failed, saying why, with nothing deleted.
    fn recover(&self, record: &TaskRecord, checked: Option<&claims::InUse>) {
        end_leftover_writers(record);
        if let TaskWork::FinalizeMerge {
            domain,
            image,
            top,
            started: true,
            ..
        } = &record.work
        {
            let begun = match checked {
                None => Ok(()),
                Some(_) => self
                    .pool_domain(*domain)
                    .and_then(|domain| claims::finalize_begun(&domain, *image, *top)),
            };
            if let Err(refused) = begun {
                self.end_recovery(record, Err(refused));
                return;
            }
            // Forward, with qemu-img: once the daemon runs (see `finish_interrupted`).
            self.inner
                .to_finish
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(record.clone());
            return;
        }
        let result = self.recover_work(&record.work, checked);
        self.end_recovery(record, result);
    }

    /// A domain of this host's pool, as a record of a shared pool may name.
    fn pool_domain(&self, id: Uuid) -> Result<Arc<Domain>, claims::ClaimError> {
        let domain = self
            .domain(id)
            .map_err(|_| StorageError::DomainDoesNotExist(id))?;
        if domain.pool != self.inner.pool {
            return Err(claims::ClaimError::OutsidePool(id));
        }
        Ok(domain)
    }

    /// Ends a recovered task: interrupted, cleanly when its recovery succeeded; failed when it
    /// failed or its record's claim was refused (saying why).
    fn end_recovery(&self, record: &TaskRecord, result: Result<(), claims::ClaimError>) {
        let outcome = match result {
            Ok(()) => {
                let interrupted = StorageError::Interrupted;
                Err((storage_code(&interrupted), interrupted.to_string(), true))
            }
            Err(claims::ClaimError::Storage(err)) => {
                tracing::error!(task = %record.id, error = %err, "recovery of an interrupted task failed");
                let interrupted = StorageError::Interrupted;
                Err((storage_code(&interrupted), interrupted.to_string(), false))
            }
            Err(refused) => {
                tracing::error!(task = %record.id, verb = %record.verb, error = %refused, "interrupted task not recovered: its record is not what the disk shows");
                let interrupted = StorageError::Interrupted;
                let message = format!("{interrupted}; not recovered: {refused}");
                Err((storage_code(&interrupted), message, false))
            }
        };
        tracing::warn!(task = %record.id, verb = %record.verb, clean = matches!(outcome, Err((_, _, true))), "task interrupted by a restart recovered");
        if let Err(err) = self.inner.tasks.end(record.id, outcome) {
            tracing::error!(task = %record.id, error = %err, "cannot record the recovered task");
        }
    }

    /// The recovery of one task's work (see [`Self::recover`]). Blocks.
    fn recover_work(
        &self,
        work: &TaskWork,
        checked: Option<&claims::InUse>,
    ) -> Result<(), claims::ClaimError> {
        let domain = match work {
            TaskWork::SpmStart { .. }
            | TaskWork::SwitchMaster { .. }
            | TaskWork::CreateLease { .. }
            | TaskWork::DeleteLease { .. } => return Ok(()),
            TaskWork::CreateVolume { domain, .. }
            | TaskWork::DeleteVolume { domain, .. }
            | TaskWork::DeleteVolumes { domain, .. }
            | TaskWork::DeleteImage { domain, .. }
            | TaskWork::PrepareMerge { domain, .. }
            | TaskWork::FinalizeMerge { domain, .. } => *domain,
        };
        let Some(in_use) = checked else {
            let domain = self
                .domain(domain)
                .map_err(|_| StorageError::DomainDoesNotExist(domain))?;
            return Ok(trusted_recovery(&domain, work)?);
        };
        let domain = self.pool_domain(domain)?;
        match work {
            TaskWork::CreateVolume {
                request, progress, ..
            } => claims::rollback_create(&domain, request, progress),
            TaskWork::DeleteVolume {
                image,
                volume,
                started: true,
                ..
            } => claims::finish_volumes_delete(&domain, *image, &[*volume], in_use),
            TaskWork::DeleteVolumes {
                image,
                volumes,
                started: true,
                ..
            } => claims::finish_volumes_delete(&domain, *image, volumes, in_use),
            TaskWork::DeleteImage {
                image,
                started: true,
                ..
            } => claims::finish_image_delete(&domain, *image, in_use),
            _ => Ok(trusted_recovery(&domain, work)?),
        }
    }

    fn domain(&self, id: Uuid) -> Result<Arc<Domain>, StorageError> {
        let domains = self.inner.domains.read().unwrap_or_else(|e| e.into_inner());
        domains
            .get(&id)
            .cloned()
            .ok_or(StorageError::DomainDoesNotExist(id))
    }

    /// The domain `id` of this host (358 when unknown).
    fn storage_domain(&self, id: Uuid) -> Result<Arc<Domain>, StorageError> {
        self.domain(id)
    }

    fn check_pool(&self, pool: Uuid) -> Result<(), StorageError> {
        if pool == self.inner.pool {
            Ok(())
        } else {
            Err(StorageError::PoolUnknown(pool))
        }
    }

    async fn image_domain(
        &self,
        pool: Uuid,
        domain: Uuid,
        image: Uuid,
    ) -> Result<Arc<Domain>, StorageError> {
        self.member_domain(pool, domain).await?;
        self.domain_with_image(domain, image).await
    }

    /// `domain`, which must be one of `pool`'s: on a shared pool its metadata must name the
    /// pool (read again once when the copy here does not: another host's SPM may have
    /// attached it since), else 353. A host that runs alone keeps its domains in its pool.
    async fn member_domain(&self, pool: Uuid, domain: Uuid) -> Result<Arc<Domain>, StorageError> {
        self.check_pool(pool)?;
        let found = self.domain(domain)?;
        if self.inner.cluster.is_none() || found.pool == pool {
            return Ok(found);
        }
        self.refresh_domain(domain).await?;
        let found = self.domain(domain)?;
        if found.pool == pool {
            Ok(found)
        } else {
            Err(StorageError::from(
                crate::storage::pool::PoolError::NotInPool { domain, pool },
            ))
        }
    }

    /// The domain, which must hold `image` (268 otherwise). The look at the image's directory
    /// runs off the reactor: a hung mount must not stall the daemon.
    async fn domain_with_image(
        &self,
        domain: Uuid,
        image: Uuid,
    ) -> Result<Arc<Domain>, StorageError> {
        let domain = self.domain(domain)?;
        let found = {
            let domain = Arc::clone(&domain);
            off_reactor(move || domain.has_image(image)).await?
        };
        if !found {
            return Err(StorageError::ImageDoesNotExist {
                image,
                domain: domain.uuid,
            });
        }
        Ok(domain)
    }
}

/// The recovery of a record this host trusts (its own, on a host that runs alone), and the
/// steps of any record that change nothing a claim could misuse. Blocks.
fn trusted_recovery(domain: &Domain, work: &TaskWork) -> Result<(), StorageError> {
    match work {
        TaskWork::CreateVolume {
            request, progress, ..
        } => volume::rollback(domain, request, progress),
        TaskWork::DeleteVolume {
            image,
            volume,
            started: true,
            ..
        } => volume::remove_files(domain, *image, *volume),
        TaskWork::DeleteImage {
            image,
            started: true,
            ..
        } => image::remove(domain, *image),
        TaskWork::DeleteVolumes {
            image,
            volumes,
            started: true,
            ..
        } => volumes
            .iter()
            .try_for_each(|v| volume::remove_files(domain, *image, *v)),
        // Nothing to undo: a delete that had not begun changed nothing; a prepare only grows
        // the base's capacity; a finalize that had not begun its rebase changed nothing.
        TaskWork::DeleteVolume { .. }
        | TaskWork::DeleteVolumes { .. }
        | TaskWork::DeleteImage { .. }
        | TaskWork::PrepareMerge { .. }
        | TaskWork::FinalizeMerge { .. }
        | TaskWork::SpmStart { .. }
        | TaskWork::SwitchMaster { .. }
        | TaskWork::CreateLease { .. }
        | TaskWork::DeleteLease { .. } => Ok(()),
    }
}

/// Ends the qemu-img an earlier run left writing a volume of the image of an interrupted task,
/// before the task is rolled back or finished (see [`crate::sys::children::leftovers`]): a
/// child that outlived its rvdsmd would race them. Blocking.
fn end_leftover_writers(record: &TaskRecord) {
    let (domain, image) = match &record.work {
        TaskWork::CreateVolume {
            domain, request, ..
        } => (*domain, request.image),
        TaskWork::DeleteVolume { domain, image, .. }
        | TaskWork::DeleteVolumes { domain, image, .. }
        | TaskWork::DeleteImage { domain, image, .. }
        | TaskWork::PrepareMerge { domain, image }
        | TaskWork::FinalizeMerge { domain, image, .. } => (*domain, *image),
        TaskWork::SpmStart { .. }
        | TaskWork::SwitchMaster { .. }
        | TaskWork::CreateLease { .. }
        | TaskWork::DeleteLease { .. } => return,
    };
    // `<sd>/images/<img>`, however the domain is reached.
    let dir = crate::storage::layout::DomainDir::new(Path::new(""), domain).image(image);
    let what = format!("the interrupted task {} ({})", record.id, record.verb);
    crate::sys::children::leftovers::end_writers(&what, |path| {
        path.parent().is_some_and(|p| p.ends_with(&dir))
    });
}

/// Runs a task-manager call off the reactor: it writes and fsyncs the task's file.
async fn on_tasks<T: Send + 'static>(
    tasks: &TaskManager,
    f: impl FnOnce(&TaskManager) -> Result<T, TaskError> + Send + 'static,
) -> Result<T, StorageServiceError> {
    let tasks = tasks.clone();
    match tokio::task::spawn_blocking(move || f(&tasks)).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(StorageServiceError::TaskBookkeeping(e)),
    }
}

/// Runs blocking storage work off the reactor, for a verb.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(off_reactor(f).await?)
}

/// Runs blocking storage work off the reactor (a panic there is [`StorageError::Panicked`]).
async fn off_reactor<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(StorageError::Panicked(e.to_string())),
    }
}
