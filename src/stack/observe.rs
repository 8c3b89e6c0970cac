//! Per-call metrics and log events by method and outcome.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::{Method, Request, Response};
use metrics::{Counter, Histogram};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::{Classify, HttpClassifier, Outcome, OutcomeRecorder};
use crate::error::{refusal, BoxError, Refusal};

/// Which side of a call the layer observes: the metric names start with
/// `tower_mesh_client_` or `tower_mesh_server_`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Calls this process makes.
    Client,
    /// Requests this process serves.
    Server,
}

const METHODS: [&str; 8] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other"];
const OUTCOMES: [&str; 6] = ["success", "failure", "ignored", "rejected", "timeout", "cancelled"];
const SUCCESS: usize = 0;
const FAILURE: usize = 1;
const IGNORED: usize = 2;
const REJECTED: usize = 3;
const TIMEOUT: usize = 4;
const CANCELLED: usize = 5;

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// The metric handles, registered once per layer: one counter and one
/// histogram per method × outcome, so a call records without building a key.
struct Handles {
    name: Arc<str>,
    side: Side,
    log: bool,
    calls: Vec<Counter>,
    latency: Vec<Histogram>,
}

impl Handles {
    fn new(name: Arc<str>, side: Side, metrics: bool, log: bool) -> Self {
        let (calls_name, latency_name) = match side {
            Side::Client => ("tower_mesh_client_calls_total", "tower_mesh_client_call_duration_seconds"),
            Side::Server => ("tower_mesh_server_requests_total", "tower_mesh_server_request_duration_seconds"),
        };
        let mut calls = Vec::with_capacity(METHODS.len() * OUTCOMES.len());
        let mut latency = Vec::with_capacity(METHODS.len() * OUTCOMES.len());
        for method in METHODS {
            for outcome in OUTCOMES {
                if metrics {
                    let labels =
                        [("service", name.to_string()), ("method", method.to_owned()), ("outcome", outcome.to_owned())];
                    calls.push(metrics::counter!(calls_name, &labels));
                    latency.push(metrics::histogram!(latency_name, &labels));
                } else {
                    calls.push(Counter::noop());
                    latency.push(Histogram::noop());
                }
            }
        }
        Handles { name, side, log, calls, latency }
    }

    fn record(&self, method: usize, outcome: usize, start: Instant) {
        let i = method * OUTCOMES.len() + outcome;
        let elapsed = start.elapsed();
        self.calls[i].increment(1);
        self.latency[i].record(elapsed.as_secs_f64());
        if self.log {
            tracing::debug!(
                service = %self.name,
                side = ?self.side,
                method = METHODS[method],
                outcome = OUTCOMES[outcome],
                elapsed_ms = elapsed.as_secs_f64() * 1e3,
                "call finished"
            );
        }
    }
}

/// Records every HTTP call (or served request) by method and outcome:
/// `tower_mesh_client_calls_total` and `tower_mesh_client_call_duration_seconds`
/// (`tower_mesh_server_*` on the server side), labelled `service`, `method`
/// and `outcome` (`success`, `failure`, `ignored` as the classifier says;
/// `rejected` for an open breaker or a full bulkhead, `timeout`, and
/// `cancelled` when the caller dropped the call). A request a server stack
/// shed or timed out counts as `rejected` or `timeout` too, although its
/// error mapping answered it with a `503` or `504`. With logging on, each call
/// also emits a `tracing` debug event (never headers or bodies).
///
/// It is the outermost layer of [`ClientStack`](super::ClientStack) and
/// [`ServerStack`](super::ServerStack), so it sees a call's whole time,
/// retries included. The handles are registered when the layer is made: a
/// call records with two atomic operations, no allocation.
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mesh::stack::{ObserveLayer, Side};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let svc = ServiceBuilder::new()
///     .layer(ObserveLayer::new("orders", Side::Client))
///     .service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     });
/// let res = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 200);
/// # });
/// ```
pub struct ObserveLayer<C = HttpClassifier> {
    shared: Arc<Shared<C>>,
}

/// What every call of a layer's services reads: one `Arc` per call, so the
/// response future stays small however large the classifier is.
struct Shared<C> {
    handles: Arc<Handles>,
    classifier: C,
}

impl<C> Clone for ObserveLayer<C> {
    fn clone(&self) -> Self {
        ObserveLayer { shared: self.shared.clone() }
    }
}

