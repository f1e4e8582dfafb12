//! VDSM's numeric error codes (VDSM-REFERENCE §1.5), each with one name. A manager branches on
//! these numbers, so they are the wire contract: every error rvdsm answers carries one of
//! them, and no other file spells a code as a number.

// Virt and general codes (`lib/vdsm/common/define.py`).
/// Virtual machine does not exist.
pub const NO_SUCH_VM: i32 = 1;
/// Virtual machine already exists.
pub const VM_EXISTS: i32 = 4;
/// Virtual machine is down.
pub const VM_IS_DOWN: i32 = 6;
/// Error creating the requested VM.
pub const CANNOT_CREATE_VM: i32 = 9;
/// Virtual machine destroy error.
pub const VM_DESTROY_FAILED: i32 = 42;
/// Unexpected exception.
pub const UNEXPECTED: i32 = 16;
/// `ImageFileNotFound`: the VM has no disk on that volume.
pub const IMAGE_FILE_NOT_FOUND: i32 = 13;
/// Guest agent non-responsive.
pub const NON_RESPONSIVE_GUEST_AGENT: i32 = 19;
/// Snapshot failed.
pub const SNAPSHOT_FAILED: i32 = 48;
/// Command not supported during migration.
pub const MIGRATION_IN_PROGRESS: i32 = 51;
/// `MergeFailed`.
pub const MERGE_FAILED: i32 = 52;
/// Operation not supported (freeze/thaw without an agent channel).
pub const UNSUPPORTED_OPERATION: i32 = 75;
/// Unable to freeze guest filesystems.
pub const FREEZE_GUEST_FS_FAILED: i32 = 76;
/// Unable to thaw guest filesystems.
pub const THAW_GUEST_FS_FAILED: i32 = 77;
/// Invalid parameter (virt verbs).
pub const INVALID_PARAMETER: i32 = 91;
/// Recovering from crash or Initializing.
pub const RECOVERY_IN_PROGRESS: i32 = 99;
/// General Exception.
pub const GENERAL: i32 = 100;

// Storage codes (`lib/vdsm/storage/exception.py`).
/// General storage exception (a filesystem call failed).
pub const STORAGE_EXCEPTION: i32 = 200;
/// Volume does not exist.
pub const VOLUME_DOES_NOT_EXIST: i32 = 201;
/// Incorrect format.
pub const INCORRECT_FORMAT: i32 = 202;
/// Volume or image has children.
pub const VOLUME_IMAGE_HAS_CHILDREN: i32 = 204;
/// Volume creation error.
pub const VOLUME_CREATION_ERROR: i32 = 205;
/// Error while processing volume metadata.
pub const VOLUME_METADATA_READ_ERROR: i32 = 207;
/// Volume already exists.
pub const VOLUME_ALREADY_EXISTS: i32 = 212;
/// Cannot clone volume.
pub const CANNOT_CLONE_VOLUME: i32 = 217;
/// Cannot delete volume (in use).
pub const CANNOT_DELETE_VOLUME: i32 = 222;
/// Cannot create a volume on an illegal parent.
pub const CREATE_ILLEGAL_VOLUME_SNAPSHOT: i32 = 226;
/// Cannot prepare an illegal volume.
pub const PREPARE_ILLEGAL_VOLUME: i32 = 227;
/// Error creating a volume with the requested size.
pub const CREATE_VOLUME_SIZE_ERROR: i32 = 229;
/// Incorrect type (preallocation).
pub const INCORRECT_TYPE: i32 = 231;
/// Image path does not exist or cannot be accessed.
pub const IMAGE_PATH_ERROR: i32 = 254;
/// `MergeSnapshotsError`: qemu-img could not merge.
pub const MERGE_SNAPSHOTS_ERROR: i32 = 252;
/// `CopyImageError`: qemu-img could not copy.
pub const COPY_IMAGE_ERROR: i32 = 261;
/// `GenerationMismatch`.
pub const GENERATION_MISMATCH: i32 = 911;
/// No such lease (an external lease, `Lease.*`).
pub const NO_SUCH_LEASE: i32 = 936;
/// Image does not exist in the domain.
pub const IMAGE_DOES_NOT_EXIST_IN_SD: i32 = 268;
/// Unknown pool id.
pub const STORAGE_POOL_UNKNOWN: i32 = 309;
/// The pool's master domain is not found (`StoragePoolMasterNotFound`).
pub const STORAGE_POOL_MASTER_NOT_FOUND: i32 = 304;
/// The domain named master is not the pool's master at that version.
pub const STORAGE_POOL_WRONG_MASTER: i32 = 324;
/// An action on a storage domain failed (`StorageDomainActionError`).
pub const STORAGE_DOMAIN_ACTION_ERROR: i32 = 350;
/// The domain is not one of the pool's.
pub const STORAGE_DOMAIN_NOT_IN_POOL: i32 = 353;
/// The domain is attached to a pool already.
pub const STORAGE_DOMAIN_ALREADY_ATTACHED: i32 = 380;
/// The domain cannot go from its state to the one asked.
pub const STORAGE_DOMAIN_STATE_TRANSITION_ILLEGAL: i32 = 381;
/// The master domain cannot be detached.
pub const CANNOT_DETACH_MASTER_STORAGE_DOMAIN: i32 = 383;
/// A domain attached to a pool is not formatted without `autoDetach`.
pub const CANNOT_FORMAT_ATTACHED_STORAGE_DOMAIN: i32 = 391;
/// A domain of the connected pool is not formatted.
pub const CANNOT_FORMAT_STORAGE_DOMAIN_IN_CONNECTED_POOL: i32 = 392;
/// Storage domain does not exist.
pub const STORAGE_DOMAIN_DOES_NOT_EXIST: i32 = 358;
/// Storage domain already exists.
pub const STORAGE_DOMAIN_ALREADY_EXISTS: i32 = 365;
/// No space left on the domain.
pub const NO_SPACE_LEFT_ON_DOMAIN: i32 = 397;

