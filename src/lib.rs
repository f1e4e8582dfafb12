//! rvdsm: a per-host virtualization agent in the VDSM tradition.
//!
//! A manager (a control plane, or an operator with the `rvdsm` CLI) sends JSON-RPC requests to
//! the `rvdsmd` daemon, which drives libvirt, QEMU and the QEMU guest agent on its host.
//!
//! # Layout
//! Data flows one way: [`rpc`] → [`api`] types → [`services`] → [`virt`] → libvirt.
//! - [`config`]: the TOML configuration file and its defaults.
//! - [`api`]: the typed schema shared by the server and the CLI: verbs, parameters, results and
//!   VDSM's error codes.
//! - [`rpc`]: transports only (JSON-RPC 2.0 over STOMP, HTTP and WebSocket, on one mutual-TLS
//!   TCP port and a Unix socket), translating requests into typed service calls and errors into
//!   JSON-RPC errors.
//! - [`events`]: job and VM status events, for the transports to deliver.
//! - [`services`]: what each verb does, in terms of the hypervisor; never sees JSON-RPC.
//! - [`virt`]: the only module that talks to libvirt: the shared reconnecting connection, VM
//!   lookup and state, domain XML, and the guest agent.
//! - [`cli`]: argument handling for the `rvdsm` command-line client.
//! - [`metrics`]: Prometheus metrics for operators.
//! - [`pki`]: a lab certificate authority (`rvdsm pki init`).

pub mod api;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod events;
pub mod failpoint;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod jobs;
pub mod metrics;
pub mod pki;
pub mod rpc;
pub mod services;
pub mod storage;
pub mod virt;

/// The version of this build, reported by `Host.getCapabilities`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
