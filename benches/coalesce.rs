//! Request coalescing: its happy-path cost (every request with a key of its
//! own, so nothing is shared) against the bulkhead's and a bare service, and
//! 1,000 concurrent identical GETs against one upstream.
//!
//! One measured call is `poll_ready` + `call` + polling the response future
//! to completion on a no-op `http::Request<()>` → `http::Response<()>`
//! service, driven by hand with a no-op waker (`support/drive.rs`), so only
//! the layer is measured. Before the criterion run the bench prints heap
//! allocations per call and the fan-in result; after it, the overhead ratio
//! (subject median minus bare median) against the bulkhead's.
//!
//! Run: `cargo bench --all-features --bench coalesce`. Instructions per call:
//! `COALESCE_COUNT=coalesce:N valgrind --tool=callgrind <bench binary>` for two
//! values of N (the difference over the difference of N).

use std::convert::Infallible;
use std::future::Ready;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::Criterion;
use futures::task::noop_waker_ref;
use http::{Request, Response, Uri};
use tower::{Layer, Service, ServiceExt};
use tower_mesh::bulkhead::BulkheadLayer;
use tower_mesh::coalesce::{http_key, CoalesceLayer, HttpKey};

#[path = "support/alloc.rs"]
mod alloc;
use alloc::ALLOCATIONS;

#[path = "support/drive.rs"]
mod drive;
use drive::call_once;

#[path = "support/medians.rs"]
mod medians;

/// Always ready, answers at once.
#[derive(Clone, Copy, Debug)]
struct Noop;

impl Service<Request<()>> for Noop {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(())))
    }
}

type KeyFn = fn(&Request<()>) -> Option<HttpKey>;

fn request(uri: &Uri) -> Request<()> {
    let mut req = Request::new(());
    *req.uri_mut() = uri.clone();
    req
}

fn allocations_per_call<S>(name: &str, mut svc: S, uri: &Uri)
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    for _ in 0..1_000 {
        call_once(&mut svc, &mut cx, request(uri));
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..10_000 {
        call_once(&mut svc, &mut cx, request(uri));
    }
    let per_call = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 10_000.0;
    println!("  {name:<10} {per_call:.2} allocations per call");
}

/// 1,000 concurrent identical GETs through the layer to an upstream that
/// answers after 10 ms: how many upstream calls, and how long it took.
fn fan_in(rt: &tokio::runtime::Runtime) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let upstream = tower::service_fn(move |_: Request<()>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, Infallible>(Response::new(()))
        }
    });
    let svc = CoalesceLayer::new(http_key as KeyFn).layer(upstream);
    let started = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> =
            (0..1_000).map(|_| tokio::spawn(svc.clone().oneshot(Request::get("/menu").body(()).unwrap()))).collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    println!(
        "  1,000 concurrent identical GETs: {} upstream call(s), all answered in {:.1} ms",
        calls.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64() * 1e3
    );
}

fn main() {
    let started = std::time::SystemTime::now();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _guard = rt.enter();
    let uri: Uri = "http://upstream/menu".parse().unwrap();
    let coalesce = || CoalesceLayer::new(http_key as KeyFn).layer(Noop);
    let bulkhead = || BulkheadLayer::new(1024).layer(Noop);

    // `COALESCE_COUNT=subject:N`: only N calls of one subject, for counting
    // instructions under callgrind (see BENCHMARKS.md).
    if let Ok(spec) = std::env::var("COALESCE_COUNT") {
        let (subject, n) = spec.split_once(':').expect("COALESCE_COUNT=subject:N");
        let n: usize = n.parse().expect("a number of calls");
        let mut cx = Context::from_waker(noop_waker_ref());
        match subject {
            "bare" => (0..n).for_each(|_| drop(black_box(call_once(&mut Noop, &mut cx, request(&uri))))),
            "bulkhead" => {
                let mut s = bulkhead();
                (0..n).for_each(|_| drop(black_box(call_once(&mut s, &mut cx, request(&uri)))));
            }
            "coalesce" => {
                let mut s = coalesce();
                (0..n).for_each(|_| drop(black_box(call_once(&mut s, &mut cx, request(&uri)))));
            }
            other => panic!("unknown subject {other}"),
        }
        return;
    }

    println!("coalesce bench: allocations per call (no request shared)");
    allocations_per_call("bare", Noop, &uri);
    allocations_per_call("bulkhead", bulkhead(), &uri);
    allocations_per_call("coalesce", coalesce(), &uri);
    fan_in(&rt);

    let mut c = Criterion::default().configure_from_args().warm_up_time(Duration::from_secs(1));
    let mut group = c.benchmark_group("coalesce");
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut bare = Noop;
    group.bench_function("bare", |b| b.iter(|| black_box(call_once(&mut bare, &mut cx, request(&uri)))));
    let mut bh = bulkhead();
    group.bench_function("bulkhead", |b| b.iter(|| black_box(call_once(&mut bh, &mut cx, request(&uri)))));
    let mut co = coalesce();
    group.bench_function("coalesce", |b| b.iter(|| black_box(call_once(&mut co, &mut cx, request(&uri)))));
    group.finish();
    c.final_summary();

    let m = medians::read_medians("coalesce", started);
    if let (Some(bare), Some(bh), Some(co)) = (m.get("bare"), m.get("bulkhead"), m.get("coalesce")) {
        let over = |x: &f64| x - bare;
        println!(
            "overhead over bare: bulkhead {:.1} ns, coalesce {:.1} ns: coalesce / bulkhead = {:.2}x (goal <= 2x)",
            over(bh),
            over(co),
            over(co) / over(bh)
        );
    }
}
