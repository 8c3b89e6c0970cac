//! The overload bench's subjects and its two tables: goodput and latency at
//! 2 × capacity, and the adaptive limiters' convergence when the capacity
//! halves. Included with `#[path = "support/overload_runs.rs"] mod
//! overload_runs;` beside `support/overload.rs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::load_shed::LoadShedLayer;
use tower::{Layer, Service};
use tower_mesh::bulkhead::BulkheadLayer;
use tower_mesh::BoxError;
use tower_resilience::adaptive::{AdaptiveService, Aimd as TrAimd, ConcurrencyAlgorithm, Vegas as TrVegas};

use crate::overload::{ms, offer, summarize, Load, Record, Req, Summary, Upstream};

/// hyper-util's client, the service every subject wraps.
type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A subject: a limiter around the client (or the bare client).
trait Subject:
    Service<Req, Response = Response<Incoming>, Error: Into<BoxError>, Future: Send> + Clone + Send + 'static
{
}

impl<S> Subject for S where
    S: Service<Req, Response = Response<Incoming>, Error: Into<BoxError>, Future: Send> + Clone + Send + 'static
{
}

/// Reads a subject's current concurrency limit.
type LimitFn = Box<dyn Fn() -> usize + Send + Sync>;

/// Warm-up before the measured window of the overload table (the adaptive
/// limiters start at 20).
const WARM: Duration = Duration::from_secs(3);
/// The overload table's measured window.
const MEASURE: Duration = Duration::from_secs(5);
/// The convergence run: C halves at `HALVE_AT`; the run ends at `LENGTH`.
const HALVE_AT: Duration = Duration::from_secs(5);
const LENGTH: Duration = Duration::from_secs(11);
/// The convergence run's windows.
const STEP: Duration = Duration::from_millis(500);

fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(http)
}

/// What one run of a subject saw: every call, and its limit every 100 ms.
struct Run {
    records: Vec<Record>,
    limits: Vec<(Duration, usize)>,
}

impl Run {
    /// The limit's range over `[from, to)`, or "–" for a subject without one.
    fn limit_range(&self, from: Duration, to: Duration) -> String {
        let seen = self.limits.iter().filter(|(t, _)| *t >= from && *t < to).map(|&(_, l)| l);
        match (seen.clone().min(), seen.max()) {
            (Some(lo), Some(hi)) if lo == hi => lo.to_string(),
            (Some(lo), Some(hi)) => format!("{lo}–{hi}"),
            _ => "–".into(),
        }
    }

    /// The last limit seen before `to`.
    fn limit_at(&self, to: Duration) -> Option<usize> {
        self.limits.iter().take_while(|(t, _)| *t < to).last().map(|&(_, l)| l)
    }
}

/// `length` of the offered load through `svc` against a fresh upstream of
/// `load.workers` workers, halved at `halve_at` if given.
async fn run<S: Subject>(
    load: Load,
    svc: S,
    limit: Option<LimitFn>,
    length: Duration,
    halve_at: Option<Duration>,
) -> Run {
    let upstream = Upstream::start(load.workers, load.work).await;
    let records = Arc::new(Mutex::new(Vec::new()));
    let limits = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let sampler = limit.map(|limit| {
        let limits = limits.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                limits.lock().unwrap().push((start.elapsed(), limit()));
            }
        })
    });
    let halve = async {
        if let Some(at) = halve_at {
            tokio::time::sleep_until((start + at).into()).await;
            upstream.remove_workers(load.workers / 2);
        }
    };
    tokio::join!(offer(svc, upstream.addr, load, start, length, records.clone()), halve);
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    let records = std::mem::take(&mut *records.lock().unwrap());
    let limits = std::mem::take(&mut *limits.lock().unwrap());
    Run { records, limits }
}

/// The goal of issue 27 for a window: goodput ≥ 90 % of the capacity and
/// p99 ≤ 2 × the unloaded p99.
fn meets_goal(s: &Summary, capacity: f64, unloaded: &Summary) -> bool {
    s.goodput >= 0.9 * capacity && s.p99 <= unloaded.p99 * 2
}

