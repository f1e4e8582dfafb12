//! Transports only: JSON-RPC 2.0 over STOMP 1.2 (VDSM's wire), HTTP and WebSocket (jsonrpsee),
//! on one TCP port (mutual TLS) and on a Unix socket. This module turns a request into a typed call on a service and a service error into
//! a JSON-RPC error with VDSM's code; it holds no business logic.
//!
//! - [`methods`]: the one registry of verbs ([`jsonrpsee::RpcModule`]) every transport serves.
//! - [`params`]: JSON parameters (by name or by position) into the typed structs of `api`.
//! - [`logging`]: one tracing span and one log line per request.
//! - [`pending`]: at most `max_pending_requests` calls running per WebSocket connection.
//! - [`http_front`]: what HTTP answers before JSON-RPC: `GET /metrics`, 411 without a length.
//! - [`readiness`]: the recovery gate (99 until the daemon has recovered).
//! - [`handshakes`]: TLS handshakes of unauthenticated peers, in a budget of their own.
//! - [`dispatch`]: JSON-RPC texts from non-HTTP transports into the same registry.
//! - [`detect`]: which protocol a connection speaks, from its first bytes.
//! - [`json_style`]: VDSM's JSON text style (Python's separators) on its wire.
//! - [`stomp`]: STOMP framing, the subscription broker and STOMP connections.
//! - [`tls`]: mutual TLS, reloadable certificates.
//! - [`subscriptions`]: events to STOMP and WebSocket subscribers.
//! - [`server`]: the listeners, connection limits and graceful shutdown.

pub mod detect;
pub mod dispatch;
pub mod handshakes;
pub mod http_front;
pub mod json_style;
pub mod logging;
pub mod methods;
pub mod params;
pub mod pending;
pub mod readiness;
pub mod server;
pub mod stomp;
pub mod subscriptions;
pub mod tls;
