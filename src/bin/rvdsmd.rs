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
use rvdsm::config::Config;
use rvdsm::events::EventBus;
use rvdsm::rpc::readiness::Readiness;
use rvdsm::rpc::server::{RunningServer, ServerOptions};
use rvdsm::rpc::subscriptions::register_events;
use rvdsm::rpc::tls::{ServerTls, TlsFiles};
use rvdsm::services::{Deps, Services};
use rvdsm::virt::{BlockJobEvent, Libvirt};
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
    let hypervisor = Libvirt::new(config.libvirt.uri.clone(), config.libvirt_call_timeout());
    let deps = Deps {
        hypervisor: Arc::new(hypervisor),
        events: Some(events.clone()),
        block_job_events: Some(block_job_events),
        changed_vms: Some(changed_vms),
    };
    let (services, interrupted) = Services::open(&config, deps)
        .await
        .map_err(|e| anyhow::anyhow!(rvdsm::error_chain(&e)))?;
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
    services.recover(interrupted).await;
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

/// Tells systemd (`Type=notify`) about a state change; a no-op when not run by systemd.
fn notify_systemd(state: sd_notify::NotifyState) {
    if let Err(err) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}