impl<C> fmt::Debug for ObserveLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveLayer")
            .field("service", &self.shared.handles.name)
            .field("side", &self.shared.handles.side)
            .field("log", &self.shared.handles.log)
            .finish_non_exhaustive()
    }
}

impl ObserveLayer {
    /// Metrics on, log events off, HTTP classification.
    pub fn new(service: impl Into<Arc<str>>, side: Side) -> Self {
        Self::with_options(service, side, true, false, HttpClassifier::new())
    }
}

impl<C> ObserveLayer<C> {
    /// Every option: record metrics, emit a log event per call, and the
    /// classifier that tells success from failure.
    pub fn with_options(service: impl Into<Arc<str>>, side: Side, metrics: bool, log: bool, classifier: C) -> Self {
        let handles = Arc::new(Handles::new(service.into(), side, metrics, log));
        ObserveLayer { shared: Arc::new(Shared { handles, classifier }) }
    }
}

impl<S, C> Layer<S> for ObserveLayer<C> {
    type Service = Observe<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner, shared: self.shared.clone() }
    }
}

/// The service made by [`ObserveLayer`].
pub struct Observe<S, C = HttpClassifier> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for Observe<S, C> {
    fn clone(&self) -> Self {
        Observe { inner: self.inner.clone(), shared: self.shared.clone() }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Observe<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe").field("inner", &self.inner).field("service", &self.shared.handles.name).finish()
    }
}

impl<S, C, ReqB, ResB> Service<Request<ReqB>> for Observe<S, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    C: Classify<Response<ResB>, BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ObserveFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let method = method_index(req.method());
        ObserveFuture {
            inner: self.inner.call(req),
            call: Some(Call { shared: self.shared.clone(), method, start: Instant::now() }),
        }
    }
}

struct Call<C> {
    shared: Arc<Shared<C>>,
    method: usize,
    start: Instant,
}

pin_project! {
    /// Response future of [`Observe`]; dropped before it completes, it
    /// records the call as `cancelled`.
    pub struct ObserveFuture<F, C> {
        #[pin]
        inner: F,
        call: Option<Call<C>>,
    }

    impl<F, C> PinnedDrop for ObserveFuture<F, C> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.shared.handles.record(call.method, CANCELLED, call.start);
            }
        }
    }
}

impl<F, C> fmt::Debug for ObserveFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveFuture").finish_non_exhaustive()
    }
}

fn refusal_outcome(r: Refusal) -> usize {
    match r {
        Refusal::Rejected => REJECTED,
        Refusal::TimedOut => TIMEOUT,
    }
}

impl<F, C, ResB, E> Future for ObserveFuture<F, C>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
    C: Classify<Response<ResB>, BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx)).map_err(Into::into);
        let call = this.call.take().expect("polled after completion");
        // A layer's refusal, as an error or as the response a server stack's
        // error mapping inside made of it (marked with it).
        let refused = match &result {
            Err(e) => refusal(&**e),
            Ok(res) => res.extensions().get::<Refusal>().copied(),
        };
        let outcome = match (&result, refused) {
            (_, Some(r)) => refusal_outcome(r),
            (Err(e), None) => outcome_index(call.shared.classifier.classify(Err(e))),
            (Ok(res), None) => match call.shared.classifier.classify(Ok(res)) {
                Outcome::Deferred => {
                    // The answer comes with the end of the stream (gRPC trailers).
                    let Call { shared, method, start } = call;
                    let h = shared.handles.clone();
                    let recorder = OutcomeRecorder::new(move |o| h.record(method, outcome_index(o), start));
                    let mut result = result;
                    if let Ok(res) = &mut result {
                        if let Err(recorder) = shared.classifier.defer(res, recorder) {
                            recorder.record(Outcome::Success);
                        }
                    }
                    return Poll::Ready(result);
                }
                o => outcome_index(o),
            },
        };
        call.shared.handles.record(call.method, outcome, call.start);
        Poll::Ready(result)
    }
}

fn outcome_index(o: Outcome) -> usize {
    match o {
        Outcome::Success | Outcome::Deferred => SUCCESS,
        Outcome::Failure(_) => FAILURE,
        Outcome::Ignored => IGNORED,
        Outcome::Cancelled => CANCELLED,
    }
}
