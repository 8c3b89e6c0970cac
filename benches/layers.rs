//! Per-call overhead of the tower-mesh layers against a bare service, tower's own middleware and
//! tower-resilience 0.13.
//!
//! Every subject wraps the same no-op `Service<u32>` (built once). One measured call is
//! `poll_ready` + `call` + polling the response future to completion, driven by hand with a no-op
//! waker inside the context of a multi-thread tokio runtime (as `#[tokio::main]` builds; its one
//! worker stays idle and turns the timer driver), so no executor overhead is measured — only the
//! layer. In a current-thread runtime the time-window breaker reads the clock on every call instead
//! of relying on a timer (see `circuit_breaker`), which adds one clock read to its row.
//!
//! Before the criterion run the bench prints heap allocations per call for every subject, and a
//! 1-thread vs 2-thread throughput comparison for a shared (cloned) service stack. After the run it
//! prints the overhead ratios (subject median minus bare median) read from criterion's estimates,
//! and what one clock read costs: `tokio::time::Instant::now()`, which the time-window breaker and
//! the timeouts read, and `std::time::Instant::now()`. tokio's `test-util` feature (on for this
//! crate's tests, benches and examples through the dev-dependency, never in a user's build unless
//! they turn it on) makes tokio's clock check for a paused clock under a lock first; the pair shows
//! what that adds.
//!
//! It also prints heap allocations per request of the README's HTTP client stack (total timeout,
//! retry, circuit breaker, bulkhead, attempt timeout) and of the same stack built from tower and
//! tower-resilience (`support/http_stack.rs`).
//!
//! Run: `cargo bench --all-features --bench layers` (CI only builds it: `cargo bench --no-run`).
//! `scripts/count-layers.sh` runs it in a counting mode under callgrind instead (`LAYERS_COUNT`):
//! instructions per call of each subject, which do not drift with the machine's load.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Ready;
use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use criterion::Criterion;
use futures::task::noop_waker_ref;
use tower::{Layer, Service};

// ---------------------------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------------------------

#[path = "support/alloc.rs"]
mod alloc;
use alloc::ALLOCATIONS;

// ---------------------------------------------------------------------------------------------
// The no-op service and the hand-driven call
// ---------------------------------------------------------------------------------------------

/// Always ready, answers its request immediately.
#[derive(Clone, Copy, Debug)]
struct Noop;

impl Service<u32> for Noop {
    type Response = u32;
    type Error = Infallible;
    type Future = Ready<Result<u32, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: u32) -> Self::Future {
        std::future::ready(Ok(req))
    }
}

#[path = "support/drive.rs"]
mod drive;
use drive::call_once;

// ---------------------------------------------------------------------------------------------
// Subjects
// ---------------------------------------------------------------------------------------------

/// Something that does work for each subject (the subjects have different types).
trait Visit {
    fn visit<S>(&mut self, name: &'static str, svc: S)
    where
        S: Service<u32, Response = u32>,
        S::Error: Debug;
}

/// A tower retry policy that never retries (but clones the request like a real one would).
#[derive(Clone, Copy, Debug)]
struct NeverRetry;

impl<E> tower::retry::Policy<u32, u32, E> for NeverRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut u32, _result: &mut Result<u32, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &u32) -> Option<u32> {
        Some(*req)
    }
}

const LONG: Duration = Duration::from_secs(30);

