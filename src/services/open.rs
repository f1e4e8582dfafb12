//! The one wiring of the services: [`Services::open`] builds every service from the
//! configuration and the hypervisor it is given, reading what a previous run left in the state
//! directory; [`Services::recover`] ends that work once the transports answer. `rvdsmd` and the
//! tests call these two and nothing else (the model is mini-redis's `server::run`).
//!
//! Start-up reads files (journals, domain metadata): each such step runs on tokio's blocking
//! pool, never on the reactor.

use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use super::merge::InterruptedMerge;
use super::snapshot::journal::Entry as InterruptedSnapshot;
use super::{
    FreezeService, HostService, MergeService, Monitor, SdmService, Services, SnapshotService,
    StorageService, StorageSettings, VmService,
};
use crate::cluster::{Cluster, ClusterSettings};
use crate::config::{Config, ConfigError};
use crate::events::EventBus;
use crate::jobs::block_jobs::BlockJobTable;
use crate::jobs::vm_jobs::JobRegistry;
use crate::virt::vm_policy::VmFileRules;
use crate::virt::{BlockJobEvent, SharedHypervisor};

/// How often the sanlock daemon is asked about this host's leases.
const CLUSTER_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What the services are built on that their caller owns.
pub struct Deps {
    /// The hypervisor every service shares ([`crate::virt::Libvirt`] in the daemon).
    pub hypervisor: SharedHypervisor,
    /// Where job ends and VM status changes are published (the transports deliver them).
    pub events: Option<EventBus>,
    /// libvirt's block job events, which wake the merges waiting for a commit (else they poll).
    pub block_job_events: Option<broadcast::Sender<BlockJobEvent>>,
    /// The VMs libvirt's lifecycle events name (`None`: the event connection is new, re-read
    /// every VM); each is re-read into the monitoring cache.
    pub changed_vms: Option<mpsc::UnboundedReceiver<Option<Uuid>>>,
}

/// Work a previous run left unfinished, ended by [`Services::recover`].
#[must_use = "interrupted work must be ended with Services::recover"]
pub struct Interrupted {
    snapshots: Vec<InterruptedSnapshot>,
    merges: Vec<InterruptedMerge>,
}

