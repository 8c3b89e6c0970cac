//! The chaos drill: an upstream behind a `ChaosLayer` whose faults change by
//! phase, called by the same traffic twice — through the production client
//! stack, and bare — with a report per phase of what the callers saw.
//!
//! Shared by `examples/chaos_drill` (over TCP, in real time) and
//! `tests/chaos_drill.rs` (in process, in paused time).

#![allow(dead_code)] // each user takes what it needs

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_mesh::bulkhead::{BulkheadFull, BulkheadLayer};
use tower_mesh::chaos::{Abort, Chaos, ChaosLayer, Delay};
use tower_mesh::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
use tower_mesh::classify::{HttpClassifier, IgnoreRejections};
use tower_mesh::fallback::{FallbackLayer, ServedByFallback};
use tower_mesh::retry::{Backoff, Jitter, RetryBudget, RetryLayer};
use tower_mesh::timeout::TimeoutLayer;
use tower_mesh::BoxError;

/// The client's total timeout: no call through the stack waits longer.
pub const TOTAL_TIMEOUT: Duration = Duration::from_millis(1_000);
/// The timeout of one attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(400);

/// A request and response as the drill's clients see them.
pub type Req = Request<Full<Bytes>>;
/// A response with its body read.
pub type Res = Response<Bytes>;
/// A client: the stack, the bare transport, or the transport itself.
pub type Client = BoxCloneService<Req, Res, BoxError>;

/// One phase of the drill: what the upstream does meanwhile.
pub struct Phase {
    /// What the phase is called in the report.
    pub name: &'static str,
    chaos: ChaosLayer,
}

/// The drill's phases: healthy → 30 % errors → +300 ms latency → black hole
/// → healthy. Seeded: the same faults on every run.
pub fn phases() -> Vec<Phase> {
    let b = || ChaosLayer::builder().name("drill").seed(2026);
    let phase = |name, chaos: tower_mesh::chaos::ChaosLayerBuilder| Phase { name, chaos: chaos.build().unwrap() };
    vec![
        phase("healthy", b()),
        phase("30 % errors", b().abort(Abort::Status(StatusCode::SERVICE_UNAVAILABLE), 0.3)),
        phase("+300 ms latency", b().delay(Delay::Fixed(Duration::from_millis(300)), 1.0)),
        phase("black hole", b().black_hole(1.0)),
        phase("healthy again", b()),
    ]
}

/// The upstream's own handler: a small JSON document, after 1 ms of work.
async fn handler(_: Request<Full<Bytes>>) -> Result<Res, BoxError> {
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(Response::new(Bytes::from_static(br#"{"items":[1,2,3]}"#)))
}

type Handler =
    tower::util::ServiceFn<fn(Request<Full<Bytes>>) -> Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>>;

fn boxed_handler(req: Request<Full<Bytes>>) -> Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>> {
    Box::pin(handler(req))
}

/// The upstream: the handler behind the current phase's chaos layer.
#[derive(Clone)]
pub struct Upstream {
    phase: Arc<AtomicUsize>,
    services: Arc<Vec<Chaos<Handler>>>,
}

impl Upstream {
    /// The upstream, in the first of `phases`.
    pub fn new(phases: &[Phase]) -> Self {
        let handler: Handler = tower::service_fn(boxed_handler as fn(_) -> _);
        let services = phases.iter().map(|p| tower::Layer::layer(&p.chaos, handler)).collect();
        Upstream { phase: Arc::default(), services: Arc::new(services) }
    }

    /// Moves the upstream to phase `i`.
    pub fn set_phase(&self, i: usize) {
        self.phase.store(i, Ordering::SeqCst);
    }

    /// The phase the upstream is in.
    pub fn phase(&self) -> usize {
        self.phase.load(Ordering::SeqCst)
    }
}

impl Service<Request<Full<Bytes>>> for Upstream {
    type Response = Res;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let svc = self.services[self.phase()].clone();
        Box::pin(svc.oneshot(req))
    }
}

/// A breaker state change and the phase it happened in.
pub type Transition = (usize, CircuitState, CircuitState);

/// The production client stack around `transport`, outermost first:
/// fallback (the last good answer, up to a minute old) → total timeout →
/// retry (2 retries, jittered backoff, budget) → circuit breaker → bulkhead
/// → attempt timeout. Breaker transitions go to `transitions`.
pub fn production_stack(transport: Client, upstream: Upstream, transitions: Arc<Mutex<Vec<Transition>>>) -> Client {
    let breaker = CircuitBreakerLayer::builder()
        .name("drill")
        .classifier(IgnoreRejections(HttpClassifier::new()))
        .count_window(100)
        .minimum_calls(40)
        .failure_rate_threshold(50.0)
        .wait_in_open(Duration::from_millis(500))
        .permitted_calls_in_half_open(4)
        .on_state_change(move |change| transitions.lock().unwrap().push((upstream.phase(), change.from, change.to)))
        .build()
        .unwrap();
    let retry = RetryLayer::builder()
        .name("drill")
        .max_retries(2)
        .backoff(Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_millis(100)).jitter(Jitter::Full))
        .budget(RetryBudget::new(Duration::from_secs(10), 20, 0.5))
        .classifier(IgnoreRejections(HttpClassifier::new()))
        .http()
        .build()
        .unwrap();
    let fallback = FallbackLayer::stale(
        |req: &Req| Some(req.uri().path().to_owned()),
        std::num::NonZeroUsize::new(1_000).unwrap(),
        Duration::from_secs(60),
    )
    .classifier(HttpClassifier::new())
    .header(HeaderName::from_static("x-mesh-fallback"))
    .name("drill");
    let bulkhead = BulkheadLayer::builder()
        .name("drill")
        .max_concurrent_calls(32)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(fallback)
        .layer(TimeoutLayer::new(TOTAL_TIMEOUT))
        .layer(retry)
        .layer(breaker)
        .layer(bulkhead)
        .layer(TimeoutLayer::per_attempt(ATTEMPT_TIMEOUT))
        .service(transport);
    BoxCloneService::new(stack)
}

/// What the callers saw in one phase.
#[derive(Default, Clone)]
pub struct Report {
    /// Calls made.
    pub calls: u64,
    /// Good answers from the upstream.
    pub ok: u64,
    /// Answers from the fallback.
    pub fallbacks: u64,
    /// Fast rejections: circuit open, bulkhead full.
    pub rejected: u64,
    /// Failed answers and errors (timeouts included).
    pub failed: u64,
    /// Calls with no answer by the end of the phase.
    pub hung: u64,
    /// Latencies of the calls that ended.
    pub latencies: Vec<Duration>,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("calls", &self.calls)
            .field("ok", &self.ok)
            .field("fallbacks", &self.fallbacks)
            .field("rejected", &self.rejected)
            .field("failed", &self.failed)
            .field("hung", &self.hung)
            .field("p99", &self.quantile(0.99))
            .field("max", &self.max())
            .finish()
    }
}