/// One row of the overload table.
async fn row<S: Subject>(load: Load, unloaded: &Summary, name: &str, svc: S, limit: Option<LimitFn>) {
    let run = run(load, svc, limit, WARM + MEASURE, None).await;
    let s = summarize(&run.records, WARM, WARM + MEASURE);
    let capacity = load.capacity(load.workers);
    println!(
        "| {name} | {} | {:.0} | {:.0} % | {} | {} | {:.0} | {:.0} | {:.0} | {} |",
        run.limit_range(WARM, WARM + MEASURE),
        s.goodput,
        s.goodput / capacity * 100.0,
        ms(s.p50, &load),
        ms(s.p99, &load),
        s.rejected,
        s.late,
        s.failed,
        if meets_goal(&s, capacity, unloaded) { "met" } else { "missed" },
    );
}

/// Latency at 10 % of the capacity, no limit: the reference of the goal.
async fn unloaded(load: Load) -> Summary {
    let quiet = Load { factor: 0.1, ..load };
    let run = run(quiet, client(), None, Duration::from_secs(3), None).await;
    let s = summarize(&run.records, Duration::from_millis(500), Duration::from_secs(3));
    println!(
        "Unloaded (10 % of capacity, no limit): p50 {} ms, p99 {} ms; capacity {:.0} req/s ({} workers × {:?}), \
         offered {:.0} req/s, deadline {:?}, client gives up after {:?}.",
        ms(s.p50, &load),
        ms(s.p99, &load),
        load.capacity(load.workers),
        load.workers,
        load.work,
        load.rate(),
        load.deadline,
        load.give_up,
    );
    s
}

/// tower-resilience's adaptive limiter waits in `poll_ready` when it is at
/// its limit; `LoadShed` turns that wait into a rejection, like the other
/// subjects (tower-mesh's layers with `max_wait` zero).
fn tower_resilience<A>(algorithm: A) -> (impl Subject, LimitFn)
where
    A: ConcurrencyAlgorithm + Send + Sync + 'static,
{
    let algorithm = Arc::new(algorithm);
    let limit = algorithm.clone();
    let svc = LoadShedLayer::new().layer(AdaptiveService::new(client(), algorithm));
    (svc, Box::new(move || limit.limit()))
}

/// tower-resilience's AIMD, counting an answer slower than 2 × the work
/// time as a drop (its default threshold, 100 ms, is twice the deadline).
fn tr_aimd(load: &Load) -> TrAimd {
    let builder = TrAimd::builder().initial_limit(20).min_limit(1).max_limit(1000);
    builder.latency_threshold(load.work * 2).build().unwrap()
}

/// tower-resilience's Vegas with its default alpha and beta.
fn tr_vegas() -> TrVegas {
    TrVegas::builder().initial_limit(20).min_limit(1).max_limit(1000).build().unwrap()
}

