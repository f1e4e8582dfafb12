//! Errors of the storage module. Each variant is one VDSM storage error (its code, in the
//! doc comment, is given where the layers meet: `services::errors`).

use std::path::PathBuf;

use uuid::Uuid;

use super::domain_md::DomainMetaError;
use super::meta::MetaError;
use super::pool::PoolError;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// This host does not hold its lease in the shared domain's lockspace (661).
    #[error("Cannot acquire host id: {0}")]
    LeaseNotHeld(String),
    /// No such external lease in the domain's leases volume (936).
    #[error("No such lease: ('{0}',)")]
    NoSuchLease(Uuid),
    /// The external lease exists already (100, as VDSM's `LeaseExists`).
    #[error("Lease {0} exists")]
    LeaseExists(Uuid),
    /// The domain's leases volume cannot be used: not formatted, damaged or full (100).
    #[error("External leases volume: {0}")]
    LeasesVolume(String),
    /// The pool's record refuses the change (its own codes).
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The pool id is not this host's pool (309).
    #[error("Unknown pool id, pool not connected: ('{0}',)")]
    PoolUnknown(Uuid),
    /// No such domain (358).
    #[error("Storage domain does not exist: ('{0}',)")]
    DomainDoesNotExist(Uuid),
    /// A domain with this id exists already.
    #[error("Storage domain already exists: ('{0}',)")]
    DomainExists(Uuid),
    /// No such image in the domain (268).
    #[error("Image does not exist in domain: 'image={image}, domain={domain}'")]
    ImageDoesNotExist {
        /// The image.
        image: Uuid,
        /// The domain.
        domain: Uuid,
    },
    /// The image's directory is not a plain directory inside the domain (a symlink, a file):
    /// rvdsm never follows it out of its storage domain (254).
    #[error("Image path does not exist or cannot be accessed/created: ('{0}',)")]
    ImagePath(std::path::PathBuf),
    /// No such volume (201).
    #[error("Volume does not exist: ('{0}',)")]
    VolumeDoesNotExist(Uuid),
    /// A volume with this id exists (212).
    #[error("Volume already exists: ('{0}',)")]
    VolumeAlreadyExists(Uuid),
    /// Format or parent format not usable here (202).
    #[error("Incorrect format: {0}")]
    IncorrectFormat(String),
    /// Preallocation out of range (231).
    #[error("Incorrect Type: {0}")]
    IncorrectType(String),
    /// The parent is not LEGAL (226).
    #[error("Cannot create volume on an illegal parent: ('{0}',)")]
    IllegalParent(Uuid),
    /// The volume is ILLEGAL and cannot be prepared (227).
    #[error("Cannot prepare illegal volume: ('{0}',)")]
    PrepareIllegal(Uuid),
    /// Size out of range (229).
    #[error("Error creating a volume with requested size: {0}")]
    Size(String),
    /// Not enough free space (397).
    #[error("No space left on domain {domain}: requested {requested} bytes, {free} free")]
    NoSpace {
        /// The domain.
        domain: Uuid,
        /// Bytes asked for.
        requested: u64,
        /// Bytes free.
        free: u64,
    },
    /// The parent cannot take a child: not a leaf (204 family, reported as 226's sibling).
    #[error("Volume has children or is not a leaf: ('{0}',)")]
    HasChildren(Uuid),
    /// The volume is in use by a VM.
    #[error("Cannot delete volume which is in use: ('{0}',)")]
    InUse(Uuid),
    /// A parameter is invalid (1000).
    #[error("Invalid parameter: '{0}'")]
    InvalidParameter(String),
    /// A volume a memory snapshot or a hibernation cannot use as it is.
    #[error("Memory volume refused: {0}")]
    MemoryVolume(String),
    /// A configuration volume that cannot be restored.
    #[error("Cannot restore the saved memory: {0}")]
    MemoryState(#[from] super::memory_state::MemoryStateError),
    /// qemu-img failed (205 for a create, 217 for a snapshot volume).
    #[error("Volume creation error: {0}")]
    Creation(String),
    /// qemu-img failed while creating a volume on a parent (217).
    #[error("Cannot clone volume: {0}")]
    Clone(String),
    /// qemu-img failed merging volumes (252).
    #[error("Error merging snapshots: {0}")]
    Merge(String),
    /// qemu-img failed copying a chain (261).
    #[error("low level Image copy failed: {0}")]
    Copy(String),
    /// The caller's expected generation is not the volume's (911).
    #[error("The provided generation does not match the actual generation: {0}")]
    GenerationMismatch(String),
    /// The `.meta` file is unreadable (207).
    #[error("Error while processing volume meta data: {path}: {source}")]
    MetadataRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: MetaError,
    },
    /// The `.meta` file would overflow (756).
    #[error("Metadata overflow: {0}")]
    MetadataOverflow(MetaError),
    /// `dom_md/metadata` is unreadable (751).
    #[error("Invalid domain metadata: {path}: {source}")]
    DomainMetadata {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: DomainMetaError,
    },
    /// A filesystem call failed (200).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// qemu-img could not read a volume (200).
    #[error("Cannot inspect volume {volume}: {message}")]
    Inspect {
        /// The volume.
        volume: Uuid,
        /// Why.
        message: String,
    },
    /// The task's progress could not be persisted (407): the step it announced is not taken.
    #[error("Cannot persist task progress: {0}")]
    Persist(String),
    /// The operation was stopped by `Task.stop` (411).
    #[error("Task is aborted: stopped by request")]
    Aborted,
    /// A restart of rvdsmd interrupted the task (411).
    #[error("Task is aborted: interrupted by a restart of rvdsmd")]
    Interrupted,
    /// The blocking work run off the reactor panicked (VDSM's unexpected exception, 16).
    #[error("storage task panicked: {0}")]
    Panicked(String),
}

