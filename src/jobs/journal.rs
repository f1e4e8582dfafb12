//! The journal of intent of snapshot jobs: before rvdsm touches a VM for a snapshot, it records
//! durably (atomic write, fsync) what it is about to do, and each phase as it passes, in
//! `<state_dir>/snapshots/<jobId>.json`. A restarted rvdsmd reads it to end every interrupted
//! job truthfully: thaw what the job froze, keep or delete its new volumes by what the live
//! domain uses, and show the job under its id in `Host.getJobs`.
//!
//! A file per job in the state directory, not libvirt's domain metadata (where VDSM keeps its
//! snapshot job): it does not depend on libvirtd being up to be read, and it survives the VM
//! being undefined.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::vm_jobs::JobKeepAlive;
use crate::api::snapshot_types::SnapshotResult;
use crate::clock::epoch_secs;
use crate::fsutil::{remove_if_exists, write_atomic};

/// One drive of a journaled snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalDrive {
    /// The storage domain.
    pub domain: Uuid,
    /// The image.
    pub image: Uuid,
    /// The volume the disk used.
    pub base: Uuid,
    /// The new volume.
    pub volume: Uuid,
    /// The guest device.
    pub target: String,
    /// The new volume's path, as given to libvirt.
    pub new_path: String,
}

/// How far a snapshot got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "phase")]
pub enum Phase {
    /// Checked and scheduled; nothing touched yet.
    Scheduled,
    /// About to freeze the guest: from here until the end of the job a frozen guest may be
    /// this job's doing. (Written before the freeze, never inside the frozen window.)
    Freezing,
    /// Ended; `outcome` is what `Host.getJobs` shows.
    Finished {
        /// Seconds since the epoch.
        at: u64,
        /// `Ok(result)` or `Err((code, message))`.
        outcome: Result<SnapshotResult, (i32, String)>,
    },
}

/// A journaled snapshot job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The job.
    pub job: Uuid,
    /// The VM.
    pub vm: Uuid,
    /// The drives being switched.
    pub drives: Vec<JournalDrive>,
    /// How far it got.
    #[serde(flatten)]
    pub phase: Phase,
}

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens the journal, returning the entries left by a previous run. Finished entries older
    /// than the jobs' visibility window are removed.
    pub fn open(dir: &Path) -> std::io::Result<(Self, Vec<Entry>)> {
        std::fs::create_dir_all(dir)?;
        let journal = Self {
            dir: dir.to_owned(),
        };
        let entries = journal.prune()?;
        Ok((journal, entries))
    }

    /// Removes the finished entries older than the jobs' visibility window (`Host.getJobs`
    /// no longer shows them), and returns the others. Run at start and after each job, so
    /// that a long-running daemon keeps one file per recent job, not one per job ever.
    pub fn prune(&self) -> std::io::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for item in std::fs::read_dir(&self.dir)?.flatten() {
            let path = item.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let entry: Option<Entry> = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            match entry {
                Some(Entry {
                    phase: Phase::Finished { at, .. },
                    job,
                    ..
                }) if epoch_secs().saturating_sub(at) > JobKeepAlive::SECONDS => {
                    let _ = self.remove(job);
                }
                Some(entry) => entries.push(entry),
                None => {
                    tracing::warn!(path = %path.display(), "unreadable snapshot journal entry skipped");
                }
            }
        }
        Ok(entries)
    }

    /// Records `entry` durably.
    pub fn write(&self, entry: &Entry) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(entry).map_err(std::io::Error::other)?;
        write_atomic(&self.path(entry.job), &bytes, 0o600)
    }

    /// Forgets a job.
    pub fn remove(&self, job: Uuid) -> std::io::Result<bool> {
        remove_if_exists(&self.path(job))
    }

    fn path(&self, job: Uuid) -> PathBuf {
        self.dir.join(format!("{}.json", job.hyphenated()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::snapshot_types::Consistency;

    fn entry(phase: Phase) -> Entry {
        Entry {
            job: Uuid::new_v4(),
            vm: Uuid::new_v4(),
            drives: vec![JournalDrive {
                domain: Uuid::new_v4(),
                image: Uuid::new_v4(),
                base: Uuid::new_v4(),
                volume: Uuid::new_v4(),
                target: "vda".into(),
                new_path: "/x/new".into(),
            }],
            phase,
        }
    }

    #[test]
    fn entries_survive_and_old_finished_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, found) = Journal::open(dir.path()).unwrap();
        assert!(found.is_empty());
        let running = entry(Phase::Freezing);
        let recent = entry(Phase::Finished {
            at: epoch_secs(),
            outcome: Ok(SnapshotResult::Recovered {
                consistency: Consistency::Unknown,
                recovered: true,
                switched: vec![Uuid::nil()],
            }),
        });
        let old = entry(Phase::Finished {
            at: 1,
            outcome: Err((48, "Snapshot failed".into())),
        });
        for e in [&running, &recent, &old] {
            journal.write(e).unwrap();
        }
        let (_, mut found) = Journal::open(dir.path()).unwrap();
        found.sort_by_key(|e| e.job != running.job);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0], running);
        assert_eq!(found[1], recent);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "old entry removed"
        );
    }

    /// A long-running daemon forgets finished jobs past their hour, not only at start.
    #[test]
    fn pruning_while_running_drops_only_old_finished_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path()).unwrap();
        let old = entry(Phase::Finished {
            at: epoch_secs() - JobKeepAlive::SECONDS - 1,
            outcome: Err((48, "Snapshot failed".into())),
        });
        let running = entry(Phase::Scheduled);
        journal.write(&old).unwrap();
        journal.write(&running).unwrap();
        let kept = journal.prune().unwrap();
        assert_eq!(kept, [running]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// An entry a previous release wrote (its result then an untyped JSON object) still
    /// reads as the typed result, so an upgrade does not forget finished jobs.
    #[test]
    fn entries_of_the_untyped_format_read_as_typed_results() {
        let text = r#"{"job": "00000000-0000-0000-0000-000000000001",
            "vm": "00000000-0000-0000-0000-000000000002", "drives": [],
            "phase": "finished", "at": 1700000000, "outcome": {"Ok": {
                "consistency": "quiesced", "reason": null, "thawError": null,
                "timings": {"freeze_ms": 1.0, "switch_ms": 2.0, "thaw_ms": 1.0,
                            "frozen_ms": 3.0, "total_ms": 5.0},
                "switched": ["00000000-0000-0000-0000-000000000003"], "skipped": [],
                "unconfirmedDisks": []}}}"#;
        let entry: Entry = serde_json::from_str(text).unwrap();
        let Phase::Finished {
            outcome: Ok(SnapshotResult::Switched(switched)),
            ..
        } = entry.phase
        else {
            panic!("{:?}", entry.phase)
        };
        assert_eq!(switched.consistency, Consistency::Quiesced);
        assert_eq!(switched.timings.total_ms, 5.0);
    }
}
