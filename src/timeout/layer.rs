//! The timeout layer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use tower_layer::Layer;

use super::error::{Elapsed, TimeoutKind};
use super::service::Timeout;

const DEFAULT_NAME: &str = "timeout";

/// Name and metric handles of a timeout layer, shared by its services.
pub(crate) struct Shared {
    name: Arc<str>,
    attempt_elapsed: Counter,
    total_elapsed: Counter,
}

impl Shared {
    fn new(name: Arc<str>) -> Self {
        let counter = |kind: TimeoutKind| metrics::counter!("tower_mesh_timeout_elapsed_total", "service" => name.to_string(), "kind" => kind.as_str());
        Shared { attempt_elapsed: counter(TimeoutKind::Attempt), total_elapsed: counter(TimeoutKind::Total), name }
    }
}

/// Reports a timeout: counts it, logs it and makes the error. Built per
/// call with no atomic operation: the counter handle (a no-op, copied as
/// `None`, when no metrics recorder is installed) and the name only when
/// `debug` events may be enabled at all (one relaxed load, no callsite
/// lookup).
#[derive(Clone)]
pub(crate) struct Reporter {
    counter: Counter,
    name: Option<Arc<str>>,
}

impl Reporter {
    #[inline]
    pub(crate) fn new(shared: &Shared, kind: TimeoutKind) -> Self {
        let counter = match kind {
            TimeoutKind::Attempt => shared.attempt_elapsed.clone(),
            TimeoutKind::Total => shared.total_elapsed.clone(),
        };
        let name = if tracing::level_enabled!(tracing::Level::DEBUG) { Some(shared.name.clone()) } else { None };
        Reporter { counter, name }
    }

    /// A call timed out: count it, log it and make the error.
    #[cold]
    pub(crate) fn elapsed(&self, kind: TimeoutKind, after: Duration) -> Elapsed {
        self.counter.increment(1);
        let name = self.name.as_deref().unwrap_or(DEFAULT_NAME);
        tracing::debug!(service = name, kind = kind.as_str(), timeout = ?after, "request timed out");
        Elapsed::new(kind, after)
    }
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name.as_deref().unwrap_or(DEFAULT_NAME))
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Layer that fails calls that take too long with [`Elapsed`], and tells the
/// services below (and, for HTTP/gRPC, the server) the deadline.
///
/// - [`TimeoutLayer::new`]: the total timeout of a call, put **above** a retry
///   layer. It sets a [`Deadline`](crate::deadline::Deadline) (the earlier of
///   now + `total` and any deadline already current or carried by the
///   request) that the retry layer and per-attempt timeouts below respect.
/// - [`TimeoutLayer::per_attempt`]: the timeout of one attempt, put **below**
///   a retry layer; never longer than the time left before the enclosing
///   deadline.
///
/// See the [module docs](super) for details.
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mesh::timeout::{Elapsed, TimeoutKind, TimeoutLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(TimeoutLayer::new(Duration::from_millis(20)).name("slow-backend"))
///     .service_fn(|_: ()| async {
///         tokio::time::sleep(Duration::from_secs(5)).await;
///         Ok::<_, std::convert::Infallible>("too late")
///     });
///
/// let err = svc.oneshot(()).await.unwrap_err();
/// let elapsed = err.downcast_ref::<Elapsed>().unwrap();
/// assert_eq!(elapsed.kind(), TimeoutKind::Total);
/// assert_eq!(elapsed.timeout(), Duration::from_millis(20));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TimeoutLayer {
    kind: TimeoutKind,
    duration: Duration,
    grpc_timeout: bool,
    shared: Arc<Shared>,
}

impl TimeoutLayer {
    /// A total timeout: the whole call (retries below included) must complete
    /// within `total`.
    ///
    /// A zero timeout is allowed here (every call fails unless its future is
    /// ready at the first poll); [`TimeoutConfig::validate`](super::TimeoutConfig::validate) rejects it.
    pub fn new(total: Duration) -> Self {
        Self::with_kind(TimeoutKind::Total, total)
    }

    /// A per-attempt timeout, for use below a retry layer: each attempt must
    /// complete within `attempt`, or before the enclosing deadline if that is
    /// earlier.
    pub fn per_attempt(attempt: Duration) -> Self {
        Self::with_kind(TimeoutKind::Attempt, attempt)
    }

    fn with_kind(kind: TimeoutKind, duration: Duration) -> Self {
        TimeoutLayer { kind, duration, grpc_timeout: false, shared: Arc::new(Shared::new(DEFAULT_NAME.into())) }
    }

    /// The name used in logs and as the `service` label of the metrics.
    /// Default `"timeout"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        let name: String = name.into();
        self.shared = Arc::new(Shared::new(name.into()));
        self
    }

    /// Also send the time left as a `grpc-timeout` header (for request types
    /// that carry headers, see [`DeadlineCarrier`](crate::deadline::DeadlineCarrier)),
    /// so the server stops working on a call the client has given up on.
    pub fn grpc_timeout(mut self, enabled: bool) -> Self {
        self.grpc_timeout = enabled;
        self
    }

    /// Let the deadline cover the response body as well as its head: the
    /// services answer `http::Response<TimeoutBody<B>>`, whose body fails
    /// with [`Elapsed`] if the deadline passes before it ends (see
    /// [`TimeoutBody`](super::TimeoutBody) and the [module docs](super)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use http_body_util::BodyExt;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_mesh::timeout::{Elapsed, TimeoutLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// // A head at once, then a body that never ends.
    /// let svc = ServiceBuilder::new()
    ///     .layer(TimeoutLayer::new(Duration::from_secs(2)).cover_body())
    ///     .service_fn(|_: http::Request<()>| async {
    ///         let body = http_body_util::StreamBody::new(futures::stream::pending::<
    ///             Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
    ///         >());
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(body))
    ///     });
    /// let res = svc.oneshot(http::Request::new(())).await.unwrap();
    /// let err = res.into_body().collect().await.unwrap_err();
    /// assert_eq!(err.downcast_ref::<Elapsed>().unwrap().timeout(), Duration::from_secs(2));
    /// # }
    /// ```
    pub fn cover_body(self) -> super::BodyTimeoutLayer {
        super::BodyTimeoutLayer::new(self)
    }

    /// The configured timeout.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Whether this is a total or a per-attempt timeout.
    pub fn kind(&self) -> TimeoutKind {
        self.kind
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.kind, self.duration, self.grpc_timeout, self.shared.clone())
    }
}
