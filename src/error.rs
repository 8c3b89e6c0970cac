//! Errors shared by the layers, and their mapping to server responses.
//!
//! Each layer has its own small error type ([`CircuitOpen`], [`BulkheadFull`],
//! [`Elapsed`], ...), returned boxed as a [`BoxError`] so layers compose the
//! way tower's own do. Every one implements [`MeshError`], which says how a
//! server should answer when it surfaces: [`ServerErrorLayer`] does that for
//! axum and hyper servers — circuit open and bulkhead full become `503` with
//! `Retry-After`, a timeout `504`; gRPC requests get `UNAVAILABLE`,
//! `RESOURCE_EXHAUSTED` or `DEADLINE_EXCEEDED` as a trailers-only response.
//!
//! [`CircuitOpen`]: crate::circuit_breaker::CircuitOpen
//! [`BulkheadFull`]: crate::bulkhead::BulkheadFull
//! [`Elapsed`]: crate::timeout::Elapsed

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::GrpcCode;

/// The boxed error type the layers return, as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error raised by a tower-mesh layer itself (not by the service it wraps).
pub trait MeshError: std::error::Error + Send + Sync + 'static {
    /// The HTTP status a server should answer with.
    fn http_status(&self) -> StatusCode;
    /// The gRPC code a server should answer with.
    fn grpc_code(&self) -> GrpcCode;
    /// How long the client should wait before trying again, if known.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// How a server answers an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// gRPC code.
    pub grpc: GrpcCode,
    /// Value for `Retry-After`, rounded up to whole seconds when sent.
    pub retry_after: Option<Duration>,
}

impl ErrorResponse {
    /// The answer a [`MeshError`] asks for.
    pub fn of(e: &dyn MeshError) -> Self {
        ErrorResponse { status: e.http_status(), grpc: e.grpc_code(), retry_after: e.retry_after() }
    }

    /// The answer for an error that is not a tower-mesh error: `500` / `INTERNAL`.
    pub const INTERNAL: ErrorResponse =
        ErrorResponse { status: StatusCode::INTERNAL_SERVER_ERROR, grpc: GrpcCode::Internal, retry_after: None };
}

/// Find the first tower-mesh error in `err`'s source chain and say how a server
/// should answer it. `None` when no tower-mesh error is in the chain.
pub fn error_response(err: &(dyn std::error::Error + 'static)) -> Option<ErrorResponse> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = downcast_mesh(e) {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// The answer for `e` itself, if it is a tower-mesh error (its sources are
/// not looked at).
#[allow(unused_variables)]
pub(crate) fn downcast_mesh(e: &(dyn std::error::Error + 'static)) -> Option<ErrorResponse> {
    #[cfg(feature = "circuit-breaker")]
    if let Some(e) = e.downcast_ref::<crate::circuit_breaker::CircuitOpen>() {
        return Some(ErrorResponse::of(e));
    }
    #[cfg(feature = "bulkhead")]
    if let Some(e) = e.downcast_ref::<crate::bulkhead::BulkheadFull>() {
        return Some(ErrorResponse::of(e));
    }
    #[cfg(feature = "rate-limit")]
    if let Some(e) = e.downcast_ref::<crate::rate_limit::RateLimited>() {
        return Some(ErrorResponse::of(e));
    }
    #[cfg(feature = "timeout")]
    if let Some(e) = e.downcast_ref::<crate::timeout::Elapsed>() {
        return Some(ErrorResponse::of(e));
    }
    #[cfg(feature = "discovery")]
    if let Some(e) = e.downcast_ref::<crate::discovery::DiscoveryError>() {
        return Some(ErrorResponse::of(e));
    }
    #[cfg(feature = "jwt")]
    if let Some(e) = e.downcast_ref::<crate::jwt::JwtError>() {
        return Some(ErrorResponse::of(e));
    }
    #[cfg(feature = "stack")]
    if let Some(e) = e.downcast_ref::<crate::service_error::ServiceError>() {
        return Some(ErrorResponse::of(e));
    }
    None
}

/// What a request ended in when a layer refused it or ran out of time, as
/// opposed to a failure: the stack's metrics count it apart (`rejected`,
/// `timeout`).
#[cfg(feature = "stack")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// An open circuit breaker or a full bulkhead turned it away.
    Rejected,
    /// A timeout ended it.
    TimedOut,
}

/// The [`Refusal`] in `err`'s source chain, if any: the first tower-mesh
/// error there that is one.
#[cfg(feature = "stack")]
pub(crate) fn refusal(err: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<crate::circuit_breaker::CircuitOpen>() || e.is::<crate::bulkhead::BulkheadFull>() {
            return Some(Refusal::Rejected);
        }
        #[cfg(feature = "rate-limit")]
        if e.is::<crate::rate_limit::RateLimited>() {
            return Some(Refusal::Rejected);
        }
        if e.is::<crate::timeout::Elapsed>() {
            return Some(Refusal::TimedOut);
        }
        cur = e.source();
    }
    None
}

/// `res`, the answer to `err`, marked with the error's [`Refusal`] if it is
/// one: the stack's metrics layer outside counts a shed or timed-out request
/// as such, not as a failure by its status.
#[cfg(feature = "stack")]
fn mark_refusal<B>(mut res: Response<B>, err: &(dyn std::error::Error + 'static)) -> Response<B> {
    if let Some(refusal) = refusal(err) {
        res.extensions_mut().insert(refusal);
    }
    res
}

/// Server-side layer that turns errors into responses: tower-mesh errors get
/// their proper status (see the [module docs](self)), anything else a `500`
/// (gRPC: `INTERNAL`). gRPC requests (`content-type: application/grpc…`) get a
/// trailers-only gRPC response instead of an HTTP error status.
///
/// The service it makes never fails, as axum's `Router::layer` requires.
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mesh::error::ServerErrorLayer;
/// # #[cfg(feature = "timeout")]
/// # async fn demo() {
/// use tower_mesh::timeout::TimeoutLayer;
/// use std::time::Duration;
///
/// let svc = ServiceBuilder::new()
///     .layer(ServerErrorLayer::new())
///     .layer(TimeoutLayer::new(Duration::from_millis(10)))
///     .service_fn(|_req: http::Request<String>| async {
///         tokio::time::sleep(Duration::from_secs(1)).await;
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     });
/// let res = svc.oneshot(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(res.status(), http::StatusCode::GATEWAY_TIMEOUT);
/// # }
/// # #[cfg(feature = "timeout")]
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerErrorLayer;

