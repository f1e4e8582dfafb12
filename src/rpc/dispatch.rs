//! Hands a JSON-RPC text that arrived on a non-HTTP transport (a STOMP SEND body) to the same
//! method registry and the same middleware (request log, recovery gate) that serve HTTP and
//! WebSocket, through jsonrpsee's own request handling, so batches, notifications, size limits
//! and error objects behave the same on every transport.

use http_body_util::BodyExt;
use jsonrpsee::Methods;
use jsonrpsee::core::middleware::RpcServiceBuilder;
use jsonrpsee::server::{ConnectionState, HttpBody, ServerConfig, StopHandle};
use tower::layer::util::{Identity, Stack};

use super::json_style::vdsm_reply;
use super::logging::{CorrelationId, RequestLogLayer};
use super::pending::PendingLimitLayer;
use super::readiness::{Readiness, RecoveryGateLayer};

/// The RPC middleware every transport applies, outermost first.
pub type RpcLayers =
    Stack<RecoveryGateLayer, Stack<RequestLogLayer, Stack<PendingLimitLayer, Identity>>>;

/// The middleware stack: at most `max_pending_requests` calls running per WebSocket (batches
/// counted per call), one log span per request (batches taken apart), then the recovery
/// gate. `max_response_bytes` bounds a batch's reply.
pub fn rpc_middleware(
    readiness: Readiness,
    max_response_bytes: u32,
    max_pending_requests: u32,
) -> RpcServiceBuilder<RpcLayers> {
    RpcServiceBuilder::new()
        .layer(PendingLimitLayer {
            max: max_pending_requests as usize,
        })
        .layer(RequestLogLayer {
            max_response_bytes: max_response_bytes as usize,
        })
        .layer(RecoveryGateLayer(readiness))
}

/// Runs JSON-RPC texts against the registry.
#[derive(Clone)]
pub struct Dispatcher {
    methods: Methods,
    config: ServerConfig,
    middleware: RpcServiceBuilder<RpcLayers>,
    stop: StopHandle,
}

impl Dispatcher {
    /// A dispatcher over `methods` with the server's limits and middleware.
    pub fn new(
        methods: Methods,
        config: ServerConfig,
        middleware: RpcServiceBuilder<RpcLayers>,
        stop: StopHandle,
    ) -> Self {
        Self {
            methods,
            config,
            middleware,
            stop,
        }
    }

    /// The state one connection's calls share (its id, and a permit that lives as long as it).
    pub fn connection(&self, id: u32) -> ConnectionState {
        let permit = std::sync::Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .expect("a fresh semaphore has a permit");
        ConnectionState::new(self.stop.clone(), id, permit)
    }

    /// Handles one JSON-RPC text (a request, a notification or a batch) and returns the reply
    /// text, or `None` when there is nothing to send back (notifications only). As VDSM does,
    /// a batch whose reply has exactly one member is answered with that bare object, and the
    /// text has Python's separators.
    pub async fn handle(
        &self,
        connection: &ConnectionState,
        body: Vec<u8>,
        correlation: Option<String>,
    ) -> Option<Vec<u8>> {
        let mut request = http::Request::post("/")
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(HttpBody::from(body))
            .expect("a request built from valid parts");
        if let Some(id) = correlation {
            request.extensions_mut().insert(CorrelationId(id));
        }
        let response = jsonrpsee::server::http::call_with_service_builder(
            request,
            self.config.clone(),
            connection.clone(),
            self.methods.clone(),
            self.middleware.clone(),
        )
        .await;
        let bytes = match response.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) => {
                tracing::warn!(error = %err, "reading a JSON-RPC reply failed");
                return None;
            }
        };
        if bytes.is_empty() {
            return None;
        }
        Some(vdsm_reply(&bytes))
    }
}
