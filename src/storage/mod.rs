//! Storage domains, images and volumes on a filesystem, laid out and described as VDSM does
//! (VDSM-REFERENCE §4): layout, metadata (`.meta`, `dom_md/metadata`), legality, chains,
//! locking and qemu-img. Knows nothing of libvirt.
//!
//! - [`meta`], [`domain_md`]: the two metadata file formats.
//! - [`layout`]: every path, built only from UUIDs.
//! - [`lock`]: the per-domain metadata lock behind a small trait.
//! - [`domain`]: creating, discovering and describing domains.
//! - [`pool`]: the pool on storage: which domain is its master, at which version, and its
//!   domains.
//! - [`volume`]: volume metadata, chains, and the steps of a create with their rollback.
//! - [`image`]: images and volumes named, deleted, prepared for a VM; whether a VM uses
//!   their volumes; the [`image::ImageHandle`] other services hold on an image they change,
//!   with its lock, and the marks that keep a copy and a merge of one image apart.
//! - [`snapshot_volume`]: what a live snapshot needs of its volumes.
//! - [`merge`]: what merging a snapshot away changes in the metadata, and a cold merge's
//!   qemu-img steps.
//! - [`data_operation`]: generations and legality around a volume's data being written.
//! - [`copy`]: a full copy of a chain into another volume.
//! - [`qemu_img`]: bounded, stoppable, low-priority qemu-img runs.
//! - [`shared_records`]: the hosts' shared record directories in a domain's `master/`.
//! - [`tool_files`]: the files handed to a tool that opens them by name (qemu-img, QEMU,
//!   sanlock), held and checked first: no link, regular files, chains as the metadata says.

pub mod copy;
pub mod data_operation;
pub mod domain;
mod domain_fs;
pub mod domain_md;
mod error;
pub mod image;
mod image_handle;
mod image_marks;
pub mod layout;
pub mod lock;
pub mod memory_state;
pub mod memory_volume;
pub mod merge;
pub mod meta;
pub mod pool;
pub mod qemu_img;
pub mod shared_records;
pub mod snapshot_volume;
pub mod tool_files;
pub mod volume;
pub mod xleases;

pub use error::{StorageError, StorageErrorKind};
