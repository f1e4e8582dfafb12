//! A connection's send queue, bounded in frames and in bytes. Messages for a client that does
//! not read are dropped once its queue holds `budget` bytes (with a log line), so one client
//! can neither stall the others nor grow rvdsmd's memory past its budget. A MESSAGE's body is
//! encoded once and shared by every subscriber's queue; only its headers are per subscriber.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Bytes a connection may have queued by default (twice the largest reply, 16 MiB).
pub const DEFAULT_QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// What a connection's writer receives.
#[derive(Debug)]
pub enum Outgoing {
    /// Encoded frame bytes.
    Frame(Bytes),
    /// A frame's command and headers, and its body (shared), to which the writer adds the NUL.
    Message {
        /// `MESSAGE\n...headers...\n\n`.
        head: Bytes,
        /// The body, shared by every subscriber it is sent to.
        body: Bytes,
    },
    /// Flush what was queued, then close.
    Close,
}

impl Outgoing {
    /// The bytes this puts on the wire.
    pub fn wire_len(&self) -> usize {
        match self {
            Self::Frame(bytes) => bytes.len(),
            Self::Message { head, body } => head.len() + body.len() + 1,
            Self::Close => 0,
        }
    }
}

/// The sending side of a connection's queue.
#[derive(Debug, Clone)]
pub struct SendQueue {
    tx: mpsc::Sender<Outgoing>,
    queued: Arc<AtomicUsize>,
    budget: usize,
}

/// The receiving side, for the connection's writer.
#[derive(Debug)]
pub struct ReceiveQueue {
    rx: mpsc::Receiver<Outgoing>,
    queued: Arc<AtomicUsize>,
}

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum NotQueued {
    /// The connection's queue is full (frames or bytes): the client is not reading.
    Full,
    /// The connection is gone.
    Closed,
}

/// A queue of at most `frames` frames and `budget` bytes.
pub fn channel(frames: usize, budget: usize) -> (SendQueue, ReceiveQueue) {
    let (tx, rx) = mpsc::channel(frames.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    let send = SendQueue {
        tx,
        queued: Arc::clone(&queued),
        budget,
    };
    (send, ReceiveQueue { rx, queued })
}

impl SendQueue {
    /// Queues `item` unless that would pass the frame or byte budget; never waits.
    pub fn try_send(&self, item: Outgoing) -> Result<(), NotQueued> {
        let len = item.wire_len();
        let before = self.queued.fetch_add(len, Ordering::SeqCst);
        if before + len > self.budget && before > 0 {
            self.queued.fetch_sub(len, Ordering::SeqCst);
            return Err(NotQueued::Full);
        }
        self.tx.try_send(item).map_err(|err| {
            self.queued.fetch_sub(len, Ordering::SeqCst);
            match err {
                mpsc::error::TrySendError::Full(_) => NotQueued::Full,
                mpsc::error::TrySendError::Closed(_) => NotQueued::Closed,
            }
        })
    }

    /// Queues a small control frame (CONNECTED, ERROR, RECEIPT), waiting for room in frames.
    pub async fn send(&self, item: Outgoing) {
        let len = item.wire_len();
        self.queued.fetch_add(len, Ordering::SeqCst);
        if self.tx.send(item).await.is_err() {
            self.queued.fetch_sub(len, Ordering::SeqCst);
        }
    }

    /// Bytes queued and not written yet.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

impl ReceiveQueue {
    /// The next item; its bytes leave the budget once the writer has it.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let item = self.rx.recv().await?;
        self.queued.fetch_sub(item.wire_len(), Ordering::SeqCst);
        Some(item)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Outgoing {
        Outgoing::Message {
            head: Bytes::from_static(b"MESSAGE\n\n"),
            body: Bytes::from(vec![b'x'; len]),
        }
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_what_a_silent_client_holds() {
        let (send, mut receive) = channel(1024, 1000);
        // One message larger than the budget still goes through an empty queue.
        assert_eq!(send.try_send(message(2000)), Ok(()));
        assert_eq!(send.try_send(message(10)), Err(NotQueued::Full));
        assert!(receive.recv().await.is_some());
        assert_eq!(send.queued_bytes(), 0);
        for _ in 0..4 {
            assert_eq!(send.try_send(message(200)), Ok(()));
        }
        assert_eq!(
            send.try_send(message(200)),
            Err(NotQueued::Full),
            "over 1000 bytes"
        );
        assert!(send.queued_bytes() <= 1000);
        drop(receive);
        assert_eq!(send.try_send(message(1)), Err(NotQueued::Closed));
    }
}
