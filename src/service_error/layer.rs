//! The client-side layer that turns failed responses into [`ServiceError`]s.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use metrics::Counter;
use tower_layer::Layer;
use tower_service::Service;

use super::error::ServiceError;
use super::future::ResponseFuture;
use super::kind::ALL;
use super::parse::{self, EXCERPT_LIMIT};
use crate::classify::{GrpcCode, StatusSet};
use crate::error::BoxError;

const DEFAULT_NAME: &str = "service";

/// Configuration and metric handles of a [`MapServiceErrorLayer`], shared by its
/// services and their response futures.
#[derive(Clone)]
pub(crate) struct Shared {
    name: Arc<str>,
    errors: [Counter; ALL.len()],
    statuses: StatusSet,
    pub(crate) excerpt_limit: usize,
    grpc_status: bool,
}

impl Shared {
    fn new(name: Arc<str>) -> Self {
        let errors = ALL.map(|kind| {
            metrics::counter!("tower_mesh_service_errors_total", "service" => name.to_string(), "kind" => kind.as_str())
        });
        let mut statuses = StatusSet::empty();
        statuses.insert_range(400..=999);
        Shared { name, errors, statuses, excerpt_limit: EXCERPT_LIMIT, grpc_status: true }
    }

    /// Whether `res` is a failure: its status is in the error set, or it
    /// carries a non-zero `grpc-status` in its headers.
    #[inline]
    pub(crate) fn is_error<B>(&self, res: &Response<B>) -> bool {
        self.statuses.contains(res.status())
            || (self.grpc_status && parse::grpc_status(res.headers()).is_some_and(|c| c != GrpcCode::Ok))
    }

    /// Count and log a failed call, and box its error.
    #[cold]
    pub(crate) fn fail(&self, e: ServiceError) -> BoxError {
        self.errors[e.kind().index()].increment(1);
        tracing::debug!(
            service = &*self.name,
            kind = e.kind().as_str(),
            status = e.status().map(|s| s.as_u16()),
            grpc_status = e.grpc_status().map(|c| c as i32),
            retryable = e.is_retryable(),
            "call failed"
        );
        Box::new(e)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapServiceErrorLayer")
            .field("name", &self.name)
            .field("excerpt_limit", &self.excerpt_limit)
            .field("grpc_status", &self.grpc_status)
            .finish_non_exhaustive()
    }
}

/// Client-side layer around an HTTP client (hyper-util, a tonic `Channel`,
/// any `Service<http::Request<_>, Response = http::Response<B>>`): a response
/// with an error status (by default any status `>= 400`), or with a non-zero
/// `grpc-status` in its headers (a trailers-only gRPC error), becomes an
/// `Err` holding a [`ServiceError`], with the first bytes of its body (512 by
/// default) as the [`body_excerpt`](ServiceError::body_excerpt). The inner
/// service's own errors go through [`ServiceError::from_error`].
///
/// The error type is [`BoxError`], as for every tower-mesh layer, and it
/// **always holds a `ServiceError`**: get it back with
/// `err.downcast::<ServiceError>()` or [`ServiceError::from_error`] (which
/// unwraps it at no cost).
///
/// The body of an error response is read up to the limit and then dropped; a
/// success passes through untouched, its body unread. Put the layer
/// innermost, right around the client, so the retry and circuit-breaker
/// layers above see the errors (and the timeout above also bounds reading the
/// excerpt). gRPC errors sent in the trailers of a streamed response are not
/// seen here (see [`ClassifyEosLayer`](crate::classify::ClassifyEosLayer)).
///
/// Metrics: counter `tower_mesh_service_errors_total{service, kind}` (`kind`
/// is [`ServiceErrorKind::as_str`](super::ServiceErrorKind::as_str)); each
/// failure also emits a `debug` tracing event with the kind and the status,
/// never the body.
#[derive(Clone, Debug)]
pub struct MapServiceErrorLayer {
    shared: Arc<Shared>,
}

/// The old name of [`MapServiceErrorLayer`].
#[deprecated(note = "renamed to MapServiceErrorLayer")]
pub type ServiceErrorLayer = MapServiceErrorLayer;

impl Default for MapServiceErrorLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl MapServiceErrorLayer {
    /// A layer named `"service"`, treating statuses `>= 400` and non-zero
    /// `grpc-status` headers as errors, keeping 512 bytes of error bodies.
    pub fn new() -> Self {
        MapServiceErrorLayer { shared: Arc::new(Shared::new(DEFAULT_NAME.into())) }
    }

    /// The name used as the `service` label of the metrics and in logs.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        let mut shared = Shared::new(name.into().into());
        shared.statuses = self.shared.statuses;
        shared.excerpt_limit = self.shared.excerpt_limit;
        shared.grpc_status = self.shared.grpc_status;
        self.shared = Arc::new(shared);
        self
    }

    /// The statuses that are errors (default: every status `>= 400`).
    ///
    /// A status outside 4xx/5xx put in the set (a `304` for a client that
    /// never sends conditional requests, say) gives an `Internal` error.
    pub fn statuses(mut self, statuses: StatusSet) -> Self {
        Arc::make_mut(&mut self.shared).statuses = statuses;
        self
    }

    /// The statuses for which `is_error` is `true` are errors. It is asked
    /// once per status code here, not per call.
    ///
    /// ```
    /// use tower_mesh::service_error::MapServiceErrorLayer;
    ///
    /// // A 404 is an answer, not a failure, for this client.
    /// let layer = MapServiceErrorLayer::new().statuses_where(|s| s.as_u16() >= 400 && s.as_u16() != 404);
    /// ```
    pub fn statuses_where(self, is_error: impl Fn(StatusCode) -> bool) -> Self {
        let mut set = StatusSet::empty();
        for code in 100..=999 {
            if let Ok(status) = StatusCode::from_u16(code) {
                if is_error(status) {
                    set.insert(status);
                }
            }
        }
        self.statuses(set)
    }

    /// How many bytes of an error response's body to keep (default 512;
    /// `0` reads none).
    pub fn excerpt_limit(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.shared).excerpt_limit = bytes;
        self
    }

    /// Whether a non-zero `grpc-status` in the response headers makes an
    /// error (default `true`).
    pub fn grpc_status(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.shared).grpc_status = on;
        self
    }
}

impl<S> Layer<S> for MapServiceErrorLayer {
    type Service = MapServiceError<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MapServiceError { inner, shared: self.shared.clone() }
    }
}

/// The service made by [`MapServiceErrorLayer`].
#[derive(Clone, Debug)]
pub struct MapServiceError<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The old name of [`MapServiceError`].
#[deprecated(note = "renamed to MapServiceError")]
pub type ServiceErrorService<S> = MapServiceError<S>;

impl<S> MapServiceError<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for MapServiceError<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: http_body::Body,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(|e| self.shared.fail(ServiceError::from_error(e)))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        ResponseFuture::new(self.inner.call(req), self.shared.clone())
    }
}
