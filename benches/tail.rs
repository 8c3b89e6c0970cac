//! The tail at scale: hedging against a loopback upstream whose latency is
//! ~1 ms for 99 % of requests and 50–200 ms for the other 1 % (independent
//! per request). A user request fans out to 1, 10 or 100 sub-requests and is
//! as slow as its slowest. For each fan-out: p50 / p99 / p99.9 of user
//! requests and the extra requests the upstream saw, without hedging, with
//! tower-mesh's `HedgeLayer` and with tower's `hedge`, in one run (both at
//! p95 of the previous second's latencies, at least 100 answers; HedgeLayer
//! with its default 5 % budget; tower's `Hedge`, which is not `Clone`, behind
//! a `Buffer`, and given its percentile as the quantile 0.95 it expects).
//!
//! Then the happy-path cost of a call that is not hedged (a no-op service
//! answering at once, driven by hand): ns per call and heap allocations per
//! call for the bare service, `RetryLayer` and `HedgeLayer`.
//!
//! Then overload (issue 27): an upstream on 127.0.0.1 with C workers (each
//! request holds one for 5 ms, the others queue) offered 2 × its capacity
//! through hyper-util's client by an open-loop arrival process, behind no
//! limit, static bulkheads 4× too high and 2× too low, tower-mesh's
//! `AdaptiveConcurrencyLayer` (Gradient2, AIMD; feature
//! `adaptive-concurrency`) and tower-resilience's adaptive limiter: goodput
//! (answers within 50 ms), latency of the calls let through, rejections.
//! And the convergence run: C halves from 32 to 16 workers mid-run; the
//! adaptive subjects' limit and goodput per 500 ms. The workload's figures
//! can be changed with `OVERLOAD_*` environment variables (see
//! `support/overload.rs`).
//!
//! Run all: `cargo bench --features hedge,adaptive-concurrency --bench tail`
//! (about four minutes). Some parts only: filters after `--`; a section runs
//! when its name contains one of them: `hedge-tail-at-scale`,
//! `hedge-happy-path`, `overload-table`, `overload-convergence` (so `--
//! hedge` runs both hedging parts, `-- overload` both overload parts, `--
//! convergence` the convergence run alone).

use std::convert::Infallible;
use std::future::{Future, Ready};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::task::noop_waker_ref;
use futures::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceExt};
use tower_mesh::hedge::{HedgeDelay, HedgeLayer};
use tower_mesh::retry::{HttpRequests, RetryBudget, RetryLayer, RetryRequests};
use tower_mesh::BoxError;

#[path = "support/alloc.rs"]
mod alloc;
use alloc::ALLOCATIONS;
#[path = "support/overload.rs"]
mod overload;
#[path = "support/overload_runs.rs"]
mod overload_runs;

type Req = Request<Full<Bytes>>;

/// The upstream: 1 % of requests take 50–200 ms, the others 1 ms.
async fn upstream(served: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let served = served.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    served.fetch_add(1, Ordering::Relaxed);
                    let ms = if fastrand::u32(0..100) == 0 { fastrand::u64(50..=200) } else { 1 };
                    async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

/// tower's hedge policy, copying requests as the retry layer does.
#[derive(Clone)]
struct TowerPolicy(HttpRequests);

impl tower::hedge::Policy<Req> for TowerPolicy {
    fn clone_request(&self, req: &Req) -> Option<Req> {
        RetryRequests::<Req, Response<Incoming>>::clone_request(&self.0, req)
    }
    fn can_retry(&self, _req: &Req) -> bool {
        true
    }
}

struct Row {
    p50: Duration,
    p99: Duration,
    p999: Duration,
    extra: f64,
}

/// `users` user requests of `fanout` sub-requests each, `parallel` users at
/// a time; latencies of the user requests and the extra load.
async fn run<S>(svc: &S, addr: SocketAddr, served: &AtomicU64, fanout: usize, users: usize) -> Row
where
    S: Service<Req, Response = Response<Incoming>> + Clone,
    S::Error: Into<BoxError>,
{
    let parallel = (100 / fanout).max(1);
    let before = served.load(Ordering::Relaxed);
    let user = |_| async move {
        let start = Instant::now();
        let subs = (0..fanout).map(|_| async move {
            let req = Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new())).unwrap();
            let res = svc.clone().oneshot(req).await.map_err(Into::into).expect("upstream answers");
            res.into_body().collect().await.expect("a body");
        });
        futures::future::join_all(subs).await;
        start.elapsed()
    };
    let mut lat: Vec<Duration> = futures::stream::iter(0..users).map(user).buffer_unordered(parallel).collect().await;
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    let sent = served.load(Ordering::Relaxed) - before;
    Row { p50: at(0.5), p99: at(0.99), p999: at(0.999), extra: sent as f64 / (users * fanout) as f64 - 1.0 }
}

