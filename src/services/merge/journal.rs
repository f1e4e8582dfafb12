//! The live merges' journal of intent: one record per merge job, written (and synced) before
//! each phase begins, so that a restarted rvdsmd ends each interrupted merge by what the
//! domain and the images show: the commit still running is followed again, a pivot that
//! happened is finished, one that did not is undone, the leaf made LEGAL again.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::merge_types::{DriveSpec, MergeResult};
use crate::jobs::records::RecordDir;

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
    /// Ended; `outcome` is what `Host.getJobs` shows.
    Finished {
        /// Seconds since the epoch.
        at: u64,
        /// `Ok(result)` or `Err((code, message))`.
        outcome: Result<MergeResult, (i32, String)>,
    },
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

/// The journal's directory: a record per job.
pub type Journal = RecordDir<Entry>;

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
            phase: Phase::Finished {
                at: 9,
                outcome: Err((52, "Merge failed".into())),
            },
        };
        let text = serde_json::to_string(&entry).unwrap();
        assert!(text.contains(r#""phase":"finished""#), "{text}");
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), entry);
    }
}
