//! The one journal of intent every job keeps: a directory of durable records, one JSON file
//! per id, written atomically (temporary file, fsync, rename, fsync of the directory) before
//! the step it announces, read by a restarted rvdsmd to end truthfully what a crash
//! interrupted. Snapshots, live merges, SDM jobs, VM lifecycle operations, freezes and the
//! storage tasks' local records all live in one.
//!
//! A job that ends records it as [`Finished`] (`at`, `outcome`), the one encoding of "ended";
//! and one rule prunes: a finished record older than its keep window ([`JobKeepAlive`] unless
//! the record says otherwise) is removed when the journal is opened and, at most once a
//! minute, after each job. Records that are removed by their owner once done (a freeze, a VM
//! lifecycle step, a task cleared by `Task.clear`) never report themselves finished.
//!
//! Files in the state directory rather than libvirt's domain metadata (where VDSM keeps its
//! snapshot job): they do not depend on libvirtd being up to be read, and survive the VM
//! being undefined. Blocking file I/O.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use super::vm_jobs::{JobError, JobKeepAlive};
use crate::clock::epoch_secs;
use crate::fsutil::{remove_if_exists, write_atomic};

/// How often, at most, a journal is pruned while the daemon runs.
const PRUNE_EVERY_SECS: u64 = 60;

/// A job's end as journaled: when, and what `Host.getJobs` shows of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finished<O> {
    /// Seconds since the epoch.
    pub at: u64,
    /// `Ok(result)` or `Err((code, message))`.
    pub outcome: Result<O, (i32, String)>,
}

impl<O> Finished<O> {
    /// Ended now with `outcome`.
    pub fn now(outcome: Result<O, (i32, String)>) -> Self {
        Self {
            at: epoch_secs(),
            outcome,
        }
    }

    /// The outcome as the job registry shows it.
    pub fn job_outcome<R>(&self) -> Result<R, JobError>
    where
        O: Clone + Into<R>,
    {
        self.outcome
            .clone()
            .map(Into::into)
            .map_err(|(code, message)| JobError { code, message })
    }
}

impl<O: Serialize> Finished<O> {
    /// Writes an optional end as `[at, outcome]`, the form the SDM journal had before the
    /// journals were one. SDM records are shared with the other hosts of a domain
    /// (`master/sdm-merges`), which may still run the previous release during an upgrade
    /// done host by host: that release reads only the pair, and would refuse a
    /// `StoragePool.finalizeMerge` of a merge this host recorded.
    pub fn serialize_as_pair<S: serde::Serializer>(
        end: &Option<Self>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        end.as_ref()
            .map(|end| (end.at, &end.outcome))
            .serialize(serializer)
    }
}

/// The encodings of an end a release of rvdsm wrote: `{at, outcome}` (every journal now, and
/// the snapshot and merge journals always), or `[at, outcome]` (the SDM journal before the
/// journals were one), read alike so that an upgrade forgets no job.
#[derive(Deserialize)]
#[serde(untagged)]
enum FinishedFormats<O> {
    Fields {
        at: u64,
        outcome: Result<O, (i32, String)>,
    },
    Pair(u64, Result<O, (i32, String)>),
}

impl<'de, O: Deserialize<'de>> Deserialize<'de> for Finished<O> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match FinishedFormats::deserialize(deserializer)? {
            FinishedFormats::Fields { at, outcome } | FinishedFormats::Pair(at, outcome) => {
                Self { at, outcome }
            }
        })
    }
}

/// A record a [`Journal`] keeps.
pub trait JournalRecord: Serialize + DeserializeOwned {
    /// The id its file is named by (a job, a VM, a task).
    fn id(&self) -> Uuid;

    /// When it ended (epoch seconds), if it is a job that ended; `None` keeps it until its
    /// owner removes it.
    fn finished_at(&self) -> Option<u64> {
        None
    }

    /// How long it stays once finished: the jobs' visibility window in `Host.getJobs`.
    fn keep_seconds(&self) -> u64 {
        JobKeepAlive::SECONDS
    }
}

/// Whether `record` ended longer ago than it is kept.
fn expired<T: JournalRecord>(record: &T, now: u64) -> bool {
    record
        .finished_at()
        .is_some_and(|at| now.saturating_sub(at) > record.keep_seconds())
}