/// Every subject, in report order. Each service stack is built once here.
fn subjects(v: &mut impl Visit) {
    use tower_resilience::bulkhead::BulkheadLayer as TrBulkheadLayer;
    use tower_resilience::circuitbreaker::{CircuitBreakerLayer as TrCircuitBreakerLayer, SlidingWindowType};
    use tower_resilience::retry::RetryLayer as TrRetryLayer;
    use tower_resilience::timelimiter::TimeLimiterLayer as TrTimeLimiterLayer;

    v.visit("bare", Noop);

    // tower 0.5
    v.visit("tower_timeout", tower::timeout::Timeout::new(Noop, LONG));
    v.visit("tower_concurrency_limit", tower::limit::ConcurrencyLimit::new(Noop, 1024));
    v.visit("tower_retry", tower::retry::Retry::new(NeverRetry, Noop));

    // tower-resilience 0.13
    let cb = TrCircuitBreakerLayer::builder()
        .sliding_window_type(SlidingWindowType::CountBased)
        .sliding_window_size(100)
        .build()
        .expect("tower-resilience count breaker");
    v.visit("tr_breaker_count", cb.layer(Noop));
    // tower-resilience keeps one record per call in its time window and rescans it on every call
    // (O(calls in window)), so its cost grows with call rate x window length: a 1 s window keeps
    // the measurement at a steady state instead of slowing down for the whole run.
    let cb = TrCircuitBreakerLayer::builder()
        .sliding_window_type(SlidingWindowType::TimeBased)
        .sliding_window_duration(Duration::from_secs(1))
        .build()
        .expect("tower-resilience time breaker");
    v.visit("tr_breaker_time", cb.layer(Noop));
    let bh = TrBulkheadLayer::builder().max_concurrent_calls(1024).build().expect("tower-resilience bulkhead");
    v.visit("tr_bulkhead", bh.layer(Noop));
    let retry = TrRetryLayer::<u32, u32, Infallible>::builder().max_attempts(3).build();
    v.visit("tr_retry", retry.layer(Noop));
    let tl = TrTimeLimiterLayer::builder().timeout_duration(LONG).build();
    v.visit("tr_time_limiter", tl.layer(Noop));

    // tower-mesh
    #[cfg(feature = "circuit-breaker")]
    v.visit("mesh_breaker_count", mesh_breaker_count().layer(Noop));
    #[cfg(feature = "circuit-breaker")]
    v.visit("mesh_breaker_time", mesh_breaker_time().layer(Noop));
    #[cfg(feature = "bulkhead")]
    v.visit("mesh_bulkhead", mesh_bulkhead().layer(Noop));
    #[cfg(feature = "adaptive-concurrency")]
    v.visit("mesh_adaptive", mesh_adaptive().layer(Noop));
    #[cfg(feature = "timeout")]
    v.visit("mesh_timeout", tower_mesh::timeout::TimeoutLayer::new(LONG).layer(Noop));
    #[cfg(feature = "retry")]
    v.visit("mesh_retry", mesh_retry().layer(Noop));
    #[cfg(all(feature = "circuit-breaker", feature = "bulkhead"))]
    v.visit("mesh_breaker_bulkhead", mesh_breaker_bulkhead());
    #[cfg(all(feature = "circuit-breaker", feature = "bulkhead", feature = "retry", feature = "timeout"))]
    v.visit(
        "mesh_full_stack",
        tower::ServiceBuilder::new()
            .layer(tower_mesh::timeout::TimeoutLayer::new(LONG))
            .layer(mesh_retry())
            .layer(mesh_breaker_count())
            .layer(mesh_bulkhead())
            .service(Noop),
    );
}

/// Count window of 100 calls; with no failures it never trips.
#[cfg(feature = "circuit-breaker")]
fn mesh_breaker_count() -> tower_mesh::circuit_breaker::CircuitBreakerLayer {
    tower_mesh::circuit_breaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(50.0)
        .count_window(100)
        .minimum_calls(100)
        .build()
        .expect("tower-mesh count breaker")
}

/// Time window of 60 s; with no failures it never trips.
#[cfg(feature = "circuit-breaker")]
fn mesh_breaker_time() -> tower_mesh::circuit_breaker::CircuitBreakerLayer {
    tower_mesh::circuit_breaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(50.0)
        .time_window(Duration::from_secs(60))
        .minimum_calls(100)
        .build()
        .expect("tower-mesh time breaker")
}

/// The recommended inner stack: breaker outside the bulkhead, one shared state for all clones.
#[cfg(all(feature = "circuit-breaker", feature = "bulkhead"))]
fn mesh_breaker_bulkhead() -> tower_mesh::circuit_breaker::CircuitBreaker<tower_mesh::bulkhead::Bulkhead<Noop>> {
    tower::ServiceBuilder::new().layer(mesh_breaker_count()).layer(mesh_bulkhead()).service(Noop)
}

/// Two retries with the default backoff; the no-op service never fails, so it never retries.
#[cfg(feature = "retry")]
fn mesh_retry() -> tower_mesh::retry::RetryLayer {
    tower_mesh::retry::RetryLayer::builder().max_retries(2).build().expect("tower-mesh retry")
}

#[cfg(feature = "bulkhead")]
fn mesh_bulkhead() -> tower_mesh::bulkhead::BulkheadLayer {
    tower_mesh::bulkhead::BulkheadLayer::new(1024)
}

