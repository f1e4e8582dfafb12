//! Storage verbs: domains, images, volumes and their tasks. Checks every request before
//! anything changes; runs `Volume.create` as a persisted task whose failure, stop or
//! interruption rolls it back; and recovers interrupted tasks when the daemon starts.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::ApiError;
use crate::api::names;
use crate::api::storage_types::{
    CreateDomainParams, CreateVolumeParams, DeleteImageParams, DeleteVolumeParams, DomainInfo,
    DomainParams, DomainStats, DomainVolumesParams, GetStorageDomainsParams, ImageParams,
    PrepareImageParams, PreparedImage, TaskInfo, TaskParams, TaskStatus, TeardownImageParams,
    VolumeInfo, VolumeParams, VolumeSize,
};
use crate::api::volume_types::{BLANK_UUID, DISK_TYPES, Legality, Preallocation, VolumeFormat};
use crate::jobs::tasks::{TaskManager, TaskRecord, TaskWork};
use crate::storage::StorageError;
use crate::storage::domain::{Domain, DomainType, NewDomain};
use crate::storage::layout::Repository;
use crate::storage::volume::{self, CreateProgress, CreateRequest, SIZE_ALIGNMENT};
use crate::virt::Hypervisor;

/// The storage side of the host.
#[derive(Clone)]
pub struct StorageService {
    inner: Arc<Inner>,
}

struct Inner {
    repo: Repository,
    hypervisor: Hypervisor,
    pool: Uuid,
    // A std lock: held only to look a domain up or insert one, never across I/O.
    domains: RwLock<HashMap<Uuid, Arc<Domain>>>,
    tasks: TaskManager,
    qemu_img_timeout: Duration,
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
    pub hypervisor: Hypervisor,
}

