//! The typed schema of rvdsm's API: verb names and descriptions, parameter and result types,
//! and VDSM's error codes. One source of truth for the server, the CLI's `--list`/`--help`, and
//! the tests. Nothing here knows about a transport.

pub mod codes;
#[cfg(test)]
mod doc;
pub mod error;
pub mod events;
pub mod lifecycle_types;
pub mod merge_types;
pub mod params;
pub mod pool_types;
pub mod schema;
pub mod snapshot_types;
pub mod storage_types;
pub mod types;
pub mod verbs;
pub mod vm_types;
pub mod volume_types;

pub use error::ApiError;
pub use schema::{Param, ParamType, Verb};
pub use verbs::{Call, VERBS, find, names};
