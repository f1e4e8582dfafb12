//! One tracing span per request, carrying the method, the request id and the manager's flow id
//! (STOMP's `ovirtCorrelationId`), and one log line with the outcome and duration. Applies to
//! every transport that serves the registry.
//!
//! This is the outermost layer, and it also takes batches apart: jsonrpsee hands a batch to a
//! middleware's `batch` and then runs its calls only through the innermost service, so every
//! layer's `call` (this log line, the recovery gate) would be skipped for batches, which are
//! what VDSM's clients send. Here each call of a batch goes through the whole stack.

use std::time::Instant;

use jsonrpsee::core::middleware::{Batch, BatchEntry, Notification, RpcServiceT};
use jsonrpsee::server::{BatchResponseBuilder, MethodResponse};
use jsonrpsee::types::Request;
use tracing::Instrument;

use crate::api::codes::METHOD_NOT_FOUND;

/// The manager's flow id for a request (`ovirtCorrelationId`), put in the request's extensions
/// by the transport that received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub String);

/// The tower layer that adds [`RequestLog`] around the RPC service.
#[derive(Debug, Clone, Copy)]
pub struct RequestLogLayer {
    /// The largest batch reply, in bytes (the server's response limit).
    pub max_response_bytes: usize,
}

impl<S> tower::Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, service: S) -> Self::Service {
        RequestLog {
            service,
            max_response_bytes: self.max_response_bytes,
        }
    }
}

/// Logs each call inside its own span.
#[derive(Debug, Clone)]
pub struct RequestLog<S> {
    service: S,
    max_response_bytes: usize,
}

impl<S> RpcServiceT for RequestLog<S>
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
        // Only known verbs get their own metric label: a client must not be able to grow the
        // metric without bound by inventing method names.
        let verb = crate::api::find(request.method_name());
        let label = verb.map_or("other", |v| v.name);
        // Managers poll read-only verbs many times a second: their successes are logged at
        // debug level, so that the log shows what changed the host.
        let quiet = verb.is_some_and(crate::api::schema::Verb::is_read_only);
        let flow = request
            .extensions()
            .get::<CorrelationId>()
            .map(|flow| flow.0.as_str());
        // Always an info span, even for quiet verbs: a warning logged inside a read-only call
        // must still name its method, request id and flow id.
        let span = tracing::info_span!("request", method = %request.method_name(), id = %request.id(), flow);
        let served = verb.is_some()
            || [
                crate::api::events::SUBSCRIBE_EVENTS,
                crate::api::events::UNSUBSCRIBE_EVENTS,
            ]
            .contains(&request.method_name());
        let unknown = (!served).then(|| {
            let message = format!(
                "The method does not exist or is not available: {{'method': '{}'}}",
                request.method_name()
            );
            (request.id().into_owned(), message)
        });
        let service = self.service.clone();
        async move {
            // VDSM's message for an unknown verb, instead of jsonrpsee's "Method not found".
            if let Some((id, message)) = unknown {
                crate::metrics::global().rpc(label, Some(METHOD_NOT_FOUND));
                tracing::info!(code = METHOD_NOT_FOUND, "failed");
                return MethodResponse::error(
                    id,
                    jsonrpsee::types::ErrorObjectOwned::owned::<()>(
                        METHOD_NOT_FOUND,
                        message,
                        None,
                    ),
                );
            }
            let started = Instant::now();
            let response = service.call(request).await;
            let millis = started.elapsed().as_secs_f64() * 1000.0;
            let code = response.as_error_code();
            match code {
                None if quiet => tracing::debug!(millis, "done"),
                None => tracing::info!(millis, "done"),
                Some(code) => tracing::info!(millis, code, "failed"),
            }
            crate::metrics::global().rpc(label, code);
            response
        }
        .instrument(span)
    }

    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = Self::BatchResponse> + Send + 'a {
        let this = self.clone();
        async move {
            let mut replies = BatchResponseBuilder::new_with_limit(this.max_response_bytes);
            let mut notified = false;
            for entry in batch {
                let reply = match entry {
                    Ok(BatchEntry::Call(request)) => this.call(request).await,
                    Ok(BatchEntry::Notification(n)) => {
                        notified = true;
                        this.notification(n).await;
                        continue;
                    }
                    Err(invalid) => {
                        let (error, id) = invalid.into_parts();
                        MethodResponse::error(id, error)
                    }
                };
                if let Err(too_large) = replies.append(reply) {
                    return too_large;
                }
            }
            if replies.is_empty() && notified {
                MethodResponse::notification()
            } else {
                MethodResponse::from_batch(replies.finish())
            }
        }
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = Self::NotificationResponse> + Send + 'a {
        let span = tracing::info_span!("notification", method = %n.method_name());
        self.service.notification(n).instrument(span)
    }
}