impl StorageService {
    /// Attaches the domains found under the repository and rolls back the tasks a previous
    /// run left unfinished. Blocks (file I/O): call it before serving, off the reactor.
    pub fn open(settings: &StorageSettings) -> Result<Self, ApiError> {
        let repo = Repository::new(settings.repository);
        let domains: HashMap<Uuid, Arc<Domain>> = Domain::discover(&repo)
            .into_iter()
            .map(|d| (d.uuid, Arc::new(d)))
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
            }),
        };
        for record in unfinished {
            service.recover(&record);
        }
        Ok(service)
    }

    /// The host's pool.
    pub fn pool(&self) -> Uuid {
        self.inner.pool
    }

    /// Ends a task interrupted by a restart: a create is rolled back; a delete that had begun
    /// is finished (its volumes were already ILLEGAL), one that had not is dropped untouched.
    fn recover(&self, record: &TaskRecord) {
        let domain = match &record.work {
            TaskWork::CreateVolume { domain, .. }
            | TaskWork::DeleteVolume { domain, .. }
            | TaskWork::DeleteImage { domain, .. } => self.domain(*domain),
        };
        let result = domain.map_err(|e| e.to_string()).and_then(|domain| {
            match &record.work {
                TaskWork::CreateVolume {
                    request, progress, ..
                } => volume::rollback(&domain, request, progress),
                TaskWork::DeleteVolume {
                    image,
                    volume,
                    started: true,
                    ..
                } => volume::remove_files(&domain, *image, *volume),
                TaskWork::DeleteImage {
                    image,
                    started: true,
                    ..
                } => remove_image(&domain, *image),
                TaskWork::DeleteVolume { .. } | TaskWork::DeleteImage { .. } => Ok(()),
            }
            .map_err(|e| e.to_string())
        });
        let clean = match result {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(task = %record.id, error = %err, "recovery of an interrupted task failed");
                false
            }
        };
        tracing::warn!(task = %record.id, verb = %record.verb, clean, "task interrupted by a restart recovered");
        let interrupted = StorageError::Interrupted;
        let outcome = Err((
            crate::services::errors::storage_code(&interrupted),
            interrupted.to_string(),
            clean,
        ));
        if let Err(err) = self.inner.tasks.end(record.id, outcome) {
            tracing::error!(task = %record.id, error = %err, "cannot record the recovered task");
        }
    }

    fn domain(&self, id: Uuid) -> Result<Arc<Domain>, ApiError> {
        let domains = self.inner.domains.read().unwrap_or_else(|e| e.into_inner());
        domains
            .get(&id)
            .cloned()
            .ok_or_else(|| StorageError::DomainDoesNotExist(id).into())
    }

    fn check_pool(&self, pool: Uuid) -> Result<(), ApiError> {
        if pool == self.inner.pool {
            Ok(())
        } else {
            Err(StorageError::PoolUnknown(pool).into())
        }
    }

    fn image_domain(&self, pool: Uuid, domain: Uuid, image: Uuid) -> Result<Arc<Domain>, ApiError> {
        self.check_pool(pool)?;
        self.domain_with_image(domain, image)
    }

    /// The domain, which must hold `image` (268 otherwise).
    fn domain_with_image(&self, domain: Uuid, image: Uuid) -> Result<Arc<Domain>, ApiError> {
        let domain = self.domain(domain)?;
        if !domain.has_image(image)? {
            return Err(StorageError::ImageDoesNotExist {
                image,
                domain: domain.uuid,
            }
            .into());
        }
        Ok(domain)
    }

    /// `StorageDomain.create`.
    pub async fn create_domain(&self, p: CreateDomainParams) -> Result<(), ApiError> {
        let kind = DomainType::from_code(p.domain_type).ok_or_else(|| {
            StorageError::InvalidParameter(format!("domainType={}", p.domain_type))
        })?;
        if p.domain_class != 1 {
            return Err(
                StorageError::InvalidParameter(format!("domainClass={}", p.domain_class)).into(),
            );
        }
        if p.version != i64::from(crate::storage::domain::DOMAIN_VERSION) {
            return Err(StorageError::InvalidParameter(format!("version={}", p.version)).into());
        }
        if self.domain(p.domain).is_ok() {
            return Err(StorageError::DomainExists(p.domain).into());
        }
        let new = NewDomain {
            uuid: p.domain,
            kind,
            remote_path: p.type_args.path().to_owned(),
            name: p.name,
            block_size: p.block_size.unwrap_or(512),
            max_hosts: p.max_hosts.unwrap_or(250),
        };
        let service = self.clone();
        blocking(move || {
            let domain = Domain::create(&service.inner.repo, &new, service.inner.pool)?;
            tracing::info!(domain = %domain.uuid, root = %domain.dir.root().display(), "storage domain created");
            let mut domains = service.inner.domains.write().unwrap_or_else(|e| e.into_inner());
            domains.insert(domain.uuid, Arc::new(domain));
            Ok(())
        })
        .await
    }

    /// `StorageDomain.getInfo`.
    pub fn domain_info(&self, p: DomainParams) -> Result<DomainInfo, ApiError> {
        let domain = self.domain(p.domain)?;
        Ok(DomainInfo {
            uuid: domain.uuid,
            kind: domain.kind.name().to_owned(),
            class: "Data".to_owned(),
            name: domain.name.clone(),
            role: "Regular".to_owned(),
            pool: vec![domain.pool],
            version: domain.version.to_string(),
            block_size: domain.block_size,
            alignment: 1_048_576,
            remote_path: domain.remote_path.clone(),
        })
    }

    /// `StorageDomain.getStats`.
    pub async fn domain_stats(&self, p: DomainParams) -> Result<DomainStats, ApiError> {
        let domain = self.domain(p.domain)?;
        let (free, total) = blocking(move || domain.space()).await?;
        Ok(DomainStats {
            disktotal: total.to_string(),
            diskfree: free.to_string(),
            mdavalid: true,
            mdathreshold: true,
        })
    }

    /// `Host.getStorageDomains`.
    pub fn storage_domains(&self, p: GetStorageDomainsParams) -> Vec<Uuid> {
        let domains = self.inner.domains.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<Uuid> = domains
            .values()
            .filter(|d| p.pool.is_none_or(|pool| pool == d.pool))
            .map(|d| d.uuid)
            .collect();
        ids.sort();
        ids
    }

    /// `StorageDomain.getVolumes`.
    pub async fn domain_volumes(&self, p: DomainVolumesParams) -> Result<Vec<Uuid>, ApiError> {
        self.check_pool(p.pool)?;
        let domain = self.domain(p.domain)?;
        let only = p.image.filter(|i| *i != BLANK_UUID);
        blocking(move || {
            let images = match only {
                Some(image) => vec![image],
                None => domain.images()?,
            };
            let mut volumes = Vec::new();
            for image in images {
                volumes.extend(domain.volumes(image)?);
            }
            Ok(volumes)
        })
        .await
    }

    /// `Image.getVolumes`.
    pub async fn image_volumes(&self, p: ImageParams) -> Result<Vec<Uuid>, ApiError> {
        let domain = self.image_domain(p.pool, p.domain, p.image)?;
        blocking(move || domain.volumes(p.image)).await
    }

    /// `Volume.getInfo`.
    pub async fn volume_info(&self, p: VolumeParams) -> Result<VolumeInfo, ApiError> {
        let domain = self.image_domain(p.pool, p.domain, p.image)?;
        blocking(move || {
            let meta = volume::read_meta(&domain, p.image, p.volume)?;
            let (apparent, true_size) = volume::size(&domain, p.image, p.volume)?;
            let children = volume::children(&domain, p.image, p.volume)?;
            let status = if meta.legality == Legality::Illegal {
                "ILLEGAL"
            } else {
                "OK"
            };
            Ok(VolumeInfo {
                uuid: p.volume,
                allocation: meta.allocation.to_string(),
                format: meta.format.to_string(),
                disktype: meta.disk_type,
                voltype: meta.role.to_string(),
                capacity: meta.capacity.to_string(),
                parent: meta.parent,
                description: meta.description,
                pool: String::new(),
                domain: meta.domain,
                image: meta.image,
                ctime: meta.ctime.to_string(),
                mtime: "0".to_owned(),
                legality: meta.legality.to_string(),
                generation: meta.generation,
                sequence: meta.sequence,
                apparentsize: apparent.to_string(),
                truesize: true_size.to_string(),
                status: status.to_owned(),
                children,
                snapshot: volume::read_snapshot_note(&domain, p.image, p.volume),
            })
        })
        .await
    }

    /// `Volume.getSize`.
    pub async fn volume_size(&self, p: VolumeParams) -> Result<VolumeSize, ApiError> {
        let domain = self.image_domain(p.pool, p.domain, p.image)?;
        blocking(move || {
            volume::read_meta(&domain, p.image, p.volume)?;
            let (apparent, true_size) = volume::size(&domain, p.image, p.volume)?;
            Ok(VolumeSize {
                apparentsize: apparent.to_string(),
                truesize: true_size.to_string(),
            })
        })
        .await
    }

    /// `Volume.create`: checks everything, then starts the task and returns its id.
    pub async fn create_volume(&self, p: CreateVolumeParams) -> Result<Uuid, ApiError> {
        self.check_pool(p.pool)?;
        let domain = self.domain(p.domain)?;
        let request = create_request(&p)?;
        let check = {
            let domain = Arc::clone(&domain);
            let request = request.clone();
            blocking(move || {
                let has_image = domain.has_image(request.image)?;
                if request.parent.is_some() && !has_image {
                    return Err(StorageError::ImageDoesNotExist {
                        image: request.image,
                        domain: domain.uuid,
                    });
                }
                volume::check_create(&domain, &request)?;
                if request.allocation == Preallocation::Preallocated {
                    let (free, _) = domain.space()?;
                    if request.capacity > free {
                        return Err(StorageError::NoSpace {
                            domain: domain.uuid,
                            requested: request.capacity,
                            free,
                        });
                    }
                }
                Ok(())
            })
        };
        check.await?;

        let task = Uuid::new_v4();
        let work = TaskWork::CreateVolume {
            domain: domain.uuid,
            request: request.clone(),
            progress: CreateProgress::default(),
        };
        let stop = on_tasks(&self.inner.tasks, move |t| {
            t.start(task, names::VOLUME_CREATE, work)
        })
        .await?;
        tracing::info!(%task, volume = %request.volume, image = %request.image, "Volume.create task started");
        let service = self.clone();
        tokio::spawn(async move { service.run_create(task, domain, request, stop).await });
        Ok(task)
    }

    async fn run_create(
        &self,
        task: Uuid,
        domain: Arc<Domain>,
        request: CreateRequest,
        stop: CancellationToken,
    ) {
        let mut progress = CreateProgress::default();
        let result = self
            .create_steps(task, &domain, &request, &mut progress, &stop)
            .await;
        let outcome = match result {
            Ok(()) => {
                tracing::info!(%task, volume = %request.volume, "volume created");
                crate::metrics::global().volumes_created.inc();
                Ok(())
            }
            Err(err) => {
                let code = crate::services::errors::storage_code(&err);
                let message = err.to_string();
                tracing::warn!(%task, error = %message, "Volume.create failed; rolling back");
                let undo = {
                    let (domain, request, progress) =
                        (Arc::clone(&domain), request.clone(), progress.clone());
                    blocking(move || volume::rollback(&domain, &request, &progress)).await
                };
                if let Err(e) = &undo {
                    tracing::error!(%task, error = %e, "rollback failed");
                }
                Err((code, message, undo.is_ok()))
            }
        };
        if let Err(err) = on_tasks(&self.inner.tasks, move |t| t.end(task, outcome)).await {
            tracing::error!(%task, error = %err, "cannot record the task's end");
        }
    }

    async fn create_steps(
        &self,
        task: Uuid,
        domain: &Arc<Domain>,
        request: &CreateRequest,
        progress: &mut CreateProgress,
        stop: &CancellationToken,
    ) -> Result<(), StorageError> {
        let recorder = |tasks: TaskManager, domain_id: Uuid, request: CreateRequest| {
            move |p: &CreateProgress| {
                tasks
                    .update_work(
                        task,
                        TaskWork::CreateVolume {
                            domain: domain_id,
                            request: request.clone(),
                            progress: p.clone(),
                        },
                    )
                    .map_err(|e| StorageError::Persist(e.to_string()))
            }
        };
        let step = |progress: CreateProgress, publish: bool| {
            let domain = Arc::clone(domain);
            let request = request.clone();
            let mut record = recorder(self.inner.tasks.clone(), domain.uuid, request.clone());
            tokio::task::spawn_blocking(move || {
                let mut progress = progress;
                let result = if publish {
                    volume::publish(&domain, &request, &mut progress, &mut record)
                } else {
                    volume::reserve(&domain, &request, &mut progress, &mut record)
                };
                (progress, result)
            })
        };
        let (after, result) = step(progress.clone(), false).await.map_err(join_error)?;
        *progress = after;
        result?;
        if stop.is_cancelled() {
            return Err(StorageError::Aborted);
        }
        volume::write_data(domain, request, self.inner.qemu_img_timeout, stop).await?;
        let (after, result) = step(progress.clone(), true).await.map_err(join_error)?;
        *progress = after;
        result
    }

    /// `Volume.delete`: checks, then starts the task and returns its id.
    pub async fn delete_volume(&self, p: DeleteVolumeParams) -> Result<Uuid, ApiError> {
        let ids = p.ids();
        let domain = self.image_domain(ids.pool, ids.domain, ids.image)?;
        {
            let domain = Arc::clone(&domain);
            blocking(move || volume::check_delete(&domain, ids.image, ids.volume).map(|_| ()))
                .await?;
        }
        self.refuse_if_in_use(&domain, ids.image, &[ids.volume])
            .await?;
        let (domain_id, image, volume) = (domain.uuid, ids.image, ids.volume);
        let work = move |started| TaskWork::DeleteVolume {
            domain: domain_id,
            image,
            volume,
            started,
        };
        self.start_delete(names::VOLUME_DELETE, work, move || {
            volume::mark_illegal(&domain, image, volume)?;
            volume::remove_files(&domain, image, volume)
        })
        .await
    }

    /// `Image.delete`: checks, then starts the task and returns its id.
    pub async fn delete_image(&self, p: DeleteImageParams) -> Result<Uuid, ApiError> {
        let ids = p.ids();
        let domain = self.image_domain(ids.pool, ids.domain, ids.image)?;
        let volumes = {
            let domain = Arc::clone(&domain);
            blocking(move || domain.volumes(ids.image)).await?
        };
        self.refuse_if_in_use(&domain, ids.image, &volumes).await?;
        let (domain_id, image) = (domain.uuid, ids.image);
        let work = move |started| TaskWork::DeleteImage {
            domain: domain_id,
            image,
            started,
        };
        self.start_delete(names::IMAGE_DELETE, work, move || {
            remove_image(&domain, image)
        })
        .await
    }

    /// Starts a delete task: persisted with `work(false)`, then, once `work(true)` is
    /// persisted (from here a restart finishes it), `remove` runs.
    async fn start_delete(
        &self,
        verb: &'static str,
        work: impl Fn(bool) -> TaskWork + Send + 'static,
        remove: impl FnOnce() -> Result<(), StorageError> + Send + 'static,
    ) -> Result<Uuid, ApiError> {
        let task = Uuid::new_v4();
        let first = work(false);
        on_tasks(&self.inner.tasks, move |t| t.start(task, verb, first)).await?;
        tracing::info!(%task, verb, "delete task started");
        let service = self.clone();
        tokio::spawn(async move {
            let tasks = service.inner.tasks.clone();
            let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = Arc::clone(&started);
            let result = blocking(move || {
                tasks
                    .update_work(task, work(true))
                    .map_err(|e| StorageError::Persist(e.to_string()))?;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                remove()
            })
            .await;
            service.end_delete(task, result, &started).await;
        });
        Ok(task)
    }

    /// Records the end of a delete: a failure before anything changed is clean, one after the
    /// volume went ILLEGAL is not (the volume stays ILLEGAL, visibly).
    async fn end_delete(
        &self,
        task: Uuid,
        result: Result<(), ApiError>,
        started: &std::sync::atomic::AtomicBool,
    ) {
        let outcome = match result {
            Ok(()) => Ok(()),
            Err(err) => {
                tracing::warn!(%task, error = %err, "delete failed");
                let clean = !started.load(std::sync::atomic::Ordering::SeqCst);
                Err((err.code(), err.to_string(), clean))
            }
        };
        if let Err(err) = on_tasks(&self.inner.tasks, move |t| t.end(task, outcome)).await {
            tracing::error!(%task, error = %err, "cannot record the task's end");
        }
    }

    /// Refuses (222) when a VM of this host, running or defined, uses one of `volumes` (or has
    /// it in its backing chain). When libvirt cannot tell, the delete is refused too.
    async fn refuse_if_in_use(
        &self,
        domain: &Domain,
        image: Uuid,
        volumes: &[Uuid],
    ) -> Result<(), ApiError> {
        let in_use = self.inner.hypervisor.disk_paths_in_use().await?;
        let ours: Vec<(Uuid, std::path::PathBuf)> = volumes
            .iter()
            .map(|v| (*v, domain.dir.volume(image, *v)))
            .collect();
        // Resolving paths can block on a slow mount: off the reactor.
        blocking(move || {
            let in_use: Vec<_> = in_use
                .iter()
                .filter_map(|p| std::fs::canonicalize(p).ok())
                .collect();
            for (volume, path) in ours {
                if let Ok(path) = std::fs::canonicalize(&path)
                    && in_use.contains(&path)
                {
                    return Err(StorageError::InUse(volume));
                }
            }
            Ok(())
        })
        .await
    }

    /// `Image.prepare`: every volume of the image must be usable; returns the path through the
    /// pool's link to the domain, as VDSM's paths are.
    pub async fn prepare_image(&self, p: PrepareImageParams) -> Result<PreparedImage, ApiError> {
        let domain = self.image_domain(p.pool, p.domain, p.image)?;
        let pool_dir = self.inner.repo.pool_dir(self.inner.pool);
        blocking(move || {
            volume::read_meta(&domain, p.image, p.volume)?;
            for candidate in domain.volumes(p.image)? {
                let meta = volume::read_meta(&domain, p.image, candidate)?;
                if meta.legality != Legality::Legal && !p.allow_illegal {
                    return Err(StorageError::PrepareIllegal(candidate));
                }
            }
            let link = pool_dir.join(domain.uuid.hyphenated().to_string());
            if std::fs::read_link(&link).ok().as_deref() != Some(domain.dir.root()) {
                std::fs::create_dir_all(&pool_dir)
                    .map_err(StorageError::io("create", &pool_dir))?;
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(domain.dir.root(), &link)
                    .map_err(StorageError::io("link", &link))?;
            }
            let path = link
                .join("images")
                .join(p.image.hyphenated().to_string())
                .join(p.volume.hyphenated().to_string());
            Ok(PreparedImage {
                path: path.to_string_lossy().into_owned(),
            })
        })
        .await
    }

    /// `Image.teardown`: nothing to release on a file domain once the ids are checked.
    pub fn teardown_image(&self, p: TeardownImageParams) -> Result<(), ApiError> {
        self.image_domain(p.pool, p.domain, p.image).map(|_| ())
    }

    /// The data file of a volume, checked to be a usable snapshot target on top of `base`:
    /// it exists, is LEGAL, a LEAF, COW, and its parent is `base`.
    pub async fn snapshot_target(
        &self,
        domain: Uuid,
        image: Uuid,
        base: Uuid,
        volume: Uuid,
    ) -> Result<(std::path::PathBuf, std::path::PathBuf), ApiError> {
        let domain = self.domain_with_image(domain, image)?;
        blocking(move || {
            volume::read_meta(&domain, image, base)?;
            let meta = volume::read_meta(&domain, image, volume)?;
            let refuse =
                |why: &str| StorageError::InvalidParameter(format!("volumeID={volume}: {why}"));
            if meta.legality != Legality::Legal {
                return Err(refuse("the new volume is not LEGAL"));
            }
            if meta.format != VolumeFormat::Cow {
                return Err(refuse("the new volume is not COW"));
            }
            if meta.role != crate::api::volume_types::VolumeRole::Leaf {
                return Err(refuse("the new volume is not a LEAF"));
            }
            if meta.parent != base {
                return Err(refuse(&format!(
                    "its parent is {}, not the base volume {base}",
                    meta.parent
                )));
            }
            let data = domain.dir.volume(image, volume);
            // A volume whose data file went missing is refused here, before any job or
            // freeze, rather than by the switch.
            match std::fs::symlink_metadata(&data) {
                Ok(m) if m.file_type().is_file() => {}
                _ => return Err(refuse("its data file is missing (or not a regular file)")),
            }
            Ok((domain.dir.volume(image, base), data))
        })
        .await
    }

    /// Deletes a new volume a failed snapshot did not switch to; its parent (`parent`) becomes
    /// a LEAF again. Not a task: it is part of the snapshot job's rollback. Idempotent, so that
    /// a rollback interrupted by a crash is finished by recovery.
    pub async fn discard_volume(
        &self,
        domain: Uuid,
        image: Uuid,
        volume: Uuid,
        parent: Uuid,
    ) -> Result<(), ApiError> {
        let domain = self.domain(domain)?;
        blocking(move || {
            match volume::mark_illegal(&domain, image, volume) {
                Ok(_) => volume::remove_files(&domain, image, volume)?,
                // Gone already: a rollback interrupted after the `.meta` went.
                Err(StorageError::VolumeDoesNotExist(_)) => {}
                Err(err) => return Err(err),
            }
            // Again, in case an interrupted rollback removed the volume but not this step.
            let _lock = domain.lock().acquire()?;
            volume::recheck_leaf(&domain, image, parent)
        })
        .await
    }

    /// Whether the guest may have written to `volume`: its own layer holds data (read with
    /// `qemu-img map`, sharing the image with a writer that may exist). A new volume a VM never
    /// switched to holds none.
    pub async fn volume_has_data(
        &self,
        domain: Uuid,
        image: Uuid,
        volume: Uuid,
    ) -> Result<bool, ApiError> {
        let domain = self.domain(domain)?;
        let dir = domain.dir.image(image);
        let name = volume.hyphenated().to_string();
        let args = ["map", "-U", "-f", "qcow2", "--output=json", name.as_str()];
        let out = crate::storage::qemu_img::run(
            &args,
            &dir,
            self.inner.qemu_img_timeout,
            &CancellationToken::new(),
        )
        .await
        .map_err(|e| ApiError::Unexpected(e.to_string()))?;
        let extents: Vec<serde_json::Value> = serde_json::from_str(&out)
            .map_err(|e| ApiError::Unexpected(format!("qemu-img map output: {e}")))?;
        Ok(extents.iter().any(|e| e["depth"] == 0 && e["data"] == true))
    }

    /// Records how the snapshot on top of `base` was taken.
    pub async fn note_snapshot(
        &self,
        domain: Uuid,
        image: Uuid,
        base: Uuid,
        note: crate::api::snapshot_types::SnapshotNote,
    ) -> Result<(), ApiError> {
        let domain = self.domain(domain)?;
        blocking(move || volume::write_snapshot_note(&domain, image, base, &note)).await
    }

    /// `Task.getStatus`.
    pub fn task_status(&self, p: TaskParams) -> Result<TaskStatus, ApiError> {
        Ok(status_of(&self.inner.tasks.get(p.task)?))
    }

    /// `Task.getInfo`.
    pub fn task_info(&self, p: TaskParams) -> Result<TaskInfo, ApiError> {
        let record = self.inner.tasks.get(p.task)?;
        Ok(TaskInfo {
            id: record.id,
            verb: record.verb,
        })
    }

    /// `Task.clear`.
    pub async fn task_clear(&self, p: TaskParams) -> Result<(), ApiError> {
        on_tasks(&self.inner.tasks, move |t| t.clear(p.task)).await
    }

    /// `Task.stop`.
    pub async fn task_stop(&self, p: TaskParams) -> Result<(), ApiError> {
        on_tasks(&self.inner.tasks, move |t| t.stop(p.task)).await
    }

    /// `Host.getAllTasksStatuses`.
    pub fn all_task_statuses(&self) -> BTreeMap<Uuid, TaskStatus> {
        self.inner
            .tasks
            .all()
            .iter()
            .map(|r| (r.id, status_of(r)))
            .collect()
    }
}

