//! `rvdsmd`: the rvdsm daemon. Reads its configuration, serves JSON-RPC (STOMP, HTTP,
//! WebSocket) on a mutual-TLS TCP port and a Unix socket, tells systemd when it is ready,
//! reloads its certificates on SIGHUP, and shuts down cleanly on SIGTERM or SIGINT.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rvdsm::cluster::{Cluster, ClusterSettings};
use rvdsm::config::Config;
use rvdsm::events::EventBus;
use rvdsm::jobs::block_jobs::BlockJobTable;
use rvdsm::jobs::vm_jobs::JobRegistry;
use rvdsm::rpc::readiness::Readiness;
use rvdsm::rpc::server::{RunningServer, ServerOptions};
use rvdsm::rpc::subscriptions::register_events;
use rvdsm::rpc::tls::{ServerTls, TlsFiles};
use rvdsm::services::{
    FreezeService, HostService, MergeService, Monitor, SdmService, Services, SnapshotService,
    StorageService, StorageSettings, VmService,
};
use rvdsm::virt::{BlockJobEvent, Hypervisor};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

// mimalloc returns freed memory to the system; glibc's malloc keeps it in per-thread arenas,
// so rvdsmd's resident memory would stay at its peak after a burst of load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's option for how long freed pages wait before they go back to the system. Its
/// default (a short delay, after which pages go back only when a thread next allocates, which
/// an idle daemon hardly does) left 12 MiB resident after 64 concurrent `VM.getStats` callers;
/// 0 gave 5.6 MiB, flat over ten such bursts. mimalloc reads it from the environment before
/// `main`, so it is set where rvdsmd is started: the systemd unit's `Environment=` line (and
/// the demo, tests and benchmarks). rvdsmd only says at start when it is not set.
const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// The rvdsm host agent daemon.
#[derive(Parser)]
#[command(version = rvdsm::failpoint::VERSION_LINE, about)]
struct Args {
    /// Configuration file [default: /etc/rvdsm/rvdsm.toml if it exists, else built-in defaults].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the configuration with every default and exit.
    #[arg(long)]
    print_default_config: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", Config::example_toml());
        return Ok(());
    }
    let config = Config::load_or_default(args.config.as_deref())?;
    init_logging(&config);
    if std::env::var_os(PURGE_DELAY_ENV).is_none() {
        tracing::info!(
            "{PURGE_DELAY_ENV} is not set: memory freed after a load returns to the system \
             lazily (the systemd unit sets it to 0)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rvdsmd")
        .on_thread_park(collect_freed_pages_before_parking)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

/// How often, at most, a runtime worker gives back its allocator's free pages as it goes idle.
/// Collecting at every park undid mimalloc's reuse of just-emptied pages (pages given back and
/// faulted in again: a third of the CPU at one connection); once per 100 ms per worker costs
/// nothing measurable and bounds what a worker keeps after the load to its last 100 ms.
const COLLECT_INTERVAL: Duration = Duration::from_millis(100);

/// Runs as a runtime worker is about to park: gives back the pages mimalloc holds for blocks
/// other workers freed (see [`rvdsm::sys::allocator`]). Measured with stomp-load, 64
/// connections, two workers: anonymous memory 15 s after the load 1.5 MiB above idle without
/// it, 0.4 MiB with it.
fn collect_freed_pages_before_parking() {
    thread_local!(static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) });
    let now = Instant::now();
    let due = LAST_COLLECT
        .get()
        .is_none_or(|last| now - last >= COLLECT_INTERVAL);
    if due {
        LAST_COLLECT.set(Some(now));
        rvdsm::sys::allocator::collect_this_threads_pages();
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.daemon.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Certificates first: a daemon that cannot serve must not recover tasks or touch VMs. The
    // files are read off the reactor, as every start-up read.
    let tls = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || load_tls(&config))
            .await
            .context("start-up panicked")??
    };
    let events = EventBus::default();
    // Before any libvirt connection opens: libvirt sends events only to connections opened
    // after its event loop is registered.
    let (changed_vms, block_job_events) = watch_vm_changes(&config)?;
    let hypervisor = Hypervisor::new(config.libvirt.uri.clone(), config.libvirt_call_timeout());
    let storage = open_storage(&config, hypervisor.clone()).await?;
    let agent_timeout = Duration::from_secs(config.libvirt.agent_timeout_secs);
    let jobs =
        JobRegistry::new(config.daemon.max_parallel_snapshots as usize).with_events(events.clone());
    // Reading the freeze records and the snapshot journal is file I/O: off the reactor, as
    // every start-up step that touches the state directory.
    let state_dir = config.daemon.state_dir.clone();
    let auto_thaw = Duration::from_secs(config.daemon.auto_thaw_secs);
    let jobs_view = jobs.clone();
    let (freeze, opened) = {
        let (hypervisor, storage) = (hypervisor.clone(), storage.clone());
        tokio::task::spawn_blocking(move || {
            let freeze = FreezeService::start(
                hypervisor.clone(),
                jobs.clone(),
                state_dir.join("freezes"),
                agent_timeout,
                auto_thaw,
            );
            let opened = SnapshotService::open(
                hypervisor,
                storage,
                jobs,
                freeze.clone(),
                &state_dir.join("snapshots"),
                agent_timeout,
            );
            (freeze, opened)
        })
        .await
        .context("start-up panicked")?
    };
    let (snapshot, interrupted) = opened.context("cannot open the snapshot journal")?;
    count_states_at_scrape(jobs_view.clone(), storage.clone());
    let block_jobs = BlockJobTable::default();
    let monitor = Monitor::new(
        hypervisor.clone(),
        Duration::from_secs(config.libvirt.vm_sample_interval_secs),
        freeze.clone(),
        Some(events.clone()),
        block_jobs.clone(),
    );
    refresh_changed_vms(changed_vms, monitor.clone());
    let vms = {
        let (hypervisor, storage, monitor) = (hypervisor.clone(), storage.clone(), monitor.clone());
        let (jobs, dir) = (jobs_view.clone(), config.daemon.state_dir.join("vms"));
        let rules = config.vm.file_rules();
        tokio::task::spawn_blocking(move || {
            VmService::open(hypervisor, storage, monitor, jobs, rules, &dir)
        })
        .await
        .context("start-up panicked")?
        .context("cannot open the VM journal")?
    };
    let (merge, merges_left) = {
        let (hypervisor, storage, monitor) = (hypervisor.clone(), storage.clone(), monitor.clone());
        let (jobs, dir) = (jobs_view.clone(), config.daemon.state_dir.join("merges"));
        tokio::task::spawn_blocking(move || {
            let services = (hypervisor, storage, monitor);
            MergeService::open(services, jobs, block_jobs, Some(block_job_events), &dir)
        })
        .await
        .context("start-up panicked")?
        .context("cannot open the merge journal")?
    };
    let sdm = {
        let (storage, jobs) = (storage.clone(), jobs_view.clone());
        let dir = config.daemon.state_dir.join("sdm");
        tokio::task::spawn_blocking(move || SdmService::open(storage, jobs, &dir))
            .await
            .context("start-up panicked")?
            .context("cannot open the SDM job journal")?
    };
    let snapshot = snapshot.with_monitor(monitor.clone());
    let services = Services {
        host: HostService::new(hypervisor, storage.pool(), monitor.clone()),
        snapshot: snapshot.clone(),
        freeze,
        storage,
        vms: vms.clone(),
        merge: merge.clone(),
        sdm,
        monitor: monitor.clone(),
    };
    let options = ServerOptions {
        tcp: config
            .server
            .tcp_enabled
            .then(|| SocketAddr::new(config.server.address, config.server.port)),
        unix: Some(config.server.unix_socket.clone()),
        max_request_bytes: config.server.max_request_bytes,
        max_response_bytes: config.server.max_response_bytes,
        max_connections: config.server.max_connections,
        max_pending_requests: config.server.max_pending_requests,
        max_batch_calls: config.server.max_batch_calls,
        tls: tls.clone(),
    };
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;

    // The listeners come up first, answering 99 (VDSM's "Recovering from crash or
    // Initializing") to all but Host.ping2 while interrupted snapshots are ended, so no request
    // ever sees a half-recovered VM and a manager can tell "recovering" from "down".
    let readiness = Readiness::new();
    let mut module = rvdsm::rpc::methods::registry(services.clone());
    register_events(&mut module, events.clone());
    let server = RunningServer::start(&options, module.into(), readiness.clone(), &events)
        .await
        .context("cannot start the listeners")?;
    snapshot.recover(interrupted).await;
    vms.recover().await;
    merge.recover(merges_left).await;
    services.storage.finish_interrupted().await;
    monitor.sample_all().await;
    monitor.start();
    readiness.set_ready();
    notify_systemd(sd_notify::NotifyState::Ready);
    tracing::info!(version = rvdsm::VERSION, "rvdsmd ready");

    loop {
        tokio::select! {
            _ = terminate.recv() => {
                tracing::info!("SIGTERM received; shutting down");
                break;
            }
            _ = interrupt.recv() => {
                tracing::info!("SIGINT received; shutting down");
                break;
            }
            _ = hangup.recv() => reload_tls(tls.as_deref()).await,
        }
    }
    notify_systemd(sd_notify::NotifyState::Stopping);
    // One grace for both: the listeners (in-flight requests), then the work behind them.
    let grace = Duration::from_secs(config.server.shutdown_timeout_secs);
    let stopping = Instant::now();
    server.shutdown(grace).await;
    services
        .stop(grace.saturating_sub(stopping.elapsed()))
        .await;
    tracing::info!("rvdsmd stopped");
    Ok(())
}

