//! The snapshot's wire vocabulary: the `quiesce` mode, why a snapshot is not quiesced, what
//! its data is worth, how long each phase took, and the note kept beside a snapshot's base
//! volume (`Volume.getInfo`'s `snapshot`). What a snapshot job did (its `Host.getJobs` result)
//! lives with the jobs, in `jobs::results`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// rvdsm's `quiesce` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quiesce {
    /// Quiesce when an agent can; else snapshot without, once, and say why.
    #[default]
    Prefer,
    /// Quiesce or fail.
    Require,
    /// Never freeze or thaw.
    Skip,
}

/// How a memory snapshot saves the guest's RAM (rvdsm's `memoryMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryMode {
    /// VDSM's way: the guest is paused for the whole dump (libvirt without `LIVE`); the dump
    /// holds each page once.
    #[default]
    Paused,
    /// The guest runs while its RAM is copied and is paused only for the last pages and the
    /// disks' switch (libvirt's `LIVE`); a writing guest makes the dump larger.
    Live,
}

/// The six ids of VDSM's `snapMemory` and `hiberVolHandle` strings
/// (`sdUUID,spUUID,dumpImgUUID,dumpVolUUID,confImgUUID,confVolUUID`): the volume that gets the
/// guest's RAM and the one that gets what restoring needs, both in one storage domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryVolumes {
    /// The storage domain of both volumes.
    pub domain: Uuid,
    /// The pool (checked by nothing but its form: rvdsm has one pool).
    pub pool: Uuid,
    /// The RAM dump's image and volume.
    pub dump: (Uuid, Uuid),
    /// The configuration's image and volume.
    pub conf: (Uuid, Uuid),
}

impl std::str::FromStr for MemoryVolumes {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let ids: Vec<&str> = text.split(',').collect();
        if ids.len() != 6 {
            return Err(format!(
                "expected 6 comma-separated UUIDs (domain, pool, dump image, dump volume, \
                 configuration image, configuration volume), got {}",
                ids.len()
            ));
        }
        let mut parsed = [Uuid::nil(); 6];
        for (slot, id) in parsed.iter_mut().zip(&ids) {
            *slot = Uuid::parse_str(id.trim()).map_err(|e| format!("{id:?} is not a UUID: {e}"))?;
        }
        let [
            domain,
            pool,
            dump_image,
            dump_volume,
            conf_image,
            conf_volume,
        ] = parsed;
        let volumes = Self {
            domain,
            pool,
            dump: (dump_image, dump_volume),
            conf: (conf_image, conf_volume),
        };
        if volumes.dump == volumes.conf {
            return Err("the dump and the configuration are the same volume".into());
        }
        Ok(volumes)
    }
}

/// What a memory snapshot (or a hibernation) saved: part of its job's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryResult {
    /// How the RAM was saved.
    pub mode: MemoryMode,
    /// How long the guest's CPUs stood still, as libvirt's lifecycle events tell (suspended to
    /// resumed), in milliseconds; null when the events were not seen.
    pub pause_ms: Option<f64>,
    /// QEMU's own figure for the last stop-and-copy (libvirt's `downtime`), in milliseconds.
    pub downtime_ms: Option<f64>,
    /// The dump's size in bytes.
    pub dump_bytes: u64,
    /// The dump's volume.
    pub dump_volume: Uuid,
    /// The configuration's volume.
    pub conf_volume: Uuid,
}

/// Why a snapshot is not quiesced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The VM has no agent channel, or the agent cannot freeze.
    NoAgent,
    /// The agent is not connected or did not answer in time.
    AgentNotResponding,
    /// The VM is paused.
    Paused,
    /// The VM is not running (an offline snapshot of its definition).
    NotRunning,
    /// `quiesce = skip`.
    Skipped,
    /// `frozen = true`: the caller froze the guest.
    FrozenByCaller,
    /// The guest was already frozen when the operation began (by `VM.freeze` or another tool).
    AlreadyFrozen,
}

/// What a snapshot's data is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Filesystems were frozen by this operation for the switch.
    Quiesced,
    /// As after a power cut; see the reason.
    CrashConsistent,
    /// Not known: the switch was found done after a restart of rvdsmd, or after its error.
    Unknown,
    /// The guest's RAM was saved at the disks' switch: restored together, the guest resumes
    /// where it was, its filesystems' unwritten state included; the disks alone are as after
    /// a power cut (no freeze is made when memory is saved, as VDSM does).
    WithMemory,
}

/// How long each phase took, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// The freeze call.
    pub freeze_ms: f64,
    /// The switch (libvirt's snapshot call).
    pub switch_ms: f64,
    /// The thaw call.
    pub thaw_ms: f64,
    /// From the freeze call's return to the thaw call's return: how long the guest stayed
    /// frozen for this snapshot (0 when it was not frozen by it).
    pub frozen_ms: f64,
    /// From the start of the flow to its end.
    pub total_ms: f64,
}

/// How the snapshot on top of a volume was taken, kept beside it (`Volume.getInfo`'s
/// `snapshot`): before a revert, what the guest will see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotNote {
    /// What the data is worth.
    pub consistency: Consistency,
    /// Why not quiesced ([`Reason`]'s wire name), or `recovered`, `late-switch`; or
    /// [`SnapshotNote::MERGING`]: a live merge into the volume began and has not completed.
    pub reason: Option<String>,
    /// Epoch seconds.
    pub time: u64,
    /// The VM.
    #[serde(rename = "vmId")]
    pub vm_id: Uuid,
    /// The volume the VM switched to.
    #[serde(rename = "volumeID")]
    pub volume: Uuid,
}

