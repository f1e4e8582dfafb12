//! VDSM's SDM jobs, shown in `Host.getJobs` with `job_type: storage`: `SDM.merge` (the data
//! step of a cold merge, `merge_subchain`) and `SDM.copy_data` (a full clone, `copy_data`).
//! Each is journaled before it starts and when it ends, so that `Host.getJobs` tells after a
//! restart how it ended (an interrupted one failed: its commit or copy stopped midway, and
//! nothing was removed). And `StoragePool.finalizeMerge`, refused unless an `SDM.merge` of
//! the same subchain succeeded here and left the base as it is now: rebasing on a base that
//! lacks the top's data would lose it.

#[cfg(test)]
mod fake_tests;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::ApiError;
use crate::api::merge_types::{
    CopyDataParams, CopyEndpoint, PoolSubchainParams, SdmMergeParams, SubchainInfo,
};
use crate::jobs::journal::{Finished, Journal, JournalRecord};
use crate::jobs::kind::JobKind;
use crate::jobs::results::SdmResult;
use crate::jobs::vm_jobs::{JobError, JobKeepAlive, JobRegistry};
use crate::services::StorageService;
use crate::services::storage::{CopyReading, ImageRef};
use crate::storage::StorageError;
use crate::storage::layout::DomainDir;

/// The records of successful `SDM.merge`s on a shared domain (`<domain>/master/sdm-merges`).
const SHARED_MERGES: &str = "sdm-merges";

/// How long the record of a successful `SDM.merge` stays for its `finalizeMerge`: a week.
const MERGE_RECORD_SECONDS: u64 = 7 * 24 * 3600;

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
enum Work {
    /// `SDM.merge`.
    Merge {
        /// The subchain.
        subchain: SubchainInfo,
        /// Merge the bitmaps too.
        merge_bitmaps: bool,
    },
    /// `SDM.copy_data`.
    Copy {
        /// From.
        source: CopyEndpoint,
        /// To.
        destination: CopyEndpoint,
    },
}

impl Work {
    fn kind(&self) -> JobKind {
        match self {
            Self::Merge { .. } => JobKind::ColdMerge,
            Self::Copy { .. } => JobKind::CopyData,
        }
    }
}

/// A journaled job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    job: Uuid,
    work: Work,
    /// `None` while it runs. Written as the pair the previous release reads (see
    /// [`Finished::serialize_as_pair`]).
    #[serde(serialize_with = "Finished::serialize_as_pair")]
    finished: Option<Finished<SdmResult>>,
}

impl JournalRecord for Entry {
    fn id(&self) -> Uuid {
        self.job
    }

    fn finished_at(&self) -> Option<u64> {
        self.finished.as_ref().map(|end| end.at)
    }

    /// A merge that succeeded is kept past the jobs' window, for the finalize that follows
    /// it (an engine sends it at once; a week is plenty).
    fn keep_seconds(&self) -> u64 {
        match (&self.work, &self.finished) {
            (Work::Merge { .. }, Some(Finished { outcome: Ok(_), .. })) => MERGE_RECORD_SECONDS,
            _ => JobKeepAlive::SECONDS,
        }
    }
}

impl Work {
    /// The volume the job writes, `(domain, image, volume)`: a merge's base, a copy's
    /// destination.
    fn written(&self) -> (Uuid, Uuid, Uuid) {
        match self {
            Self::Merge { subchain: s, .. } => (s.sd_id, s.img_id, s.base_id),
            Self::Copy { destination: d, .. } => (d.sd_id, d.img_id, d.vol_id),
        }
    }
}

