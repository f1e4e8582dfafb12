//! What each verb does, in terms of the hypervisor, the storage domains and the jobs. Services
//! take and return the typed values of [`crate::api`]; they never see JSON-RPC, and they reach
//! libvirt only through [`crate::virt`], files only through [`crate::storage`].
//!
//! - [`host`](HostService): host and VM inventory, `Host.ping2`, `Host.getCapabilities`.
//! - [`storage`](StorageService): domains, images, volumes and their tasks.
//! - [`snapshot`]: `VM.snapshot` and its jobs.
//! - [`freeze`](FreezeService): `VM.freeze` and `VM.thaw`, with the auto-thaw promise.
//! - [`vms`](VmService): `VM.create`, `VM.destroy`, `VM.pause`, `VM.cont`, `VM.shutdown`.
//! - [`merge`](MergeService): `VM.merge`, live merges and their jobs.
//! - [`sdm`](SdmService): `SDM.merge` and `SDM.copy_data`, the storage jobs; `StoragePool.finalizeMerge`.
//! - [`monitor`](Monitor): the sampled stats the monitoring verbs answer from.
//! - [`errors`]: the lower layers' errors with VDSM's codes.
//!
//! [`Services::open`] is the one place they are wired together, for the daemon and the tests.

pub mod errors;
mod freeze;
mod host;
mod merge;
pub mod monitor;
mod open;
mod sdm;
pub mod snapshot;
pub(crate) mod storage;
#[cfg(test)]
pub(crate) mod testing;
mod vms;

pub use freeze::{FreezeError, FreezeErrorKind, FreezeService};
pub use host::HostService;
pub use merge::{MergeError, MergeService};
pub use monitor::Monitor;
pub use open::{Deps, Interrupted, OpenError};
pub use sdm::SdmService;
pub use snapshot::SnapshotService;
pub use storage::{StorageService, StorageSettings};
pub use vms::VmService;

impl Services {
    /// Brings in-flight work to a safe point when the daemon stops, within `grace`: live
    /// merges are left to QEMU (journaled, followed again at the next start); storage tasks
    /// are stopped and rolled back; snapshot jobs not begun fail untouched and running
    /// ones get the grace to end; then every guest rvdsm froze is thawed (a stopped daemon
    /// keeps no auto-thaw deadline). What cannot end in time is journaled, and ended at the
    /// next start. Last, a host sharing its domains gives up the SPM role and its leases.
    pub async fn stop(&self, grace: std::time::Duration) {
        let deadline = std::time::Instant::now() + grace;
        self.merge.stop();
        self.sdm.stop();
        tokio::join!(self.storage.stop(deadline), self.snapshot.stop(deadline));
        self.freeze.stop().await;
        self.monitor.stop();
        // Last: until here stopping work may still change metadata under this host's leases.
        self.storage.leave_cluster().await;
    }
}

/// Every service the daemon runs, shared by all transports.
#[derive(Clone)]
pub struct Services {
    /// Host and VM inventory verbs.
    pub host: HostService,
    /// Storage domains, volumes and tasks.
    pub storage: StorageService,
    /// `VM.snapshot` and its jobs.
    pub snapshot: SnapshotService,
    /// `VM.freeze` and `VM.thaw`.
    pub freeze: FreezeService,
    /// The VM lifecycle verbs.
    pub vms: VmService,
    /// `VM.merge` and its jobs.
    pub merge: MergeService,
    /// The SDM jobs.
    pub sdm: SdmService,
    /// The monitoring cache.
    pub monitor: Monitor,
}
