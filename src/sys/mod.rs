//! The foreign calls no crate wraps, and the only module of the crate with `unsafe` (the
//! crate root denies it elsewhere). Each call is wrapped once, in a safe function that checks
//! what it hands over and copies out what it gets back; every `unsafe` block says why it is
//! sound.
//!
//! - `libvirt`: the libvirt calls the `virt` crate lacks or gets wrong; only [`crate::virt`]
//!   uses them.
//! - [`allocator`]: asking mimalloc, rvdsmd's allocator, to give back the pages a thread
//!   holds for blocks other threads freed; only rvdsmd's runtime uses it.
//! - [`sanlock`]: the client calls of sanlock, the lease manager of hosts sharing storage;
//!   only [`crate::cluster`] uses them.
//! - [`children`]: starting the children that touch volumes (qemu-img) so that they die with
//!   rvdsmd, and finding those an earlier run left; [`crate::storage`] starts them, recovery
//!   looks for leftovers.

pub mod allocator;
pub mod children;
pub(crate) mod libvirt;
pub mod sanlock;
