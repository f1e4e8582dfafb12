//! rvdsm: a per-host virtualization agent in the VDSM tradition.
//!
//! A manager (a control plane, or an operator with the `rvdsm` CLI) sends JSON-RPC requests to
//! the `rvdsmd` daemon, which drives libvirt, QEMU and the QEMU guest agent on its host.
//!
//! # Layout
//! Data flows one way: [`rpc`] → [`services`] → [`storage`], [`virt`], [`jobs`] → libvirt,
//! qemu-img, files. Each layer imports only the layers below it; [`api`] is the vocabulary
//! every layer shares and imports nothing of the crate.
//!
//! Transports and clients:
//! - [`rpc`]: transports only (JSON-RPC 2.0 over STOMP, HTTP and WebSocket, on one mutual-TLS
//!   TCP port and a Unix socket): a request into a typed [`api::Call`], dispatched to
//!   [`services`]; an error into `{code, message}`.
//! - [`client`]: the JSON-RPC and STOMP clients of the CLI, the tests and the benchmarks.
//! - [`cli`]: argument handling for the `rvdsm` command-line client.
//!
//! What each verb does:
//! - [`services`]: one service per area (host, storage, snapshot, freeze), on typed values;
//!   never sees JSON-RPC. [`services::errors`] is where the lower layers' errors get VDSM's
//!   codes.
//!
//! Resources:
//! - [`storage`]: file storage domains in VDSM's layout: metadata, volumes, images,
//!   qemu-img. Knows nothing of libvirt.
//! - [`virt`]: the only module that talks to libvirt: the reconnecting connection, VMs, domain
//!   XML, snapshots, the guest agent, lifecycle events.
//! - [`jobs`]: storage tasks, virt jobs and the snapshot journal of intent.
//! - [`cluster`]: this host among the hosts sharing domains: sanlock lockspaces, the SPM
//!   lease, the gate of metadata changes.
//! - [`sys`]: the foreign calls no crate wraps (libvirt's missing ones, sanlock's), the only
//!   module with `unsafe`.
//!
//! Shared below everything:
//! - [`api`]: verbs (one table), parameter and result types, VDSM's error codes, event names.
//! - [`events`]: the event bus (job ends, VM status changes) the transports deliver.
//! - [`config`]: the TOML configuration file and its defaults.
//! - [`metrics`]: Prometheus metrics for operators.
//! - [`clock`], [`fsutil`]: the crate's clocks; atomic, durable file writes.
//! - [`failpoint`]: test-only pauses where fault tests act.
//! - [`pki`]: a lab certificate authority (`rvdsm pki init`).

#![deny(unsafe_code)]

pub mod api;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod events;
pub mod failpoint;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod hostinfo;
pub mod jobs;
pub mod metrics;
pub mod pki;
pub mod rpc;
pub mod services;
pub mod storage;
#[allow(unsafe_code)]
pub mod sys;
pub mod virt;

/// An error and its sources, outermost first, joined with `: ` as one line: what a log line
/// or a start-up failure shows, so that no cause is lost behind a summary.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The version of this build, reported by `Host.getCapabilities`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
