//! The volume verbs: `Volume.create` as a persisted task whose failure, stop or interruption
//! rolls it back; `Volume.delete` and `Image.delete` as tasks that, once begun, a restart
//! finishes; `Volume.getInfo` and `Volume.getSize` in VDSM's shapes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{StorageService, StorageServiceError, blocking, off_reactor, on_tasks, validate};
use crate::api::ApiError;
use crate::api::names;
use crate::api::snapshot_types::SnapshotNote;
use crate::api::storage_types::{
    CreateVolumeParams, DeleteImageParams, DeleteVolumeParams, DeleteVolumesParams, VolumeInfo,
    VolumeParams, VolumeSize,
};
use crate::api::volume_types::{Legality, Preallocation};
use crate::jobs::tasks::{TaskManager, TaskWork};
use crate::services::errors::storage_code;
use crate::storage::domain::Domain;
use crate::storage::volume::{self, CreateProgress, CreateRequest};
use crate::storage::{StorageError, image, snapshot_volume};

impl StorageService {
    /// `Volume.getInfo`.
    pub async fn volume_info(&self, p: VolumeParams) -> Result<VolumeInfo, ApiError> {
        let domain = self.image_domain(p.pool, p.domain, p.image).await?;
        blocking(move || {
            let meta = volume::read_meta(&domain, p.image, p.volume)?;
            let (apparent, true_size) = volume::size(&domain, p.image, p.volume)?;
            let children = volume::children(&domain, p.image, p.volume)?;
            let note = snapshot_volume::read_note(&domain, p.image, p.volume);
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
                revert_boot: note.as_ref().map(SnapshotNote::revert_boot),
                snapshot: note,
            })
        })
        .await
    }

    /// `Volume.getSize`.
    pub async fn volume_size(&self, p: VolumeParams) -> Result<VolumeSize, ApiError> {
        let domain = self.image_domain(p.pool, p.domain, p.image).await?;
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
        let _spm = self.require_spm().await?;
        let domain = self.member_domain(p.pool, p.domain).await?;
        let request = validate::create_request(&p)?;
        {
            let (domain, request) = (Arc::clone(&domain), request.clone());
            blocking(move || check_create(&domain, &request)).await?;
        }

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
        let _image = self.lock_image(domain.uuid, request.image).await;
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
                let code = storage_code(&err);
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
        // Under the image's lock, the checks made at request time again: a delete or another
        // create may have changed the image since.
        {
            let (domain, request) = (Arc::clone(domain), request.clone());
            tokio::task::spawn_blocking(move || check_create(&domain, &request))
                .await
                .map_err(join_error)??;
        }
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
        self.check_pool(ids.pool)?;
        let _spm = self.require_spm().await?;
        let domain = self.image_domain(ids.pool, ids.domain, ids.image).await?;
        let (image, volume) = (ids.image, ids.volume);
        self.check_volume_delete(&domain, image, volume).await?;
        let domain_id = domain.uuid;
        let work = move |started| TaskWork::DeleteVolume {
            domain: domain_id,
            image,
            volume,
            started,
        };
        let recheck = {
            let (service, domain) = (self.clone(), Arc::clone(&domain));
            async move { service.check_volume_delete(&domain, image, volume).await }
        };
        self.start_delete(
            names::VOLUME_DELETE,
            (domain_id, image),
            work,
            recheck,
            move || {
                volume::mark_illegal(&domain, image, volume)?;
                volume::remove_files(&domain, image, volume)
            },
        )
        .await
    }

    /// Refuses to delete a volume with children, or one a VM uses.
    async fn check_volume_delete(
        &self,
        domain: &Arc<Domain>,
        image: Uuid,
        volume: Uuid,
    ) -> Result<(), ApiError> {
        {
            let domain = Arc::clone(domain);
            blocking(move || volume::check_delete(&domain, image, volume).map(|_| ())).await?;
        }
        Ok(self.refuse_if_in_use(domain, image, &[volume]).await?)
    }

    /// `Image.delete`: checks, then starts the task and returns its id.
    pub async fn delete_image(&self, p: DeleteImageParams) -> Result<Uuid, ApiError> {
        let ids = p.ids();
        self.check_pool(ids.pool)?;
        let _spm = self.require_spm().await?;
        let domain = self.image_domain(ids.pool, ids.domain, ids.image).await?;
        let image = ids.image;
        self.check_image_delete(&domain, image).await?;
        let domain_id = domain.uuid;
        let work = move |started| TaskWork::DeleteImage {
            domain: domain_id,
            image,
            started,
        };
        let recheck = {
            let (service, domain) = (self.clone(), Arc::clone(&domain));
            async move { service.check_image_delete(&domain, image).await }
        };
        self.start_delete(
            names::IMAGE_DELETE,
            (domain_id, image),
            work,
            recheck,
            move || image::remove(&domain, image),
        )
        .await
    }

    /// `Image.deleteVolumes`: checks, then deletes the listed volumes, leaf first, as one task.
    /// A listed volume that no longer exists counts as deleted (an engine deletes the new
    /// volume of a failed snapshot, which rvdsm already deleted).
    pub async fn delete_volumes(&self, p: DeleteVolumesParams) -> Result<Uuid, ApiError> {
        self.check_pool(p.pool)?;
        let _spm = self.require_spm().await?;
        if p.volumes.is_empty() {
            return Err(StorageError::InvalidParameter("volumeList is empty".into()).into());
        }
        let domain = self.image_domain(p.pool, p.domain, p.image).await?;
        let image = p.image;
        let ordered = self
            .check_volumes_delete(&domain, image, &p.volumes)
            .await?;
        let domain_id = domain.uuid;
        let listed = p.volumes.clone();
        let work = {
            let ordered = ordered.clone();
            move |started| TaskWork::DeleteVolumes {
                domain: domain_id,
                image,
                volumes: ordered.clone(),
                started,
            }
        };
        let recheck = {
            let (service, domain) = (self.clone(), Arc::clone(&domain));
            async move {
                service
                    .check_volumes_delete(&domain, image, &listed)
                    .await
                    .map(drop)
            }
        };
        self.start_delete(
            names::IMAGE_DELETE_VOLUMES,
            (domain_id, image),
            work,
            recheck,
            // Leaf first, each ILLEGAL before its files go: a volume takes its turn once its
            // listed children are gone.
            move || {
                ordered.iter().try_for_each(|volume| {
                    volume::mark_illegal(&domain, image, *volume)?;
                    volume::remove_files(&domain, image, *volume)
                })
            },
        )
        .await
    }

    /// The listed volumes that exist, leaf first; refused when one has a child outside the
    /// list, is a shared template, or is used by a VM.
    async fn check_volumes_delete(
        &self,
        domain: &Arc<Domain>,
        image: Uuid,
        listed: &[Uuid],
    ) -> Result<Vec<Uuid>, ApiError> {
        let ordered = {
            let (domain, listed) = (Arc::clone(domain), listed.to_vec());
            blocking(move || {
                let existing: Vec<Uuid> = volume::leaf_first(&domain, image)
                    .or_else(|e| match e {
                        StorageError::ImageDoesNotExist { .. } => Ok(Vec::new()),
                        other => Err(other),
                    })?
                    .into_iter()
                    .filter(|v| listed.contains(v))
                    .collect();
                for volume in &existing {
                    match volume::check_delete(&domain, image, *volume) {
                        Ok(_) => {}
                        Err(StorageError::HasChildren(_)) => {
                            let children = volume::children(&domain, image, *volume)?;
                            if children.iter().any(|c| !listed.contains(c)) {
                                return Err(StorageError::HasChildren(*volume));
                            }
                        }
                        Err(err) => return Err(err),
                    }
                }
                Ok(existing)
            })
            .await?
        };
        self.refuse_if_in_use(domain, image, &ordered).await?;
        Ok(ordered)
    }

    /// Refuses to delete an image a VM uses any volume of.
    async fn check_image_delete(&self, domain: &Arc<Domain>, image: Uuid) -> Result<(), ApiError> {
        let volumes = {
            let domain = Arc::clone(domain);
            blocking(move || domain.volumes(image)).await?
        };
        Ok(self.refuse_if_in_use(domain, image, &volumes).await?)
    }

    /// Starts a delete task on the image `(domain, image)`: persisted with `work(false)`; then,
    /// under the image's lock, `recheck` (the request's checks again: a create or another
    /// delete may have changed the image meanwhile) and, once `work(true)` is persisted (from
    /// here a restart finishes it), `remove`.
    async fn start_delete(
        &self,
        verb: &'static str,
        (domain, image): (Uuid, Uuid),
        work: impl Fn(bool) -> TaskWork + Send + 'static,
        recheck: impl std::future::Future<Output = Result<(), ApiError>> + Send + 'static,
        remove: impl FnOnce() -> Result<(), StorageError> + Send + 'static,
    ) -> Result<Uuid, ApiError> {
        let task = Uuid::new_v4();
        let first = work(false);
        on_tasks(&self.inner.tasks, move |t| t.start(task, verb, first)).await?;
        tracing::info!(%task, verb, "delete task started");
        let service = self.clone();
        tokio::spawn(async move {
            let _image = service.lock_image(domain, image).await;
            let started = Arc::new(AtomicBool::new(false));
            let result = match recheck.await {
                Ok(()) => {
                    let tasks = service.inner.tasks.clone();
                    let flag = Arc::clone(&started);
                    blocking(move || {
                        tasks
                            .update_work(task, work(true))
                            .map_err(|e| StorageError::Persist(e.to_string()))?;
                        flag.store(true, Ordering::SeqCst);
                        remove()
                    })
                    .await
                }
                Err(err) => Err(err),
            };
            service.end_delete(task, result, &started).await;
        });
        Ok(task)
    }

    /// Records the end of a delete: a failure before anything changed is clean, one after the
    /// volume went ILLEGAL is not (the volume stays ILLEGAL, visibly).
    async fn end_delete(&self, task: Uuid, result: Result<(), ApiError>, started: &AtomicBool) {
        let outcome = match result {
            Ok(()) => Ok(()),
            Err(err) => {
                tracing::warn!(%task, error = %err, "delete failed");
                let clean = !started.load(Ordering::SeqCst);
                Err((err.code(), err.to_string(), clean))
            }
        };
        if let Err(err) = on_tasks(&self.inner.tasks, move |t| t.end(task, outcome)).await {
            tracing::error!(%task, error = %err, "cannot record the task's end");
        }
    }

    /// Refuses (222) when a VM of this host, running or defined, uses one of `volumes` (or has
    /// it in its backing chain). When libvirt cannot tell, the delete is refused too.
    pub(super) async fn refuse_if_in_use(
        &self,
        domain: &Arc<Domain>,
        image: Uuid,
        volumes: &[Uuid],
    ) -> Result<(), StorageServiceError> {
        let in_use: Vec<PathBuf> = self
            .inner
            .hypervisor
            .disk_paths_in_use()
            .await?
            .into_iter()
            .map(PathBuf::from)
            .collect();
        let (domain, volumes) = (Arc::clone(domain), volumes.to_vec());
        // Resolving paths can block on a slow mount: off the reactor.
        Ok(off_reactor(move || image::refuse_if_in_use(&domain, image, &volumes, &in_use)).await?)
    }
}

fn join_error(e: tokio::task::JoinError) -> StorageError {
    StorageError::Creation(format!("storage step panicked: {e}"))
}

/// The checks of a create, made at request time and again under the image's lock.
fn check_create(domain: &Domain, request: &CreateRequest) -> Result<(), StorageError> {
    let has_image = domain.has_image(request.image)?;
    if request.parent.is_some() && !has_image {
        return Err(StorageError::ImageDoesNotExist {
            image: request.image,
            domain: domain.uuid,
        });
    }
    volume::check_create(domain, request)?;
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
}
