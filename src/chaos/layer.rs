//! The chaos layer: which faults, how likely, for which requests.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use metrics::Counter;
use tower_layer::Layer;

use super::error::ChaosConfigError;
use super::fault::{Abort, AllowedCallers, Delay, Dice, HeaderFaults, RequestMatch, ABORT_HEADER, DELAY_HEADER};
use super::service::Chaos;

/// What the layer does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Plan {
    /// Wait this long before going on.
    pub(crate) delay: Option<Duration>,
    /// Then: call the service, answer with a failure, or never answer.
    pub(crate) outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) enum Outcome {
    #[default]
    Forward,
    Abort(Abort),
    BlackHole,
}

/// The faults and their metric handles, shared by a layer's services.
pub(crate) struct Shared {
    name: Arc<str>,
    dice: Dice,
    delay: Option<(Delay, f64)>,
    abort: Option<(Abort, f64)>,
    black_hole: f64,
    matcher: RequestMatch,
    header_faults: Option<AllowedCallers>,
    max_header_delay: Duration,
    counters: Counters,
}

/// `tower_mesh_chaos_injected_total{service, fault}`, one handle per fault.
struct Counters {
    delay: Counter,
    abort_http: Counter,
    abort_grpc: Counter,
    abort_io: Counter,
    black_hole: Counter,
}

impl Counters {
    fn new(name: &str) -> Self {
        let c = |fault: &'static str| metrics::counter!("tower_mesh_chaos_injected_total", "service" => name.to_owned(), "fault" => fault);
        Counters {
            delay: c("delay"),
            abort_http: c("abort_http"),
            abort_grpc: c("abort_grpc"),
            abort_io: c("abort_io"),
            black_hole: c("black_hole"),
        }
    }
}

impl Shared {
    /// Decides what happens to `req` and records it.
    pub(crate) fn plan<B>(&self, req: &Request<B>) -> Plan {
        let plan = match self.asked_by_headers(req) {
            Some(plan) => plan,
            None if self.matcher.matches(req) => self.roll(),
            None => Plan::default(),
        };
        self.record(&plan);
        plan
    }

    /// The faults an allowed caller asked for with headers, if any.
    fn asked_by_headers<B>(&self, req: &Request<B>) -> Option<Plan> {
        let callers = self.header_faults.as_ref()?;
        let headers = req.headers();
        if !headers.contains_key(DELAY_HEADER) && !headers.contains_key(ABORT_HEADER) {
            return None;
        }
        if !callers.allows(req) {
            tracing::debug!(service = &*self.name, "fault headers from a caller not allowed to send them: ignored");
            return None;
        }
        let asked = HeaderFaults::read(headers, self.max_header_delay);
        let outcome = match (asked.black_hole, asked.abort) {
            (true, _) => Outcome::BlackHole,
            (false, Some(abort)) => Outcome::Abort(abort),
            (false, None) => Outcome::Forward,
        };
        Some(Plan { delay: asked.delay, outcome })
    }

    /// The probabilistic faults.
    fn roll(&self) -> Plan {
        let delay = self.delay.and_then(|(d, p)| self.dice.chance(p).then(|| d.sample(self.dice.roll())));
        let outcome = if self.dice.chance(self.black_hole) {
            Outcome::BlackHole
        } else {
            match self.abort {
                Some((abort, p)) if self.dice.chance(p) => Outcome::Abort(abort),
                _ => Outcome::Forward,
            }
        };
        Plan { delay, outcome }
    }

    fn record(&self, plan: &Plan) {
        if let Some(delay) = plan.delay {
            self.counters.delay.increment(1);
            tracing::debug!(service = &*self.name, ?delay, "chaos: delaying the request");
        }
        match plan.outcome {
            Outcome::Forward => {}
            Outcome::Abort(abort) => {
                let counter = match abort {
                    Abort::Status(_) => &self.counters.abort_http,
                    Abort::Grpc(_) => &self.counters.abort_grpc,
                    Abort::Io(_) => &self.counters.abort_io,
                };
                counter.increment(1);
                tracing::debug!(service = &*self.name, fault = abort.label(), ?abort, "chaos: aborting the request");
            }
            Outcome::BlackHole => {
                self.counters.black_hole.increment(1);
                tracing::debug!(service = &*self.name, "chaos: the request goes into a black hole");
            }
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("name", &self.name)
            .field("delay", &self.delay)
            .field("abort", &self.abort)
            .field("black_hole", &self.black_hole)
            .field("matcher", &self.matcher)
            .field("header_faults", &self.header_faults)
            .finish_non_exhaustive()
    }
}

/// Layer that injects faults — delays, failures, aborted connections and
/// requests that never get an answer — into HTTP and gRPC calls, to prove
/// that the layers around it cope. See the [module docs](super).
///
/// A new layer injects nothing; each fault is switched on by its builder
/// method with a probability, and checked by [`build`](ChaosLayerBuilder::build).
#[derive(Debug, Clone)]
pub struct ChaosLayer {
    shared: Arc<Shared>,
}

impl ChaosLayer {
    /// A builder with no fault switched on.
    pub fn builder() -> ChaosLayerBuilder {
        ChaosLayerBuilder::default()
    }
}

impl<S> Layer<S> for ChaosLayer {
    type Service = Chaos<S>;

