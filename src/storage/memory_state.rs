//! The configuration volume of a memory snapshot or a hibernation: what restoring the saved
//! RAM needs (the domain's definition at the instant of the dump, which volumes it matches,
//! how long the VM had run), in a format of rvdsm's own, versioned, checksummed so that a torn
//! or foreign write is refused rather than restored (docs/memory-state.md).
//!
//! The volume lives in a storage domain other hosts share: nothing read from it is trusted
//! beyond its form; the caller checks the definition as it checks a manager's.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::snapshot_types::MemoryMode;

/// The first bytes of every configuration rvdsm writes.
pub const MAGIC: &str = "rvdsm-memory-state";
/// The format version this build writes, and the newest it reads.
pub const VERSION: u32 = 1;
/// The most a configuration may take (the domain XML is a few KiB; this bounds a read).
pub const MAX_LEN: usize = 4 << 20;

/// Why the saved RAM exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SavedFor {
    /// `VM.snapshot` with `snapMemory`: the VM went on running on new volumes.
    Snapshot,
    /// `VM.hibernate`: the VM stopped.
    Hibernation,
}

/// A volume, by its domain, image and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedVolume {
    /// The storage domain.
    pub domain_id: Uuid,
    /// The image.
    pub image_id: Uuid,
    /// The volume.
    pub volume_id: Uuid,
}

/// A disk of the VM and the volume its data was on at the instant of the dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedDisk {
    /// The guest device (`vda`).
    pub target: String,
    /// The volume.
    #[serde(flatten)]
    pub volume: SavedVolume,
}

/// What a configuration volume holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryState {
    /// The VM.
    pub vm_id: Uuid,
    /// Snapshot or hibernation.
    pub saved_for: SavedFor,
    /// How the RAM was saved.
    pub mode: MemoryMode,
    /// Epoch seconds of the save.
    pub saved_at: u64,
    /// Seconds the VM had run when saved (VDSM's `elapsedTimeOffset`).
    pub elapsed_time_offset: f64,
    /// The domain's migratable definition at the save, with rvdsm's drive metadata.
    pub domain_xml: String,
    /// Each managed disk and the volume it was on.
    pub disks: Vec<SavedDisk>,
    /// The dump this configuration belongs to.
    pub dump: SavedVolume,
}

/// A configuration that cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum MemoryStateError {
    /// Zeros: the volume was never written (a save that did not get that far).
    #[error("the configuration volume is empty (never written: the save did not complete)")]
    Empty,
    /// Not rvdsm's format.
    #[error("the configuration volume is not in rvdsm's format ({0})")]
    Foreign(String),
    /// A newer rvdsm wrote it.
    #[error(
        "the configuration was written in format version {0}; this rvdsm reads up to {VERSION}"
    )]
    Version(u32),
    /// Cut short, or changed since written.
    #[error("the configuration is torn or altered: {0}")]
    Torn(String),
}

/// The bytes to write at the start of the configuration volume.
pub fn encode(state: &MemoryState) -> Vec<u8> {
    let payload = serde_json::to_vec(state).expect("a MemoryState serializes");
    let mut out = format!("{MAGIC} {VERSION} {}\n", payload.len()).into_bytes();
    out.extend_from_slice(&payload);
    out.push(b'\n');
    out
}

/// Reads a configuration from the start of its volume.
pub fn decode(bytes: &[u8]) -> Result<MemoryState, MemoryStateError> {
    if bytes.iter().take(4096).all(|b| *b == 0) {
        return Err(MemoryStateError::Empty);
    }
    let newline = bytes
        .iter()
        .take(128)
        .position(|b| *b == b'\n')
        .ok_or_else(|| MemoryStateError::Foreign("no header line".into()))?;
    let header = std::str::from_utf8(&bytes[..newline])
        .map_err(|_| MemoryStateError::Foreign("the header is not text".into()))?;
    let mut fields = header.split(' ');
    if fields.next() != Some(MAGIC) {
        return Err(MemoryStateError::Foreign("no rvdsm header".into()));
    }
    let version: u32 = fields
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| MemoryStateError::Torn("no version".into()))?;
    if version > VERSION {
        return Err(MemoryStateError::Version(version));
    }
    let len: usize = fields
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| MemoryStateError::Torn("no length".into()))?;
    let start = newline + 1;
    let payload = bytes
        .get(start..start.saturating_add(len))
        .ok_or_else(|| MemoryStateError::Torn("shorter than its header says".into()))?;
    serde_json::from_slice(payload).map_err(|e| MemoryStateError::Torn(e.to_string()))
}