/// Why a job a restart interrupted failed, once what an earlier run left writing its volume
/// is ended: a qemu-img that outlived its rvdsmd (stuck in the kernel when its parent-death
/// SIGKILL came, or started by a run without one) would go on writing under a retry. One
/// still running after the grace makes the job not retryable yet, and the reason says so.
/// Readers of a copy's source are left alone: they harm no retry. Blocking.
fn interrupted_reason(job: Uuid, work: &Work) -> String {
    let (sd, image, volume) = work.written();
    // `<sd>/images/<img>/<vol>`: how any path to the volume ends, whichever mount it is
    // reached through, named in an argument or held open.
    let written = DomainDir::new(std::path::Path::new(""), sd).volume(image, volume);
    let what = work.kind().description();
    let alive = crate::sys::children::leftovers::end_writers(
        &format!("the interrupted SDM job {job} ({what})"),
        |path| path.ends_with(&written),
    );
    let err = StorageError::Interrupted;
    if alive.is_empty() {
        return format!(
            "{err}: the {what} stopped midway; nothing was removed, and it can be retried"
        );
    }
    let pids: Vec<String> = alive.iter().map(|l| l.pid.to_string()).collect();
    format!(
        "{err}: the {what} stopped midway; nothing was removed, but it cannot be retried yet: \
         a process of an earlier run (pid {}) still writes its volume {volume}, {} s after \
         SIGKILL",
        pids.join(", "),
        crate::sys::children::leftovers::GRACE.as_secs()
    )
}

/// The SDM jobs; cheap to clone.
#[derive(Clone)]
pub struct SdmService {
    inner: Arc<Inner>,
}

struct Inner {
    storage: StorageService,
    jobs: JobRegistry,
    journal: Journal<Entry>,
    stop: CancellationToken,
}

impl SdmService {
    /// The service, its journal in `journal_dir`; the jobs a previous run left are shown
    /// again (an unfinished one as failed). Blocking.
    pub fn open(
        storage: StorageService,
        jobs: JobRegistry,
        journal_dir: &std::path::Path,
    ) -> std::io::Result<Self> {
        let (journal, entries) = Journal::open(journal_dir, "SDM job")?;
        let service = Self {
            inner: Arc::new(Inner {
                storage,
                jobs,
                journal,
                stop: CancellationToken::new(),
            }),
        };
        for mut entry in entries {
            let end = match entry.finished.clone() {
                Some(end) => end,
                None => {
                    let reason = interrupted_reason(entry.job, &entry.work);
                    let code = ApiError::from(StorageError::Interrupted).code();
                    let end = Finished::now(Err((code, reason)));
                    entry.finished = Some(end.clone());
                    let _ = service.inner.journal.write(&entry);
                    end
                }
            };
            // A successful merge's record kept for its finalize is no job to show any more.
            if crate::clock::epoch_secs().saturating_sub(end.at) > JobKeepAlive::SECONDS {
                continue;
            }
            service
                .inner
                .jobs
                .restore(entry.job, None, entry.work.kind(), end.job_outcome());
        }
        Ok(service)
    }

    /// Stops the running jobs (their qemu-img runs are killed; they end failed, retryable).
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    /// `SDM.merge`.
    pub async fn merge(&self, p: SdmMergeParams) -> Result<(), ApiError> {
        self.inner.storage.check_subchain(&p.subchain_info).await?;
        let work = Work::Merge {
            subchain: p.subchain_info,
            merge_bitmaps: p.merge_bitmaps,
        };
        self.start(p.job_id, work, None).await
    }

    /// `SDM.copy_data`.
    pub async fn copy_data(&self, p: CopyDataParams) -> Result<(), ApiError> {
        if p.copy_bitmaps {
            return Err(StorageError::InvalidParameter(
                "copy_bitmaps: bitmaps are not copied by rvdsm".into(),
            )
            .into());
        }
        // From the request on: a snapshot or a merge slipping in before the job runs would
        // change the chain under the copy.
        let reading = self
            .inner
            .storage
            .reading(ImageRef::new(p.source.sd_id, p.source.img_id))?;
        self.inner
            .storage
            .check_copy(&p.source, &p.destination)
            .await?;
        let work = Work::Copy {
            source: p.source,
            destination: p.destination,
        };
        self.start(p.job_id, work, Some(reading)).await
    }

