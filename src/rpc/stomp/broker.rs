//! The server-wide subscription map (VDSM's `StompServer`): which connection subscribed to
//! which destination under which id, and delivery of MESSAGE frames to every subscriber of a
//! destination or of any dot-separated prefix of it. Each connection has a bounded send queue;
//! a message for a connection whose queue is full is dropped with a log line, so one client
//! that stops reading never stalls the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::frame::encode_frame;

/// A connection's identity in the broker.
pub type ConnectionId = u64;

/// What a connection's writer receives.
#[derive(Debug)]
pub enum Outgoing {
    /// Encoded frame bytes.
    Frame(Bytes),
    /// Flush what was queued, then close.
    Close,
}

#[derive(Debug, Clone)]
struct Subscriber {
    connection: ConnectionId,
    id: String,
    queue: mpsc::Sender<Outgoing>,
    /// Messages dropped because the queue was full; logged at powers of two, not each.
    dropped: Arc<AtomicU64>,
}

/// Why a subscription was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The connection already has a subscription with this id.
    #[error("Subscription id already exists")]
    DuplicateId,
}

#[derive(Default)]
struct Subscriptions {
    by_destination: HashMap<String, Vec<Subscriber>>,
    /// (connection, subscription id) → destination, for UNSUBSCRIBE and disconnects.
    by_id: HashMap<(ConnectionId, String), String>,
}

/// The subscription map, shared by all connections.
#[derive(Default)]
pub struct Broker {
    subscriptions: Mutex<Subscriptions>,
}

impl Broker {
    /// Subscribes `connection` to `destination` under `id`.
    pub fn subscribe(
        &self,
        connection: ConnectionId,
        id: &str,
        destination: &str,
        queue: &mpsc::Sender<Outgoing>,
    ) -> Result<(), SubscribeError> {
        let mut subs = self.lock();
        let key = (connection, id.to_owned());
        if subs.by_id.contains_key(&key) {
            return Err(SubscribeError::DuplicateId);
        }
        subs.by_id.insert(key, destination.to_owned());
        subs.by_destination
            .entry(destination.to_owned())
            .or_default()
            .push(Subscriber {
                connection,
                id: id.to_owned(),
                queue: queue.clone(),
                dropped: Arc::default(),
            });
        Ok(())
    }

    /// Removes one subscription; an unknown id is ignored, as VDSM does.
    pub fn unsubscribe(&self, connection: ConnectionId, id: &str) {
        let mut subs = self.lock();
        if let Some(destination) = subs.by_id.remove(&(connection, id.to_owned())) {
            subs.remove_subscriber(&destination, |s| s.connection == connection && s.id == id);
        }
    }

    /// Removes every subscription of a connection that went away.
    pub fn disconnect(&self, connection: ConnectionId) {
        let mut subs = self.lock();
        let destinations: Vec<String> = subs
            .by_id
            .iter()
            .filter(|((conn, _), _)| *conn == connection)
            .map(|(_, destination)| destination.clone())
            .collect();
        subs.by_id.retain(|(conn, _), _| *conn != connection);
        for destination in destinations {
            subs.remove_subscriber(&destination, |s| s.connection == connection);
        }
    }

    /// Sends a MESSAGE to every subscriber of `destination` or of a dot-prefix of it, with the
    /// given headers plus `destination` (unless given), `subscription` and `content-length`.
    /// Returns how many subscribers it was queued for. Nothing here blocks: a full queue drops
    /// the message, so the lock is held only while frames are encoded and queued.
    pub fn publish(&self, destination: &str, headers: &[(String, String)], body: &[u8]) -> usize {
        let subs = self.lock();
        let mut count = 0;
        for name in destination_and_parents(destination) {
            for subscriber in subs.by_destination.get(name).into_iter().flatten() {
                count += 1;
                subscriber.deliver(destination, headers, body);
            }
        }
        count
    }