impl ServerErrorLayer {
    /// A new layer.
    pub fn new() -> Self {
        ServerErrorLayer
    }
}

impl<S> Layer<S> for ServerErrorLayer {
    type Service = ServerError<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServerError { inner }
    }
}

/// The service made by [`ServerErrorLayer`].
#[derive(Clone, Debug)]
pub struct ServerError<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ServerError<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = Infallible;
    type Future = ServerErrorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A service that is not ready because it failed cannot be answered here
        // without a request; surface readiness and map errors in `call`.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                let e: BoxError = e.into();
                tracing::error!(error = %e, "inner service failed while becoming ready");
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let grpc = is_grpc(&req);
        ServerErrorFuture { inner: self.inner.call(req), grpc }
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

pin_project! {
    /// Response future of [`ServerError`].
    pub struct ServerErrorFuture<F> {
        #[pin]
        inner: F,
        grpc: bool,
    }
}

impl<F> fmt::Debug for ServerErrorFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerErrorFuture").field("grpc", &self.grpc).finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ServerErrorFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Default,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match ready!(this.inner.poll(cx)) {
            Ok(res) => Poll::Ready(Ok(res)),
            Err(e) => {
                let e: BoxError = e.into();
                let answer = error_response(&*e).unwrap_or(ErrorResponse::INTERNAL);
                tracing::debug!(error = %e, status = answer.status.as_u16(), "mapped error to response");
                #[allow(unused_mut)]
                let mut res = to_response(answer, *this.grpc);
                #[cfg(feature = "rate-limit")]
                crate::rate_limit::headers::annotate(&mut res, &*e);
                #[cfg(feature = "stack")]
                let res = mark_refusal(res, &*e);
                Poll::Ready(Ok(res))
            }
        }
    }
}

/// Build the response for `answer`: an HTTP error status, or a gRPC
/// trailers-only response when `grpc`.
pub fn to_response<B: Default>(answer: ErrorResponse, grpc: bool) -> Response<B> {
    let mut res = Response::new(B::default());
    if grpc {
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(answer.grpc as i32));
    } else {
        *res.status_mut() = answer.status;
    }
    if let Some(after) = answer.retry_after {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        if grpc {
            let ms = after.as_millis().min(i64::MAX as u128) as i64;
            res.headers_mut().insert("grpc-retry-pushback-ms", HeaderValue::from(ms));
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Plain;
    impl fmt::Display for Plain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("plain")
        }
    }
    impl std::error::Error for Plain {}

    #[test]
    fn unknown_errors_are_internal() {
        assert_eq!(error_response(&Plain), None);
        let r: Response<String> = to_response(ErrorResponse::INTERNAL, false);
        assert_eq!(r.status(), 500);
        let r: Response<String> = to_response(ErrorResponse::INTERNAL, true);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "13");
    }

    #[test]
    fn retry_after_rounds_up() {
        let a = ErrorResponse {
            status: StatusCode::SERVICE_UNAVAILABLE,
            grpc: GrpcCode::Unavailable,
            retry_after: Some(Duration::from_millis(1500)),
        };
        let r: Response<String> = to_response(a, false);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let r: Response<String> = to_response(a, true);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-retry-pushback-ms"], "1500");
    }
}