/// What kind of failure a [`StorageError`] is, for a caller that decides by it rather than by
/// VDSM's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// Something named does not exist: a pool, a domain, an image, a volume, a lease.
    NotFound,
    /// The request is refused as it stands: bad parameters, an illegal or busy volume, a
    /// generation or a pool's record that does not match. Nothing changed.
    Refused,
    /// The work was stopped or interrupted.
    Stopped,
    /// The storage failed: I/O, metadata, qemu-img, a panic.
    Failed,
}

impl StorageError {
    /// What kind of failure this is.
    pub fn kind(&self) -> StorageErrorKind {
        use StorageErrorKind as K;
        match self {
            Self::NoSuchLease(_)
            | Self::PoolUnknown(_)
            | Self::DomainDoesNotExist(_)
            | Self::ImageDoesNotExist { .. }
            | Self::VolumeDoesNotExist(_) => K::NotFound,
            Self::LeaseNotHeld(_)
            | Self::LeaseExists(_)
            | Self::Pool(_)
            | Self::DomainExists(_)
            | Self::ImagePath(_)
            | Self::VolumeAlreadyExists(_)
            | Self::IncorrectFormat(_)
            | Self::IncorrectType(_)
            | Self::IllegalParent(_)
            | Self::PrepareIllegal(_)
            | Self::Size(_)
            | Self::NoSpace { .. }
            | Self::HasChildren(_)
            | Self::InUse(_)
            | Self::InvalidParameter(_)
            | Self::MemoryVolume(_)
            | Self::MemoryState(_)
            | Self::GenerationMismatch(_) => K::Refused,
            Self::Aborted | Self::Interrupted => K::Stopped,
            Self::LeasesVolume(_)
            | Self::Creation(_)
            | Self::Clone(_)
            | Self::Merge(_)
            | Self::Copy(_)
            | Self::MetadataRead { .. }
            | Self::MetadataOverflow(_)
            | Self::DomainMetadata { .. }
            | Self::Io { .. }
            | Self::Inspect { .. }
            | Self::Persist(_)
            | Self::Panicked(_) => K::Failed,
        }
    }
}

impl StorageError {
    /// Wraps an I/O error with what was being done to which path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}
