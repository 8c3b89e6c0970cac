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

use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::GrpcCode;

/// The boxed error type the layers return, as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a tower-mesh error means to the layers around it, whichever layer
/// raised it: the stack's metrics count a [`Rejected`](Self::Rejected) or
/// timed-out call apart from a failure, a retry layer does not retry a
/// rejection at once, a circuit breaker leaves rejections out of its count.
///
/// The names follow resilience4j's exceptions: `CallNotPermittedException`,
/// `BulkheadFullException` and `RequestNotPermitted` are all
/// [`Rejected`](Self::Rejected); `TimeoutException` is
/// [`TimedOut`](Self::TimedOut).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MeshErrorKind {
    /// A layer turned the call away without sending it: an open circuit
    /// breaker, a full bulkhead, an exhausted rate limit.
    Rejected,
    /// An attempt took too long; another attempt may still be made.
    TimedOut,
    /// The call's total deadline passed: no time is left for another attempt.
    DeadlineExceeded,
    /// Any other failure (a service that cannot be found or reached, a token
    /// that is refused, a broker that failed, an error response).
    Failed,
}

impl MeshErrorKind {
    /// `true` for [`TimedOut`](Self::TimedOut) and
    /// [`DeadlineExceeded`](Self::DeadlineExceeded).
    pub fn is_timeout(self) -> bool {
        matches!(self, MeshErrorKind::TimedOut | MeshErrorKind::DeadlineExceeded)
    }
}

/// An error raised by a tower-mesh layer itself (not by the service it wraps).
///
/// Every layer's error implements it; the crate finds one in a boxed error's
/// [`source`](std::error::Error::source) chain with [`find_mesh_error`].
pub trait MeshError: std::error::Error + Send + Sync + 'static {
    /// What the error means to the layers around it. [`MeshErrorKind::Failed`]
    /// unless the error says otherwise.
    fn kind(&self) -> MeshErrorKind {
        MeshErrorKind::Failed
    }
    /// The HTTP status a server should answer with.
    fn http_status(&self) -> StatusCode;
    /// The gRPC code a server should answer with.
    fn grpc_code(&self) -> GrpcCode;
    /// How long the client should wait before trying again, if known.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    /// Add the header fields that describe this error to a server's answer
    /// (beside `Retry-After`, which [`retry_after`](Self::retry_after) gives).
    /// Nothing by default.
    fn add_headers(&self, headers: &mut HeaderMap) {
        let _ = headers;
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

/// The tower-mesh errors in `err`'s source chain, outermost first.
pub fn mesh_errors<'a>(err: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = &'a dyn MeshError> {
    std::iter::successors(Some(err), |e| e.source()).filter_map(crate::layer_errors::as_mesh_error)
}

/// The first tower-mesh error in `err`'s source chain, if any.
pub fn find_mesh_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a dyn MeshError> {
    mesh_errors(err).next()
}

/// Find the first tower-mesh error in `err`'s source chain and say how a server
/// should answer it. `None` when no tower-mesh error is in the chain.
pub fn error_response(err: &(dyn std::error::Error + 'static)) -> Option<ErrorResponse> {
    find_mesh_error(err).map(ErrorResponse::of)
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
    mesh_errors(err).find_map(|e| match e.kind() {
        MeshErrorKind::Rejected => Some(Refusal::Rejected),
        kind if kind.is_timeout() => Some(Refusal::TimedOut),
        _ => None,
    })
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
                let mut res = to_response(answer, *this.grpc);
                for mesh in mesh_errors(&*e) {
                    mesh.add_headers(res.headers_mut());
                }
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

    #[test]
    fn no_mesh_error_in_a_plain_chain() {
        assert!(find_mesh_error(&Plain).is_none());
        assert_eq!(mesh_errors(&Plain).count(), 0);
    }

    /// A wrapper that is no tower-mesh error, around one that may be.
    #[derive(Debug)]
    struct Wrapped(BoxError);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[cfg(all(feature = "circuit-breaker", feature = "bulkhead", feature = "timeout"))]
    #[test]
    fn kinds_are_found_through_the_source_chain() {
        use crate::bulkhead::BulkheadFull;
        use crate::circuit_breaker::{CircuitOpen, CircuitState};
        use crate::timeout::{Elapsed, TimeoutKind};
        let kind = |e: BoxError| find_mesh_error(&Wrapped(e)).map(MeshError::kind);
        let open = CircuitOpen { name: "b".into(), state: CircuitState::Open, retry_after: None };
        assert_eq!(kind(Box::new(open)), Some(MeshErrorKind::Rejected));
        let full = BulkheadFull::new("b".into(), 1, Duration::ZERO);
        assert_eq!(kind(Box::new(full)), Some(MeshErrorKind::Rejected));
        let attempt = Elapsed::new(TimeoutKind::Attempt, Duration::from_secs(1));
        assert_eq!(kind(Box::new(attempt)), Some(MeshErrorKind::TimedOut));
        let total = Elapsed::new(TimeoutKind::Total, Duration::from_secs(1));
        assert_eq!(kind(Box::new(total)), Some(MeshErrorKind::DeadlineExceeded));
        assert_eq!(kind(Box::new(Plain)), None);
    }

    /// A publisher's error is answered as its `MeshError` says (it was once
    /// missing from the errors looked for, and answered `500`).
    #[cfg(feature = "publish")]
    #[test]
    fn publish_errors_are_answered() {
        use crate::publish::PublishError;
        let e = PublishError::ConnectionLost { broker: "nats", attempts: 3 };
        let answer = error_response(&Wrapped(Box::new(e))).expect("a tower-mesh error");
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.grpc, GrpcCode::Unavailable);
        assert_eq!(find_mesh_error(&PublishError::Closed).map(MeshError::kind), Some(MeshErrorKind::Failed));
    }
}
