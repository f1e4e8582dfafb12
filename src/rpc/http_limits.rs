//! HTTP-level limits in front of JSON-RPC. A POST must declare its length: jsonrpsee refuses a
//! declared length over the limit from the headers alone (413), but a chunked body is read up
//! to the limit and then answered with a vague internal error; requiring `Content-Length`
//! (411, as every VDSM client sends it) makes every oversized request a clear refusal before
//! its body is read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, StatusCode, header};
use jsonrpsee::core::BoxError;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};

/// The tower layer adding [`RequireLength`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RequireLengthLayer;

impl<S> tower::Layer<S> for RequireLengthLayer {
    type Service = RequireLength<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireLength { inner }
    }
}

/// Answers 411 to a POST without `Content-Length`; passes everything else on.
#[derive(Debug, Clone)]
pub struct RequireLength<S> {
    inner: S,
}

impl<S, B> tower::Service<HttpRequest<B>> for RequireLength<S>
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
        if request.method() == Method::POST
            && !request.headers().contains_key(header::CONTENT_LENGTH)
        {
            return Box::pin(std::future::ready(Ok(length_required())));
        }
        Box::pin(self.inner.call(request))
    }
}

fn length_required() -> HttpResponse {
    let mut response = HttpResponse::new(HttpBody::from(
        "a JSON-RPC request must declare its Content-Length\n",
    ));
    *response.status_mut() = StatusCode::LENGTH_REQUIRED;
    response
}
