//! The listeners: JSON-RPC over HTTP and WebSocket (jsonrpsee's tower service, which upgrades a
//! connection to WebSocket when asked) on TCP and on a Unix socket, with a connection limit
//! per listener, a request size limit, and graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::Methods;
use jsonrpsee::core::middleware::RpcServiceBuilder;
use jsonrpsee::server::{
    Server, ServerConfig, ServerHandle, StopHandle, serve_with_graceful_shutdown, stop_channel,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use tower::layer::util::{Identity, Stack};

use super::http_limits::RequireLengthLayer;
use super::logging::RequestLogLayer;
use super::readiness::{Readiness, RecoveryGateLayer};

/// What to listen on, and the limits.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// TCP address, if the TCP listener is enabled.
    pub tcp: Option<SocketAddr>,
    /// Unix socket path, if the Unix listener is enabled.
    pub unix: Option<PathBuf>,
    /// Largest request body accepted.
    pub max_request_bytes: u32,
    /// Largest response body sent.
    pub max_response_bytes: u32,
    /// Most connections at once per listener; more are closed at once.
    pub max_connections: u32,
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

type ServiceBuilder = jsonrpsee::server::TowerServiceBuilder<
    Stack<RecoveryGateLayer, Stack<RequestLogLayer, Identity>>,
    Stack<RequireLengthLayer, Identity>,
>;

impl RunningServer {
    /// Binds the listeners and starts serving `methods`; until `readiness` is set, only
    /// `Host.ping2` is answered (the others get 99).
    pub async fn start(
        options: &ServerOptions,
        methods: Methods,
        readiness: Readiness,
    ) -> Result<Self, ServerError> {
        let (stop, handle) = stop_channel();
        let config = ServerConfig::builder()
            .max_request_body_size(options.max_request_bytes)
            .max_response_body_size(options.max_response_bytes)
            .max_connections(options.max_connections)
            .build();
        let builder = Server::builder()
            .set_config(config)
            .set_rpc_middleware(
                RpcServiceBuilder::new()
                    .layer(RequestLogLayer)
                    .layer(RecoveryGateLayer(readiness)),
            )
            .set_http_middleware(tower::ServiceBuilder::new().layer(RequireLengthLayer))
            .to_service_builder();
        let connections = TaskTracker::new();
        let served = Served {
            builder,
            methods,
            stop,
            connections: connections.clone(),
            limit: Arc::new(Semaphore::new(options.max_connections as usize)),
        };

        let mut tcp_addr = None;
        if let Some(addr) = options.tcp {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    what: addr.to_string(),
                    source,
                })?;
            let local = listener.local_addr().map_err(|source| ServerError::Bind {
                what: addr.to_string(),
                source,
            })?;
            tracing::info!(address = %local, "listening on TCP");
            tcp_addr = Some(local);
            tokio::spawn(served.clone().accept_tcp(listener));
        }
        if let Some(path) = &options.unix {
            let listener = bind_unix(path)?;
            tracing::info!(path = %path.display(), "listening on Unix socket");
            tokio::spawn(served.clone().accept_unix(listener));
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

/// What every accepted connection is served with.
#[derive(Clone)]
struct Served {
    builder: ServiceBuilder,
    methods: Methods,
    stop: StopHandle,
    connections: TaskTracker,
    limit: Arc<Semaphore>,
}

impl Served {
    async fn accept_tcp(self, listener: TcpListener) {
        loop {
            tokio::select! {
                () = self.stop.clone().shutdown() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        self.serve(stream);
                    }
                    Err(err) => accept_failed(&err).await,
                },
            }
        }
    }

    async fn accept_unix(self, listener: UnixListener) {
        loop {
            tokio::select! {
                () = self.stop.clone().shutdown() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => self.serve(stream),
                    Err(err) => accept_failed(&err).await,
                },
            }
        }
    }

    fn serve<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let Ok(permit) = Arc::clone(&self.limit).try_acquire_owned() else {
            tracing::warn!("connection limit reached; connection closed");
            return;
        };
        let service = self
            .builder
            .clone()
            .build(self.methods.clone(), self.stop.clone());
        let stopped = self.stop.clone().shutdown();
        self.connections.spawn(async move {
            if let Err(err) = serve_with_graceful_shutdown(stream, service, stopped).await {
                tracing::debug!(error = %err, "connection ended");
            }
            drop(permit);
        });
    }
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
