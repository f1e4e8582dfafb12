//! A JSON-RPC client for rvdsmd over its Unix socket or TCP (mutual TLS, or plain when the
//! daemon is configured so), speaking WebSocket on the stream (jsonrpsee's client), used by the
//! `rvdsm` CLI and the tests. It can also follow the daemon's events.

use std::path::PathBuf;
use std::time::Duration;

use jsonrpsee::core::client::{ClientT, Error as RpcError, Subscription, SubscriptionClientT};
use jsonrpsee::core::middleware::RpcServiceBuilder;
use jsonrpsee::core::params::{ArrayParams, ObjectParams};
use jsonrpsee::ws_client::{RpcService, WsClient, WsClientBuilder};
use serde_json::Value;
use tokio::net::{TcpStream, UnixStream};

use crate::api::events::{SUBSCRIBE_EVENTS, UNSUBSCRIBE_EVENTS};
use crate::rpc::tls::{self, TlsFiles};

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The local Unix socket.
    Unix(PathBuf),
    /// A TCP address.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// The client's certificate, key and the CA to trust; `None` speaks plain TCP.
        tls: Option<TlsFiles>,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp { host, port, .. } => write!(f, "{host}:{port}"),
        }
    }
}

/// What a call can end with, other than a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon could not be reached.
    #[error("cannot connect to rvdsmd at {endpoint}: {message}")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        message: String,
    },
    /// The daemon answered with an error.
    #[error("(code={code}, message={message})")]
    Server {
        /// VDSM's (or JSON-RPC's) code.
        code: i32,
        /// The message.
        message: String,
    },
    /// The connection failed or timed out during the call.
    #[error("{0}")]
    Transport(String),
}

/// A connected client.
pub struct Client {
    inner: WsClient<RpcService>,
}

impl Client {
    /// Connects to the daemon; each call then waits at most `timeout`.
    pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Self, ClientError> {
        let connect_error = |message: String| ClientError::Connect {
            endpoint: endpoint.to_string(),
            message,
        };
        let builder = WsClientBuilder::new()
            .set_rpc_middleware(RpcServiceBuilder::new())
            .request_timeout(timeout)
            .connection_timeout(timeout);
        let connecting = async {
            match endpoint {
                Endpoint::Unix(path) => {
                    let stream = UnixStream::connect(path)
                        .await
                        .map_err(|e| connect_error(e.to_string()))?;
                    builder
                        .build_with_stream("ws://localhost", stream)
                        .await
                        .map_err(|e| connect_error(e.to_string()))
                }
                Endpoint::Tcp { host, port, tls } => {
                    let stream = TcpStream::connect((host.as_str(), *port))
                        .await
                        .map_err(|e| connect_error(e.to_string()))?;
                    let url = format!("ws://{host}:{port}");
                    match tls {
                        None => builder.build_with_stream(url, stream).await,
                        Some(files) => {
                            let connector = tls::client_connector(files)
                                .map_err(|e| connect_error(e.to_string()))?;
                            let name =
                                tls::server_name(host).map_err(|e| connect_error(e.to_string()))?;
                            let stream = connector
                                .connect(name, stream)
                                .await
                                .map_err(|e| connect_error(format!("TLS: {e}")))?;
                            builder.build_with_stream(url, stream).await
                        }
                    }
                    .map_err(|e| connect_error(e.to_string()))
                }
            }
        };
        let inner = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| connect_error(format!("no answer within {} s", timeout.as_secs())))??;
        Ok(Self { inner })
    }

    /// Follows the daemon's events (`Events.subscribe`): each item is a JSON-RPC notification
    /// as VDSM sends it on `jms.queue.events`.
    pub async fn events(&self) -> Result<Subscription<Value>, ClientError> {
        self.inner
            .subscribe(SUBSCRIBE_EVENTS, ArrayParams::new(), UNSUBSCRIBE_EVENTS)
            .await
            .map_err(from_rpc_error)
    }

    /// Calls `method` with parameters by name (an object) or by position (a list); any other
    /// value sends no parameters.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let encode = |e: serde_json::Error| ClientError::Transport(e.to_string());
        let result = match params {
            Value::Object(map) => {
                let mut object = ObjectParams::new();
                for (name, value) in map {
                    object.insert(&name, value).map_err(encode)?;
                }
                self.inner.request(method, object).await
            }
            Value::Array(items) => {
                let mut list = ArrayParams::new();
                for value in items {
                    list.insert(value).map_err(encode)?;
                }
                self.inner.request(method, list).await
            }
            _ => self.inner.request(method, ObjectParams::new()).await,
        };
        result.map_err(from_rpc_error)
    }
}

fn from_rpc_error(err: RpcError) -> ClientError {
    match err {
        RpcError::Call(e) => ClientError::Server {
            code: e.code(),
            message: e.message().to_owned(),
        },
        other => ClientError::Transport(other.to_string()),
    }
}
