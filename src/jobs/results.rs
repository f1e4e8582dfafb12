//! What each kind of job did, as `Host.getJobs` shows it in `result` and as its journal keeps
//! it in its [`super::journal::Finished`] outcome: a snapshot's result or its rollback's
//! report, a live merge's, an SDM job's. Wire types: their serde shapes are what managers read.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::snapshot_types::{Consistency, MemoryResult, Reason, Timings};

/// What a done snapshot job did: its `result` in `Host.getJobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SnapshotResult {
    /// Interrupted by a restart of rvdsmd, and found switched by the recovery.
    Recovered {
        /// Always [`Consistency::Unknown`].
        consistency: Consistency,
        /// Always `true`.
        recovered: bool,
        /// The new volumes the VM uses.
        switched: Vec<Uuid>,
    },
    /// The switch reported an error (it outlived its timeout) yet happened.
    LateSwitch {
        /// Always [`Consistency::Unknown`]: any freeze ended before the switch.
        consistency: Consistency,
        /// The new volumes the VM uses.
        switched: Vec<Uuid>,
        /// The switch's error.
        #[serde(rename = "lateSwitch")]
        late_switch: String,
    },
    /// The switch happened.
    Switched(Switched),
    /// Every drive already used its new volume: nothing to switch.
    NothingToSwitch {
        /// Empty.
        switched: Vec<Uuid>,
        /// The drives whose new volume the VM already used.
        skipped: Vec<Uuid>,
    },
}

/// A snapshot that switched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Switched {
    /// Quiesced or crash-consistent.
    pub consistency: Consistency,
    /// Why not quiesced (null when it was).
    pub reason: Option<Reason>,
    /// Phase durations.
    pub timings: Timings,
    /// A thaw that failed after the switch: the guest may still be frozen (null when none).
    pub thaw_error: Option<String>,
    /// The new volumes switched to.
    pub switched: Vec<Uuid>,
    /// The drives skipped (their new volume already in use).
    pub skipped: Vec<Uuid>,
    /// Disks the live domain did not show on their new volume right after the switch.
    pub unconfirmed_disks: Vec<String>,
    /// What was saved of the guest's RAM, for a snapshot with memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryResult>,
}

/// What a failed snapshot's rollback did: its `result` in `Host.getJobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackReport {
    /// New volumes kept (the VM uses them, or may).
    pub kept: Vec<Uuid>,
    /// New volumes deleted.
    pub deleted: Vec<Uuid>,
    /// Volumes that could not be deleted, and why.
    pub cleanup_errors: Vec<String>,
}

/// A job's `result` in `Host.getJobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum JobResult {
    /// A done snapshot.
    Snapshot(SnapshotResult),
    /// A failed snapshot's rollback.
    Rollback(RollbackReport),
    /// A done merge.
    Merge(MergeResult),
    /// A done SDM job.
    Sdm(SdmResult),
}

impl From<SdmResult> for JobResult {
    fn from(result: SdmResult) -> Self {
        Self::Sdm(result)
    }
}

impl From<MergeResult> for JobResult {
    fn from(result: MergeResult) -> Self {
        Self::Merge(result)
    }
}

impl From<SnapshotResult> for JobResult {
    fn from(result: SnapshotResult) -> Self {
        Self::Snapshot(result)
    }
}

impl From<RollbackReport> for JobResult {
    fn from(report: RollbackReport) -> Self {
        Self::Rollback(report)
    }
}

/// What a done merge did (its `result` in `Host.getJobs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MergeResult {
    /// The volume that received the data.
    pub base: Uuid,
    /// The volume merged away, and deleted.
    pub top: Uuid,
    /// Whether `top` was the disk's active layer (the VM now writes to `base`).
    pub active: bool,
    /// The pivots asked of libvirt (active merges).
    pub pivot_attempts: u32,
    /// `top`'s dirty bitmaps, gone with it: libvirt's commit does not carry bitmaps it did
    /// not make (its checkpoints), so the next incremental backup must be a full one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_bitmaps: Vec<String>,
}

/// What a done SDM job did (its `result` in `Host.getJobs`, rvdsm's addition): the volume
/// whose data it wrote and that volume's new generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdmResult {
    /// The volume written (a cold merge's base, a copy's destination).
    pub volume: Uuid,
    /// Its generation now.
    pub generation: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_have_the_documented_shapes_and_read_back() {
        let id = Uuid::nil();
        let recovered = SnapshotResult::Recovered {
            consistency: Consistency::Unknown,
            recovered: true,
            switched: vec![id],
        };
        let switched = SnapshotResult::Switched(Switched {
            consistency: Consistency::CrashConsistent,
            reason: Some(Reason::AgentNotResponding),
            timings: Timings::default(),
            thaw_error: None,
            switched: vec![id],
            skipped: vec![],
            unconfirmed_disks: vec![],
            memory: None,
        });
        let nothing = SnapshotResult::NothingToSwitch {
            switched: vec![],
            skipped: vec![id],
        };
        let late = SnapshotResult::LateSwitch {
            consistency: Consistency::Unknown,
            switched: vec![id],
            late_switch: "timed out".into(),
        };
        let wire = serde_json::to_value(&switched).unwrap();
        assert_eq!(wire["consistency"], "crash-consistent");
        assert_eq!(wire["reason"], "agent-not-responding");
        assert_eq!(wire["thawError"], json!(null));
        assert_eq!(wire["unconfirmedDisks"], json!([]));
        assert_eq!(
            serde_json::to_value(&recovered).unwrap()["consistency"],
            "unknown"
        );
        for result in [recovered, switched, nothing, late] {
            let text = serde_json::to_string(&result).unwrap();
            let back: SnapshotResult = serde_json::from_str(&text).unwrap();
            assert_eq!(back, result, "{text}");
        }
    }
}
