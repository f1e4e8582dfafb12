//! The listeners: TCP (mutual TLS unless the configuration says plain) and a Unix socket.
//! Every connection first has its protocol detected from its first bytes ([`super::detect`]):
//! STOMP frames go to [`StompService`], HTTP to jsonrpsee's tower service (JSON-RPC over HTTP,
//! and WebSocket when asked), both over the same method registry and middleware. Also: a
//! connection limit per listener, the TLS handshake and detection deadlines, events forwarded
//! to STOMP subscribers, and graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::Methods;
use jsonrpsee::server::{
    BatchRequestConfig, Server, ServerConfig, ServerHandle, StopHandle,
    serve_with_graceful_shutdown, stop_channel,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use tower::layer::util::{Identity, Stack};

use super::detect::{Protocol, detect};
use super::dispatch::{Dispatcher, RpcLayers, rpc_middleware};
use super::handshakes::{Handshakes, MAX_PENDING_HANDSHAKES, TLS_HANDSHAKE_TIMEOUT};
use super::http_front::HttpFrontLayer;
use super::readiness::Readiness;
use super::stomp::frame::FrameLimits;
use super::stomp::{Broker, StompOptions, StompService};
use super::subscriptions::forward_events_to_stomp;
use super::tls::ServerTls;
use crate::events::EventBus;

/// How long a client has to send its first bytes (VDSM's 10 s), once connected (and, on TLS,
/// authenticated: see [`super::handshakes`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What to listen on, and the limits.
#[derive(Clone)]
pub struct ServerOptions {
    /// TCP address, if the TCP listener is enabled.
    pub tcp: Option<SocketAddr>,
    /// Mutual TLS on TCP; `None` serves plain TCP.
    pub tls: Option<Arc<ServerTls>>,
    /// Unix socket path, if the Unix listener is enabled.
    pub unix: Option<PathBuf>,
    /// Largest request body accepted (HTTP body or STOMP frame body).
    pub max_request_bytes: u32,
    /// Largest response body sent.
    pub max_response_bytes: u32,
    /// Most connections at once per listener; more are closed at once.
    pub max_connections: u32,
    /// Requests of one STOMP or WebSocket connection running at once, each call of a batch
    /// counted.
    pub max_pending_requests: u32,
    /// Most calls in one batch, on every transport; a larger batch is refused whole.
    pub max_batch_calls: u32,
}

/// Errors while starting the listeners.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {what}")]
    Bind {
        /// The address or path.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another process already serves the Unix socket.
    #[error("another process is already listening on {0}")]
    SocketInUse(PathBuf),
}

/// The running listeners.
pub struct RunningServer {
    tcp_addr: Option<SocketAddr>,
    unix_path: Option<PathBuf>,
    handle: ServerHandle,
    connections: TaskTracker,
}

type ServiceBuilder =
    jsonrpsee::server::TowerServiceBuilder<RpcLayers, Stack<HttpFrontLayer, Identity>>;

impl RunningServer {
    /// Binds the listeners and starts serving `methods`; until `readiness` is set, only
    /// `Host.ping2` is answered (the others get 99). Events on `events` reach STOMP clients
    /// subscribed to `jms.queue.events`.
    pub async fn start(
        options: &ServerOptions,
        methods: Methods,
        readiness: Readiness,
        events: &EventBus,
    ) -> Result<Self, ServerError> {
        let (stop, handle) = stop_channel();
        let config = ServerConfig::builder()
            .max_request_body_size(options.max_request_bytes)
            .max_response_body_size(options.max_response_bytes)
            .max_connections(options.max_connections)
            // Checked before any call of the batch is parsed or run, on every transport (the
            // STOMP dispatcher shares this configuration).
            .set_batch_request_config(BatchRequestConfig::Limit(options.max_batch_calls))
            .build();
        let middleware = rpc_middleware(
            readiness,
            options.max_response_bytes,
            options.max_pending_requests,
        );
        let builder = Server::builder()
            .set_config(config.clone())
            .set_rpc_middleware(middleware.clone())
            .set_http_middleware(tower::ServiceBuilder::new().layer(HttpFrontLayer))
            .to_service_builder();
        let connections = TaskTracker::new();
        let broker = Arc::new(Broker::default());
        tokio::spawn(forward_events_to_stomp(
            events.subscribe(),
            Arc::clone(&broker),
            stop.clone(),
        ));
        let stomp = Arc::new(StompService::new(
            broker,
            Dispatcher::new(methods.clone(), config, middleware, stop.clone()),
            StompOptions {
                limits: FrameLimits {
                    max_body_bytes: options.max_request_bytes as usize,
                    ..FrameLimits::default()
                },
                max_pending_requests: options.max_pending_requests as usize,
                max_batch_calls: options.max_batch_calls as usize,
                ..StompOptions::default()
            },
            connections.clone(),
        ));
        let served = Served {
            builder,
            methods,
            stop,
            connections: connections.clone(),
            stomp,
            tls: options.tls.clone(),
        };

        let mut tcp_addr = None;
        if let Some(addr) = options.tcp {
            let listener = bind_tcp(addr).await?;
            let local = listener.local_addr().map_err(|source| ServerError::Bind {
                what: addr.to_string(),
                source,
            })?;
            let security = if options.tls.is_some() {
                "mutual TLS"
            } else {
                "plain"
            };
            tracing::info!(address = %local, security, "listening on TCP");
            tcp_addr = Some(local);
            let limit = Arc::new(Semaphore::new(options.max_connections as usize));
            tokio::spawn(served.clone().accept_tcp(listener, limit));
        }
        if let Some(path) = &options.unix {
            let listener = bind_unix(path)?;
            tracing::info!(path = %path.display(), "listening on Unix socket");
            let limit = Arc::new(Semaphore::new(options.max_connections as usize));
            tokio::spawn(served.clone().accept_unix(listener, limit));
        }
        Ok(Self {
            tcp_addr,
            unix_path: options.unix.clone(),
            handle,
            connections,
        })
    }

    /// The bound TCP address (with the real port when 0 was asked).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Stops accepting, lets in-flight requests finish for at most `grace`, removes the socket.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.handle.stop();
        self.connections.close();
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.connections.len(),
                "connections still open after the shutdown grace period"
            );
        }
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds TCP; an IPv6 wildcard on a host without IPv6 falls back to IPv4's, as VDSM does.
async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let bind_error = |source| ServerError::Bind {
        what: addr.to_string(),
        source,
    };
    match TcpListener::bind(addr).await {
        Err(err)
            if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED
                && err.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) =>
        {
            let v4 = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
            tracing::warn!("no IPv6 on this host; listening on {v4}");
            TcpListener::bind(v4).await.map_err(bind_error)
        }
        other => other.map_err(bind_error),
    }
}

