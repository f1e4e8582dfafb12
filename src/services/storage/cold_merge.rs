//! The storage side of a cold merge (VM stopped) and of a full copy, with VDSM's verbs:
//! `StoragePool.prepareMerge` (checks, the base grown to the top's capacity) and
//! `StoragePool.finalizeMerge` (the top's child rebased on the base, the metadata updated,
//! the top deleted) as tasks; the data steps the SDM jobs run (`qemu-img commit` of the top
//! into the base, `qemu-img convert` of a chain into another volume) under the image's lock,
//! as VDSM's data operations (expected generation checked, generation bumped); and
//! `Image.reconcileVolumeChain`, the chain read back from the qcow2 headers.

use std::collections::HashSet;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{StorageService, StorageServiceError, blocking, off_reactor, on_tasks};
use crate::api::ApiError;
use crate::api::merge_types::{CopyEndpoint, PoolSubchainParams, ReconcileParams, SubchainInfo};
use crate::api::names;
use crate::api::volume_types::{BLANK_UUID, Legality};
use crate::jobs::tasks::{TaskRecord, TaskWork};
use crate::storage::copy::{self, Endpoint};
use crate::storage::domain::Domain;
use crate::storage::image::ImageRef;
use crate::storage::merge::{self, MergePair};
use crate::storage::volume::{read_meta, write_meta};
use crate::storage::{StorageError, data_operation, tool_files};

impl StorageService {
    /// Checks a subchain for a cold merge: `top` a LEGAL child of a LEGAL `base` (nothing else
    /// based on `base`), the base at the expected generation, no VM of this host using the
    /// image's volumes, no copy reading them.
    pub async fn check_subchain(&self, s: &SubchainInfo) -> Result<MergePair, StorageServiceError> {
        let domain = self.domain_with_image(s.sd_id, s.img_id).await?;
        let (image, base, top) = (s.img_id, s.base_id, s.top_id);
        let pair = {
            let domain = Arc::clone(&domain);
            off_reactor(move || merge::check_pair(&domain, image, base, top)).await?
        };
        if let Some(expected) = s.base_generation
            && expected != pair.base.generation
        {
            return Err(StorageError::GenerationMismatch(format!(
                "base {base} is at generation {}, not {expected}",
                pair.base.generation
            ))
            .into());
        }
        let volumes: Vec<Uuid> = [base, top].into_iter().chain(pair.child).collect();
        self.refuse_if_in_use(&domain, image, &volumes).await?;
        if self.is_being_copied(ImageRef::new(s.sd_id, image)) {
            return Err(StorageError::InvalidParameter(format!(
                "image {image} is being copied: its chain cannot change until the copy ends"
            ))
            .into());
        }
        Ok(pair)
    }

    /// `StoragePool.prepareMerge`: checks, then grows the base's capacity to the top's.
    pub async fn prepare_merge(&self, p: PoolSubchainParams) -> Result<Uuid, ApiError> {
        self.check_pool(p.pool)?;
        let _spm = self.require_spm().await?;
        let s = p.subchain;
        self.check_subchain(&s).await?;
        let work = TaskWork::PrepareMerge {
            domain: s.sd_id,
            image: s.img_id,
        };
        Ok(self
            .run_task(
                names::SP_PREPARE_MERGE,
                s,
                work,
                |service, s, _task| async move {
                    let _image = service.lock_image(s.sd_id, s.img_id).await;
                    let pair = service.check_subchain(&s).await?;
                    let domain = service.domain(s.sd_id)?;
                    blocking(move || {
                        let _lock = domain.lock().acquire()?;
                        let mut base = read_meta(&domain, s.img_id, s.base_id)?;
                        if base.capacity < pair.top.capacity {
                            base.capacity = pair.top.capacity;
                            write_meta(&domain, s.img_id, s.base_id, &base)?;
                        }
                        Ok(())
                    })
                    .await
                },
            )
            .await?)
    }