/// Runs the workload until the hedgers' latency windows are full.
async fn warm_up<S>(svc: &S, addr: SocketAddr, served: &AtomicU64, fanout: usize)
where
    S: Service<Req, Response = Response<Incoming>> + Clone,
    S::Error: Into<BoxError>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2200) {
        run(svc, addr, served, fanout, (200 / fanout).max(2)).await;
    }
}

fn print(fanout: usize, name: &str, r: &Row) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {fanout} | {name} | {:.1} | {:.1} | {:.1} | {:+.1} % |",
        ms(r.p50),
        ms(r.p99),
        ms(r.p999),
        r.extra * 100.0
    );
}

async fn tail() {
    let served = Arc::new(AtomicU64::new(0));
    let addr = upstream(served.clone()).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let window = Duration::from_secs(1);
    println!("| fan-out | subject | p50 ms | p99 ms | p99.9 ms | extra requests |");
    println!("|---|---|---|---|---|---|");
    for (fanout, users) in [(1, 3000), (10, 1000), (100, 100)] {
        warm_up(&client, addr, &served, fanout).await;
        print(fanout, "no hedging", &run(&client, addr, &served, fanout, users).await);

        let ours = HedgeLayer::builder()
            .name("tail")
            .delay(HedgeDelay::Percentile { percentile: 95.0, min_samples: 100, window })
            .requests(HttpRequests::new())
            .build()
            .unwrap()
            .layer(client.clone());
        warm_up(&ours, addr, &served, fanout).await;
        print(fanout, "tower-mesh HedgeLayer", &run(&ours, addr, &served, fanout, users).await);

        // tower's `latency_percentile` goes to hdrhistogram's `value_at_quantile`, which caps it at
        // 1.0: 95.0 would be the window's maximum (tower's own tests pass 0.9).
        let theirs =
            tower::hedge::Hedge::new::<Req>(client.clone(), TowerPolicy(HttpRequests::new()), 100, 0.95, window);
        // tower's Hedge is not Clone: shared through a Buffer.
        let theirs = tower::buffer::Buffer::new(theirs, 1024);
        warm_up(&theirs, addr, &served, fanout).await;
        print(fanout, "tower hedge", &run(&theirs, addr, &served, fanout, users).await);
    }
}

/// Always ready, answers at once.
#[derive(Clone, Copy)]
struct Noop;

impl Service<u32> for Noop {
    type Response = u32;
    type Error = Infallible;
    type Future = Ready<Result<u32, Infallible>>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: u32) -> Self::Future {
        std::future::ready(Ok(req))
    }
}

/// ns per call (best of 5 rounds) and allocations per call of `svc`, calls
/// driven by hand.
fn happy<S: Service<u32>>(name: &str, mut svc: S) {
    const CALLS: u32 = 200_000;
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut round = |calls: u32| {
        let start = Instant::now();
        for i in 0..calls {
            assert!(svc.poll_ready(&mut cx).is_ready());
            let fut = pin!(svc.call(i));
            assert!(fut.poll(&mut cx).is_ready());
        }
        start.elapsed()
    };
    round(CALLS);
    let best = (0..5).map(|_| round(CALLS)).min().unwrap();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    round(1000);
    let allocs = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 1000.0;
    println!("| {name} | {:.1} | {allocs} |", best.as_nanos() as f64 / f64::from(CALLS));
}

/// The happy path of a call that is not hedged.
fn happy_path() {
    println!("| happy path (no hedge sent) | ns/call | allocations/call |");
    println!("|---|---|---|");
    happy("bare", Noop);
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.05);
    let retry = RetryLayer::builder().max_retries(2).budget(budget).build().unwrap();
    happy("RetryLayer (max_retries 2, budget)", retry.layer(Noop));
    let fixed = HedgeLayer::builder().delay(HedgeDelay::Fixed(Duration::from_millis(10))).build().unwrap();
    happy("HedgeLayer (fixed delay, budget)", fixed.layer(Noop));
    let pct = HedgeLayer::builder()
        .delay(HedgeDelay::Percentile { percentile: 95.0, min_samples: 1, window: Duration::from_millis(1) })
        .build()
        .unwrap();
    let mut warm = pct.layer(Noop);
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(2));
        let _ = futures::executor::block_on(warm.call(i));
    }
    assert!(pct.current_delay().is_some(), "percentile mode on");
    happy("HedgeLayer (p95 delay, budget)", warm);
}

/// Runs the sections named by the filters given after `--` (a section runs
/// when its name contains one of them), or all of them.
fn main() {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |section: &str| filters.is_empty() || filters.iter().any(|f| section.contains(f.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if wanted("hedge-tail-at-scale") {
        rt.block_on(tail());
        println!();
    }
    if wanted("hedge-happy-path") {
        let _guard = rt.enter();
        happy_path();
        println!();
    }
    let load = overload::Load::from_env();
    if wanted("overload-table") {
        rt.block_on(overload_runs::table(load));
        println!();
    }
    if wanted("overload-convergence") {
        rt.block_on(overload_runs::convergence(load));
    }
}