    /// Whether anyone subscribed to `destination` or to a prefix of it.
    pub fn has_subscribers(&self, destination: &str) -> bool {
        let subs = self.lock();
        destination_and_parents(destination).any(|name| subs.by_destination.contains_key(name))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        // The map stays consistent even if a holder panicked: every change is one statement.
        self.subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Subscriber {
    fn deliver(&self, destination: &str, headers: &[(String, String)], body: &[u8]) {
        let given = headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let implicit = (!headers.iter().any(|(name, _)| name == "destination"))
            .then_some(("destination", destination));
        let all = implicit
            .into_iter()
            .chain(given)
            .chain(std::iter::once(("subscription", self.id.as_str())));
        let mut out = BytesMut::new();
        encode_frame(&mut out, "MESSAGE", all, body);
        match self.queue.try_send(Outgoing::Frame(out.freeze())) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        destination,
                        subscription = %self.id,
                        dropped,
                        "client is not reading; messages dropped"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl Subscriptions {
    fn remove_subscriber(&mut self, destination: &str, matches: impl Fn(&Subscriber) -> bool) {
        if let Some(list) = self.by_destination.get_mut(destination) {
            list.retain(|s| !matches(s));
            if list.is_empty() {
                self.by_destination.remove(destination);
            }
        }
    }
}

/// `a.b.c`, `a.b`, `a`: a topic hierarchy as VDSM's broker treats it.
fn destination_and_parents(destination: &str) -> impl Iterator<Item = &str> {
    std::iter::once(destination).chain(
        destination
            .char_indices()
            .rev()
            .filter(|&(_, c)| c == '.')
            .map(move |(i, _)| &destination[..i]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(rx: &mut mpsc::Receiver<Outgoing>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Outgoing::Frame(bytes)) = rx.try_recv() {
            out.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        out
    }

    #[test]
    fn parents_of_a_topic() {
        let all: Vec<_> = destination_and_parents("a.b.c").collect();
        assert_eq!(all, ["a.b.c", "a.b", "a"]);
        assert_eq!(destination_and_parents("q").collect::<Vec<_>>(), ["q"]);
    }

    #[test]
    fn messages_reach_subscribers_of_the_destination_and_its_parents() {
        let broker = Broker::default();
        let (tx, mut rx) = mpsc::channel(8);
        broker.subscribe(1, "s1", "jms.topic", &tx).unwrap();
        broker.subscribe(1, "s2", "other", &tx).unwrap();
        assert_eq!(broker.publish("jms.topic.x", &[], b"{}"), 1);
        let got = received(&mut rx);
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("MESSAGE\ndestination:jms.topic.x\nsubscription:s1\n"));
        assert!(got[0].ends_with("content-length:2\n\n{}\0"));
    }

    #[test]
    fn duplicate_ids_are_refused_per_connection_only() {
        let broker = Broker::default();
        let (tx, _rx) = mpsc::channel(8);
        broker.subscribe(1, "s", "a", &tx).unwrap();
        assert_eq!(
            broker.subscribe(1, "s", "b", &tx),
            Err(SubscribeError::DuplicateId)
        );
        broker.subscribe(2, "s", "a", &tx).unwrap();
        assert_eq!(broker.publish("a", &[], b"x"), 2);
    }

    #[test]
    fn unsubscribe_and_disconnect_remove_subscriptions() {
        let broker = Broker::default();
        let (tx, _rx) = mpsc::channel(8);
        broker.subscribe(1, "s", "a", &tx).unwrap();
        broker.subscribe(1, "t", "b", &tx).unwrap();
        broker.subscribe(2, "u", "b", &tx).unwrap();
        broker.unsubscribe(1, "s");
        broker.unsubscribe(1, "unknown");
        assert!(!broker.has_subscribers("a"));
        broker.disconnect(1);
        assert_eq!(broker.publish("b", &[], b"x"), 1);
        broker.disconnect(2);
        assert!(!broker.has_subscribers("b"));
    }

    #[test]
    fn a_full_queue_drops_the_message_without_blocking() {
        let broker = Broker::default();
        let (slow, mut slow_rx) = mpsc::channel(1);
        let (fast, mut fast_rx) = mpsc::channel(8);
        broker.subscribe(1, "s", "a", &slow).unwrap();
        broker.subscribe(2, "s", "a", &fast).unwrap();
        broker.publish("a", &[], b"1");
        broker.publish("a", &[], b"2");
        assert_eq!(received(&mut slow_rx).len(), 1);
        assert_eq!(received(&mut fast_rx).len(), 2);
    }
}
