//! What the storage service's functions that other services call (the SDM jobs, the image
//! handles' makers, the VM service's lease lookups, the finalize of a cold merge) fail with:
//! the storage layer's error, libvirt's when it could not tell which volumes its VMs use, the
//! cluster's, or the task records'. Typed toward the calling service, which keeps it as the
//! source of its own error or hands it on; [`ApiError`] is made from it by the one mapping of
//! [`crate::services::errors`] when a verb's answer or a job's recorded end needs VDSM's code.

use crate::api::ApiError;
use crate::cluster::ClusterError;
use crate::jobs::tasks::TaskError;
use crate::services::errors::storage_api_error;
use crate::storage::{StorageError, StorageErrorKind};
use crate::virt::VirtError;

/// A failure of the storage service toward another service.
#[derive(Debug, thiserror::Error)]
pub enum StorageServiceError {
    /// The storage refused or failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// libvirt could not say which volumes its VMs use, so a change that needs them unused
    /// was refused.
    #[error(transparent)]
    Hypervisor(#[from] VirtError),
    /// This host's part among the hosts sharing the domain refused (not the SPM, no lease).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The task records refused or failed (a task not found, not persisted).
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The task bookkeeping panicked.
    #[error("task bookkeeping panicked")]
    TaskBookkeeping(#[source] tokio::task::JoinError),
}

/// What kind of failure a [`StorageServiceError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceErrorKind {
    /// A storage failure of this kind.
    Storage(StorageErrorKind),
    /// libvirt failed.
    Hypervisor,
    /// The cluster refused.
    Cluster,
    /// The task records refused or failed.
    Task,
}

impl StorageServiceError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ServiceErrorKind {
        match self {
            Self::Storage(err) => ServiceErrorKind::Storage(err.kind()),
            Self::Hypervisor(_) => ServiceErrorKind::Hypervisor,
            Self::Cluster(_) => ServiceErrorKind::Cluster,
            Self::Task(_) | Self::TaskBookkeeping(_) => ServiceErrorKind::Task,
        }
    }
}

impl From<StorageServiceError> for ApiError {
    fn from(err: StorageServiceError) -> Self {
        match err {
            StorageServiceError::Storage(err) => storage_api_error(&err),
            StorageServiceError::Hypervisor(err) => err.into(),
            StorageServiceError::Cluster(err) => err.into(),
            StorageServiceError::Task(err) => err.into(),
            StorageServiceError::TaskBookkeeping(err) => {
                ApiError::Unexpected(format!("task bookkeeping panicked: {err}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn codes_are_the_layers_own_and_the_cause_is_kept() {
        let volume = Uuid::from_u128(9);
        let err = StorageServiceError::from(StorageError::InUse(volume));
        assert_eq!(
            err.kind(),
            ServiceErrorKind::Storage(StorageErrorKind::Refused)
        );
        let api = ApiError::from(err);
        assert_eq!(api.code(), 222);
        assert_eq!(
            api.to_string(),
            ApiError::from(StorageError::InUse(volume)).to_string()
        );

        let io = StorageError::io("read", "/sd/x")(std::io::Error::other("gone"));
        let err = StorageServiceError::from(io);
        assert_eq!(
            err.kind(),
            ServiceErrorKind::Storage(StorageErrorKind::Failed)
        );
        let source = std::error::Error::source(&err).expect("the I/O error is kept");
        assert_eq!(source.to_string(), "gone");

        let err = StorageServiceError::from(VirtError::NoSuchDomain { uuid: "x".into() });
        assert_eq!(err.kind(), ServiceErrorKind::Hypervisor);
        assert_eq!(ApiError::from(err).code(), 1);
    }
}
