//! Events the daemon announces to managers (VDSM-REFERENCE §1.4): `|jobs|status|<jobId>` on
//! every terminal job transition and `|virt|VM_status|<vmId>` when a VM's state changes, each
//! with `notify_time` (monotonic milliseconds, as VDSM). They go on one broadcast channel; the
//! transports subscribe to it (STOMP's `jms.queue.events`, WebSocket subscriptions). A
//! subscriber that falls behind loses the oldest events, with a log line, and never slows the
//! publisher.

use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::broadcast;

/// Events kept for a subscriber that is behind.
const CAPACITY: usize = 1024;

/// One event: its name (the notification's method) and parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `|jobs|status|<jobId>`, `|virt|VM_status|<vmId>`.
    pub name: String,
    /// The parameters, `notify_time` included.
    pub params: Value,
}

impl Event {
    /// The JSON-RPC notification VDSM sends for it.
    pub fn to_notification(&self) -> Value {
        serde_json::json!({"jsonrpc": "2.0", "method": self.name, "params": self.params})
    }
}

/// The daemon's event channel; cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
        }
    }
}

impl EventBus {
    /// Announces `name` with `params` plus `notify_time`. Nobody listening is fine.
    pub fn publish(&self, name: String, mut params: Map<String, Value>) {
        params.insert(
            "notify_time".to_owned(),
            Value::from(crate::clock::monotonic_millis()),
        );
        let _ = self.sender.send(Arc::new(Event {
            name,
            params: Value::Object(params),
        }));
    }

    /// A new subscriber, receiving events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }
}

impl EventBus {
    /// `|virt|VM_status|<vmId>` with `{<vmId>: <the VM's stats>}`, as VDSM sends it.
    pub fn publish_vm_stats(&self, vm: uuid::Uuid, stats: &crate::api::lifecycle_types::VmStats) {
        let mut params = Map::new();
        params.insert(
            vm.to_string(),
            serde_json::to_value(stats).unwrap_or_default(),
        );
        self.publish(crate::api::events::vm_status(vm), params);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_events_with_notify_time() {
        let bus = EventBus::default();
        let mut rx = bus.subscribe();
        let mut params = Map::new();
        params.insert("x".into(), Value::from(1));
        bus.publish("|jobs|status|j".into(), params);
        let event = rx.recv().await.unwrap();
        assert_eq!(event.name, "|jobs|status|j");
        assert_eq!(event.params["x"], 1);
        assert!(event.params["notify_time"].as_u64().unwrap() > 0);
        let note = event.to_notification();
        assert_eq!(note["method"], "|jobs|status|j");
        assert!(note.get("id").is_none());
    }
}
