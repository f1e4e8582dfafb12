//! Where the layers meet: each lower module's error turned into the [`ApiError`] a manager
//! sees, with VDSM's code from [`codes`]. The one place that knows both sides, so that
//! `api` imports nothing of `storage`, `virt` or `jobs`, and those know nothing of the wire.

use crate::api::ApiError;
use crate::api::codes;
use crate::cluster::ClusterError;
use crate::jobs::tasks::TaskError;
use crate::jobs::vm_jobs::JobRefusal;
use crate::storage::StorageError;
use crate::storage::pool::PoolError;
use crate::virt::VirtError;

/// VDSM's storage error code for a storage failure.
pub fn storage_code(err: &StorageError) -> i32 {
    use StorageError as E;
    match err {
        E::Pool(e) => pool_code(e),
        E::PoolUnknown(_) => codes::STORAGE_POOL_UNKNOWN,
        E::LeaseNotHeld(_) => codes::ACQUIRE_HOST_ID_FAILURE,
        E::NoSuchLease(_) => codes::NO_SUCH_LEASE,
        E::LeaseExists(_) | E::LeasesVolume(_) => codes::GENERAL,
        E::DomainDoesNotExist(_) => codes::STORAGE_DOMAIN_DOES_NOT_EXIST,
        E::DomainExists(_) => codes::STORAGE_DOMAIN_ALREADY_EXISTS,
        E::ImageDoesNotExist { .. } => codes::IMAGE_DOES_NOT_EXIST_IN_SD,
        E::ImagePath(_) => codes::IMAGE_PATH_ERROR,
        E::VolumeDoesNotExist(_) => codes::VOLUME_DOES_NOT_EXIST,
        E::VolumeAlreadyExists(_) => codes::VOLUME_ALREADY_EXISTS,
        E::IncorrectFormat(_) => codes::INCORRECT_FORMAT,
        E::IncorrectType(_) => codes::INCORRECT_TYPE,
        E::IllegalParent(_) => codes::CREATE_ILLEGAL_VOLUME_SNAPSHOT,
        E::PrepareIllegal(_) => codes::PREPARE_ILLEGAL_VOLUME,
        E::Size(_) => codes::CREATE_VOLUME_SIZE_ERROR,
        E::NoSpace { .. } => codes::NO_SPACE_LEFT_ON_DOMAIN,
        E::HasChildren(_) => codes::VOLUME_IMAGE_HAS_CHILDREN,
        E::InUse(_) => codes::CANNOT_DELETE_VOLUME,
        E::InvalidParameter(_) | E::MemoryVolume(_) => codes::INVALID_PARAMETER_EXCEPTION,
        E::MemoryState(_) => codes::GENERAL,
        E::Creation(_) => codes::VOLUME_CREATION_ERROR,
        E::Clone(_) => codes::CANNOT_CLONE_VOLUME,
        E::Merge(_) => codes::MERGE_SNAPSHOTS_ERROR,
        E::Copy(_) => codes::COPY_IMAGE_ERROR,
        E::GenerationMismatch(_) => codes::GENERATION_MISMATCH,
        E::MetadataRead { .. } => codes::VOLUME_METADATA_READ_ERROR,
        E::MetadataOverflow(_) => codes::METADATA_OVERFLOW,
        E::DomainMetadata { .. } => codes::INVALID_METADATA,
        E::Io { .. } | E::Inspect { .. } => codes::STORAGE_EXCEPTION,
        E::Persist(_) => codes::TASK_PERSIST_ERROR,
        E::Aborted | E::Interrupted => codes::TASK_ABORTED,
        E::Panicked(_) => codes::UNEXPECTED,
    }
}

/// VDSM's code for a refusal of the pool's record.
pub fn pool_code(err: &PoolError) -> i32 {
    use PoolError as E;
    match err {
        E::MasterNotFound { .. } => codes::STORAGE_POOL_MASTER_NOT_FOUND,
        E::WrongMaster { .. } => codes::STORAGE_POOL_WRONG_MASTER,
        E::AlreadyAttached { .. } => codes::STORAGE_DOMAIN_ALREADY_ATTACHED,
        E::NotInPool { .. } => codes::STORAGE_DOMAIN_NOT_IN_POOL,
        E::StateTransition { .. } => codes::STORAGE_DOMAIN_STATE_TRANSITION_ILLEGAL,
        E::DetachMaster(_) => codes::CANNOT_DETACH_MASTER_STORAGE_DOMAIN,
        E::FormatAttached(_) => codes::CANNOT_FORMAT_ATTACHED_STORAGE_DOMAIN,
        E::FormatInUse { .. } => codes::CANNOT_FORMAT_STORAGE_DOMAIN_IN_CONNECTED_POOL,
        E::DomainAction { .. } => codes::STORAGE_DOMAIN_ACTION_ERROR,
        E::Unreadable { source, .. } => storage_code(source),
        E::Record { .. } => codes::INVALID_METADATA,
        E::InvalidParameter(_) => codes::INVALID_PARAMETER_EXCEPTION,
    }
}