    /// The cold merge's data step (`SDM.merge`'s work): `top`'s data committed into `base`
    /// under the image's lock, as a data operation on `base`. `base`'s snapshot note goes
    /// first: from the commit's start it no longer holds its own snapshot's instant. Returns
    /// the base's new generation.
    pub async fn commit_subchain(
        &self,
        s: SubchainInfo,
        merge_bitmaps: bool,
        stop: &CancellationToken,
        progress: impl FnMut(f64) + Send,
    ) -> Result<u32, StorageServiceError> {
        let _image = self.lock_image(s.sd_id, s.img_id).await;
        // Taken before the checks: a copy starting after them would read a chain being
        // rewritten.
        let _merging = self.merging(ImageRef::new(s.sd_id, s.img_id))?;
        self.check_subchain(&s).await?;
        let domain = self.domain(s.sd_id)?;
        // qemu-img opens the chain by names: checked before anything is written (no link,
        // headers naming only their parents), each name rechecked right before it runs.
        let chain = {
            let domain = Arc::clone(&domain);
            off_reactor(move || tool_files::check_chain(&domain, s.img_id, s.top_id)).await?
        };
        {
            let domain = Arc::clone(&domain);
            off_reactor(move || {
                data_operation::begin(&domain, s.img_id, s.base_id, s.base_generation, false)?;
                let note = domain.dir.snapshot_note(s.img_id, s.base_id);
                domain
                    .dir
                    .remove(&note)
                    .map(drop)
                    .map_err(StorageError::io("remove", &note))
            })
            .await?;
        }
        let limits = (self.inner.qemu_img_timeout, stop);
        let chain = {
            let dir = domain.dir.clone();
            off_reactor(move || tool_files::recheck_all(&dir, &chain).map(|()| chain)).await?
        };
        let committed = merge::commit(
            &domain,
            s.img_id,
            s.base_id,
            s.top_id,
            merge_bitmaps,
            limits,
            progress,
        )
        .await;
        drop(chain);
        committed?;
        Ok(off_reactor(move || data_operation::end(&domain, s.img_id, s.base_id)).await?)
    }

    /// `StoragePool.finalizeMerge`, once the caller checked that an `SDM.merge` of this
    /// subchain succeeded and left the base at `base_generation` (refused, 911, if the base
    /// changed since): `top`'s child rebased on `base` (its qcow2 header), the metadata
    /// updated, `top` deleted.
    pub async fn finalize_merge(
        &self,
        p: PoolSubchainParams,
        base_generation: u32,
    ) -> Result<Uuid, StorageServiceError> {
        self.check_pool(p.pool)?;
        let _spm = self.require_spm().await?;
        // An engine sends the subchain it gave SDM.merge, with the base's generation from
        // before the merge bumped it (VDSM's finalize does not check it): the base must be
        // as the merge left it instead.
        let s = SubchainInfo {
            base_generation: Some(base_generation),
            ..p.subchain
        };
        let pair = self.check_subchain(&s).await?;
        let work = move |started| TaskWork::FinalizeMerge {
            domain: s.sd_id,
            image: s.img_id,
            base: s.base_id,
            top: s.top_id,
            child: pair.child,
            started,
        };
        let first = work(false);
        self.run_task(
            names::SP_FINALIZE_MERGE,
            s,
            first,
            move |service, s, task| async move {
                let _image = service.lock_image(s.sd_id, s.img_id).await;
                let pair = service.check_subchain(&s).await?;
                let started = work(true);
                on_tasks(&service.inner.tasks, move |t| t.update_work(task, started)).await?;
                service
                    .finish_finalize(s.sd_id, s.img_id, s.base_id, s.top_id, pair.child)
                    .await
            },
        )
        .await
    }

    /// The finalize's forward steps; idempotent.
    async fn finish_finalize(
        &self,
        domain: Uuid,
        image: Uuid,
        base: Uuid,
        top: Uuid,
        child: Option<Uuid>,
    ) -> Result<(), ApiError> {
        let domain = self.domain(domain)?;
        if let Some(child) = child {
            // qemu-img rewrites the child's header: it gets the child opened without any
            // link, by rvdsm's descriptor, held until it is done.
            let dir = domain.dir.clone();
            let held = blocking(move || {
                let path = dir.volume(image, child);
                tool_files::HeldFile::open(&dir, &path, true)
            })
            .await?;
            merge::rebase_onto(&domain, image, &held, base, self.inner.qemu_img_timeout).await?;
        }
        crate::failpoint::pause!("finalize:rebased");
        blocking(move || merge::unlink_merged(&domain, image, base, top)).await
    }