/// The journal directory of records of type `T`; cheap to clone.
#[derive(Debug)]
pub struct Journal<T> {
    dir: PathBuf,
    /// What the records are, for log lines.
    what: &'static str,
    /// When the journal was last pruned (epoch seconds), shared by the clones.
    last_prune: Arc<AtomicU64>,
    _records: PhantomData<fn() -> T>,
}

impl<T> Clone for Journal<T> {
    fn clone(&self) -> Self {
        Self {
            dir: self.dir.clone(),
            what: self.what,
            last_prune: Arc::clone(&self.last_prune),
            _records: PhantomData,
        }
    }
}

impl<T: JournalRecord> Journal<T> {
    /// Opens the journal in `dir` (created if missing; `what` names its records in logs),
    /// pruned, with the records a previous run left.
    pub fn open(dir: &Path, what: &'static str) -> std::io::Result<(Self, Vec<T>)> {
        std::fs::create_dir_all(dir)?;
        let journal = Self::unread(dir, what);
        let records = journal.prune()?;
        Ok((journal, records))
    }

    /// The journal in `dir`, neither created nor read (for an owner that goes on, less
    /// protected, when it cannot be opened: each write then reports its own error).
    pub fn unread(dir: &Path, what: &'static str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            what,
            last_prune: Arc::new(AtomicU64::new(epoch_secs())),
            _records: PhantomData,
        }
    }

    fn path(&self, id: Uuid) -> PathBuf {
        self.dir.join(format!("{}.json", id.hyphenated()))
    }

    /// Records `record` durably under its id, replacing any record there.
    pub fn write(&self, record: &T) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        write_atomic(&self.path(record.id()), &bytes, 0o600)
    }

    /// Forgets the record of `id`; returns whether there was one.
    pub fn remove(&self, id: Uuid) -> std::io::Result<bool> {
        remove_if_exists(&self.path(id))
    }

    /// Every readable record; unreadable ones are logged and skipped.
    pub fn entries(&self) -> Vec<T> {
        self.read_all()
            .map(|all| all.into_iter().map(|(_, record)| record).collect())
            .unwrap_or_default()
    }

    /// Removes the finished records past their keep window, and returns the others. Run at
    /// open and after jobs, so that a long-running daemon keeps one file per recent job, not
    /// one per job ever.
    pub fn prune(&self) -> std::io::Result<Vec<T>> {
        let now = epoch_secs();
        let mut kept = Vec::new();
        for (path, record) in self.read_all()? {
            if expired(&record, now) {
                if let Err(err) = remove_if_exists(&path) {
                    tracing::warn!(what = self.what, path = %path.display(), error = %err, "cannot prune a journal record");
                }
            } else {
                kept.push(record);
            }
        }
        Ok(kept)
    }

    /// Prunes in the background, at most once a minute: the job's end never waits for it.
    /// Call inside the runtime.
    pub fn prune_now_and_then(&self)
    where
        T: 'static,
    {
        let now = epoch_secs();
        let last = self.last_prune.load(Ordering::Relaxed);
        if now.saturating_sub(last) < PRUNE_EVERY_SECS
            || self
                .last_prune
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let journal = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(err) = journal.prune() {
                tracing::warn!(what = journal.what, error = %err, "cannot prune the journal");
            }
        });
    }

    /// Every readable record with its file.
    fn read_all(&self) -> std::io::Result<Vec<(PathBuf, T)>> {
        let mut all = Vec::new();
        for item in std::fs::read_dir(&self.dir)?.flatten() {
            let path = item.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match read_record(&path).map(|b| serde_json::from_slice::<T>(&b)) {
                // Its owner writes, prunes and removes it by the id it holds: a record under
                // another name would never be removed, and would come back at every start.
                Ok(Ok(record)) if named_by(&path, record.id()) => all.push((path, record)),
                Ok(Ok(record)) => {
                    tracing::error!(what = self.what, path = %path.display(), id = %record.id(), "journal record under another id's name skipped");
                }
                Ok(Err(err)) => {
                    tracing::error!(what = self.what, path = %path.display(), error = %err, "unreadable journal record skipped");
                }
                Err(err) => {
                    tracing::error!(what = self.what, path = %path.display(), error = %err, "cannot read journal record");
                }
            }
        }
        Ok(all)
    }
}