    /// `StoragePool.finalizeMerge`: refused unless an `SDM.merge` of this subchain succeeded
    /// here, or on a shared domain on any host; then the storage's finalize task.
    pub async fn finalize_merge(&self, p: PoolSubchainParams) -> Result<Uuid, ApiError> {
        let _spm = self.inner.storage.require_spm().await?;
        let s = p.subchain;
        let journal = self.inner.journal.clone();
        let shared = self.inner.storage.shared_records(s.sd_id, SHARED_MERGES);
        let merged = tokio::task::spawn_blocking(move || {
            let mut entries = journal.entries();
            if let Some(dir) = shared {
                match dir.all(".json") {
                    Ok(records) => entries.extend(
                        records
                            .into_iter()
                            .filter_map(|(_, bytes)| serde_json::from_slice::<Entry>(&bytes).ok()),
                    ),
                    Err(err) => tracing::warn!(error = %err, "cannot read the shared merges"),
                }
            }
            entries
                .into_iter()
                .find_map(|e| match (e.work, e.finished) {
                    (
                        Work::Merge { subchain, .. },
                        Some(Finished {
                            outcome: Ok(done), ..
                        }),
                    ) if (
                        subchain.sd_id,
                        subchain.img_id,
                        subchain.base_id,
                        subchain.top_id,
                    ) == (s.sd_id, s.img_id, s.base_id, s.top_id) =>
                    {
                        Some(done.generation)
                    }
                    _ => None,
                })
        })
        .await
        .map_err(|e| ApiError::Unexpected(e.to_string()))?;
        let Some(generation) = merged else {
            return Err(StorageError::InvalidParameter(format!(
                "no SDM.merge of {} into {} succeeded: finalizing would lose the top's data",
                s.top_id, s.base_id
            ))
            .into());
        };
        Ok(self.inner.storage.finalize_merge(p, generation).await?)
    }

    /// Registers, journals and runs a job.
    async fn start(
        &self,
        job: Uuid,
        work: Work,
        reading: Option<CopyReading>,
    ) -> Result<(), ApiError> {
        let refused = |e: crate::jobs::vm_jobs::JobRefusal| ApiError::Coded {
            code: crate::api::codes::GENERAL,
            message: format!("General Exception: {{'reason': '{e}'}}"),
        };
        self.inner
            .jobs
            .add(job, None, work.kind())
            .map_err(refused)?;
        let entry = Entry {
            job,
            work,
            finished: None,
        };
        if let Err(err) = self.write(&entry).await {
            let message = format!("cannot journal the job: {err}");
            self.inner.jobs.finish(
                job,
                Err(JobError {
                    code: crate::api::codes::GENERAL,
                    message: message.clone(),
                }),
            );
            return Err(ApiError::Unexpected(message));
        }
        self.inner.jobs.mark_running(job);
        let service = self.clone();
        tokio::spawn(async move {
            service.run(entry).await;
            drop(reading);
        });
        Ok(())
    }

