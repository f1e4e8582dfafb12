//! TLS handshakes of peers not authenticated yet, in a budget of their own. A connection slot
//! (`server.max_connections`) is given only once the peer's certificate is verified, so idle
//! or slow unauthenticated sockets can never take the slots of real managers. The handshake
//! budget is bounded too; when it is full, the oldest pending handshake is closed to make room,
//! so a flood of idle sockets cannot keep a real client from shaking hands (a real handshake
//! takes milliseconds; a flood would have to outpace it).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long a peer has to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes under way at once, whatever the connection limit.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// The handshakes under way.
pub struct Handshakes {
    capacity: usize,
    next: AtomicU64,
    // A std lock: held only to push, pop or find an entry.
    pending: Mutex<VecDeque<(u64, CancellationToken)>>,
}

/// One handshake's place; it leaves the budget when dropped.
pub struct HandshakeSlot {
    id: u64,
    evicted: CancellationToken,
    pool: Arc<Handshakes>,
}

impl Handshakes {
    /// A budget of `capacity` handshakes at once.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            next: AtomicU64::new(0),
            pending: Mutex::default(),
        })
    }

    /// A place for one more handshake; when the budget is full, the oldest pending one is
    /// told to give up its place.
    pub fn admit(self: &Arc<Self>) -> HandshakeSlot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        let mut pending = self.lock();
        while pending.len() >= self.capacity {
            if let Some((_, oldest)) = pending.pop_front() {
                oldest.cancel();
            }
        }
        pending.push_back((id, evicted.clone()));
        HandshakeSlot {
            id,
            evicted,
            pool: Arc::clone(self),
        }
    }

    /// Handshakes under way.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no handshake is under way.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, CancellationToken)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl HandshakeSlot {
    /// Resolves when a newer handshake took this one's place.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await;
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.pool.lock().retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_budget_makes_room_by_closing_the_oldest() {
        let pool = Handshakes::new(2);
        let first = pool.admit();
        let second = pool.admit();
        assert_eq!(pool.len(), 2);
        let third = pool.admit();
        assert_eq!(pool.len(), 2);
        tokio::time::timeout(Duration::from_secs(1), first.evicted())
            .await
            .expect("the oldest gives up its place");
        assert!(!second.evicted.is_cancelled());
        drop(third);
        drop(second);
        drop(first);
        assert!(pool.is_empty());
    }
}