impl Report {
    /// The share of calls that got a usable answer (upstream or fallback).
    pub fn success_rate(&self) -> f64 {
        (self.ok + self.fallbacks) as f64 / self.calls.max(1) as f64
    }

    /// The `p`-th latency quantile.
    pub fn quantile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or_default()
    }

    /// The longest call.
    pub fn max(&self) -> Duration {
        self.latencies.iter().max().copied().unwrap_or_default()
    }
}

/// Sends `workers` callers' traffic (one call at a time each, `pause`
/// between calls) through `client` while the upstream runs through its
/// phases, `phase_len` each; a report per phase.
pub async fn drive(
    client: Client,
    upstream: &Upstream,
    phases: usize,
    phase_len: Duration,
    workers: usize,
    pause: Duration,
) -> Vec<Report> {
    let reports = Arc::new(Mutex::new(vec![Report::default(); phases]));
    for phase in 0..phases {
        upstream.set_phase(phase);
        let end = Instant::now() + phase_len;
        let tasks: Vec<_> =
            (0..workers).map(|_| tokio::spawn(worker(client.clone(), end, pause, reports.clone(), phase))).collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    let reports = reports.lock().unwrap().clone();
    reports
}

async fn worker(client: Client, end: Instant, pause: Duration, reports: Arc<Mutex<Vec<Report>>>, phase: usize) {
    while Instant::now() < end {
        let req = Request::get("http://upstream/items").body(Full::new(Bytes::new())).unwrap();
        let started = Instant::now();
        let call = client.clone().oneshot(req);
        // A call still unanswered this long after the phase is counted as hung.
        let give_up = end.max(started + 2 * TOTAL_TIMEOUT);
        let outcome = tokio::time::timeout_at(give_up, call).await;
        let hung = outcome.is_err();
        record(&mut reports.lock().unwrap()[phase], outcome, started.elapsed());
        if hung {
            break;
        }
        tokio::time::sleep(pause).await;
    }
}

fn record(r: &mut Report, outcome: Result<Result<Res, BoxError>, tokio::time::error::Elapsed>, took: Duration) {
    r.calls += 1;
    let Ok(result) = outcome else {
        r.hung += 1;
        return;
    };
    r.latencies.push(took);
    match result {
        Ok(res) if res.extensions().get::<ServedByFallback>().is_some() => r.fallbacks += 1,
        Ok(res) if res.status().is_success() => r.ok += 1,
        Ok(_) => r.failed += 1,
        Err(e) if e.is::<CircuitOpen>() || e.is::<BulkheadFull>() => r.rejected += 1,
        Err(_) => r.failed += 1,
    }
}

/// Prints the reports of both runs side by side.
pub fn print(phases: &[Phase], with_stack: &[Report], bare: &[Report]) {
    println!(
        "{:<16} {:>7} | {:>6} {:>9} {:>8} {:>6} {:>5} {:>8} {:>8} | {:>6} {:>6} {:>5} {:>8} {:>8}",
        "phase",
        "calls",
        "ok",
        "fallback",
        "rejected",
        "failed",
        "hung",
        "p50 ms",
        "p99 ms",
        "ok",
        "failed",
        "hung",
        "p50 ms",
        "p99 ms"
    );
    println!("{:<24} | {:^66} | {:^40}", "", "with the stack", "bare");
    for (i, p) in phases.iter().enumerate() {
        let (s, b) = (&with_stack[i], &bare[i]);
        println!(
            "{:<16} {:>7} | {:>6} {:>9} {:>8} {:>6} {:>5} {:>8.1} {:>8.1} | {:>6} {:>6} {:>5} {:>8.1} {:>8.1}",
            p.name,
            s.calls,
            s.ok,
            s.fallbacks,
            s.rejected,
            s.failed,
            s.hung,
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99)),
            b.ok,
            b.failed,
            b.hung,
            ms(b.quantile(0.5)),
            ms(b.quantile(0.99)),
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
