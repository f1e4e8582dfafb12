//! The VM lifecycle journal: one file per VM being created or destroyed, written (and synced)
//! before the first step that changes anything and removed after the last, so that a crash of
//! rvdsmd in between is finished at the next start (a half-created VM is undone, a
//! half-destroyed one destroyed).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::jobs::records::RecordDir;

/// What was under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// `VM.create`.
    Create,
    /// `VM.destroy`.
    Destroy,
}

/// One drive's image, to tear down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveImage {
    /// The pool.
    pub pool: Uuid,
    /// The domain.
    pub domain: Uuid,
    /// The image.
    pub image: Uuid,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The VM.
    pub vm: Uuid,
    /// What was under way.
    pub operation: Operation,
    /// Whether rvdsm defined the VM (and so undefines it).
    pub managed: bool,
    /// Its drives' images.
    pub images: Vec<DriveImage>,
}

/// The journal's directory: an entry per VM.
pub type Journal = RecordDir<Entry>;
