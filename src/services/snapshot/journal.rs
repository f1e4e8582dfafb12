//! The snapshot jobs' records in the journal of intent (`<state_dir>/snapshots/<jobId>.json`):
//! before rvdsm touches a VM for a snapshot, it records durably what it is about to do, and
//! each phase as it passes. A restarted rvdsmd reads them to end every interrupted job
//! truthfully: thaw what the job froze, keep or delete its new volumes by what the live domain
//! uses, and show the job under its id in `Host.getJobs`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::jobs::journal::{Finished, JournalRecord};
use crate::jobs::results::SnapshotResult;

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

/// The memory volumes of a journaled snapshot with memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalMemory {
    /// Their storage domain.
    pub domain: Uuid,
    /// The dump's image and volume.
    pub dump: (Uuid, Uuid),
    /// The configuration's image and volume.
    pub conf: (Uuid, Uuid),
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
    /// Ended; its outcome is what `Host.getJobs` shows.
    Finished(Finished<SnapshotResult>),
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
    /// The volumes the guest's RAM and configuration go to, for a snapshot with memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<JournalMemory>,
    /// How far it got.
    #[serde(flatten)]
    pub phase: Phase,
}

impl JournalRecord for Entry {
    fn id(&self) -> Uuid {
        self.job
    }

    fn finished_at(&self) -> Option<u64> {
        match &self.phase {
            Phase::Finished(end) => Some(end.at),
            Phase::Scheduled | Phase::Freezing => None,
        }
    }
}

