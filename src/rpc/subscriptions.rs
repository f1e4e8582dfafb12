//! Events to clients: STOMP subscribers of `jms.queue.events` get VDSM's notification frames,
//! and WebSocket clients can subscribe with `Events.subscribe` (a jsonrpsee subscription whose
//! items are the same notifications). A client that does not keep up loses events, with a log
//! line, and never slows the daemon.

use std::sync::Arc;

use jsonrpsee::RpcModule;
use jsonrpsee::core::SubscriptionResult;
use jsonrpsee::server::{PendingSubscriptionSink, StopHandle};
use tokio::sync::broadcast::error::RecvError;

use super::json_style::python_separators;
use super::stomp::Broker;
use crate::api::events::{EVENT_NOTIFICATION, EVENT_QUEUE, SUBSCRIBE_EVENTS, UNSUBSCRIBE_EVENTS};
use crate::events::{Event, EventBus};

/// Publishes every event to the STOMP event queue until the server stops.
pub async fn forward_events_to_stomp(
    mut events: tokio::sync::broadcast::Receiver<Arc<Event>>,
    broker: Arc<Broker>,
    stop: StopHandle,
) {
    let headers = [("content-type".to_owned(), "application/json".to_owned())];
    loop {
        let event = tokio::select! {
            () = stop.clone().shutdown() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(event) => {
                let body = python_separators(event.to_notification().to_string().as_bytes());
                broker.publish(EVENT_QUEUE, &headers, &body);
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "event forwarding fell behind; events dropped");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Adds `Events.subscribe` / `Events.unsubscribe` to the registry.
pub fn register_events<C: Send + Sync + 'static>(module: &mut RpcModule<C>, bus: EventBus) {
    module
        .register_subscription(
            SUBSCRIBE_EVENTS,
            EVENT_NOTIFICATION,
            UNSUBSCRIBE_EVENTS,
            move |_, pending, _, _| stream_events(pending, bus.clone()),
        )
        .expect("the event subscription names are unique");
}

async fn stream_events(pending: PendingSubscriptionSink, bus: EventBus) -> SubscriptionResult {
    let mut events = bus.subscribe();
    let mut sink = pending.accept().await?;
    loop {
        let event = tokio::select! {
            () = sink.closed() => return Ok(()),
            event = events.recv() => event,
        };
        match event {
            Ok(event) => {
                let message = serde_json::value::to_raw_value(&event.to_notification())?;
                if let Err(err) = sink.try_send(message) {
                    match err {
                        jsonrpsee::core::server::TrySendError::Full(_) => {
                            tracing::warn!("event subscriber is not reading; event dropped");
                        }
                        jsonrpsee::core::server::TrySendError::Closed(_) => return Ok(()),
                    }
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "event subscriber fell behind; events dropped");
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}
