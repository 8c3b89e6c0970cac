//! The server-side layer: configuration, shared state and metrics.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use metrics::Counter;
use tower_layer::Layer;

use super::context::{RequestContext, TRACEPARENT, TRACESTATE, X_CORRELATION_ID, X_REQUEST_ID};
use super::id::{ByteSet, CorrelationId, MakeCorrelationId, UuidV7};
use super::service::CorrelationIdService;
use super::trace::{TraceParent, TraceState};

const DEFAULT_NAME: &str = "correlation";

/// Where a request's id (or trace) came from: the `outcome` label of the
/// metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// A valid incoming value was kept.
    Accepted,
    /// None came in; a fresh one was made.
    Generated,
    /// An invalid one came in; it was replaced by a fresh one.
    Rejected,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Generated => "generated",
            Outcome::Rejected => "rejected",
        }
    }
}

/// One counter per [`Outcome`] of one metric.
#[derive(Clone)]
struct OutcomeCounters {
    accepted: Counter,
    generated: Counter,
    rejected: Counter,
}

impl OutcomeCounters {
    fn new(metric: &'static str, name: &str) -> Self {
        let counter = |o: Outcome| metrics::counter!(metric, "service" => name.to_string(), "outcome" => o.as_str());
        OutcomeCounters {
            accepted: counter(Outcome::Accepted),
            generated: counter(Outcome::Generated),
            rejected: counter(Outcome::Rejected),
        }
    }
}

#[derive(Clone)]
struct Counters {
    ids: OutcomeCounters,
    traces: OutcomeCounters,
    tracestate_rejected: Counter,
}

impl Counters {
    fn new(name: &str) -> Self {
        Counters {
            ids: OutcomeCounters::new("tower_mesh_correlation_ids_total", name),
            traces: OutcomeCounters::new("tower_mesh_correlation_traces_total", name),
            tracestate_rejected: metrics::counter!("tower_mesh_correlation_tracestate_rejected_total", "service" => name.to_string()),
        }
    }
}

/// Configuration and metric handles shared by the services of one layer.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) header: HeaderName,
    accept: Vec<HeaderName>,
    forbidden: ByteSet,
    generator: Arc<dyn MakeCorrelationId>,
    pub(crate) echo: bool,
    trace_context: bool,
    sample_new_traces: bool,
    record: bool,
    name: Arc<str>,
    counters: Counters,
}

/// What the layer made of an incoming request's headers.
pub(crate) struct Incoming {
    pub(crate) ctx: RequestContext,
    /// The id was taken from the main header as it is: the request needs no
    /// rewrite.
    pub(crate) id_in_place: bool,
    /// One of the alternative headers was present: remove them from the
    /// request (the id goes under the main header only).
    pub(crate) accept_seen: bool,
    /// The trace headers were invalid: remove them from the request.
    pub(crate) drop_trace_headers: bool,
    pub(crate) drop_tracestate: bool,
}

impl Shared {
    fn new() -> Self {
        Shared {
            header: X_CORRELATION_ID,
            accept: vec![X_REQUEST_ID],
            forbidden: ByteSet::EMPTY,
            generator: Arc::new(UuidV7),
            echo: true,
            trace_context: true,
            sample_new_traces: true,
            record: true,
            name: DEFAULT_NAME.into(),
            counters: Counters::new(DEFAULT_NAME),
        }
    }

    pub(crate) fn record_on_span(&self) -> bool {
        self.record
    }

    pub(crate) fn accept_headers(&self) -> &[HeaderName] {
        &self.accept
    }

    /// Read (or make) the request's context from its headers.
    #[inline]
    pub(crate) fn incoming(&self, headers: &HeaderMap) -> Incoming {
        let (correlation_id, id_in_place, accept_seen) = self.read_id(headers);
        let mut incoming = Incoming {
            ctx: RequestContext::new(correlation_id),
            id_in_place,
            accept_seen,
            drop_trace_headers: false,
            drop_tracestate: false,
        };
        if self.trace_context {
            self.read_trace(headers, &mut incoming);
        }
        incoming
    }