/// The snapshot jobs' journal: a record per job.
pub type Journal = crate::jobs::journal::Journal<Entry>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::snapshot_types::{Consistency, Reason};
    use crate::clock::epoch_secs;
    use crate::jobs::results::Switched;
    use crate::jobs::vm_jobs::JobKeepAlive;

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
            memory: None,
            phase,
        }
    }

    fn finished(at: u64, outcome: Result<SnapshotResult, (i32, String)>) -> Phase {
        Phase::Finished(Finished { at, outcome })
    }

    fn open(dir: &std::path::Path) -> (Journal, Vec<Entry>) {
        Journal::open(dir, "snapshot").unwrap()
    }

    #[test]
    fn entries_survive_and_old_finished_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, found) = open(dir.path());
        assert!(found.is_empty());
        let running = entry(Phase::Freezing);
        let recent = entry(finished(
            epoch_secs(),
            Ok(SnapshotResult::Recovered {
                consistency: Consistency::Unknown,
                recovered: true,
                switched: vec![Uuid::nil()],
            }),
        ));
        let old = entry(finished(1, Err((48, "Snapshot failed".into()))));
        for e in [&running, &recent, &old] {
            journal.write(e).unwrap();
        }
        let (_, mut found) = open(dir.path());
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
        let (journal, _) = open(dir.path());
        let old = entry(finished(
            epoch_secs() - JobKeepAlive::SECONDS - 1,
            Err((48, "Snapshot failed".into())),
        ));
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
        let Phase::Finished(Finished {
            outcome: Ok(SnapshotResult::Switched(switched)),
            ..
        }) = entry.phase
        else {
            panic!("{:?}", entry.phase)
        };
        assert_eq!(switched.consistency, Consistency::Quiesced);
        assert_eq!(switched.timings.total_ms, 5.0);
    }

    fn u(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn drive() -> JournalDrive {
        JournalDrive {
            domain: u(1),
            image: u(2),
            base: u(3),
            volume: u(4),
            target: "vda".into(),
            new_path: "/rhev/data-center/mnt/x/1/images/2/4".into(),
        }
    }

    /// Records exactly as the release before the one journal wrote them (serialized with its
    /// types, pasted verbatim) read into the same meaning, and are written back the same.
    #[test]
    fn records_of_the_previous_release_read_the_same() {
        let running = r#"{
  "job": "00000000-0000-0000-0000-000000000010",
  "vm": "00000000-0000-0000-0000-000000000020",
  "drives": [
    {
      "domain": "00000000-0000-0000-0000-000000000001",
      "image": "00000000-0000-0000-0000-000000000002",
      "base": "00000000-0000-0000-0000-000000000003",
      "volume": "00000000-0000-0000-0000-000000000004",
      "target": "vda",
      "new_path": "/rhev/data-center/mnt/x/1/images/2/4"
    }
  ],
  "phase": "freezing"
}"#;
        let switched = r#"{
  "job": "00000000-0000-0000-0000-000000000010",
  "vm": "00000000-0000-0000-0000-000000000020",
  "drives": [
    {
      "domain": "00000000-0000-0000-0000-000000000001",
      "image": "00000000-0000-0000-0000-000000000002",
      "base": "00000000-0000-0000-0000-000000000003",
      "volume": "00000000-0000-0000-0000-000000000004",
      "target": "vda",
      "new_path": "/rhev/data-center/mnt/x/1/images/2/4"
    }
  ],
  "phase": "finished",
  "at": 1765000000,
  "outcome": {
    "Ok": {
      "consistency": "crash-consistent",
      "reason": "no-agent",
      "timings": {
        "freeze_ms": 0.0,
        "switch_ms": 12.5,
        "thaw_ms": 0.0,
        "frozen_ms": 0.0,
        "total_ms": 20.25
      },
      "thawError": null,
      "switched": [
        "00000000-0000-0000-0000-000000000004"
      ],
      "skipped": [],
      "unconfirmedDisks": []
    }
  }
}"#;
        let failed = r#"{
  "job": "00000000-0000-0000-0000-000000000010",
  "vm": "00000000-0000-0000-0000-000000000020",
  "drives": [
    {
      "domain": "00000000-0000-0000-0000-000000000001",
      "image": "00000000-0000-0000-0000-000000000002",
      "base": "00000000-0000-0000-0000-000000000003",
      "volume": "00000000-0000-0000-0000-000000000004",
      "target": "vda",
      "new_path": "/rhev/data-center/mnt/x/1/images/2/4"
    }
  ],
  "phase": "finished",
  "at": 1765000000,
  "outcome": {
    "Err": [
      48,
      "Snapshot failed"
    ]
  }
}"#;
        let recovered = r#"{
  "job": "00000000-0000-0000-0000-000000000010",
  "vm": "00000000-0000-0000-0000-000000000020",
  "drives": [
    {
      "domain": "00000000-0000-0000-0000-000000000001",
      "image": "00000000-0000-0000-0000-000000000002",
      "base": "00000000-0000-0000-0000-000000000003",
      "volume": "00000000-0000-0000-0000-000000000004",
      "target": "vda",
      "new_path": "/rhev/data-center/mnt/x/1/images/2/4"
    }
  ],
  "phase": "finished",
  "at": 1765000000,
  "outcome": {
    "Ok": {
      "consistency": "unknown",
      "recovered": true,
      "switched": [
        "00000000-0000-0000-0000-000000000004"
      ]
    }
  }
}"#;
        let expected = |phase| Entry {
            job: u(0x10),
            vm: u(0x20),
            drives: vec![drive()],
            memory: None,
            phase,
        };
        let cases = [
            (running, expected(Phase::Freezing)),
            (
                switched,
                expected(finished(
                    1765000000,
                    Ok(SnapshotResult::Switched(Switched {
                        consistency: Consistency::CrashConsistent,
                        reason: Some(Reason::NoAgent),
                        timings: crate::api::snapshot_types::Timings {
                            freeze_ms: 0.0,
                            switch_ms: 12.5,
                            thaw_ms: 0.0,
                            frozen_ms: 0.0,
                            total_ms: 20.25,
                        },
                        thaw_error: None,
                        switched: vec![u(4)],
                        skipped: vec![],
                        unconfirmed_disks: vec![],
                        memory: None,
                    })),
                )),
            ),
            (
                failed,
                expected(finished(1765000000, Err((48, "Snapshot failed".into())))),
            ),
            (
                recovered,
                expected(finished(
                    1765000000,
                    Ok(SnapshotResult::Recovered {
                        consistency: Consistency::Unknown,
                        recovered: true,
                        switched: vec![u(4)],
                    }),
                )),
            ),
        ];
        for (text, want) in cases {
            let read: Entry = serde_json::from_str(text).unwrap();
            assert_eq!(read, want, "{text}");
            assert_eq!(serde_json::to_string_pretty(&read).unwrap(), text);
        }
    }
}