    async fn run(&self, mut entry: Entry) {
        let (jobs, job) = (self.inner.jobs.clone(), entry.job);
        let progress = move |percent: f64| jobs.progress_of(job, percent, 100.0);
        // The volume the job writes, under its lease on a shared domain.
        let (domain, image, volume) = match entry.work {
            Work::Merge { subchain, .. } => (subchain.sd_id, subchain.img_id, subchain.base_id),
            Work::Copy { destination, .. } => {
                (destination.sd_id, destination.img_id, destination.vol_id)
            }
        };
        let outcome = match self
            .inner
            .storage
            .hold_volume_lease(domain, image, volume)
            .await
        {
            Ok(lease) => {
                crate::failpoint::pause!(match entry.work {
                    Work::Merge { .. } => "sdm:merge",
                    Work::Copy { .. } => "sdm:copy",
                });
                let outcome = self.work(entry.work.clone(), progress).await;
                if let Some(lease) = lease {
                    lease.release().await;
                }
                outcome
            }
            Err(err) => Err(err.into()),
        };
        let recorded = outcome.clone().map_err(|e| (e.code(), e.to_string()));
        entry.finished = Some(Finished::now(recorded));
        if let Err(err) = self.write(&entry).await {
            tracing::error!(%job, error = %err, "cannot journal the SDM job's end");
        }
        self.inner.journal.prune_now_and_then();
        if let (Work::Merge { .. }, Ok(_)) = (&entry.work, &outcome)
            && let Err(err) = self.share_merge(domain, &entry).await
        {
            tracing::error!(%job, error = %err, "cannot record the merge for the SPM");
        }
        match outcome {
            Ok(done) => {
                tracing::info!(%job, kind = entry.work.kind().description(), "SDM job done");
                self.inner.jobs.finish(job, Ok(done.into()));
            }
            Err(err) => {
                tracing::warn!(%job, kind = entry.work.kind().description(), error = %err, "SDM job failed");
                self.inner.jobs.finish(
                    job,
                    Err(JobError {
                        code: err.code(),
                        message: err.to_string(),
                    }),
                );
            }
        }
    }

    /// The job's work on its volumes.
    async fn work(
        &self,
        work: Work,
        progress: impl FnMut(f64) + Send,
    ) -> Result<SdmResult, ApiError> {
        let stop = &self.inner.stop;
        match work {
            Work::Merge {
                subchain,
                merge_bitmaps,
            } => self
                .inner
                .storage
                .commit_subchain(subchain, merge_bitmaps, stop, progress)
                .await
                .map_err(ApiError::from)
                .map(|generation| SdmResult {
                    volume: subchain.base_id,
                    generation,
                }),
            Work::Copy {
                source,
                destination,
            } => self
                .inner
                .storage
                .copy_volume(source, destination, stop, progress)
                .await
                .map_err(ApiError::from)
                .map(|generation| SdmResult {
                    volume: destination.vol_id,
                    generation,
                }),
        }
    }