    /// Finishes the finalizes a restart interrupted after their rebase began (forward: the
    /// commit they follow had succeeded). Called once the daemon runs.
    pub async fn finish_interrupted(&self) {
        let records: Vec<TaskRecord> = std::mem::take(
            &mut *self
                .inner
                .to_finish
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for record in records {
            let TaskWork::FinalizeMerge {
                domain,
                image,
                base,
                top,
                child,
                ..
            } = record.work
            else {
                continue;
            };
            let _image = self.lock_image(domain, image).await;
            let outcome = self
                .finish_finalize(domain, image, base, top, child)
                .await
                .map_err(|e| (e.code(), e.to_string(), false));
            tracing::warn!(task = %record.id, ok = outcome.is_ok(), "interrupted finalizeMerge finished");
            if let Err(err) = on_tasks(&self.inner.tasks, move |t| t.end(record.id, outcome)).await
            {
                tracing::error!(error = %err, "cannot record the recovered task");
            }
        }
    }

    /// A full copy's data step (`SDM.copy_data`'s work): the source's chain copied into the
    /// destination, a data operation on it (ILLEGAL until the copy is done). The caller holds
    /// the source image's `CopyReading` from the request on, so that snapshots and merges of
    /// it are refused meanwhile. Returns the destination's new generation.
    pub async fn copy_volume(
        &self,
        source: CopyEndpoint,
        destination: CopyEndpoint,
        stop: &CancellationToken,
        progress: impl FnMut(f64) + Send,
    ) -> Result<u32, StorageServiceError> {
        let _image = self.lock_image(destination.sd_id, destination.img_id).await;
        self.check_copy(&source, &destination).await?;
        let src_domain = self.domain(source.sd_id)?;
        let dst_domain = self.domain(destination.sd_id)?;
        // Checked before anything is written: a refused copy leaves the destination as it was.
        let files = {
            let (src, dst) = (Arc::clone(&src_domain), Arc::clone(&dst_domain));
            let (s, d) = (source, destination);
            off_reactor(move || {
                let end = |domain, e: CopyEndpoint| Endpoint {
                    domain,
                    image: e.img_id,
                    volume: e.vol_id,
                };
                copy::check_files(end(&src, s), end(&dst, d))
            })
            .await?
        };
        {
            let domain = Arc::clone(&dst_domain);
            let (image, volume) = (destination.img_id, destination.vol_id);
            let expected = destination.generation;
            off_reactor(move || data_operation::begin(&domain, image, volume, expected, true))
                .await?;
        }
        let ends = (
            Endpoint {
                domain: &src_domain,
                image: source.img_id,
                volume: source.vol_id,
            },
            Endpoint {
                domain: &dst_domain,
                image: destination.img_id,
                volume: destination.vol_id,
            },
        );
        copy::convert(
            ends.0,
            ends.1,
            files,
            (self.inner.qemu_img_timeout, stop),
            progress,
        )
        .await?;
        let (image, volume) = (destination.img_id, destination.vol_id);
        Ok(off_reactor(move || {
            copy::mark_clone(&dst_domain, image, volume)?;
            data_operation::end(&dst_domain, image, volume)
        })
        .await?)
    }

    /// Checks a copy: both volumes exist and differ; the source is not the leaf a VM writes
    /// (it would change under the copy: copy a snapshot's volume), is not ILLEGAL; the
    /// destination is no VM's, has no volume based on it, and is not in the source's chain.
    pub async fn check_copy(
        &self,
        source: &CopyEndpoint,
        destination: &CopyEndpoint,
    ) -> Result<(), StorageServiceError> {
        let invalid = |why: String| StorageServiceError::from(StorageError::InvalidParameter(why));
        if (source.sd_id, source.img_id, source.vol_id)
            == (destination.sd_id, destination.img_id, destination.vol_id)
        {
            return Err(invalid(
                "the source and the destination are one volume".into(),
            ));
        }
        let src = self.domain_with_image(source.sd_id, source.img_id).await?;
        let dst = self
            .domain_with_image(destination.sd_id, destination.img_id)
            .await?;
        let (s, d) = (*source, *destination);
        let (src_leaf, in_chain) = {
            let (src, dst) = (Arc::clone(&src), Arc::clone(&dst));
            off_reactor(move || {
                let meta = read_meta(&src, s.img_id, s.vol_id)?;
                if meta.legality != Legality::Legal {
                    return Err(StorageError::InvalidParameter(format!(
                        "source volume {} is ILLEGAL",
                        s.vol_id
                    )));
                }
                read_meta(&dst, d.img_id, d.vol_id)?;
                if !crate::storage::volume::children(&dst, d.img_id, d.vol_id)?.is_empty() {
                    return Err(StorageError::HasChildren(d.vol_id));
                }
                let chain = chain_of(&src, s.img_id, s.vol_id)?;
                let leaf = meta.role == crate::api::volume_types::VolumeRole::Leaf;
                Ok((leaf, d.sd_id == s.sd_id && chain.contains(&d.vol_id)))
            })
            .await?
        };
        if in_chain {
            return Err(invalid(format!(
                "destination {} is in the source's chain",
                destination.vol_id
            )));
        }
        if src_leaf {
            self.refuse_if_in_use(&src, source.img_id, &[source.vol_id])
                .await
                .map_err(|_| {
                    invalid(format!(
                        "source {} is the volume a VM writes to: copy one of its snapshots",
                        source.vol_id
                    ))
                })?;
        }
        self.refuse_if_in_use(&dst, destination.img_id, &[destination.vol_id])
            .await
    }

    /// `Image.reconcileVolumeChain`: the chain as the qcow2 headers have it from `leaf` down
    /// (an ILLEGAL leaf left out, as VDSM: it was being merged away), base first, with each
    /// volume's recorded parent set to the one its header names. Refused while a VM uses
    /// the image.
    pub async fn reconcile_chain(&self, p: ReconcileParams) -> Result<Vec<Uuid>, ApiError> {
        self.check_pool(p.pool)?;
        let _spm = self.require_spm().await?;
        let domain = self.image_domain(p.pool, p.domain, p.image).await?;
        let _image = self.lock_image(p.domain, p.image).await;
        let volumes = {
            let domain = Arc::clone(&domain);
            blocking(move || domain.volumes(p.image)).await?
        };
        self.refuse_if_in_use(&domain, p.image, &volumes).await?;
        let timeout = self.inner.qemu_img_timeout;
        let mut actual = vec![p.leaf];
        let mut seen = HashSet::from([p.leaf]);
        let mut current = p.leaf;
        while let Some(parent) = merge::backing_of(&domain, p.image, current, timeout).await? {
            if !seen.insert(parent) {
                return Err(StorageError::Inspect {
                    volume: current,
                    message: "its backing chain loops".into(),
                }
                .into());
            }
            actual.push(parent);
            current = parent;
        }
        actual.reverse();
        blocking(move || {
            let _lock = domain.lock().acquire()?;
            if read_meta(&domain, p.image, p.leaf)?.legality == Legality::Illegal {
                actual.pop();
            }
            for pair in actual.windows(2) {
                let mut meta = read_meta(&domain, p.image, pair[1])?;
                if meta.parent != pair[0] {
                    meta.parent = pair[0];
                    write_meta(&domain, p.image, pair[1], &meta)?;
                }
            }
            Ok(actual)
        })
        .await
    }
}

/// The volumes from `volume` down to the base, by their recorded parents.
fn chain_of(domain: &Domain, image: Uuid, volume: Uuid) -> Result<Vec<Uuid>, StorageError> {
    let mut chain = vec![volume];
    let mut current = volume;
    while chain.len() <= 1024 {
        let parent = read_meta(domain, image, current)?.parent;
        if parent == BLANK_UUID {
            break;
        }
        chain.push(parent);
        current = parent;
    }
    Ok(chain)
}