/// VDSM's task error code for a task bookkeeping failure.
pub fn task_code(err: &TaskError) -> i32 {
    match err {
        TaskError::Unknown(_) => codes::UNKNOWN_TASK,
        TaskError::State(_) => codes::TASK_STATE_ERROR,
        TaskError::Persist { .. } => codes::TASK_PERSIST_ERROR,
    }
}

/// VDSM's code and message for a storage failure: the one mapping of a [`StorageError`],
/// owned or shared (a typed error another service keeps as its source).
pub fn storage_api_error(err: &StorageError) -> ApiError {
    if let StorageError::Panicked(why) = err {
        return ApiError::Unexpected(format!("storage task panicked: {why}"));
    }
    ApiError::Coded {
        code: storage_code(err),
        message: err.to_string(),
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        storage_api_error(&err)
    }
}

/// VDSM's code for a cluster failure.
pub fn cluster_code(err: &ClusterError) -> i32 {
    use ClusterError as E;
    match err {
        E::NotJoined { .. } | E::LeaseLost { .. } | E::LeaseUnknown { .. } | E::Join { .. } => {
            codes::ACQUIRE_HOST_ID_FAILURE
        }
        E::Leave { .. } => codes::RELEASE_HOST_ID_FAILURE,
        E::NotSpm => codes::SPM_STATUS_ERROR,
        E::IsSpm => codes::IS_SPM,
        E::SpmHeld(_) | E::VolumeLeaseHeld { .. } => codes::ACQUIRE_LOCK_FAILURE,
        E::SpmStarting | E::SpmBusy(_) => codes::SPM_STOP_ERROR,
        E::HostIdMismatch { .. } => codes::HOST_ID_MISMATCH,
        E::NotClustered => codes::INVALID_PARAMETER,
        E::Sanlock(_) | E::Timeout { .. } | E::SpmContending => codes::SPM_START_ERROR,
        E::Unexpected(_) => codes::GENERAL,
    }
}

impl From<ClusterError> for ApiError {
    fn from(err: ClusterError) -> Self {
        Self::Coded {
            code: cluster_code(&err),
            message: err.to_string(),
        }
    }
}

impl From<TaskError> for ApiError {
    fn from(err: TaskError) -> Self {
        Self::Coded {
            code: task_code(&err),
            message: err.to_string(),
        }
    }
}

impl From<JobRefusal> for ApiError {
    fn from(err: JobRefusal) -> Self {
        // VDSM answers 100 for a job id it knows and for a VM another operation holds.
        Self::Coded {
            code: codes::GENERAL,
            message: err.to_string(),
        }
    }
}

/// VDSM's "cannot create the VM" (9) with its reason, as VDSM words it.
pub(crate) fn cannot_create(reason: impl std::fmt::Display) -> ApiError {
    ApiError::Coded {
        code: codes::CANNOT_CREATE_VM,
        message: format!("Error creating the requested VM: {{'reason': '{reason}'}}"),
    }
}

impl From<VirtError> for ApiError {
    fn from(err: VirtError) -> Self {
        match err {
            VirtError::NoSuchDomain { uuid } => Self::NoSuchVm { vm_id: uuid },
            VirtError::Connect { .. } => Self::HypervisorUnavailable(err.to_string()),
            VirtError::Libvirt { .. } | VirtError::Xml { .. } | VirtError::Agent { .. } => {
                Self::Hypervisor(err.to_string())
            }
            VirtError::Refused { .. } => cannot_create(err),
            VirtError::Timeout { .. } => Self::Timeout(err.to_string()),
            VirtError::Panicked { .. } => Self::Unexpected(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn no_such_vm_has_vdsm_code_and_text() {
        let err = ApiError::from(VirtError::NoSuchDomain {
            uuid: "4d8b1f6e-2f1b-4c4e-9a59-3e0d6c3a1d10".into(),
        });
        assert_eq!(err.code(), 1);
        assert_eq!(
            err.to_string(),
            "Virtual machine does not exist: {'vmId': '4d8b1f6e-2f1b-4c4e-9a59-3e0d6c3a1d10'}"
        );
    }

    #[test]
    fn libvirt_code_survives_mapping() {
        let err = ApiError::from(VirtError::Libvirt {
            op: "list domains",
            code: 55,
            message: "domain is not running".into(),
        });
        assert_eq!(err.code(), codes::GENERAL);
        assert!(err.to_string().contains("libvirt error 55"), "{err}");
    }

    #[test]
    fn storage_and_task_errors_keep_vdsm_numbers() {
        let id = Uuid::nil();
        for (err, code) in [
            (StorageError::PoolUnknown(id), 309),
            (StorageError::DomainDoesNotExist(id), 358),
            (StorageError::DomainExists(id), 365),
            (StorageError::VolumeDoesNotExist(id), 201),
            (StorageError::VolumeAlreadyExists(id), 212),
            (StorageError::IllegalParent(id), 226),
            (StorageError::PrepareIllegal(id), 227),
            (StorageError::InUse(id), 222),
            (StorageError::InvalidParameter(String::new()), 1000),
            (StorageError::Interrupted, 411),
        ] {
            assert_eq!(ApiError::from(err).code(), code);
        }
        assert_eq!(ApiError::from(TaskError::Unknown(id)).code(), 401);
        assert_eq!(ApiError::from(TaskError::State(String::new())).code(), 410);
    }
}
