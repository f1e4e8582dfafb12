//! The live merges' journal of intent: one record per merge job, written (and synced) before
//! each phase begins, so that a restarted rvdsmd ends each interrupted merge by what the
//! domain and the images show: the commit still running is followed again, a pivot that
//! happened is finished, one that did not is undone, the leaf made LEGAL again.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::merge_types::DriveSpec;
use crate::jobs::journal::{Finished, JournalRecord};
use crate::jobs::results::MergeResult;

/// How far a merge got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "phase")]
pub enum Phase {
    /// Asking libvirt for the commit, or following it.
    Commit,
    /// An active commit was ready: the leaf is (being) marked ILLEGAL and the pivot asked.
    Pivot,
    /// QEMU no longer uses `top`: the metadata is being brought to agree and `top` deleted.
    Cleanup,
    /// Ended; its outcome is what `Host.getJobs` shows.
    Finished(Finished<MergeResult>),
}

/// A journaled merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The job.
    pub job: Uuid,
    /// The VM.
    pub vm: Uuid,
    /// The disk (`vda`).
    pub target: String,
    /// The disk, as the request named it.
    pub drive: DriveSpec,
    /// The volume that receives the data.
    pub base: Uuid,
    /// The volume merged away.
    pub top: Uuid,
    /// The volume based on `top` (none for an active merge).
    pub child: Option<Uuid>,
    /// Whether `top` is the disk's active layer.
    pub active: bool,
    /// MiB/s, 0 for none.
    pub bandwidth: u64,
    /// `base` as the live XML names it.
    pub base_path: String,
    /// `top` as the live XML names it.
    pub top_path: String,
    /// `top`'s dirty bitmaps when the merge started (they do not survive it).
    #[serde(default)]
    pub bitmaps: Vec<String>,
    /// How far it got.
    #[serde(flatten)]
    pub phase: Phase,
}

impl Entry {
    /// What a done merge reports.
    pub fn result(&self, pivot_attempts: u32) -> MergeResult {
        MergeResult {
            base: self.base,
            top: self.top,
            active: self.active,
            pivot_attempts,
            dropped_bitmaps: self.bitmaps.clone(),
        }
    }
}

impl JournalRecord for Entry {
    fn id(&self) -> Uuid {
        self.job
    }

    fn finished_at(&self) -> Option<u64> {
        match &self.phase {
            Phase::Finished(end) => Some(end.at),
            Phase::Commit | Phase::Pivot | Phase::Cleanup => None,
        }
    }
}

/// The journal's directory: a record per job.
pub type Journal = crate::jobs::journal::Journal<Entry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_read_back_in_a_flat_record() {
        let entry = Entry {
            job: Uuid::from_u128(1),
            vm: Uuid::from_u128(2),
            target: "vda".into(),
            drive: DriveSpec {
                pool: Uuid::from_u128(3),
                domain: Uuid::from_u128(4),
                image: Uuid::from_u128(5),
                volume: Uuid::from_u128(6),
            },
            base: Uuid::from_u128(7),
            top: Uuid::from_u128(6),
            child: None,
            active: true,
            bandwidth: 0,
            base_path: "/a".into(),
            top_path: "/b".into(),
            bitmaps: vec!["b1".into()],
            phase: Phase::Finished(Finished {
                at: 9,
                outcome: Err((52, "Merge failed".into())),
            }),
        };
        let text = serde_json::to_string(&entry).unwrap();
        assert!(text.contains(r#""phase":"finished""#), "{text}");
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), entry);
    }

    /// Records exactly as the release before the one journal wrote them (serialized with its
    /// types, pasted verbatim) read into the same meaning.
    #[test]
    fn records_of_the_previous_release_read_the_same() {
        let pivot = r#"{"job":"00000000-0000-0000-0000-000000000010","vm":"00000000-0000-0000-0000-000000000020","target":"vda","drive":{"poolID":"00000000-0000-0000-0000-000000000003","domainID":"00000000-0000-0000-0000-000000000004","imageID":"00000000-0000-0000-0000-000000000005","volumeID":"00000000-0000-0000-0000-000000000006"},"base":"00000000-0000-0000-0000-000000000007","top":"00000000-0000-0000-0000-000000000006","child":null,"active":true,"bandwidth":0,"base_path":"/a/7","top_path":"/a/6","bitmaps":["b1"],"phase":"pivot"}"#;
        let done = r#"{"job":"00000000-0000-0000-0000-000000000010","vm":"00000000-0000-0000-0000-000000000020","target":"vda","drive":{"poolID":"00000000-0000-0000-0000-000000000003","domainID":"00000000-0000-0000-0000-000000000004","imageID":"00000000-0000-0000-0000-000000000005","volumeID":"00000000-0000-0000-0000-000000000006"},"base":"00000000-0000-0000-0000-000000000007","top":"00000000-0000-0000-0000-000000000006","child":null,"active":true,"bandwidth":0,"base_path":"/a/7","top_path":"/a/6","bitmaps":["b1"],"phase":"finished","at":1765000000,"outcome":{"Ok":{"base":"00000000-0000-0000-0000-000000000007","top":"00000000-0000-0000-0000-000000000006","active":true,"pivotAttempts":2,"droppedBitmaps":["b1"]}}}"#;
        let failed = r#"{"job":"00000000-0000-0000-0000-000000000010","vm":"00000000-0000-0000-0000-000000000020","target":"vda","drive":{"poolID":"00000000-0000-0000-0000-000000000003","domainID":"00000000-0000-0000-0000-000000000004","imageID":"00000000-0000-0000-0000-000000000005","volumeID":"00000000-0000-0000-0000-000000000006"},"base":"00000000-0000-0000-0000-000000000007","top":"00000000-0000-0000-0000-000000000006","child":null,"active":true,"bandwidth":0,"base_path":"/a/7","top_path":"/a/6","bitmaps":["b1"],"phase":"finished","at":1765000000,"outcome":{"Err":[52,"Merge failed"]}}"#;
        let u = Uuid::from_u128;
        let expected = |phase| Entry {
            job: u(0x10),
            vm: u(0x20),
            target: "vda".into(),
            drive: DriveSpec {
                pool: u(3),
                domain: u(4),
                image: u(5),
                volume: u(6),
            },
            base: u(7),
            top: u(6),
            child: None,
            active: true,
            bandwidth: 0,
            base_path: "/a/7".into(),
            top_path: "/a/6".into(),
            bitmaps: vec!["b1".into()],
            phase,
        };
        let cases = [
            (pivot, expected(Phase::Pivot)),
            (
                done,
                expected(Phase::Finished(Finished {
                    at: 1765000000,
                    outcome: Ok(MergeResult {
                        base: u(7),
                        top: u(6),
                        active: true,
                        pivot_attempts: 2,
                        dropped_bitmaps: vec!["b1".into()],
                    }),
                })),
            ),
            (
                failed,
                expected(Phase::Finished(Finished {
                    at: 1765000000,
                    outcome: Err((52, "Merge failed".into())),
                })),
            ),
        ];
        for (text, want) in cases {
            let read: Entry = serde_json::from_str(text).unwrap();
            assert_eq!(read, want, "{text}");
            assert_eq!(serde_json::to_string(&read).unwrap(), text);
        }
    }
}
