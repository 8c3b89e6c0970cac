//! Per-request routing overhead of the discovery layer against tower's own balancer over the
//! same static list of endpoints, and against a bare call.
//!
//! Subjects, each built once:
//! - `bare`: the no-op endpoint service called directly;
//! - `tower_balance_p2c`: `tower::balance::p2c::Balance` over `PeakEwmaDiscover` of a
//!   `tower::discover::ServiceList` of 3 no-op endpoint services (power of two choices over
//!   peak-EWMA: the algorithm `DiscoveryLayer` uses by default);
//! - `mesh_discovery_p2c`: `DiscoveryLayer` (defaults: p2c over peak-EWMA, outlier ejection on)
//!   around the no-op service, the logical name `orders` resolved in a `Registry` holding a
//!   static list of 3 endpoints; each call picks one and rewrites the request URI to it;
//! - `mesh_discovery_rr`: the same with round-robin.
//!
//! Every subject gets a clone of the same prebuilt `GET http://orders/v1/items`. One measured call
//! is `poll_ready` + `call` + polling the response future to completion, driven by hand with a
//! no-op waker inside a tokio runtime context (as in `benches/layers.rs`), so no executor overhead
//! is measured.
//!
//! Before the criterion run the bench prints heap allocations per call for every subject; after
//! it, the overhead of each subject (median minus bare median) and the ratio ours / tower
//! Balance (target <= 1.1x), read from criterion's estimates.
//!
//! Run: `cargo bench --no-default-features --features discovery --bench discovery`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Ready;
use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use criterion::Criterion;
use futures::task::noop_waker_ref;
use http::{Request, Response, Uri};
use tower::{Layer, Service};
use tower_mesh::discovery::{Balance, DiscoveryLayer, Registry};

// ---------------------------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------------------------

#[path = "support/alloc.rs"]
mod alloc;
use alloc::ALLOCATIONS;

// ---------------------------------------------------------------------------------------------
// The no-op endpoint and the hand-driven call
// ---------------------------------------------------------------------------------------------

type Req = Request<()>;
type Res = Response<()>;

/// An endpoint (or an HTTP client standing in for all of them): always ready, answers at once
/// with an empty response.
#[derive(Clone, Copy, Debug)]
struct Noop;

impl Service<Req> for Noop {
    type Response = Res;
    type Error = Infallible;
    type Future = Ready<Result<Res, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        black_box(req.uri());
        std::future::ready(Ok(Response::new(())))
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
        S: Service<Req, Response = Res>,
        S::Error: Debug;
}

/// The static list: three endpoints behind the logical name `orders`.
const ENDPOINTS: [&str; 3] = ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"];

fn mesh_discovery(balance: Balance) -> tower_mesh::discovery::Discovery<Noop> {
    let registry = Registry::new();
    registry.set_static("orders", ENDPOINTS).expect("static endpoints");
    DiscoveryLayer::builder(registry).balance(balance).build().expect("discovery layer").layer(Noop)
}

/// Every subject, in report order. Each service stack is built once here.
fn subjects(v: &mut impl Visit) {
    use tower::balance::p2c::Balance as TowerBalance;
    use tower::discover::ServiceList;
    use tower::load::{CompleteOnResponse, PeakEwmaDiscover};

    v.visit("bare", Noop);

    // tower 0.5: p2c over peak-EWMA (tower's default RTT guess and decay window, as ours).
    let list = ServiceList::new(ENDPOINTS.map(|_| Noop));
    let discover = PeakEwmaDiscover::new::<Req>(
        list,
        Duration::from_millis(1),
        Duration::from_secs(10),
        CompleteOnResponse::default(),
    );
    v.visit("tower_balance_p2c", TowerBalance::new(discover));

    // tower-mesh
    v.visit("mesh_discovery_p2c", mesh_discovery(Balance::PeakEwma));
    v.visit("mesh_discovery_rr", mesh_discovery(Balance::RoundRobin));
}