// SPM and host id codes (hosts sharing domains).
/// Error starting SPM.
pub const SPM_START_ERROR: i32 = 650;
/// Cannot obtain lock (the SPM lease is held by another host).
pub const ACQUIRE_LOCK_FAILURE: i32 = 651;
/// Error stopping SPM (it has unfinished tasks).
pub const SPM_STOP_ERROR: i32 = 653;
/// Not SPM.
pub const SPM_STATUS_ERROR: i32 = 654;
/// Operation not allowed while SPM is active.
pub const IS_SPM: i32 = 656;
/// Cannot acquire host id.
pub const ACQUIRE_HOST_ID_FAILURE: i32 = 661;
/// Cannot release host id.
pub const RELEASE_HOST_ID_FAILURE: i32 = 662;
/// Host id not found or does not match manager host id.
pub const HOST_ID_MISMATCH: i32 = 700;

// Task codes.
/// Task id unknown.
pub const UNKNOWN_TASK: i32 = 401;
/// Cannot persist a task.
pub const TASK_PERSIST_ERROR: i32 = 407;
/// Operation not allowed in the task's state.
pub const TASK_STATE_ERROR: i32 = 410;
/// Task aborted (stopped, or interrupted by a restart).
pub const TASK_ABORTED: i32 = 411;

// Metadata codes.
/// Invalid domain metadata.
pub const INVALID_METADATA: i32 = 751;
/// Metadata overflow.
pub const METADATA_OVERFLOW: i32 = 756;

/// Invalid parameter (storage verbs).
pub const INVALID_PARAMETER_EXCEPTION: i32 = 1000;

/// JSON-RPC 2.0: the method does not exist.
pub const METHOD_NOT_FOUND: i32 = -32601;

/// JSON-RPC 2.0: invalid method parameters (missing, mistyped).
pub const INVALID_PARAMS: i32 = -32602;

/// Every code above, for the test that no two names share a number.
#[cfg(test)]
const ALL: &[i32] = &[
    NO_SUCH_VM,
    VM_EXISTS,
    VM_IS_DOWN,
    CANNOT_CREATE_VM,
    VM_DESTROY_FAILED,
    UNEXPECTED,
    NON_RESPONSIVE_GUEST_AGENT,
    SNAPSHOT_FAILED,
    MIGRATION_IN_PROGRESS,
    UNSUPPORTED_OPERATION,
    FREEZE_GUEST_FS_FAILED,
    THAW_GUEST_FS_FAILED,
    INVALID_PARAMETER,
    RECOVERY_IN_PROGRESS,
    GENERAL,
    STORAGE_EXCEPTION,
    VOLUME_DOES_NOT_EXIST,
    INCORRECT_FORMAT,
    VOLUME_IMAGE_HAS_CHILDREN,
    VOLUME_CREATION_ERROR,
    VOLUME_METADATA_READ_ERROR,
    VOLUME_ALREADY_EXISTS,
    CANNOT_CLONE_VOLUME,
    CANNOT_DELETE_VOLUME,
    CREATE_ILLEGAL_VOLUME_SNAPSHOT,
    PREPARE_ILLEGAL_VOLUME,
    CREATE_VOLUME_SIZE_ERROR,
    INCORRECT_TYPE,
    IMAGE_PATH_ERROR,
    IMAGE_DOES_NOT_EXIST_IN_SD,
    STORAGE_POOL_UNKNOWN,
    STORAGE_DOMAIN_DOES_NOT_EXIST,
    STORAGE_DOMAIN_ALREADY_EXISTS,
    NO_SPACE_LEFT_ON_DOMAIN,
    UNKNOWN_TASK,
    TASK_PERSIST_ERROR,
    TASK_STATE_ERROR,
    TASK_ABORTED,
    INVALID_METADATA,
    METADATA_OVERFLOW,
    INVALID_PARAMETER_EXCEPTION,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_code_has_one_name() {
        let mut seen = std::collections::HashSet::new();
        for code in super::ALL {
            assert!(seen.insert(code), "{code} has two names");
        }
    }
}
