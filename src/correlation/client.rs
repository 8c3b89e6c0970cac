//! The client-side layer: puts the current context on outgoing requests.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, Request};
use metrics::Counter;
use tower_layer::Layer;
use tower_service::Service;

use super::context::{with_current, RequestContext, TRACEPARENT, TRACESTATE, X_CORRELATION_ID};
use super::id::{CorrelationId, MakeCorrelationId, UuidV7};
use super::trace::TraceParent;

const DEFAULT_NAME: &str = "correlation";

#[derive(Clone)]
struct ClientShared {
    header: HeaderName,
    generator: Arc<dyn MakeCorrelationId>,
    trace_context: bool,
    sample_new_traces: bool,
    name: Arc<str>,
    propagated: Counter,
    generated: Counter,
}

impl ClientShared {
    fn new(name: Arc<str>) -> Self {
        let counter = |outcome: &'static str| metrics::counter!("tower_mesh_correlation_outbound_total", "service" => name.to_string(), "outcome" => outcome);
        ClientShared {
            header: X_CORRELATION_ID,
            generator: Arc::new(UuidV7),
            trace_context: true,
            sample_new_traces: true,
            propagated: counter("propagated"),
            generated: counter("generated"),
            name,
        }
    }

    /// Set the headers of an outgoing request from `ctx`, the current
    /// context.
    #[inline]
    fn apply(&self, ctx: Option<&RequestContext>, headers: &mut HeaderMap) {
        match ctx {
            Some(ctx) => {
                self.propagated.increment(1);
                headers.insert(self.header.clone(), ctx.correlation_id.as_header_value().clone());
                if self.trace_context {
                    match &ctx.traceparent {
                        Some(tp) => {
                            headers.insert(TRACEPARENT, tp.child().to_header_value());
                            match &ctx.tracestate {
                                Some(ts) => {
                                    headers.insert(TRACESTATE, ts.as_header_value().clone());
                                }
                                None => remove_tracestate(headers),
                            }
                        }
                        None => self.fresh_trace(headers),
                    }
                }
            }
            None => self.outside_scope(headers),
        }
    }

    /// No request is being handled: keep valid values the caller set,
    /// replace the rest with fresh ones.
    #[cold]
    fn outside_scope(&self, headers: &mut HeaderMap) {
        let id_valid = headers.get(&self.header).is_some_and(|v| CorrelationId::from_header_value(v).is_ok());
        let parent_valid = headers.get(TRACEPARENT).is_some_and(|v| TraceParent::parse_bytes(v.as_bytes()).is_ok());
        if id_valid {
            self.propagated.increment(1);
        } else {
            self.generated.increment(1);
            headers.insert(self.header.clone(), self.generator.make_correlation_id().into_header_value());
            tracing::trace!(service = &*self.name, "no request context: new correlation id for an outgoing request");
        }
        if self.trace_context && !parent_valid {
            self.fresh_trace(headers);
        }
    }

    /// A new trace, and no `tracestate` (it belonged to the trace replaced).
    fn fresh_trace(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, TraceParent::generate(self.sample_new_traces).to_header_value());
        remove_tracestate(headers);
    }
}

/// Remove a `tracestate` the caller set, if there is one.
fn remove_tracestate(headers: &mut HeaderMap) {
    headers.remove(TRACESTATE);
}

impl fmt::Debug for ClientShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CorrelationIdClientLayer")
            .field("name", &self.name)
            .field("header", &self.header)
            .field("trace_context", &self.trace_context)
            .finish_non_exhaustive()
    }
}

/// Client-side layer: puts the [current](RequestContext::current) request
/// context on every outgoing request — for a hyper-util `Client`, a tonic
/// `Channel` (gRPC metadata are headers) or any `Service<http::Request<B>>`.
///
/// - the correlation id under the [`header`](CorrelationIdClientLayer::header)
///   (default `x-correlation-id`, replacing any value already there);
/// - `traceparent` with the same trace id and a new parent id, and
///   `tracestate` as received.
///
/// Outside a request's scope (a background job, a test) it keeps a valid
/// id or `traceparent` the caller already set and otherwise makes fresh ones.
///
/// See the [module docs](super) for an example.
#[derive(Clone, Debug)]
pub struct CorrelationIdClientLayer {
    shared: Arc<ClientShared>,
}

impl Default for CorrelationIdClientLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CorrelationIdClientLayer {
    /// The layer with its defaults: header `x-correlation-id`, UUID v7 ids,
    /// trace context on.
    pub fn new() -> Self {
        CorrelationIdClientLayer { shared: Arc::new(ClientShared::new(DEFAULT_NAME.into())) }
    }

    fn shared(&mut self) -> &mut ClientShared {
        Arc::make_mut(&mut self.shared)
    }

    /// The header the id is sent in. Default `x-correlation-id`.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.shared().header = header;
        self
    }

    /// How fresh ids are made outside a request's scope. Default [`UuidV7`].
    pub fn generator(mut self, generator: impl MakeCorrelationId) -> Self {
        self.shared().generator = Arc::new(generator);
        self
    }

    /// Whether to send W3C `traceparent` / `tracestate`. Default `true`.
    pub fn trace_context(mut self, enabled: bool) -> Self {
        self.shared().trace_context = enabled;
        self
    }

    /// Whether a trace started outside a request's scope is marked sampled.
    /// Default `true`.
    pub fn sample_new_traces(mut self, sampled: bool) -> Self {
        self.shared().sample_new_traces = sampled;
        self
    }

    /// The name used in logs and as the `service` label of the metrics.
    /// Default `"correlation"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        let name: String = name.into();
        let mut fresh = ClientShared::new(name.into());
        let s = self.shared();
        fresh.header = s.header.clone();
        fresh.generator = s.generator.clone();
        fresh.trace_context = s.trace_context;
        fresh.sample_new_traces = s.sample_new_traces;
        *s = fresh;
        self
    }
}

impl<S> Layer<S> for CorrelationIdClientLayer {
    type Service = CorrelationIdClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CorrelationIdClient { inner, shared: self.shared.clone() }
    }
}

/// Service made by [`CorrelationIdClientLayer`]: sets the headers and calls
/// the inner service (its future is returned as it is). `poll_ready` is the
/// inner service's.
#[derive(Clone, Debug)]
pub struct CorrelationIdClient<S> {
    inner: S,
    shared: Arc<ClientShared>,
}

impl<S> CorrelationIdClient<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for CorrelationIdClient<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        with_current(|ctx| self.shared.apply(ctx, req.headers_mut()));
        self.inner.call(req)
    }
}
