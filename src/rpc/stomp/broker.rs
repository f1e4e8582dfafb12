//! The server-wide subscription map (VDSM's `StompServer`): which connection subscribed to
//! which destination under which id, and delivery of MESSAGE frames to every subscriber of a
//! destination or of any dot-separated prefix of it. Each connection has a send queue bounded
//! in frames and bytes ([`super::queue`]); a message for a connection whose queue is full is
//! dropped with a log line, so one client that stops reading never stalls the others nor grows
//! rvdsmd. A connection has at most [`MAX_SUBSCRIPTIONS`] subscriptions, each destination at
//! most [`MAX_DESTINATION_BYTES`] long; a message's body is encoded once for all subscribers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use super::frame::{encode_frame, encode_head};
use super::queue::{NotQueued, Outgoing, SendQueue};

/// A connection's identity in the broker.
pub type ConnectionId = u64;

/// Subscriptions one connection may hold (a manager holds a few: events, its reply queues).
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// The longest destination name subscribed to, in bytes.
pub const MAX_DESTINATION_BYTES: usize = 256;
/// Bodies up to this size are copied into each subscriber's frame, which then goes out in one
/// write (replies to requests, events); larger ones are kept once and shared.
const SHARED_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
struct Subscriber {
    connection: ConnectionId,
    id: String,
    queue: SendQueue,
    /// Messages dropped because the queue was full; logged at powers of two, not each.
    dropped: Arc<AtomicU64>,
}

/// Why a subscription was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The connection already has a subscription with this id.
    #[error("Subscription id already exists")]
    DuplicateId,
    /// The connection holds [`MAX_SUBSCRIPTIONS`] already.
    #[error("Too many subscriptions")]
    TooMany,
    /// The destination is longer than [`MAX_DESTINATION_BYTES`].
    #[error("Destination too long")]
    DestinationTooLong,
}

