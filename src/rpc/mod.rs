//! Transports only: JSON-RPC 2.0 over HTTP and WebSocket (jsonrpsee), on TCP and on a Unix
//! socket. This module turns a request into a typed call on a service and a service error into
//! a JSON-RPC error with VDSM's code; it holds no business logic.
//!
//! - [`methods`]: the one registry of verbs ([`jsonrpsee::RpcModule`]) every transport serves.
//! - [`params`]: JSON parameters (by name or by position) into the typed structs of `api`.
//! - [`logging`]: one tracing span and one log line per request.
//! - [`http_limits`]: HTTP-level refusals (a POST must declare its length).
//! - [`readiness`]: the recovery gate (99 until the daemon has recovered).
//! - [`server`]: the listeners, connection limits and graceful shutdown.
//! - [`client`]: the client used by the CLI and the tests.

pub mod client;
pub mod http_limits;
pub mod logging;
pub mod methods;
pub mod params;
pub mod readiness;
pub mod server;