    /// The id in use, whether it is the main header's value as it stands, and
    /// whether any alternative header was present.
    fn read_id(&self, headers: &HeaderMap) -> (CorrelationId, bool, bool) {
        let mut rejected = None;
        if let Some(v) = headers.get(&self.header) {
            match CorrelationId::from_header_value_with(v, self.forbidden) {
                Ok(id) => {
                    self.counters.ids.accepted.increment(1);
                    return (id, true, false);
                }
                Err(e) => rejected = Some((e, &self.header)),
            }
        }
        let mut accept_seen = false;
        for h in &self.accept {
            if let Some(v) = headers.get(h) {
                accept_seen = true;
                match CorrelationId::from_header_value_with(v, self.forbidden) {
                    Ok(id) => {
                        self.counters.ids.accepted.increment(1);
                        return (id, false, true);
                    }
                    Err(e) => rejected = rejected.or(Some((e, h))),
                }
            }
        }
        let id = self.generator.make_correlation_id();
        match rejected {
            Some((reason, header)) => {
                self.counters.ids.rejected.increment(1);
                // The refused value itself is never logged.
                tracing::debug!(
                    service = &*self.name,
                    header = header.as_str(),
                    reason = reason.reason(),
                    error = %reason,
                    correlation_id = id.as_str(),
                    "replaced an invalid incoming correlation id"
                );
            }
            None => self.counters.ids.generated.increment(1),
        }
        (id, false, accept_seen)
    }

    fn read_trace(&self, headers: &HeaderMap, incoming: &mut Incoming) {
        let parsed = headers.get(TRACEPARENT).map(|v| TraceParent::parse_bytes(v.as_bytes()));
        let ctx = &mut incoming.ctx;
        match parsed {
            Some(Ok(tp)) => {
                self.counters.traces.accepted.increment(1);
                // This hop's span: same trace, a new id.
                ctx.traceparent = Some(tp.child());
                if headers.contains_key(TRACESTATE) {
                    match TraceState::from_header_values(headers.get_all(TRACESTATE)) {
                        Ok(ts) => ctx.tracestate = (!ts.is_empty()).then_some(ts),
                        Err(reason) => {
                            self.counters.tracestate_rejected.increment(1);
                            incoming.drop_tracestate = true;
                            tracing::debug!(service = &*self.name, reason = reason.reason(), error = %reason, "dropped an invalid incoming tracestate");
                        }
                    }
                }
            }
            Some(Err(reason)) => {
                self.counters.traces.rejected.increment(1);
                incoming.drop_trace_headers = true;
                ctx.traceparent = Some(TraceParent::generate(self.sample_new_traces));
                tracing::debug!(service = &*self.name, reason = reason.reason(), error = %reason, "replaced an invalid incoming traceparent with a new trace");
            }
            None => {
                self.counters.traces.generated.increment(1);
                // No tracestate without a traceparent.
                incoming.drop_tracestate = headers.contains_key(TRACESTATE);
                ctx.traceparent = Some(TraceParent::generate(self.sample_new_traces));
            }
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CorrelationIdLayer")
            .field("name", &self.name)
            .field("header", &self.header)
            .field("accept", &self.accept)
            .field("echo", &self.echo)
            .field("trace_context", &self.trace_context)
            .finish_non_exhaustive()
    }
}

/// Server-side layer: gives every incoming request a validated correlation
/// id and a W3C trace context, and makes them available to the handler and
/// to the calls it makes.
///
/// For each request it
/// 1. takes the id from the [`header`](CorrelationIdLayer::header)
///    (default `x-correlation-id`) or, failing that, from the
///    [`accept`](CorrelationIdLayer::accept)ed ones (default `x-request-id`),
///    if it is valid ([`CorrelationId`]: at most 128 bytes of visible ASCII,
///    none of the [`forbid`](CorrelationIdLayer::forbid)den separators);
///    otherwise makes a fresh one with the
///    [`generator`](CorrelationIdLayer::generator) (UUID v7 by default). An
///    invalid incoming id is never echoed, logged or passed on: the request's
///    header is rewritten to the id in use;
/// 2. parses `traceparent` / `tracestate`; this hop gets the same trace
///    id and a new span id. An invalid or missing `traceparent` starts a new
///    trace (and the request's invalid trace headers are removed);
/// 3. puts the [`RequestContext`] in the request's extensions, records
///    `correlation_id` and `trace_id` on the current `tracing` span (when it
///    declares those fields), and calls and polls the inner service with the
///    context [current](RequestContext::current);
/// 4. sets the id on the response (unless [`echo(false)`](CorrelationIdLayer::echo)).
///
/// See the [module docs](super) for an example.
#[derive(Clone, Debug)]
pub struct CorrelationIdLayer {
    shared: Arc<Shared>,
}

impl Default for CorrelationIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CorrelationIdLayer {
    /// The layer with its defaults: header `x-correlation-id`, also accepting
    /// `x-request-id`, UUID v7 ids, trace context on, ids echoed.
    pub fn new() -> Self {
        CorrelationIdLayer { shared: Arc::new(Shared::new()) }
    }

