//! One tracing span per request, carrying the method, the request id and the manager's flow id
//! (STOMP's `ovirtCorrelationId`), and one log line with the outcome and duration. Applies to
//! every transport that serves the registry.

use std::time::Instant;

use jsonrpsee::core::middleware::{Batch, Notification, RpcServiceT};
use jsonrpsee::server::MethodResponse;
use jsonrpsee::types::Request;
use tracing::Instrument;

/// The manager's flow id for a request (`ovirtCorrelationId`), put in the request's extensions
/// by the transport that received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub String);

/// The tower layer that adds [`RequestLog`] around the RPC service.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestLogLayer;

impl<S> tower::Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, service: S) -> Self::Service {
        RequestLog { service }
    }
}

/// Logs each call inside its own span.
#[derive(Debug, Clone)]
pub struct RequestLog<S> {
    service: S,
}

impl<S> RpcServiceT for RequestLog<S>
where
    S: RpcServiceT<MethodResponse = MethodResponse> + Send + Sync + Clone + 'static,
{
    type MethodResponse = S::MethodResponse;
    type NotificationResponse = S::NotificationResponse;
    type BatchResponse = S::BatchResponse;

    fn call<'a>(
        &self,
        request: Request<'a>,
    ) -> impl Future<Output = Self::MethodResponse> + Send + 'a {
        let span = tracing::info_span!(
            "request",
            method = %request.method_name(),
            id = %request.id(),
            flow = request
                .extensions()
                .get::<CorrelationId>()
                .map(|flow| flow.0.as_str()),
        );
        let service = self.service.clone();
        async move {
            let started = Instant::now();
            let response = service.call(request).await;
            let millis = started.elapsed().as_secs_f64() * 1000.0;
            match response.as_error_code() {
                None => tracing::info!(millis, "done"),
                Some(code) => tracing::info!(millis, code, "failed"),
            }
            response
        }
        .instrument(span)
    }

    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = Self::BatchResponse> + Send + 'a {
        let span = tracing::info_span!("batch", len = batch.len());
        self.service.batch(batch).instrument(span)
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = Self::NotificationResponse> + Send + 'a {
        let span = tracing::info_span!("notification", method = %n.method_name());
        self.service.notification(n).instrument(span)
    }
}
