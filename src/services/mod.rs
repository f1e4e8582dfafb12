//! What each verb does, in terms of the hypervisor (and, in later issues, storage and jobs).
//! Services take and return the typed values of [`crate::api`]; they never see JSON-RPC, and
//! they reach libvirt only through [`crate::virt`].

mod host;
mod storage;

pub use host::HostService;
pub use storage::{StorageService, StorageSettings};

/// Every service the daemon runs, shared by all transports.
#[derive(Clone)]
pub struct Services {
    /// Host and VM inventory verbs.
    pub host: HostService,
    /// Storage domains, volumes and tasks.
    pub storage: StorageService,
}
