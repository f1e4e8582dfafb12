//! The only module that talks to libvirt: one shared connection that is re-opened when
//! libvirtd restarts, VM lookup and state, the domain XML (disks and their backing chains),
//! and the QEMU guest agent (typed QGA messages from the `qapi` crate, sent through libvirt's
//! agent channel), and the domain lifecycle events behind VM status events.
//!
//! The services see it through the [`Hypervisor`] trait ([`Libvirt`] in the daemon, a scripted
//! fake in unit tests).
//!
//! Every libvirt call blocks, so each runs on tokio's blocking pool under a deadline
//! ([`Libvirt::call`]); the async reactor never waits on libvirt.

pub mod agent;
mod block_jobs;
mod connection;
mod domains;
mod error;
#[cfg(test)]
pub mod fake;
mod hypervisor;
use crate::sys::libvirt as ffi;
mod lifecycle;
mod memory;
mod sampling;
mod snapshot;
mod vm_control;
pub mod vm_policy;
pub mod xml;

pub use block_jobs::{BlockJob, Pivot};
pub use connection::Libvirt;
pub use domains::{DomainInfo, HostInfo};
pub use error::{VirtError, VirtErrorKind};
pub use hypervisor::{Hypervisor, SharedHypervisor};
pub use lifecycle::{BlockJobEvent, BlockJobStatus, watch_lifecycle};
pub use memory::{MemoryDump, PauseReport};
pub use sampling::{DomainStats, DomainView, ExitInfo, StatValue};
pub use snapshot::{Conflict, DiskSwitch, FreezeState, RunState};
pub use vm_control::Stopped;
pub use xml::edit::DefinedSwitch;
/// oVirt's `VM.create` definition (the name the rest of the crate knows it by).
pub use xml::vm as vm_xml;
