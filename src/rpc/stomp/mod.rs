//! JSON-RPC over STOMP 1.2, as VDSM's managers speak it (VDSM's `lib/yajsonrpc/stomp*.py`).
//!
//! - [`frame`]: the codec (frames, escaping, heart-beats, size bounds).
//! - [`broker`]: the server-wide subscription map and message fan-out.
//! - [`connection`]: one client connection: CONNECT, SUBSCRIBE, SEND routing, heart-beats.
//! - [`queue`]: a connection's send queue, bounded in frames and bytes.

pub mod broker;
pub mod connection;
pub mod frame;
pub mod queue;

pub use broker::Broker;
pub use connection::{StompOptions, StompService};
