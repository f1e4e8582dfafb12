//! `GET /metrics`: the Prometheus text exposition of [`crate::metrics`], on the management
//! port (behind its mutual TLS, so a scraper presents a client certificate) and on the Unix
//! socket (`curl --unix-socket /run/rvdsm/rvdsm.sock http://localhost/metrics`). Every other
//! request passes through to JSON-RPC.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, header};
use jsonrpsee::core::BoxError;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};

/// The tower layer adding [`MetricsEndpoint`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsEndpointLayer;

impl<S> tower::Layer<S> for MetricsEndpointLayer {
    type Service = MetricsEndpoint<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsEndpoint { inner }
    }
}

/// Answers `GET /metrics`; passes everything else on.
#[derive(Debug, Clone)]
pub struct MetricsEndpoint<S> {
    inner: S,
}

impl<S, B> tower::Service<HttpRequest<B>> for MetricsEndpoint<S>
where
    S: tower::Service<HttpRequest<B>, Response = HttpResponse, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest<B>) -> Self::Future {
        if request.method() == Method::GET && request.uri().path() == "/metrics" {
            let text = crate::metrics::global().render();
            let mut response = HttpResponse::new(HttpBody::from(text));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                // What prometheus-client writes: OpenMetrics text (counters end in `_total`,
                // the exposition ends with `# EOF`).
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            return Box::pin(std::future::ready(Ok(response)));
        }
        Box::pin(self.inner.call(request))
    }
}