/// What a guest reverted to a snapshot will see at its first boot, told before the revert
/// (`Volume.getInfo`'s `revertBoot`): `clean` when its filesystems were frozen for the
/// snapshot, `journal-recovery` when they were not (the boot replays the journals, or runs a
/// filesystem check, as after a power cut), `unknown` when rvdsm cannot tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevertBoot {
    /// `clean`, `journal-recovery` or `unknown`.
    pub outcome: &'static str,
    /// The same, said for a person.
    pub message: String,
}

impl SnapshotNote {
    /// The reason of the note a live merge writes before its commit begins: from then on,
    /// the volume may hold part of the data of the volume merged into it.
    pub const MERGING: &'static str = "merging";

    /// The note of a volume a live merge of `top` (its child) into it is about to change:
    /// the snapshot's instant is no longer known to be intact.
    pub fn merge_begun(vm_id: Uuid, top: Uuid, time: u64) -> Self {
        Self {
            consistency: Consistency::Unknown,
            reason: Some(Self::MERGING.to_owned()),
            time,
            vm_id,
            volume: top,
        }
    }

    /// What a guest reverted to this snapshot will see at boot.
    pub fn revert_boot(&self) -> RevertBoot {
        if self.reason.as_deref() == Some(Self::MERGING) {
            return RevertBoot {
                outcome: "unknown",
                message: "a merge of the next volume into this one began and has not \
                          completed: it may hold data of two instants (this snapshot's and a later one's); a \
                          guest reverted to it may not boot, or may need a filesystem check and \
                          still miss or mix files"
                    .into(),
            };
        }
        // A guest frozen by the caller (or by another tool) for the switch is as consistent
        // as one rvdsm froze: its journals were committed before the switch.
        let frozen_by_other = matches!(
            self.reason.as_deref(),
            Some("frozen-by-caller" | "already-frozen")
        );
        let why = self.reason.as_deref().unwrap_or("none recorded");
        match self.consistency {
            Consistency::Quiesced => RevertBoot {
                outcome: "clean",
                message: "the guest's filesystems were frozen for the snapshot: it boots \
                          cleanly, with no journal recovery and no filesystem check"
                    .into(),
            },
            Consistency::CrashConsistent if frozen_by_other => RevertBoot {
                outcome: "clean",
                message: format!(
                    "the guest's filesystems were frozen for the snapshot ({why}): it boots \
                     cleanly, with no journal recovery and no filesystem check"
                ),
            },
            Consistency::CrashConsistent => RevertBoot {
                outcome: "journal-recovery",
                message: format!(
                    "the snapshot was taken without quiescing ({why}): as after a power cut, \
                     the guest replays its filesystem journals on boot, or runs a filesystem \
                     check; writes not yet flushed at the snapshot are not in it"
                ),
            },
            Consistency::WithMemory => RevertBoot {
                outcome: "journal-recovery",
                message: "the snapshot saved the guest's memory: restored with it (VM.create with \
                          memoryDumpVolume and memoryConfVolume), the guest resumes where it was; \
                          booted from the disks alone, it replays its filesystem journals as \
                          after a power cut"
                    .into(),
            },
            Consistency::Unknown => RevertBoot {
                outcome: "unknown",
                message: format!(
                    "whether the guest was frozen for this snapshot is not known ({why}): \
                     expect journal recovery or a filesystem check on boot"
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revert_is_announced_clean_only_when_the_guest_was_frozen() {
        let note = |consistency, reason: Option<&str>| SnapshotNote {
            consistency,
            reason: reason.map(str::to_owned),
            time: 0,
            vm_id: Uuid::nil(),
            volume: Uuid::nil(),
        };
        let outcome = |n: SnapshotNote| n.revert_boot().outcome;
        assert_eq!(outcome(note(Consistency::Quiesced, None)), "clean");
        assert_eq!(
            outcome(note(Consistency::CrashConsistent, Some("frozen-by-caller"))),
            "clean"
        );
        let unfrozen = note(Consistency::CrashConsistent, Some("agent-not-responding"));
        assert_eq!(unfrozen.revert_boot().outcome, "journal-recovery");
        assert!(
            unfrozen
                .revert_boot()
                .message
                .contains("agent-not-responding")
        );
        assert_eq!(
            outcome(note(Consistency::Unknown, Some("recovered"))),
            "unknown"
        );
    }

    #[test]
    fn a_volume_a_merge_began_to_change_is_never_announced_clean() {
        let marked = SnapshotNote::merge_begun(Uuid::nil(), Uuid::from_u128(1), 5);
        assert_eq!(marked.revert_boot().outcome, "unknown");
        assert!(marked.revert_boot().message.contains("two instants"));
        // Even were its consistency read back as quiesced, the merge's reason wins.
        let quiesced = SnapshotNote {
            consistency: Consistency::Quiesced,
            ..marked.clone()
        };
        assert_eq!(quiesced.revert_boot().outcome, "unknown");
        let wire = serde_json::to_value(&marked).unwrap();
        assert_eq!(wire["reason"], "merging");
        assert_eq!(wire["consistency"], "unknown");
    }
}