#[derive(Default)]
struct Subscriptions {
    by_destination: HashMap<String, Vec<Subscriber>>,
    /// (connection, subscription id) → destination, for UNSUBSCRIBE and disconnects.
    by_id: HashMap<(ConnectionId, String), String>,
    /// Subscriptions per connection.
    count: HashMap<ConnectionId, usize>,
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
        queue: &SendQueue,
    ) -> Result<(), SubscribeError> {
        if destination.len() > MAX_DESTINATION_BYTES {
            return Err(SubscribeError::DestinationTooLong);
        }
        let mut subs = self.lock();
        let key = (connection, id.to_owned());
        if subs.by_id.contains_key(&key) {
            return Err(SubscribeError::DuplicateId);
        }
        let count = subs.count.entry(connection).or_default();
        if *count >= MAX_SUBSCRIPTIONS {
            return Err(SubscribeError::TooMany);
        }
        *count += 1;
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
            if let Some(count) = subs.count.get_mut(&connection) {
                *count = count.saturating_sub(1);
            }
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
        subs.count.remove(&connection);
        for destination in destinations {
            subs.remove_subscriber(&destination, |s| s.connection == connection);
        }
    }

    /// Sends a MESSAGE to every subscriber of `destination` or of a dot-prefix of it, with the
    /// given headers plus `destination` (unless given), `subscription` and `content-length`.
    /// Returns how many subscribers it was queued for. Nothing here blocks: a full queue drops
    /// the message, so the lock is held only while frames are encoded and queued.
    pub fn publish(&self, destination: &str, headers: &[(String, String)], body: &[u8]) -> usize {
        let mut shared: Option<Bytes> = None;
        let subs = self.lock();
        let mut count = 0;
        for name in destination_and_parents(destination) {
            for subscriber in subs.by_destination.get(name).into_iter().flatten() {
                count += 1;
                subscriber.deliver(destination, headers, body, &mut shared);
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
    /// Queues the MESSAGE for this subscriber; a large body is copied once into `shared` and
    /// shared by every subscriber's frame.
    fn deliver(
        &self,
        destination: &str,
        headers: &[(String, String)],
        body: &[u8],
        shared: &mut Option<Bytes>,
    ) {
        let given = headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let implicit = (!headers.iter().any(|(name, _)| name == "destination"))
            .then_some(("destination", destination));
        let all = implicit
            .into_iter()
            .chain(given)
            .chain(std::iter::once(("subscription", self.id.as_str())));
        let message = if body.len() <= SHARED_BODY_BYTES {
            let mut frame = BytesMut::new();
            encode_frame(&mut frame, "MESSAGE", all, body);
            Outgoing::Frame(frame.freeze())
        } else {
            let mut head = BytesMut::with_capacity(128);
            encode_head(&mut head, "MESSAGE", all, body.len());
            let body = shared.get_or_insert_with(|| Bytes::copy_from_slice(body));
            Outgoing::Message {
                head: head.freeze(),
                body: body.clone(),
            }
        };
        match self.queue.try_send(message) {
            Ok(()) => {}
            Err(NotQueued::Full) => {
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
            Err(NotQueued::Closed) => {}
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

    use crate::rpc::stomp::queue::{ReceiveQueue, channel};

    fn received(rx: &mut ReceiveQueue) -> Vec<String> {
        let mut out = Vec::new();
        while !rx.is_empty() {
            let item = futures_util::FutureExt::now_or_never(rx.recv()).flatten();
            match item {
                Some(Outgoing::Frame(bytes)) => out.push(String::from_utf8_lossy(&bytes).into()),
                Some(Outgoing::Message { head, body }) => {
                    let mut text = String::from_utf8_lossy(&head).into_owned();
                    text.push_str(&String::from_utf8_lossy(&body));
                    text.push('\0');
                    out.push(text);
                }
                _ => {}
            }
        }
        out
    }

    fn queue(frames: usize) -> (SendQueue, ReceiveQueue) {
        channel(frames, usize::MAX)
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
        let (tx, mut rx) = queue(8);
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
        let (tx, _rx) = queue(8);
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
        let (tx, _rx) = queue(8);
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
        let (slow, mut slow_rx) = queue(1);
        let (fast, mut fast_rx) = queue(8);
        broker.subscribe(1, "s", "a", &slow).unwrap();
        broker.subscribe(2, "s", "a", &fast).unwrap();
        broker.publish("a", &[], b"1");
        broker.publish("a", &[], b"2");
        assert_eq!(received(&mut slow_rx).len(), 1);
        assert_eq!(received(&mut fast_rx).len(), 2);
    }

    #[test]
    fn subscriptions_are_capped_per_connection_and_in_length() {
        let broker = Broker::default();
        let (tx, _rx) = queue(8);
        let long = "d".repeat(MAX_DESTINATION_BYTES + 1);
        assert_eq!(
            broker.subscribe(1, "x", &long, &tx),
            Err(SubscribeError::DestinationTooLong)
        );
        for i in 0..MAX_SUBSCRIPTIONS {
            broker.subscribe(1, &i.to_string(), "a", &tx).unwrap();
        }
        assert_eq!(
            broker.subscribe(1, "one more", "a", &tx),
            Err(SubscribeError::TooMany)
        );
        broker.unsubscribe(1, "0");
        broker.subscribe(1, "again", "a", &tx).unwrap();
        broker.disconnect(1);
        broker.subscribe(1, "fresh", "a", &tx).unwrap();
    }

    #[test]
    fn a_large_body_is_shared_and_a_small_one_goes_out_whole() {
        let broker = Broker::default();
        let (a, mut a_rx) = queue(8);
        let (b, mut b_rx) = queue(8);
        broker.subscribe(1, "s", "d", &a).unwrap();
        broker.subscribe(2, "s", "d", &b).unwrap();
        broker.publish("d", &[], b"small");
        let large = vec![b'x'; SHARED_BODY_BYTES + 1];
        broker.publish("d", &[], &large);
        let now =
            |rx: &mut ReceiveQueue| futures_util::FutureExt::now_or_never(rx.recv()).flatten();
        assert!(matches!(now(&mut a_rx), Some(Outgoing::Frame(_))));
        assert!(matches!(now(&mut b_rx), Some(Outgoing::Frame(_))));
        let (
            Some(Outgoing::Message { body: first, .. }),
            Some(Outgoing::Message { body: second, .. }),
        ) = (now(&mut a_rx), now(&mut b_rx))
        else {
            panic!("large bodies are shared messages")
        };
        assert_eq!(first.as_ptr(), second.as_ptr(), "one copy of the body");
    }
}