/// Whether the file at `path` is the one a record of `id` is written to.
fn named_by(path: &Path, id: Uuid) -> bool {
    path.file_name()
        .is_some_and(|name| *name == *format!("{}.json", id.hyphenated()))
}

/// The most a journal record is read: rvdsm's records are a few KiB.
const MAX_RECORD: u64 = 1 << 20;

/// The bytes of the record at `path`, read only if it is a regular file of at most
/// [`MAX_RECORD`] bytes: rvdsm writes nothing else there, and a link, a FIFO (which would
/// block the daemon's start) or a huge file is refused, not followed or read whole.
fn read_record(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let refused = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(refused("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_RECORD + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_RECORD {
        return Err(refused(format!("larger than {MAX_RECORD} bytes")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Job {
        id: Uuid,
        finished: Option<Finished<u32>>,
        #[serde(default)]
        keep: Option<u64>,
    }

    impl JournalRecord for Job {
        fn id(&self) -> Uuid {
            self.id
        }
        fn finished_at(&self) -> Option<u64> {
            self.finished.as_ref().map(|f| f.at)
        }
        fn keep_seconds(&self) -> u64 {
            self.keep.unwrap_or(JobKeepAlive::SECONDS)
        }
    }

    fn job(n: u128, finished: Option<u64>) -> Job {
        Job {
            id: Uuid::from_u128(n),
            finished: finished.map(|at| Finished { at, outcome: Ok(7) }),
            keep: None,
        }
    }

    #[test]
    fn records_survive_a_reopen_and_go_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, found) = Journal::<Job>::open(dir.path(), "test").unwrap();
        assert!(found.is_empty());
        let mut record = job(1, None);
        journal.write(&record).unwrap();
        record.finished = Some(Finished::now(Err((48, "failed".into()))));
        journal.write(&record).unwrap();
        std::fs::write(dir.path().join("junk.json"), b"{").unwrap();
        let (reopened, found) = Journal::<Job>::open(dir.path(), "test").unwrap();
        assert_eq!(found, [record.clone()]);
        assert!(reopened.remove(record.id).unwrap());
        assert!(!reopened.remove(record.id).unwrap());
        assert!(reopened.entries().is_empty());
    }

    /// One rule: finished records past their window go (at open, or when pruned while
    /// running); running ones and recent ones stay; a record may keep itself longer.
    #[test]
    fn only_finished_records_past_their_window_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::<Job>::open(dir.path(), "test").unwrap();
        let old = epoch_secs() - JobKeepAlive::SECONDS - 1;
        let running = job(1, None);
        let recent = job(2, Some(epoch_secs()));
        let long_kept = Job {
            keep: Some(7 * 24 * 3600),
            ..job(3, Some(old))
        };
        let expired = job(4, Some(old));
        for record in [&running, &recent, &long_kept, &expired] {
            journal.write(record).unwrap();
        }
        let mut kept = journal.prune().unwrap();
        kept.sort_by_key(|r| r.id);
        assert_eq!(kept, [running.clone(), recent, long_kept]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
        journal.write(&job(5, Some(1))).unwrap();
        let (_, found) = Journal::<Job>::open(dir.path(), "test").unwrap();
        assert_eq!(found.len(), 3, "pruned at open too");
    }

    /// Both encodings of an end a release wrote read alike; the current one is written.
    #[test]
    fn an_end_reads_from_either_encoding_and_is_written_as_fields() {
        let pair: Finished<u32> = serde_json::from_str(r#"[9, {"Err": [52, "failed"]}]"#).unwrap();
        let fields: Finished<u32> =
            serde_json::from_str(r#"{"at": 9, "outcome": {"Err": [52, "failed"]}}"#).unwrap();
        assert_eq!(pair, fields);
        assert_eq!(pair.outcome, Err((52, "failed".into())));
        assert_eq!(
            serde_json::to_string(&pair).unwrap(),
            r#"{"at":9,"outcome":{"Err":[52,"failed"]}}"#
        );
    }
}
