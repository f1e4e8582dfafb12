//! What the HTTP side answers before JSON-RPC sees a request: `GET /metrics` (the Prometheus
//! exposition of [`crate::metrics`], on the management port behind its mutual TLS and on the
//! Unix socket), and 411 for a POST without `Content-Length`. jsonrpsee refuses a declared
//! length over the limit from the headers alone (413), but a chunked body is read up to the
//! limit and then answered with a vague internal error; requiring `Content-Length` (as every
//! VDSM client sends it) makes every oversized request a clear refusal before its body is
//! read. Everything else passes through.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, StatusCode, header};
use jsonrpsee::core::BoxError;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};

/// The tower layer adding [`HttpFront`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpFrontLayer;

impl<S> tower::Layer<S> for HttpFrontLayer {
    type Service = HttpFront<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpFront { inner }
    }
}

/// Answers `/metrics` and refuses length-less POSTs; passes everything else on.
#[derive(Debug, Clone)]
pub struct HttpFront<S> {
    inner: S,
}

impl<S, B> tower::Service<HttpRequest<B>> for HttpFront<S>
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
            // The scrape reads the services' state (the task manager's lock is held across
            // fsyncs): off the reactor.
            return Box::pin(async {
                tokio::task::spawn_blocking(metrics)
                    .await
                    .map_err(|e| BoxError::from(e.to_string()))
            });
        }
        match answer_here(&request) {
            Some(response) => Box::pin(std::future::ready(Ok(response))),
            None => Box::pin(self.inner.call(request)),
        }
    }
}

fn answer_here<B>(request: &HttpRequest<B>) -> Option<HttpResponse> {
    if request.method() == Method::POST && !request.headers().contains_key(header::CONTENT_LENGTH) {
        return Some(length_required());
    }
    None
}

fn metrics() -> HttpResponse {
    let mut response = HttpResponse::new(HttpBody::from(crate::metrics::global().render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        // What prometheus-client writes: OpenMetrics text (counters end in `_total`, the
        // exposition ends with `# EOF`).
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}

fn length_required() -> HttpResponse {
    let mut response = HttpResponse::new(HttpBody::from(
        "a JSON-RPC request must declare its Content-Length\n",
    ));
    *response.status_mut() = StatusCode::LENGTH_REQUIRED;
    response
}
