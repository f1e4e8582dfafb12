//! Why `VM.merge` refuses a request or a merge job fails, with VDSM's code for each: 1 for an
//! unknown VM, 13 (`ImageFileNotFound`) for a disk the VM does not have, 52 (`MergeFailed`)
//! for everything else, with the job and the reason in VDSM's `{'key': 'value'}` form.

use std::sync::Arc;

use uuid::Uuid;

use crate::api::{ApiError, codes};
use crate::storage::StorageError;
use crate::virt::VirtError;

/// A refused `VM.merge` or a failed merge job.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MergeError {
    /// The VM has no disk on that image and volume (13).
    #[error("Drive image file could not be found: {{'reason': '{reason}', 'job': '{job}'}}")]
    NoSuchDrive {
        /// Why.
        reason: String,
        /// The job.
        job: Uuid,
    },
    /// The merge cannot be done, or failed (52).
    #[error("Merge failed: {{'reason': '{reason}', 'job': '{job}'}}")]
    Failed {
        /// Why.
        reason: String,
        /// The job.
        job: Uuid,
    },
    /// The storage refused or failed a step (52), with the storage's words as the reason.
    #[error("Merge failed: {{'reason': '{}', 'job': '{job}'}}", quote(&storage_reason(source)))]
    Storage {
        /// Why.
        #[source]
        source: Arc<StorageError>,
        /// The job.
        job: Uuid,
    },
    /// libvirt could not read the VM (1 when it does not exist).
    #[error(transparent)]
    Virt(#[from] VirtError),
}

impl MergeError {
    /// A merge failure, with the reason in VDSM's quoting.
    pub fn failed(job: Uuid, reason: impl std::fmt::Display) -> Self {
        Self::Failed {
            reason: quote(&reason.to_string()),
            job,
        }
    }

    /// A merge failure the storage caused.
    pub fn storage(job: Uuid, err: StorageError) -> Self {
        Self::Storage {
            source: Arc::new(err),
            job,
        }
    }

    /// VDSM's code and message, for `Host.getJobs`.
    pub fn code_and_message(&self) -> (i32, String) {
        let err = ApiError::from(self.clone());
        (err.code(), err.to_string())
    }
}

/// The storage's words for `err`, as its VDSM message says them.
fn storage_reason(err: &StorageError) -> String {
    crate::services::errors::storage_api_error(err).to_string()
}

/// Text inside a Python-style single-quoted string.
fn quote(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "\\'")
}

impl From<MergeError> for ApiError {
    fn from(err: MergeError) -> Self {
        let code = match &err {
            MergeError::Virt(err) => return err.clone().into(),
            MergeError::NoSuchDrive { .. } => codes::IMAGE_FILE_NOT_FOUND,
            MergeError::Failed { .. } | MergeError::Storage { .. } => codes::MERGE_FAILED,
        };
        Self::Coded {
            code,
            message: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_vdsm_codes_and_words() {
        let job = Uuid::nil();
        let err = ApiError::from(MergeError::failed(job, "the VM's 'vda' is busy"));
        assert_eq!(err.code(), 52);
        assert_eq!(
            err.to_string(),
            format!("Merge failed: {{'reason': 'the VM\\'s \\'vda\\' is busy', 'job': '{job}'}}")
        );
        let volume = Uuid::from_u128(7);
        let storage = ApiError::from(MergeError::storage(
            job,
            StorageError::VolumeDoesNotExist(volume),
        ));
        let flattened = ApiError::from(MergeError::failed(
            job,
            ApiError::from(StorageError::VolumeDoesNotExist(volume)),
        ));
        assert_eq!(storage.code(), 52);
        assert_eq!(storage.to_string(), flattened.to_string());
        let typed = MergeError::storage(job, StorageError::VolumeDoesNotExist(volume));
        let source = std::error::Error::source(&typed).expect("the storage error is kept");
        assert_eq!(
            source.to_string(),
            format!("Volume does not exist: ('{volume}',)")
        );
        let err = ApiError::from(MergeError::NoSuchDrive {
            reason: "no disk".into(),
            job,
        });
        assert_eq!(err.code(), 13);
        let err = ApiError::from(MergeError::Virt(VirtError::NoSuchDomain {
            uuid: job.to_string(),
        }));
        assert_eq!(err.code(), 1);
    }
}