/// Why the services could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The pool UUID could not be established.
    #[error("cannot establish the storage pool UUID")]
    Pool(#[source] ConfigError),
    /// The storage domains or the task records could not be opened.
    #[error("cannot open storage")]
    Storage(#[source] crate::services::storage::error::StorageServiceError),
    /// A journal of intent could not be opened.
    #[error("cannot open the {what} journal")]
    Journal {
        /// Which journal.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A start-up step panicked.
    #[error("start-up panicked")]
    Panicked(#[source] tokio::task::JoinError),
}

/// Runs a blocking start-up step on the blocking pool.
async fn blocking<T: Send + 'static>(
    step: impl FnOnce() -> T + Send + 'static,
) -> Result<T, OpenError> {
    tokio::task::spawn_blocking(step)
        .await
        .map_err(OpenError::Panicked)
}

fn journal(what: &'static str) -> impl FnOnce(std::io::Error) -> OpenError {
    move |source| OpenError::Journal { what, source }
}

impl Services {
    /// Opens every service as `config` says, on `deps`. Reads the journals and task records a
    /// previous run left (returned, to be ended by [`Services::recover`]); changes nothing on
    /// a VM. On a `[cluster]` host, starts watching this host's sanlock leases.
    pub async fn open(config: &Config, deps: Deps) -> Result<(Self, Interrupted), OpenError> {
        let jobs = JobRegistry::new(config.daemon.max_parallel_snapshots as usize);
        let base = Base {
            storage: open_storage(config, deps.hypervisor.clone()).await?,
            hypervisor: deps.hypervisor,
            jobs: match &deps.events {
                Some(events) => jobs.with_events(events.clone()),
                None => jobs,
            },
            state_dir: config.daemon.state_dir.clone(),
        };
        let (freeze, snapshot, snapshots) = open_freeze_and_snapshot(&base, config).await?;
        count_states_at_scrape(base.jobs.clone(), base.storage.clone());
        let block_jobs = BlockJobTable::default();
        let monitor = Monitor::new(
            base.hypervisor.clone(),
            Duration::from_secs(config.libvirt.vm_sample_interval_secs),
            freeze.clone(),
            deps.events.clone(),
            block_jobs.clone(),
        );
        if let Some(changed) = deps.changed_vms {
            refresh_changed_vms(changed, monitor.clone());
        }
        let rules = VmFileRules::from_config(&config.vm);
        let agent_timeout = Duration::from_secs(config.libvirt.agent_timeout_secs);
        let vms = open_vms(&base, &monitor, rules, agent_timeout).await?;
        let (merge, merges) =
            open_merge(&base, &monitor, block_jobs, deps.block_job_events).await?;
        let sdm = open_sdm(&base).await?;
        let Base {
            hypervisor,
            storage,
            ..
        } = base;
        let services = Self {
            host: HostService::new(hypervisor, storage.pool(), monitor.clone()),
            snapshot: snapshot.with_monitor(monitor.clone()),
            freeze,
            storage,
            vms,
            merge,
            sdm,
            monitor,
        };
        Ok((services, Interrupted { snapshots, merges }))
    }

    /// Ends what a previous run left (snapshot jobs, VM lifecycle steps, live merges, storage
    /// tasks and cold merges), then samples every VM and starts the periodic sampling. Call it
    /// once the transports answer "recovering" (99), before they answer anything else.
    pub async fn recover(&self, interrupted: Interrupted) {
        self.snapshot.recover(interrupted.snapshots).await;
        self.vms.recover().await;
        self.merge.recover(interrupted.merges).await;
        self.storage.finish_interrupted().await;
        self.monitor.sample_all().await;
        self.monitor.start();
    }
}

/// What every service is built on.
#[derive(Clone)]
struct Base {
    hypervisor: SharedHypervisor,
    storage: StorageService,
    jobs: JobRegistry,
    state_dir: std::path::PathBuf,
}

/// `VM.freeze` (its records read back, deadlines armed again) and `VM.snapshot` (its journal
/// read); returns the snapshot jobs a previous run left.
async fn open_freeze_and_snapshot(
    base: &Base,
    config: &Config,
) -> Result<(FreezeService, SnapshotService, Vec<InterruptedSnapshot>), OpenError> {
    let agent_timeout = Duration::from_secs(config.libvirt.agent_timeout_secs);
    let auto_thaw = Duration::from_secs(config.daemon.auto_thaw_secs);
    let base = base.clone();
    let (freeze, snapshot) = blocking(move || {
        let freeze = FreezeService::start(
            base.hypervisor.clone(),
            base.jobs.clone(),
            base.state_dir.join("freezes"),
            agent_timeout,
            auto_thaw,
        );
        let snapshot = SnapshotService::open(
            base.hypervisor,
            base.storage,
            base.jobs,
            freeze.clone(),
            &base.state_dir.join("snapshots"),
            agent_timeout,
        );
        (freeze, snapshot)
    })
    .await?;
    let (snapshot, left) = snapshot.map_err(journal("snapshot"))?;
    let snapshot = snapshot.with_memory_settings(config.snapshot.clone());
    Ok((freeze, snapshot, left))
}

/// The VM lifecycle verbs, their journal read.
async fn open_vms(
    base: &Base,
    monitor: &Monitor,
    rules: VmFileRules,
    agent_timeout: Duration,
) -> Result<VmService, OpenError> {
    let (base, monitor) = (base.clone(), monitor.clone());
    let dir = base.state_dir.join("vms");
    blocking(move || {
        VmService::open(
            base.hypervisor,
            base.storage,
            monitor,
            base.jobs,
            rules,
            agent_timeout,
            &dir,
        )
    })
    .await?
    .map_err(journal("VM"))
}

/// `VM.merge`, its journal read; returns the merges a previous run left.
async fn open_merge(
    base: &Base,
    monitor: &Monitor,
    block_jobs: BlockJobTable,
    events: Option<broadcast::Sender<BlockJobEvent>>,
) -> Result<(MergeService, Vec<InterruptedMerge>), OpenError> {
    let (base, monitor) = (base.clone(), monitor.clone());
    let dir = base.state_dir.join("merges");
    blocking(move || {
        let parts = (base.hypervisor, base.storage, monitor);
        MergeService::open(parts, base.jobs, block_jobs, events, &dir)
    })
    .await?
    .map_err(journal("merge"))
}

/// The SDM jobs, their journal read.
async fn open_sdm(base: &Base) -> Result<SdmService, OpenError> {
    let base = base.clone();
    let dir = base.state_dir.join("sdm");
    blocking(move || SdmService::open(base.storage, base.jobs, &dir))
        .await?
        .map_err(journal("SDM job"))
}

/// Opens the storage domains and the task records (blocking, on the blocking pool); on a
/// `[cluster]` host, first starts watching its sanlock leases.
async fn open_storage(
    config: &Config,
    hypervisor: SharedHypervisor,
) -> Result<StorageService, OpenError> {
    let pool = {
        let config = config.clone();
        blocking(move || config.pool_uuid())
            .await?
            .map_err(OpenError::Pool)?
    };
    let repository = config.storage.repository.clone();
    let tasks_dir = config.daemon.state_dir.join("tasks");
    let qemu_img_timeout = Duration::from_secs(config.storage.qemu_img_timeout_secs);
    let cluster = config.cluster.host_id.map(|host_id| {
        let cluster = Cluster::new(ClusterSettings {
            host_id,
            io_timeout: config.cluster.io_timeout_secs,
            call_timeout: Duration::from_secs(config.libvirt.call_timeout_secs),
        });
        cluster.watch(CLUSTER_POLL_INTERVAL);
        tracing::info!(host_id, "sharing storage domains through sanlock");
        cluster
    });
    blocking(move || {
        StorageService::open(&StorageSettings {
            repository: &repository,
            pool,
            tasks_dir: &tasks_dir,
            qemu_img_timeout,
            hypervisor,
            cluster,
        })
    })
    .await?
    .map_err(OpenError::Storage)
}

/// Re-reads each VM a lifecycle event names into the monitoring cache (which publishes its
/// `|virt|VM_status|` event when its status changed), and every VM when the event connection
/// is new (events sent before it were lost).
fn refresh_changed_vms(mut changed: mpsc::UnboundedReceiver<Option<Uuid>>, monitor: Monitor) {
    tokio::spawn(async move {
        while let Some(vm) = changed.recv().await {
            match vm {
                Some(vm) => monitor.refresh(vm).await,
                None => monitor.sample_all().await,
            }
        }
    });
}

/// Counts the jobs by status and the storage tasks by state each time the metrics are read.
fn count_states_at_scrape(jobs: JobRegistry, storage: StorageService) {
    crate::metrics::global().on_scrape(move |metrics| {
        let mut by_status: std::collections::BTreeMap<String, i64> = Default::default();
        for info in jobs.list(None, &[]).values() {
            let status = serde_json::to_value(info.status).unwrap_or_default();
            *by_status
                .entry(status.as_str().unwrap_or("unknown").to_owned())
                .or_default() += 1;
        }
        let counts: Vec<(&str, i64)> = by_status.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        crate::metrics::Metrics::set_states(&metrics.jobs, &counts);
        let mut by_state: std::collections::BTreeMap<String, i64> = Default::default();
        for status in storage.all_task_statuses_blocking().values() {
            let state = if status.task_result.is_empty() {
                status.task_state.clone()
            } else {
                format!("{}/{}", status.task_state, status.task_result)
            };
            *by_state.entry(state).or_default() += 1;
        }
        let counts: Vec<(&str, i64)> = by_state.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        crate::metrics::Metrics::set_states(&metrics.tasks, &counts);
    });
}