    /// On a shared domain, records a successful merge where the SPM's finalize finds it,
    /// whichever host it ran on.
    async fn share_merge(&self, domain: Uuid, entry: &Entry) -> std::io::Result<()> {
        let Some(dir) = self.inner.storage.shared_records(domain, SHARED_MERGES) else {
            return Ok(());
        };
        let entry = entry.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
            dir.write(&format!("{}.json", entry.job), &bytes)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn write(&self, entry: &Entry) -> std::io::Result<()> {
        let (journal, entry) = (self.inner.journal.clone(), entry.clone());
        tokio::task::spawn_blocking(move || journal.write(&entry))
            .await
            .map_err(std::io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::merge_types::EndpointType;

    fn subchain() -> SubchainInfo {
        SubchainInfo {
            sd_id: Uuid::from_u128(1),
            img_id: Uuid::from_u128(2),
            top_id: Uuid::from_u128(3),
            base_id: Uuid::from_u128(4),
            base_generation: Some(0),
        }
    }

    fn endpoint(volume: u128) -> CopyEndpoint {
        CopyEndpoint {
            endpoint_type: EndpointType::Div,
            sd_id: Uuid::from_u128(1),
            img_id: Uuid::from_u128(2),
            vol_id: Uuid::from_u128(volume),
            generation: None,
            prepared: false,
        }
    }

    /// Records exactly as the release before the one journal wrote them (serialized with its
    /// types, pasted verbatim; the end then a `[at, outcome]` pair) read into the same
    /// meaning, in the local journal and in the shared `sdm-merges` records alike.
    #[test]
    fn records_of_the_previous_release_read_the_same() {
        let running = r#"{"job":"00000000-0000-0000-0000-000000000010","work":{"kind":"merge","subchain":{"sd_id":"00000000-0000-0000-0000-000000000001","img_id":"00000000-0000-0000-0000-000000000002","top_id":"00000000-0000-0000-0000-000000000003","base_id":"00000000-0000-0000-0000-000000000004","base_generation":0},"merge_bitmaps":false},"finished":null}"#;
        let merged = r#"{"job":"00000000-0000-0000-0000-000000000010","work":{"kind":"merge","subchain":{"sd_id":"00000000-0000-0000-0000-000000000001","img_id":"00000000-0000-0000-0000-000000000002","top_id":"00000000-0000-0000-0000-000000000003","base_id":"00000000-0000-0000-0000-000000000004","base_generation":0},"merge_bitmaps":false},"finished":[1765000000,{"Ok":{"volume":"00000000-0000-0000-0000-000000000004","generation":1}}]}"#;
        let copy_failed = r#"{"job":"00000000-0000-0000-0000-000000000011","work":{"kind":"copy","source":{"endpoint_type":"div","sd_id":"00000000-0000-0000-0000-000000000001","img_id":"00000000-0000-0000-0000-000000000002","vol_id":"00000000-0000-0000-0000-000000000003","prepared":false},"destination":{"endpoint_type":"div","sd_id":"00000000-0000-0000-0000-000000000001","img_id":"00000000-0000-0000-0000-000000000002","vol_id":"00000000-0000-0000-0000-000000000005","prepared":false}},"finished":[1765000000,{"Err":[411,"Interrupted: the copy_data stopped midway"]}]}"#;
        let merge = Work::Merge {
            subchain: subchain(),
            merge_bitmaps: false,
        };
        let cases = [
            (
                running,
                Entry {
                    job: Uuid::from_u128(0x10),
                    work: merge.clone(),
                    finished: None,
                },
            ),
            (
                merged,
                Entry {
                    job: Uuid::from_u128(0x10),
                    work: merge,
                    finished: Some(Finished {
                        at: 1765000000,
                        outcome: Ok(SdmResult {
                            volume: Uuid::from_u128(4),
                            generation: 1,
                        }),
                    }),
                },
            ),
            (
                copy_failed,
                Entry {
                    job: Uuid::from_u128(0x11),
                    work: Work::Copy {
                        source: endpoint(3),
                        destination: endpoint(5),
                    },
                    finished: Some(Finished {
                        at: 1765000000,
                        outcome: Err((411, "Interrupted: the copy_data stopped midway".into())),
                    }),
                },
            ),
        ];
        for (text, want) in cases {
            let read: Entry = serde_json::from_str(text).unwrap();
            assert_eq!(read, want, "{text}");
            // Written back byte for byte: a host still on the previous release reads what
            // this one shares in `master/sdm-merges`.
            assert_eq!(serde_json::to_string(&read).unwrap(), text);
        }
    }

    /// One pruning rule, with the merge's longer window: a successful merge's record stays
    /// a week for its finalize, a failed one or a copy the jobs' hour.
    #[test]
    fn a_successful_merge_is_kept_for_its_finalize() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::<Entry>::open(dir.path(), "SDM job").unwrap();
        let two_hours_ago = crate::clock::epoch_secs() - 2 * 3600;
        let ended = |n, work, outcome| Entry {
            job: Uuid::from_u128(n),
            work,
            finished: Some(Finished {
                at: two_hours_ago,
                outcome,
            }),
        };
        let merge = Work::Merge {
            subchain: subchain(),
            merge_bitmaps: false,
        };
        let done = SdmResult {
            volume: Uuid::from_u128(4),
            generation: 1,
        };
        let kept = ended(1, merge.clone(), Ok(done));
        journal.write(&kept).unwrap();
        journal
            .write(&ended(2, merge, Err((52, "failed".into()))))
            .unwrap();
        let copy = Work::Copy {
            source: endpoint(3),
            destination: endpoint(5),
        };
        journal.write(&ended(3, copy, Ok(done))).unwrap();
        let (_, found) = Journal::<Entry>::open(dir.path(), "SDM job").unwrap();
        assert_eq!(found, [kept]);
    }
}
