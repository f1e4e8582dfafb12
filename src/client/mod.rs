//! Clients of rvdsmd, for the `rvdsm` CLI, the tests and the benchmarks. They share the wire's
//! vocabulary ([`crate::api`]) and codecs ([`crate::rpc::stomp::frame`], [`crate::rpc::tls`])
//! with the server; the server never imports them.
//!
//! - [`jsonrpc`]: JSON-RPC over WebSocket on the Unix socket or TCP (mutual TLS), with events.
//! - [`stomp`]: JSON-RPC over STOMP, as VDSM's `vdsm.client` speaks it.

pub mod jsonrpc;
pub mod stomp;

pub use jsonrpc::{Client, ClientError, Endpoint};
pub use stomp::StompClient;
