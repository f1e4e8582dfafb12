//! The foreign calls no crate wraps, and the only module of the crate with `unsafe` (the
//! crate root denies it elsewhere). Each call is wrapped once, in a safe function that checks
//! what it hands over and copies out what it gets back; every `unsafe` block says why it is
//! sound.
//!
//! - `libvirt`: the libvirt calls the `virt` crate lacks or gets wrong; only [`crate::virt`]
//!   uses them.
//! - [`sanlock`]: the client calls of sanlock, the lease manager of hosts sharing storage;
//!   only [`crate::cluster`] uses them.

pub(crate) mod libvirt;
pub mod sanlock;