/// The request every subject gets (a clone per call).
fn request() -> Req {
    Request::get(Uri::from_static("http://orders/v1/items")).body(()).expect("request")
}

// ---------------------------------------------------------------------------------------------
// Allocations per call
// ---------------------------------------------------------------------------------------------

const ALLOC_CALLS: u64 = 10_000;

struct CountAllocations<'a> {
    cx: Context<'a>,
    req: Req,
}

impl Visit for CountAllocations<'_> {
    fn visit<S>(&mut self, name: &'static str, mut svc: S)
    where
        S: Service<Req, Response = Res>,
        S::Error: Debug,
    {
        // Warm up: lazily initialised state (the route table, metrics handles) is not per call.
        for _ in 0..100 {
            black_box(call_once(&mut svc, &mut self.cx, self.req.clone()));
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..ALLOC_CALLS {
            black_box(call_once(&mut svc, &mut self.cx, self.req.clone()));
        }
        let n = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!("allocations per call: {name} {}", n as f64 / ALLOC_CALLS as f64);
    }
}

// ---------------------------------------------------------------------------------------------
// Criterion
// ---------------------------------------------------------------------------------------------

const GROUP: &str = "discovery";

struct Bench<'c, 'w> {
    group: criterion::BenchmarkGroup<'c, criterion::measurement::WallTime>,
    cx: Context<'w>,
    req: Req,
}

impl Visit for Bench<'_, '_> {
    fn visit<S>(&mut self, name: &'static str, mut svc: S)
    where
        S: Service<Req, Response = Res>,
        S::Error: Debug,
    {
        let cx = &mut self.cx;
        let req = &self.req;
        self.group.bench_function(name, |b| b.iter(|| call_once(&mut svc, cx, black_box(req).clone())));
    }
}

#[path = "support/medians.rs"]
mod medians;

// ---------------------------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------------------------

/// `(label, subject, reference, target ratio of the overheads)`; `None`: informational.
const CHECKS: &[(&str, &str, &str, Option<f64>)] = &[
    ("discovery (p2c) vs tower Balance (p2c)", "mesh_discovery_p2c", "tower_balance_p2c", Some(1.1)),
    ("discovery (round-robin) vs tower Balance (p2c)", "mesh_discovery_rr", "tower_balance_p2c", None),
    ("discovery round-robin vs p2c", "mesh_discovery_rr", "mesh_discovery_p2c", None),
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
            Some(bare) => println!("  {name:<24} {median:>10.2} ns   overhead {:>10.2} ns", median - bare),
            None => println!("  {name:<24} {median:>10.2} ns"),
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
        let (goal, verdict) = match target {
            Some(x) => (format!("target <= {x}x"), if ratio <= x { "ok" } else { "MISSED" }),
            None => ("no target".to_string(), ""),
        };
        println!("  {label}: {so:.2} ns / {ro:.2} ns = {ratio:.3}x ({goal}) {verdict}");
        println!("    (whole call incl. the bare call: {s:.2} ns / {r:.2} ns = {:.3}x)", s / r);
    }
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let started = SystemTime::now();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime");
    let _rt = rt.enter();

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();

    // `cargo test --benches` passes `--test` (criterion then runs each benchmark once); skip the
    // extra printouts there and for `--list`.
    let test_mode = std::env::args().any(|a| a == "--test" || a == "--list");
    if !test_mode {
        subjects(&mut CountAllocations { cx: Context::from_waker(noop_waker_ref()), req: request() });
    }

    {
        let group = criterion.benchmark_group(GROUP);
        let mut bench = Bench { group, cx: Context::from_waker(noop_waker_ref()), req: request() };
        subjects(&mut bench);
        bench.group.finish();
    }
    criterion.final_summary();

    if !test_mode {
        summary(&medians::read_medians(GROUP, started));
    }
}