/// Starts libvirt's event thread; the VMs its lifecycle events name come out of the channel,
/// and `None` each time its connection is (re)established (events may have been missed).
/// The VMs libvirt's lifecycle events name (`None`: the event connection is new), and the
/// sender its block job events are published on.
type VmChanges = (
    tokio::sync::mpsc::UnboundedReceiver<Option<uuid::Uuid>>,
    tokio::sync::broadcast::Sender<BlockJobEvent>,
);

fn watch_vm_changes(config: &Config) -> anyhow::Result<VmChanges> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    // Merges subscribe for as long as they wait for a commit; nobody listening is fine.
    let (block_jobs, _) = tokio::sync::broadcast::channel(64);
    let publish = block_jobs.clone();
    rvdsm::virt::watch_lifecycle(
        config.libvirt.uri.clone(),
        move |vm, _status| {
            let _ = sender.send(vm);
        },
        move |event| {
            let _ = publish.send(event);
        },
    )
    .context("cannot start the libvirt event thread")?;
    Ok((receiver, block_jobs))
}

/// Re-reads each VM a lifecycle event names into the monitoring cache (which publishes its
/// `|virt|VM_status|` event when its status changed), and every VM when the event connection
/// is new (events sent before it were lost).
fn refresh_changed_vms(
    mut changed: tokio::sync::mpsc::UnboundedReceiver<Option<uuid::Uuid>>,
    monitor: Monitor,
) {
    tokio::spawn(async move {
        while let Some(vm) = changed.recv().await {
            match vm {
                Some(vm) => monitor.refresh(vm).await,
                None => monitor.sample_all().await,
            }
        }
    });
}

