//! The VM lifecycle journal: one file per VM being created or destroyed, written (and synced)
//! before the first step that changes anything and removed after the last, so that a crash of
//! rvdsmd in between is finished at the next start (a half-created VM is undone, a
//! half-destroyed one destroyed).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::jobs::journal::JournalRecord;

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

impl JournalRecord for Entry {
    fn id(&self) -> Uuid {
        self.vm
    }
}

/// The journal's directory: an entry per VM, removed once its operation is over.
pub type Journal = crate::jobs::journal::Journal<Entry>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A record exactly as the release before the one journal wrote it (serialized with its
    /// types, pasted verbatim) reads into the same meaning.
    #[test]
    fn records_of_the_previous_release_read_the_same() {
        let text = r#"{"vm":"00000000-0000-0000-0000-000000000020","operation":"destroy","managed":true,"images":[{"pool":"00000000-0000-0000-0000-000000000001","domain":"00000000-0000-0000-0000-000000000002","image":"00000000-0000-0000-0000-000000000003"}]}"#;
        let read: Entry = serde_json::from_str(text).unwrap();
        let u = Uuid::from_u128;
        let want = Entry {
            vm: u(0x20),
            operation: Operation::Destroy,
            managed: true,
            images: vec![DriveImage {
                pool: u(1),
                domain: u(2),
                image: u(3),
            }],
        };
        assert_eq!(read, want);
        assert_eq!(read.id(), u(0x20));
        assert_eq!(
            read.finished_at(),
            None,
            "removed by its owner, never pruned"
        );
        assert_eq!(serde_json::to_string(&read).unwrap(), text);
    }
}