/// The adaptive limit (Gradient2, the default) at 1024: every call takes a slot and feeds a sample.
#[cfg(feature = "adaptive-concurrency")]
fn mesh_adaptive() -> tower_mesh::adaptive_concurrency::AdaptiveConcurrencyLayer {
    tower_mesh::adaptive_concurrency::AdaptiveConcurrencyLayer::builder()
        .initial_limit(1024)
        .max_limit(1024)
        .build()
        .expect("tower-mesh adaptive concurrency")
}

// ---------------------------------------------------------------------------------------------
// Allocations per call
// ---------------------------------------------------------------------------------------------

const ALLOC_CALLS: u64 = 10_000;

struct CountAllocations<'a> {
    cx: Context<'a>,
}

impl Visit for CountAllocations<'_> {
    fn visit<S>(&mut self, name: &'static str, mut svc: S)
    where
        S: Service<u32, Response = u32>,
        S::Error: Debug,
    {
        // Warm up: lazily initialised state (thread-locals, metrics handles) is not per call.
        for i in 0..100 {
            black_box(call_once(&mut svc, &mut self.cx, i));
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for i in 0..ALLOC_CALLS {
            black_box(call_once(&mut svc, &mut self.cx, i as u32));
        }
        let n = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!("allocations per call: {name} {}", n as f64 / ALLOC_CALLS as f64);
    }
}

#[path = "support/http_stack.rs"]
mod http_stack;

/// Allocations per request of the README's HTTP stack and of its tower equivalent, over the same
/// no-op HTTP service.
fn http_stack_allocations(cx: &mut Context<'_>) {
    fn count<S>(cx: &mut Context<'_>, name: &str, mut svc: S)
    where
        S: Service<http_stack::Req>,
        S::Error: Debug,
    {
        let request = || http::Request::new(String::new());
        for _ in 0..100 {
            black_box(call_once(&mut svc, cx, request()));
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..ALLOC_CALLS {
            black_box(call_once(&mut svc, cx, request()));
        }
        let n = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!("allocations per request: {name} {}", n as f64 / ALLOC_CALLS as f64);
    }
    count(cx, "http_bare", http_stack::NoopHttp);
    #[cfg(all(feature = "circuit-breaker", feature = "bulkhead", feature = "retry", feature = "timeout"))]
    count(cx, "http_readme_stack", http_stack::mesh());
    count(cx, "http_tower_stack", http_stack::tower());
}

// ---------------------------------------------------------------------------------------------
// Counting mode: instructions per call under callgrind (scripts/count-layers.sh)
// ---------------------------------------------------------------------------------------------

/// Runs `n` calls of one subject (after 100 to warm up) and nothing else.
struct CountCalls<'a> {
    cx: Context<'a>,
    subject: String,
    n: u64,
}

impl Visit for CountCalls<'_> {
    fn visit<S>(&mut self, name: &'static str, mut svc: S)
    where
        S: Service<u32, Response = u32>,
        S::Error: Debug,
    {
        if name != self.subject {
            return;
        }
        for i in 0..100 + self.n {
            black_box(call_once(&mut svc, &mut self.cx, black_box(i as u32)));
        }
        self.n = 0;
    }
}

// ---------------------------------------------------------------------------------------------
// Criterion
// ---------------------------------------------------------------------------------------------

const GROUP: &str = "layers";

struct Bench<'c, 'w> {
    group: criterion::BenchmarkGroup<'c, criterion::measurement::WallTime>,
    cx: Context<'w>,
}

impl Visit for Bench<'_, '_> {
    fn visit<S>(&mut self, name: &'static str, mut svc: S)
    where
        S: Service<u32, Response = u32>,
        S::Error: Debug,
    {
        let cx = &mut self.cx;
        self.group.bench_function(name, |b| {
            let mut i = 0u32;
            b.iter(|| {
                i = i.wrapping_add(1);
                call_once(&mut svc, cx, black_box(i))
            })
        });
    }
}

#[path = "support/medians.rs"]
mod medians;

// ---------------------------------------------------------------------------------------------
// Two-thread scaling
// ---------------------------------------------------------------------------------------------

const SCALING_CALLS: u64 = 10_000_000;

/// Runs `calls` calls on each of `threads` threads, each with its own clone of `svc` (so all
/// state is shared), and returns the total throughput in calls per second (best of 3).
///
/// Each worker reads the clock itself, after the barrier and after its last call, and the round
/// lasts from the first start to the last end: a clock read on the spawning thread would also
/// time how soon that thread and the workers get scheduled after the barrier (with 1 M calls per
/// worker, rounds of a few milliseconds came out at "3.9×" on two cores).
fn throughput<S>(handle: &tokio::runtime::Handle, svc: &S, threads: usize, calls: u64) -> f64
where
    S: Service<u32, Response = u32> + Clone + Send + 'static,
    S::Error: Debug,
{
    let mut best = 0.0f64;
    for _ in 0..3 {
        let barrier = Arc::new(Barrier::new(threads));
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let mut svc = svc.clone();
                let barrier = Arc::clone(&barrier);
                let handle = handle.clone();
                std::thread::spawn(move || {
                    let _rt = handle.enter();
                    let mut cx = Context::from_waker(noop_waker_ref());
                    // Warm up: the thread's stripe, lazily made state.
                    black_box(call_once(&mut svc, &mut cx, 0));
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..calls {
                        black_box(call_once(&mut svc, &mut cx, i as u32));
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        let spans: Vec<(Instant, Instant)> =
            workers.into_iter().map(|w| w.join().expect("scaling worker panicked")).collect();
        let first = spans.iter().map(|s| s.0).min().expect("at least one worker");
        let last = spans.iter().map(|s| s.1).max().expect("at least one worker");
        let secs = (last - first).as_secs_f64();
        best = best.max((threads as u64 * calls) as f64 / secs);
    }
    best
}

fn scaling<S>(handle: &tokio::runtime::Handle, name: &str, svc: S)
where
    S: Service<u32, Response = u32> + Clone + Send + 'static,
    S::Error: Debug,
{
    let one = throughput(handle, &svc, 1, SCALING_CALLS);
    let two = throughput(handle, &svc, 2, SCALING_CALLS / 2);
    println!(
        "scaling {name}: 1 thread {:.2} Mcalls/s, 2 threads {:.2} Mcalls/s, ratio {:.2}",
        one / 1e6,
        two / 1e6,
        two / one
    );
}

fn scaling_subjects(handle: &tokio::runtime::Handle) {
    scaling(handle, "tower_concurrency_limit", tower::limit::ConcurrencyLimit::new(Noop, 1024));
    #[cfg(feature = "bulkhead")]
    scaling(handle, "mesh_bulkhead", mesh_bulkhead().layer(Noop));
    #[cfg(feature = "adaptive-concurrency")]
    scaling(handle, "mesh_adaptive", mesh_adaptive().layer(Noop));
    #[cfg(feature = "circuit-breaker")]
    scaling(handle, "mesh_breaker_count", mesh_breaker_count().layer(Noop));
    #[cfg(all(feature = "circuit-breaker", feature = "bulkhead"))]
    scaling(handle, "mesh_breaker_bulkhead", mesh_breaker_bulkhead());
}

// ---------------------------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------------------------

/// How a subject's overhead is judged against a reference's overhead.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// `subject overhead / reference overhead <= x`.
    Ratio(f64),
    /// `subject overhead <= reference overhead + x ns`.
    PlusNs(f64),
    /// Informational ratio, no target.
    Info,
}

/// `(label, subject, reference, target)`; comparisons whose subjects were not built are skipped.
const CHECKS: &[(&str, &str, &str, Target)] = &[
    (
        "breaker (count) vs tower-resilience breaker (count)",
        "mesh_breaker_count",
        "tr_breaker_count",
        Target::Ratio(0.1),
    ),
    ("breaker (time) vs tower-resilience breaker (time)", "mesh_breaker_time", "tr_breaker_time", Target::Ratio(0.1)),
    ("breaker (count) vs tower ConcurrencyLimit", "mesh_breaker_count", "tower_concurrency_limit", Target::Ratio(1.0)),
    ("breaker (time) vs tower ConcurrencyLimit", "mesh_breaker_time", "tower_concurrency_limit", Target::Ratio(1.0)),
    ("breaker time window vs count window", "mesh_breaker_time", "mesh_breaker_count", Target::Info),
    ("breaker + bulkhead vs tower ConcurrencyLimit", "mesh_breaker_bulkhead", "tower_concurrency_limit", Target::Info),
    ("bulkhead vs tower ConcurrencyLimit", "mesh_bulkhead", "tower_concurrency_limit", Target::Ratio(1.0)),
    ("bulkhead vs tower-resilience bulkhead", "mesh_bulkhead", "tr_bulkhead", Target::Info),
    ("adaptive limit vs tower ConcurrencyLimit", "mesh_adaptive", "tower_concurrency_limit", Target::Info),
    ("adaptive limit vs bulkhead", "mesh_adaptive", "mesh_bulkhead", Target::Info),
    ("timeout vs tower Timeout", "mesh_timeout", "tower_timeout", Target::Ratio(1.0)),
    ("timeout vs tower-resilience TimeLimiter", "mesh_timeout", "tr_time_limiter", Target::Info),
    ("retry (no failure) vs tower Retry", "mesh_retry", "tower_retry", Target::PlusNs(5.0)),
    ("retry (no failure) vs tower-resilience retry", "mesh_retry", "tr_retry", Target::Info),
];

fn summary(medians: &BTreeMap<String, f64>) {
    if medians.is_empty() {
        println!("summary: no fresh criterion estimates found (filtered run or --test mode)");
        return;
    }
    println!("\nsummary (median ns/call; overhead = median - bare median):");
    let bare = medians.get("bare").copied();
    for (name, median) in medians {
        match bare {
            Some(bare) => println!("  {name:<28} {median:>10.2} ns   overhead {:>10.2} ns", median - bare),
            None => println!("  {name:<28} {median:>10.2} ns"),
        }
    }
    let Some(bare) = bare else {
        println!("  (no bare baseline measured, no ratios)");
        return;
    };
    println!("overhead ratios:");
    for &(label, subject, reference, target) in CHECKS {
        let (Some(s), Some(r)) = (medians.get(subject), medians.get(reference)) else { continue };
        let (so, ro) = (s - bare, r - bare);
        let ratio = so / ro;
        let (goal, ok) = match target {
            Target::Ratio(x) => (format!("target <= {x}x"), Some(ratio <= x)),
            Target::PlusNs(x) => (format!("target <= reference + {x} ns"), Some(so <= ro + x)),
            Target::Info => ("no target".to_string(), None),
        };
        let verdict = match ok {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "",
        };
        match target {
            Target::PlusNs(_) => {
                println!("  {label}: {so:.2} ns vs {ro:.2} ns, diff {:.2} ns ({goal}) {verdict}", so - ro)
            }
            _ => println!("  {label}: {so:.2} ns / {ro:.2} ns = {ratio:.3}x ({goal}) {verdict}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Criterion group of the clock reads.
const CLOCK_GROUP: &str = "clock";

fn main() {
    let started = SystemTime::now();
    // A multi-thread runtime, as `#[tokio::main]` builds, with one worker that stays idle (the
    // calls are driven by hand on this thread): its timer driver runs, so timers fire as in an
    // application — the time-window breaker's lock-free success path relies on one.
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().expect("tokio runtime");
    let _rt = rt.enter();

    // `LAYERS_COUNT=subject:n`: `n` calls of one subject, for callgrind (scripts/count-layers.sh).
    if let Ok(spec) = std::env::var("LAYERS_COUNT") {
        let (subject, n) = spec.split_once(':').expect("LAYERS_COUNT is subject:n, e.g. mesh_timeout:1000");
        let n = n.parse().expect("LAYERS_COUNT: n is a number");
        let mut count = CountCalls { cx: Context::from_waker(noop_waker_ref()), subject: subject.to_owned(), n };
        subjects(&mut count);
        assert_eq!(count.n, 0, "LAYERS_COUNT: unknown subject {subject}");
        return;
    }

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();

    // `cargo test --benches` passes `--test` (criterion then runs each benchmark once); skip the
    // extra printouts there and for `--list`.
    let test_mode = std::env::args().any(|a| a == "--test" || a == "--list");
    if !test_mode {
        subjects(&mut CountAllocations { cx: Context::from_waker(noop_waker_ref()) });
        http_stack_allocations(&mut Context::from_waker(noop_waker_ref()));
        scaling_subjects(rt.handle());
    }

    {
        let group = criterion.benchmark_group(GROUP);
        let mut bench = Bench { group, cx: Context::from_waker(noop_waker_ref()) };
        subjects(&mut bench);
        bench.group.finish();
    }
    {
        let mut group = criterion.benchmark_group(CLOCK_GROUP);
        group.bench_function("tokio_instant_now", |b| b.iter(tokio::time::Instant::now));
        group.bench_function("std_instant_now", |b| b.iter(Instant::now));
        group.finish();
    }
    criterion.final_summary();

    if !test_mode {
        summary(&medians::read_medians(GROUP, started));
        let clock = medians::read_medians(CLOCK_GROUP, started);
        if let (Some(tokio), Some(std)) = (clock.get("tokio_instant_now"), clock.get("std_instant_now")) {
            println!("one clock read: tokio::time::Instant::now {tokio:.2} ns (with test-util), std::time::Instant::now {std:.2} ns");
        }
    }
}