fn count_states_at_scrape(jobs: JobRegistry, storage: StorageService) {
    rvdsm::metrics::global().on_scrape(move |metrics| {
        let mut by_status: std::collections::BTreeMap<String, i64> = Default::default();
        for info in jobs.list(None, &[]).values() {
            let status = serde_json::to_value(info.status).unwrap_or_default();
            *by_status
                .entry(status.as_str().unwrap_or("unknown").to_owned())
                .or_default() += 1;
        }
        let counts: Vec<(&str, i64)> = by_status.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        rvdsm::metrics::Metrics::set_states(&metrics.jobs, &counts);
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
        rvdsm::metrics::Metrics::set_states(&metrics.tasks, &counts);
    });
}

/// Reads the certificates, or warns that TCP is plain.
fn load_tls(config: &Config) -> anyhow::Result<Option<Arc<ServerTls>>> {
    let tls = &config.server.tls;
    if !config.server.tcp_enabled {
        return Ok(None);
    }
    if !tls.enabled {
        // Off loopback only with server.allow_insecure_network (Config::validate).
        tracing::warn!(
            address = %config.server.address,
            "TLS is disabled: the TCP management port accepts unauthenticated plain-text \
             clients; use this only on an isolated network"
        );
        return Ok(None);
    }
    let files = TlsFiles {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        ca: tls.ca.clone(),
    };
    let loaded = ServerTls::load(files).context(
        "cannot load the TLS certificates (make lab ones with `rvdsm pki init DIR`, or set \
         server.tls.enabled = false for plain TCP on loopback)",
    )?;
    Ok(Some(Arc::new(loaded)))
}

/// SIGHUP: the certificate files are read again; open connections are not touched.
async fn reload_tls(tls: Option<&ServerTls>) {
    let Some(tls) = tls else {
        tracing::info!("SIGHUP received; TLS is disabled, nothing to reload");
        return;
    };
    match tokio::task::block_in_place(|| tls.reload()) {
        Ok(()) => tracing::info!("SIGHUP received; TLS certificates reloaded"),
        Err(err) => {
            tracing::error!(error = %err, "SIGHUP received; certificates NOT reloaded, the previous ones stay in use");
        }
    }
}

/// Attaches the storage domains and recovers interrupted tasks, before anything is served.
/// How often the sanlock daemon is asked about this host's leases.
const CLUSTER_POLL_INTERVAL: Duration = Duration::from_secs(2);

async fn open_storage(config: &Config, hypervisor: Hypervisor) -> anyhow::Result<StorageService> {
    let pool = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || config.pool_uuid())
            .await
            .context("start-up panicked")?
            .context("cannot establish the storage pool UUID")?
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
    let opened = tokio::task::spawn_blocking(move || {
        StorageService::open(&StorageSettings {
            repository: &repository,
            pool,
            tasks_dir: &tasks_dir,
            qemu_img_timeout,
            hypervisor,
            cluster,
        })
    })
    .await
    .context("storage start-up panicked")?;
    opened.map_err(|e| anyhow::anyhow!("cannot open storage: {e}"))
}

/// Tells systemd (`Type=notify`) about a state change; a no-op when not run by systemd.
fn notify_systemd(state: sd_notify::NotifyState) {
    if let Err(err) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}
