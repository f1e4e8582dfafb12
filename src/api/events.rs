//! The names of rvdsm's events on the wire (VDSM-REFERENCE §1.4): the STOMP queue they are
//! published to, the WebSocket subscription methods, and each event's name.

use uuid::Uuid;

/// The STOMP destination a manager subscribes to for events (VDSM's).
pub const EVENT_QUEUE: &str = "jms.queue.events";
/// The WebSocket subscription method for events (rvdsm's; VDSM has no WebSocket).
pub const SUBSCRIBE_EVENTS: &str = "Events.subscribe";
/// Ends an [`SUBSCRIBE_EVENTS`] subscription.
pub const UNSUBSCRIBE_EVENTS: &str = "Events.unsubscribe";
/// The method name of the notifications a WebSocket subscription sends.
pub const EVENT_NOTIFICATION: &str = "Events.event";

/// The event name for a job's status.
pub fn job_status(job: Uuid) -> String {
    format!("|jobs|status|{job}")
}

/// The event name for a VM's status.
pub fn vm_status(vm: Uuid) -> String {
    format!("|virt|VM_status|{vm}")
}