/// The overload table: each subject at 2 × capacity.
pub async fn table(load: Load) {
    let unloaded = unloaded(load).await;
    let c = load.workers;
    println!();
    println!("| subject | limit | goodput/s | % of C | p50 ms | p99 ms | rejected/s | late/s | failed/s | goal |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    row(load, &unloaded, "no limit", client(), None).await;
    let bulkhead = |max: usize| BulkheadLayer::new(max).layer(client());
    row(load, &unloaded, &format!("BulkheadLayer {} (= C, hand-tuned)", c), bulkhead(c), None).await;
    row(load, &unloaded, &format!("BulkheadLayer {} (4× too high)", 4 * c), bulkhead(4 * c), None).await;
    row(load, &unloaded, &format!("BulkheadLayer {} (2× too low)", c / 2), bulkhead(c / 2), None).await;
    #[cfg(feature = "adaptive-concurrency")]
    for (name, (svc, limit)) in [
        ("AdaptiveConcurrencyLayer Gradient2", ours(&load, true)),
        ("AdaptiveConcurrencyLayer AIMD", ours(&load, false)),
    ] {
        row(load, &unloaded, name, svc, Some(limit)).await;
    }
    let (svc, limit) = tower_resilience(tr_aimd(&load));
    row(load, &unloaded, "tower-resilience adaptive AIMD (+ LoadShed)", svc, Some(limit)).await;
    let (svc, limit) = tower_resilience(tr_vegas());
    row(load, &unloaded, "tower-resilience adaptive Vegas (+ LoadShed)", svc, Some(limit)).await;
}

/// tower-mesh's adaptive layer starting at 20: Gradient2 with its defaults
/// (`gradient`), or AIMD counting an answer slower than 2 × the work time as
/// a drop, like tower-resilience's (its default timeout, 5 s, is never
/// reached here).
#[cfg(feature = "adaptive-concurrency")]
fn ours(load: &Load, gradient: bool) -> (impl Subject, LimitFn) {
    use tower_mesh::adaptive_concurrency::{AdaptiveConcurrencyLayer, Aimd, Gradient2};
    let builder = AdaptiveConcurrencyLayer::builder().name("overload");
    let builder = if gradient {
        builder.gradient2(Gradient2::default())
    } else {
        builder.aimd(Aimd { timeout: load.work * 2, ..Aimd::default() })
    };
    let layer = builder.initial_limit(20).min_limit(1).max_limit(1000).max_wait(Duration::ZERO).build().unwrap();
    let handle = layer.handle();
    (layer.layer(client()), Box::new(move || handle.limit()))
}

/// One adaptive subject's convergence run.
async fn trace<S: Subject>(load: Load, svc: S, limit: LimitFn) -> Run {
    run(load, svc, Some(limit), LENGTH, Some(HALVE_AT)).await
}

/// The convergence run: C halves at 5 s; per 500 ms, each adaptive
/// subject's limit, goodput (% of the capacity at that time) and p99.
pub async fn convergence(load: Load) {
    let unloaded = unloaded(load).await;
    let mut runs: Vec<(&str, Run)> = Vec::new();
    #[cfg(feature = "adaptive-concurrency")]
    for (name, (svc, limit)) in [("Gradient2", ours(&load, true)), ("AIMD", ours(&load, false))] {
        runs.push((name, trace(load, svc, limit).await));
    }
    let (svc, limit) = tower_resilience(tr_aimd(&load));
    runs.push(("tower-resilience AIMD", trace(load, svc, limit).await));
    let (svc, limit) = tower_resilience(tr_vegas());
    runs.push(("tower-resilience Vegas", trace(load, svc, limit).await));

    let names: Vec<&str> = runs.iter().map(|(n, _)| *n).collect();
    println!();
    println!("Each cell: limit · goodput (% of the capacity of C at that time) · p99 ms.");
    println!();
    println!("| t s | C | {} |", names.join(" | "));
    println!("|---|---|{}", "---|".repeat(names.len()));
    let windows = (LENGTH.as_millis() / STEP.as_millis()) as u32;
    let workers = |from: Duration| if from < HALVE_AT { load.workers } else { load.workers / 2 };
    for w in 0..windows {
        let (from, to) = (STEP * w, STEP * (w + 1));
        let capacity = load.capacity(workers(from));
        let cells: Vec<String> = runs
            .iter()
            .map(|(_, run)| {
                let s = summarize(&run.records, from, to);
                let limit = run.limit_at(to).map_or("–".into(), |l| l.to_string());
                format!("{limit} · {:.0} % · {}", s.goodput / capacity * 100.0, ms(s.p99, &load))
            })
            .collect();
        println!("| {:.1} | {} | {} |", from.as_secs_f64(), workers(from), cells.join(" | "));
    }
    println!();
    for (name, run) in &runs {
        // The first window after the change from which every window meets the goal.
        let capacity = load.capacity(load.workers / 2);
        let ok = |w: u32| meets_goal(&summarize(&run.records, STEP * w, STEP * (w + 1)), capacity, &unloaded);
        let first = (HALVE_AT.as_millis() / STEP.as_millis()) as u32;
        let settled = (first..windows).find(|&w| (w..windows).all(ok)).map(|w| STEP * (w - first));
        match settled {
            Some(after) => println!("{name}: meets the goal from {:.1} s after C halved", after.as_secs_f64()),
            None => println!("{name}: does not meet the goal by the end of the run"),
        }
    }
}