    fn layer(&self, inner: S) -> Chaos<S> {
        Chaos::new(inner, self.shared.clone())
    }
}

/// Builds a [`ChaosLayer`].
#[derive(Debug, Clone)]
pub struct ChaosLayerBuilder {
    name: Arc<str>,
    seed: Option<u64>,
    delay: Option<(Delay, f64)>,
    abort: Option<(Abort, f64)>,
    black_hole: f64,
    matcher: RequestMatch,
    header_faults: Option<AllowedCallers>,
    max_header_delay: Duration,
}

impl Default for ChaosLayerBuilder {
    fn default() -> Self {
        ChaosLayerBuilder {
            name: Arc::from("chaos"),
            seed: None,
            delay: None,
            abort: None,
            black_hole: 0.0,
            matcher: RequestMatch::new(),
            header_faults: None,
            max_header_delay: Duration::from_secs(10),
        }
    }
}

impl ChaosLayerBuilder {
    /// The `service` label of the layer's metrics (default `"chaos"`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Draw from a generator seeded with `seed`: the same sequence of
    /// decisions on every run (for calls made one after the other).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Delay a fraction `probability` of requests by `delay` before
    /// calling the service (or before the injected failure).
    pub fn delay(mut self, delay: Delay, probability: f64) -> Self {
        self.delay = Some((delay, probability));
        self
    }

    /// Fail a fraction `probability` of requests with `abort` instead of
    /// calling the service.
    pub fn abort(mut self, abort: Abort, probability: f64) -> Self {
        self.abort = Some((abort, probability));
        self
    }

    /// Never answer a fraction `probability` of requests (the caller's
    /// timeout is what ends them; the service is not called).
    pub fn black_hole(mut self, probability: f64) -> Self {
        self.black_hole = probability;
        self
    }

    /// Apply the probabilistic faults only to requests that match.
    pub fn only(mut self, matcher: RequestMatch) -> Self {
        self.matcher = matcher;
        self
    }

    /// Honour the fault headers ([`DELAY_HEADER`](super::DELAY_HEADER),
    /// [`ABORT_HEADER`](super::ABORT_HEADER)) of requests from these callers;
    /// from anyone else they are ignored. Off by default.
    pub fn header_faults(mut self, callers: AllowedCallers) -> Self {
        self.header_faults = Some(callers);
        self
    }

    /// The longest delay a fault header can ask for (default 10 s).
    pub fn max_header_delay(mut self, max: Duration) -> Self {
        self.max_header_delay = max;
        self
    }

    /// The layer, or why its faults cannot be used.
    pub fn build(self) -> Result<ChaosLayer, ChaosConfigError> {
        let probability =
            |p: f64, field| if (0.0..=1.0).contains(&p) { Ok(()) } else { Err(ChaosConfigError::Probability(field)) };
        if let Some((delay, p)) = &self.delay {
            probability(*p, "delay")?;
            delay.check()?;
        }
        if let Some((abort, p)) = &self.abort {
            probability(*p, "abort")?;
            abort.check()?;
        }
        probability(self.black_hole, "black_hole")?;
        if let Some(AllowedCallers::PeerIps(ips)) = &self.header_faults {
            if ips.is_empty() {
                return Err(ChaosConfigError::HeaderFaults("no caller is allowed to send fault headers"));
            }
        }
        let dice = match self.seed {
            Some(seed) => Dice::Seeded { seed, draws: AtomicU64::new(0) },
            None => Dice::Random,
        };
        let shared = Shared {
            counters: Counters::new(&self.name),
            name: self.name,
            dice,
            delay: self.delay,
            abort: self.abort,
            black_hole: self.black_hole,
            matcher: self.matcher,
            header_faults: self.header_faults,
            max_header_delay: self.max_header_delay,
        };
        Ok(ChaosLayer { shared: Arc::new(shared) })
    }
}