/// What every accepted connection is served with.
#[derive(Clone)]
struct Served {
    builder: ServiceBuilder,
    methods: Methods,
    stop: StopHandle,
    connections: TaskTracker,
    stomp: Arc<StompService>,
    tls: Option<Arc<ServerTls>>,
}

impl Served {
    async fn accept_tcp(self, listener: TcpListener, limit: Arc<Semaphore>) {
        let handshakes = Handshakes::new(MAX_PENDING_HANDSHAKES);
        loop {
            tokio::select! {
                () = self.stop.clone().shutdown() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let served = self.clone();
                        let Some(tls) = self.tls.clone() else {
                            // Plain TCP: nobody is authenticated, a slot is taken at once.
                            let Some(permit) = admit(&limit) else { continue };
                            self.connections.spawn(async move {
                                let _open = crate::metrics::global().connection("tcp");
                                served.serve(stream).await;
                                drop(permit);
                            });
                            continue;
                        };
                        let slot = handshakes.admit();
                        let limit = Arc::clone(&limit);
                        self.connections.spawn(async move {
                            let handshake = tokio::time::timeout(
                                TLS_HANDSHAKE_TIMEOUT,
                                tls.acceptor().accept(stream),
                            );
                            let stream = tokio::select! {
                                () = slot.evicted() => {
                                    tracing::debug!(%peer, "TLS handshake closed to make room");
                                    return;
                                }
                                done = handshake => match done {
                                    Ok(Ok(stream)) => stream,
                                    Ok(Err(err)) => {
                                        tracing::info!(%peer, error = %err, "TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => {
                                        tracing::info!(%peer, "TLS handshake timed out");
                                        return;
                                    }
                                },
                            };
                            drop(slot);
                            // Authenticated: now it may take a connection slot.
                            let Some(permit) = admit(&limit) else { return };
                            let _open = crate::metrics::global().connection("tcp");
                            served.serve(stream).await;
                            drop(permit);
                        });
                    }
                    Err(err) => accept_failed(&err).await,
                },
            }
        }
    }

    async fn accept_unix(self, listener: UnixListener, limit: Arc<Semaphore>) {
        loop {
            tokio::select! {
                () = self.stop.clone().shutdown() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let Some(permit) = admit(&limit) else { continue };
                        let served = self.clone();
                        self.connections.spawn(async move {
                            let _open = crate::metrics::global().connection("unix");
                            served.serve(stream).await;
                            drop(permit);
                        });
                    }
                    Err(err) => accept_failed(&err).await,
                },
            }
        }
    }

    /// Detects the protocol and serves the connection with it until it ends.
    async fn serve<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (protocol, stream) = match detect(stream, HANDSHAKE_TIMEOUT).await {
            Ok(detected) => detected,
            Err(err) => {
                tracing::info!(error = %err, "connection closed");
                return;
            }
        };
        let stopped = self.stop.clone().shutdown();
        match protocol {
            Protocol::Stomp => Arc::clone(&self.stomp).serve(stream, stopped).await,
            Protocol::Http => {
                let service = self
                    .builder
                    .clone()
                    .build(self.methods.clone(), self.stop.clone());
                if let Err(err) = serve_with_graceful_shutdown(stream, service, stopped).await {
                    tracing::debug!(error = %err, "connection ended");
                }
            }
        }
    }
}

/// A place under the listener's connection limit, or `None` (the connection is then closed).
/// Refusals are logged at powers of two, so a flood of connections cannot flood the log.
fn admit(limit: &Arc<Semaphore>) -> Option<tokio::sync::OwnedSemaphorePermit> {
    static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let permit = Arc::clone(limit).try_acquire_owned().ok();
    if permit.is_none() {
        let refused = REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if refused.is_power_of_two() {
            tracing::warn!(refused, "connection limit reached; connection closed");
        }
    }
    permit
}

/// Out of descriptors and similar: log, and back off instead of spinning.
async fn accept_failed(err: &io::Error) {
    tracing::warn!(error = %err, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Binds the Unix socket with mode 0600 from the start: it is bound under a temporary name,
/// restricted, then renamed into place, so no client ever sees it with looser permissions.
fn bind_unix(path: &Path) -> Result<UnixListener, ServerError> {
    let bind_error = |source| ServerError::Bind {
        what: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_error)?;
    }
    remove_stale_socket(path)?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary).map_err(bind_error)?;
    let restrict = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(err) = restrict {
        let _ = std::fs::remove_file(&temporary);
        return Err(bind_error(err));
    }
    Ok(listener)
}

/// Removes a socket left by a daemon that died; refuses to steal one that still answers.
fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::Bind {
            what: path.display().to_string(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServerError::SocketInUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| ServerError::Bind {
        what: path.display().to_string(),
        source,
    })
}