/// Deletes every volume of an image, leaf first, then the image directory. Idempotent, so
/// that recovery can finish an interrupted delete.
fn remove_image(domain: &Domain, image: Uuid) -> Result<(), StorageError> {
    for volume in volume::leaf_first(domain, image)? {
        volume::mark_illegal(domain, image, volume)?;
        volume::remove_files(domain, image, volume)?;
    }
    let dir = domain.dir.image(image);
    match std::fs::remove_dir(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove image directory", &dir)(e)),
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

/// Validates the wire parameters of `Volume.create` into a request (VDSM's rules, §2.2).
fn create_request(p: &CreateVolumeParams) -> Result<CreateRequest, StorageError> {
    let invalid = |what: String| StorageError::InvalidParameter(what);
    let size: u64 = p
        .size
        .trim()
        .parse()
        .map_err(|_| invalid(format!("size={}", p.size)))?;
    if size == 0 {
        return Err(StorageError::Size("size must be larger than 0".into()));
    }
    let capacity = size
        .checked_next_multiple_of(SIZE_ALIGNMENT)
        .ok_or_else(|| StorageError::Size(format!("size {size} is too large")))?;
    if !DISK_TYPES.contains(&p.disk_type.as_str()) {
        return Err(invalid(format!("diskType={}", p.disk_type)));
    }
    if p.initial_size.as_ref().is_some_and(|v| !v.is_null())
        && !(p.format == VolumeFormat::Raw && p.preallocate == Preallocation::Preallocated)
    {
        return Err(invalid(
            "initialSize is only for RAW preallocated volumes on file domains".into(),
        ));
    }
    let parent = p.src_volume.filter(|v| *v != BLANK_UUID);
    if let Some(src_image) = p.src_image.filter(|i| *i != BLANK_UUID && *i != p.image) {
        return Err(invalid(format!(
            "srcImgUUID={src_image}: volumes based on a template in another image are not supported"
        )));
    }
    if parent == Some(p.volume) {
        return Err(invalid("srcVolUUID must differ from volumeID".into()));
    }
    if parent.is_some() && p.format != VolumeFormat::Cow {
        return Err(StorageError::IncorrectFormat(
            "a volume with a parent must be COW (4)".into(),
        ));
    }
    Ok(CreateRequest {
        image: p.image,
        volume: p.volume,
        capacity,
        format: p.format,
        allocation: p.preallocate,
        disk_type: p.disk_type.clone(),
        description: p.desc.clone(),
        parent,
        legal: p.legal.unwrap_or(true),
        sequence: p.sequence.unwrap_or(0),
    })
}

/// Runs a task-manager call off the reactor: it writes and fsyncs the task's file.
async fn on_tasks<T: Send + 'static>(
    tasks: &TaskManager,
    f: impl FnOnce(&TaskManager) -> Result<T, crate::jobs::tasks::TaskError> + Send + 'static,
) -> Result<T, ApiError> {
    let tasks = tasks.clone();
    match tokio::task::spawn_blocking(move || f(&tasks)).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::Unexpected(format!(
            "task bookkeeping panicked: {e}"
        ))),
    }
}

/// Runs blocking storage work off the reactor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::Unexpected(format!("storage task panicked: {e}"))),
    }
}

fn join_error(e: tokio::task::JoinError) -> StorageError {
    StorageError::Creation(format!("storage step panicked: {e}"))
}
