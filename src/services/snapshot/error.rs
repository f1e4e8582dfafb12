//! Why `VM.snapshot` refuses a request (before any job exists), with VDSM's code for each.

use std::sync::Arc;

use crate::api::{ApiError, codes};
use crate::jobs::vm_jobs::JobRefusal;
use crate::services::errors::storage_api_error;
use crate::storage::StorageError;
use crate::virt::VirtError;

/// A refused `VM.snapshot`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    /// A parameter is invalid, or the VM's disks cannot take this snapshot (91).
    #[error("Invalid parameter: {0}")]
    InvalidParameter(String),
    /// The VM is migrating (51).
    #[error("Command not supported during migration")]
    MigrationInProgress,
    /// The job id is known, or another operation holds the VM (100).
    #[error(transparent)]
    Busy(#[from] JobRefusal),
    /// libvirt could not read the VM.
    #[error(transparent)]
    Virt(#[from] VirtError),
    /// The storage refused a volume (with its storage code).
    #[error(transparent)]
    Storage(Arc<StorageError>),
    /// The job could not be journaled, so it was not started (100).
    #[error("General Exception: cannot journal snapshot job {job}: {message}")]
    Journal {
        /// The job.
        job: uuid::Uuid,
        /// Why.
        message: String,
    },
}

impl SnapshotError {
    /// An invalid request, in VDSM's form: `{'action': 'VM.snapshot', 'reason': ...}`.
    pub fn invalid(reason: impl std::fmt::Display) -> Self {
        Self::InvalidParameter(format!(
            "{{'action': 'VM.snapshot', 'reason': '{}'}}",
            quote(&reason.to_string())
        ))
    }

    /// An invalid value of one parameter, in VDSM's form:
    /// `{'action': 'VM.snapshot', 'parameter': 'timeout', 'value': 0, 'reason': ...}`.
    pub fn invalid_value(parameter: &str, value: impl std::fmt::Display, reason: &str) -> Self {
        Self::InvalidParameter(format!(
            "{{'action': 'VM.snapshot', 'parameter': '{parameter}', 'value': {value}, 'reason': '{}'}}",
            quote(reason)
        ))
    }
}

impl From<StorageError> for SnapshotError {
    fn from(err: StorageError) -> Self {
        Self::Storage(Arc::new(err))
    }
}

/// Text inside a Python-style single-quoted string.
fn quote(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "\\'")
}

impl From<SnapshotError> for ApiError {
    fn from(err: SnapshotError) -> Self {
        let code = match err {
            SnapshotError::Busy(err) => return err.into(),
            SnapshotError::Virt(err) => return err.into(),
            SnapshotError::Storage(err) => return storage_api_error(&err),
            SnapshotError::InvalidParameter(_) => codes::INVALID_PARAMETER,
            SnapshotError::MigrationInProgress => codes::MIGRATION_IN_PROGRESS,
            SnapshotError::Journal { .. } => codes::GENERAL,
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
        let err = ApiError::from(SnapshotError::invalid("snapDrives is empty"));
        assert_eq!(err.code(), 91);
        assert_eq!(
            err.to_string(),
            "Invalid parameter: {'action': 'VM.snapshot', 'reason': 'snapDrives is empty'}"
        );
        let err = ApiError::from(SnapshotError::invalid_value(
            "timeout",
            0,
            "must be positive",
        ));
        assert_eq!(
            err.to_string(),
            "Invalid parameter: {'action': 'VM.snapshot', 'parameter': 'timeout', 'value': 0, \
             'reason': 'must be positive'}"
        );
        let volume = uuid::Uuid::from_u128(7);
        let err = ApiError::from(SnapshotError::from(StorageError::VolumeDoesNotExist(
            volume,
        )));
        assert_eq!(err.code(), 201);
        assert_eq!(
            err.to_string(),
            format!("Volume does not exist: ('{volume}',)")
        );
        let err = ApiError::from(SnapshotError::MigrationInProgress);
        assert_eq!(err.code(), 51);
        assert_eq!(err.to_string(), "Command not supported during migration");
    }
}