    /// The client-side layer, [`CorrelationIdClientLayer`](super::CorrelationIdClientLayer).
    pub fn client() -> super::CorrelationIdClientLayer {
        super::CorrelationIdClientLayer::new()
    }

    fn shared(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.shared)
    }

    /// The header the id is read from, set on the request when it is
    /// replaced, and echoed on the response. Default `x-correlation-id`.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.shared().header = header;
        self
    }

    /// Also take an incoming id from `header` when the main one is absent or
    /// invalid (checked in the order added). `x-request-id` is accepted by
    /// default; [`accept_only_main_header`](CorrelationIdLayer::accept_only_main_header)
    /// clears the list.
    pub fn accept(mut self, header: HeaderName) -> Self {
        let s = self.shared();
        if !s.accept.contains(&header) {
            s.accept.push(header);
        }
        self
    }

    /// Read the id from the main [`header`](CorrelationIdLayer::header) only.
    pub fn accept_only_main_header(mut self) -> Self {
        self.shared().accept.clear();
        self
    }

    /// Also refuse incoming ids containing any of these ASCII separators
    /// (e.g. `b",;"` when ids end up in a list or a log format that uses
    /// them).
    pub fn forbid(mut self, separators: impl AsRef<[u8]>) -> Self {
        let s = self.shared();
        s.forbidden = s.forbidden.union(ByteSet::of(separators.as_ref()));
        self
    }

    /// How fresh ids are made. Default [`UuidV7`].
    pub fn generator(mut self, generator: impl MakeCorrelationId) -> Self {
        self.shared().generator = Arc::new(generator);
        self
    }

    /// Whether to set the id on the response. Default `true`.
    pub fn echo(mut self, echo: bool) -> Self {
        self.shared().echo = echo;
        self
    }

    /// Whether to handle W3C `traceparent` / `tracestate`. Default `true`.
    /// When off, the context has no trace and the trace headers are left as
    /// they are.
    pub fn trace_context(mut self, enabled: bool) -> Self {
        self.shared().trace_context = enabled;
        self
    }

    /// Whether a trace this layer starts is marked sampled. Default `true`.
    pub fn sample_new_traces(mut self, sampled: bool) -> Self {
        self.shared().sample_new_traces = sampled;
        self
    }

    /// Whether to record `correlation_id` and `trace_id` on the current
    /// `tracing` span (a span records only the fields it declared, e.g.
    /// `correlation_id = tracing::field::Empty`). Default `true`.
    pub fn record_on_span(mut self, record: bool) -> Self {
        self.shared().record = record;
        self
    }

    /// The name used in logs and as the `service` label of the metrics.
    /// Default `"correlation"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        let name: String = name.into();
        let s = self.shared();
        s.counters = Counters::new(&name);
        s.name = name.into();
        self
    }
}

impl<S> Layer<S> for CorrelationIdLayer {
    type Service = CorrelationIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CorrelationIdService::new(inner, self.shared.clone())
    }
}
