//! The bound on the calls one connection runs at once (`server.max_pending_requests`), each
//! call of a batch counted, for the transport whose reader does not keep it: jsonrpsee's
//! WebSocket reader starts every message it reads at once, so without this layer one
//! WebSocket could run any number of calls. Past the bound, a call waits for a place.
//!
//! jsonrpsee builds the RPC middleware once per WebSocket connection, so the places are per
//! connection there. It builds it once per request for HTTP and for the STOMP dispatcher, where
//! the bound then never binds and need not: HTTP/1.1 serves one request of a connection at a
//! time, and the STOMP reader takes the same places before it hands a request over
//! ([`super::stomp`]). A batch never needs more places than there are: the configuration keeps
//! `max_batch_calls <= max_pending_requests`, and a larger batch is refused before it gets here.

use std::sync::Arc;

use jsonrpsee::core::middleware::{Batch, Notification, RpcServiceT};
use jsonrpsee::server::MethodResponse;
use jsonrpsee::types::Request;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The tower layer adding [`PendingLimit`], with `max` places per service built.
#[derive(Debug, Clone, Copy)]
pub struct PendingLimitLayer {
    /// Calls running at once (`server.max_pending_requests`).
    pub max: usize,
}

impl<S> tower::Layer<S> for PendingLimitLayer {
    type Service = PendingLimit<S>;

    fn layer(&self, service: S) -> Self::Service {
        PendingLimit {
            service,
            places: Arc::new(Semaphore::new(self.max)),
            max: self.max,
        }
    }
}

/// Runs a call once it has a place, a batch once it has one per entry.
#[derive(Debug, Clone)]
pub struct PendingLimit<S> {
    service: S,
    places: Arc<Semaphore>,
    max: usize,
}

impl<S> PendingLimit<S> {
    /// Waits for `wanted` places (at most all of them, so that nothing waits forever).
    fn take(&self, wanted: usize) -> impl Future<Output = Option<OwnedSemaphorePermit>> + use<S> {
        let places = Arc::clone(&self.places);
        let wanted = u32::try_from(wanted.clamp(1, self.max)).unwrap_or(1);
        async move { places.acquire_many_owned(wanted).await.ok() }
    }
}

impl<S> RpcServiceT for PendingLimit<S>
where
    S: RpcServiceT<
            MethodResponse = MethodResponse,
            BatchResponse = MethodResponse,
            NotificationResponse = MethodResponse,
        > + Send
        + Sync
        + Clone
        + 'static,
{
    type MethodResponse = S::MethodResponse;
    type NotificationResponse = S::NotificationResponse;
    type BatchResponse = S::BatchResponse;

    fn call<'a>(
        &self,
        request: Request<'a>,
    ) -> impl Future<Output = Self::MethodResponse> + Send + 'a {
        let place = self.take(1);
        let service = self.service.clone();
        async move {
            let _place = place.await;
            service.call(request).await
        }
    }

    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = Self::BatchResponse> + Send + 'a {
        let places = self.take(batch.len());
        let service = self.service.clone();
        async move {
            let _places = places.await;
            service.batch(batch).await
        }
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = Self::NotificationResponse> + Send + 'a {
        let place = self.take(1);
        let service = self.service.clone();
        async move {
            let _place = place.await;
            service.notification(n).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wish_beyond_every_place_takes_them_all_and_still_runs() {
        let limit = PendingLimitLayer { max: 3 };
        let service = tower::Layer::layer(&limit, ());
        let all = service.take(10).await.expect("places");
        assert_eq!(service.places.available_permits(), 0);
        drop(all);
        let one = service.take(0).await.expect("a place");
        assert_eq!(service.places.available_permits(), 2);
        drop(one);
    }
}
