//! The rate limiter's admit path against governor used directly, tower's
//! `RateLimit` and tower-resilience's `RateLimiter`; heap allocations per call; the keyed lookup; and, when a
//! Redis answers at TOWER_MESH_REDIS_URL (default redis://127.0.0.1:6379),
//! exact-mode decisions per second and p99 latency against a raw redis-rs
//! EVALSHA loop with the same script and concurrency, and leased mode's
//! Redis operations per admitted call.
//!
//! One measured call is `poll_ready` + `call` + polling the response future,
//! driven by hand with a no-op waker inside a tokio runtime, on a limit so
//! high that every call is admitted (the admit path).
//!
//! Run: `cargo bench --all-features --bench rate_limit` (short:
//! `-- --measurement-time 2 --warm-up-time 1`).

use std::convert::Infallible;
use std::future::Ready;
use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::Criterion;
use futures::task::noop_waker_ref;
use tower::{Layer, Service};
use tower_mesh::rate_limit::{RateLimitConfig, RateLimitLayer};

#[path = "support/alloc.rs"]
mod alloc;
#[path = "support/drive.rs"]
mod drive;

#[derive(Clone, Copy, Debug)]
struct Noop;

impl Service<http::Request<()>> for Noop {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<()>) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

const HUGE: &str = "1000000000/s";

fn allocations<S: Service<http::Request<()>>>(svc: &mut S, req: &http::Request<()>) -> f64
where
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    for _ in 0..100 {
        drive::call_once(svc, &mut cx, clone(req));
    }
    let n = 10_000;
    let reqs: Vec<_> = (0..n).map(|_| clone(req)).collect();
    let before = alloc::ALLOCATIONS.load(Ordering::Relaxed);
    for r in reqs {
        drive::call_once(svc, &mut cx, r);
    }
    (alloc::ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

fn clone(req: &http::Request<()>) -> http::Request<()> {
    let mut r = http::Request::new(());
    *r.headers_mut() = req.headers().clone();
    r
}

/// tower-resilience's rate limiter, at a limit every call is under.
fn resilience_layer() -> tower_resilience::ratelimiter::RateLimiterLayer {
    tower_resilience::ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(1_000_000_000)
        .refresh_period(Duration::from_secs(1))
        .timeout_duration(Duration::ZERO)
        .build()
        .expect("a valid configuration")
}

fn governor_direct() -> governor::DefaultDirectRateLimiter {
    governor::RateLimiter::direct(governor::Quota::per_second(std::num::NonZeroU32::new(1_000_000_000).unwrap()))
}

fn keyed_config() -> RateLimitConfig {
    RateLimitConfig {
        rate: HUGE.parse().unwrap(),
        key: Some("header:x-api-key".parse().unwrap()),
        ..Default::default()
    }
}

fn request() -> http::Request<()> {
    http::Request::builder().header("x-api-key", "key-1").body(()).unwrap()
}

/// `RATE_LIMIT_COUNT=<subject>:<n>`: `n` admitted calls of one subject, then
/// exit — for instruction counts (`scripts/count-rate-limit.sh`). Subjects:
/// `governor` (`check()` alone), `bare` (the no-op service driven by hand),
/// `layer`, `keyed`, `tower`, `resilience` (each around the no-op service).
fn count(spec: &str, rt: &tokio::runtime::Runtime) {
    let (subject, n) = spec.split_once(':').expect("<subject>:<n>");
    let n: u64 = n.parse().expect("a count");
    let _guard = rt.enter();
    let req = request();
    let mut cx = Context::from_waker(noop_waker_ref());
    fn run<S: Service<http::Request<()>>>(mut svc: S, n: u64, cx: &mut Context<'_>, req: &http::Request<()>)
    where
        S::Error: std::fmt::Debug,
    {
        for _ in 0..n {
            black_box(drive::call_once(&mut svc, cx, clone(req)));
        }
    }
    match subject {
        "governor" => {
            let gov = governor_direct();
            for _ in 0..n {
                black_box(gov.check()).unwrap();
            }
        }
        "bare" => run(Noop, n, &mut cx, &req),
        "layer" => run(RateLimitLayer::new(HUGE.parse().unwrap(), 1_000_000).layer(Noop), n, &mut cx, &req),
        "keyed" => run(keyed_config().layer("bench").unwrap().layer(Noop), n, &mut cx, &req),
        "tower" => run(
            tower::limit::RateLimit::new(Noop, tower::limit::rate::Rate::new(u64::MAX / 2, Duration::from_secs(1))),
            n,
            &mut cx,
            &req,
        ),
        "resilience" => run(resilience_layer().layer(Noop), n, &mut cx, &req),
        other => panic!("unknown subject {other}"),
    }
}

fn local(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let _guard = rt.enter();
    let req = request();
    let mut unkeyed = RateLimitLayer::new(HUGE.parse().unwrap(), 1_000_000).layer(Noop);
    let mut keyed = keyed_config().layer("bench").unwrap().layer(Noop);
    let mut configured_local =
        RateLimitConfig { rate: HUGE.parse().unwrap(), ..Default::default() }.layer("bench").unwrap().layer(Noop);
    let gov = governor_direct();
    let mut tower_rl =
        tower::limit::RateLimit::new(Noop, tower::limit::rate::Rate::new(u64::MAX / 2, Duration::from_secs(1)));
    let mut resilience = resilience_layer().layer(Noop);

    println!(
        "allocations per call: tower-mesh unkeyed {:.3}, configured keyed (header) {:.3}, tower RateLimit {:.3}, \
         tower-resilience {:.3}",
        allocations(&mut unkeyed, &req),
        allocations(&mut keyed, &req),
        allocations(&mut tower_rl, &req),
        allocations(&mut resilience, &req)
    );

    let mut g = c.benchmark_group("rate_limit");
    g.bench_function("governor check (direct)", |b| b.iter(|| black_box(gov.check()).is_ok()));
    let mut cx = Context::from_waker(noop_waker_ref());
    g.bench_function("tower-mesh RateLimitLayer", |b| {
        b.iter_batched(|| clone(&req), |r| drive::call_once(&mut unkeyed, &mut cx, r), criterion::BatchSize::SmallInput)
    });
    g.bench_function("tower-mesh configured local", |b| {
        b.iter_batched(
            || clone(&req),
            |r| drive::call_once(&mut configured_local, &mut cx, r),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("tower-mesh keyed (header)", |b| {
        b.iter_batched(|| clone(&req), |r| drive::call_once(&mut keyed, &mut cx, r), criterion::BatchSize::SmallInput)
    });
    g.bench_function("tower RateLimit", |b| {
        b.iter_batched(
            || clone(&req),
            |r| drive::call_once(&mut tower_rl, &mut cx, r),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("tower-resilience RateLimiter", |b| {
        b.iter_batched(
            || clone(&req),
            |r| drive::call_once(&mut resilience, &mut cx, r),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("bare service", |b| {
        let mut bare = Noop;
        b.iter_batched(|| clone(&req), |r| drive::call_once(&mut bare, &mut cx, r), criterion::BatchSize::SmallInput)
    });
    g.finish();
}

/// Exact mode against raw EVALSHA: `conc` tasks, `per_task` decisions each,
/// in `REDIS_ROUNDS` rounds (default 5) that alternate which loop goes
/// first; the median ratio is the figure.
async fn redis(url: &str) {
    use tower_mesh::rate_limit::redis::{RedisRateLimiter, SCRIPT};
    let conc = 32;
    let per_task = 2000;
    let rounds: usize = std::env::var("REDIS_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let name = format!("bench-{}", std::process::id());
    let layer = RedisRateLimiter::builder(url)
        .name(&name)
        .rate(HUGE.parse().unwrap())
        .burst(1_000_000)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let svc = layer.layer(tower::service_fn(|_: ()| async { Ok::<_, Infallible>(()) }));
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).query_async(&mut conn).await.unwrap();
    let raw_key = format!("tower-mesh:rl:{name}-raw:global");
    // Raw: the same script, arguments and concurrency on one multiplexed connection.
    let raw = || {
        let started = Instant::now();
        let tasks = (0..conc)
            .map(|_| {
                let (mut conn, sha, key) = (conn.clone(), sha.clone(), raw_key.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per_task);
                    for _ in 0..per_task {
                        let t = Instant::now();
                        let r: Vec<i64> = redis::cmd("EVALSHA")
                            .arg(&sha)
                            .arg(1)
                            .arg(&key)
                            .arg(1u64)
                            .arg(1_000_000)
                            .arg(1)
                            .arg(0)
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        black_box(r);
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        summarize(tasks, started)
    };
    let ours = || {
        let started = Instant::now();
        let tasks = (0..conc)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    use tower::ServiceExt;
                    let mut lat = Vec::with_capacity(per_task);
                    for _ in 0..per_task {
                        let t = Instant::now();
                        svc.clone().oneshot(()).await.unwrap();
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        summarize(tasks, started)
    };
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let (raw, ours) = if round % 2 == 0 {
            let raw = raw().await;
            (raw, ours().await)
        } else {
            let ours = ours().await;
            (raw().await, ours)
        };
        let first = if round % 2 == 0 { "raw" } else { "ours" };
        println!(
            "redis exact mode, round {round} ({first} first), {conc} concurrent: raw EVALSHA {:.0}/s p99 {:?}; RedisRateLimiter {:.0}/s p99 {:?}; throughput ratio {:.3}",
            raw.0, raw.1, ours.0, ours.1, ours.0 / raw.0
        );
        ratios.push(ours.0 / raw.0);
    }
    ratios.sort_by(f64::total_cmp);
    println!("redis exact mode, median throughput ratio over {rounds} rounds: {:.3}", ratios[rounds / 2]);
}

async fn summarize(tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>, started: Instant) -> (f64, Duration) {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let per_sec = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort_unstable();
    (per_sec, all[all.len() * 99 / 100])
}

/// Leased mode: 4 instances offering 10,000 calls/s in all for 3 s against a
/// shared limit of 10,000/s: Redis operations per admitted call.
async fn leased(url: &str) {
    use tower::ServiceExt;
    use tower_mesh::rate_limit::redis::RedisRateLimiter;
    let name = format!("bench-leased-{}", std::process::id());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let layer = RedisRateLimiter::builder(url)
            .name(&name)
            .rate("10000/s".parse().unwrap())
            .burst(100)
            .lease(256, Duration::from_millis(100))
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let svc = layer.layer(tower::service_fn(|_: ()| async { Ok::<_, Infallible>(()) }));
            let mut tick = tokio::time::interval(Duration::from_micros(400));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = tokio::time::Instant::now() + Duration::from_secs(3);
            let mut admitted = 0u64;
            let mut offered = 0u64;
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                offered += 1;
                if svc.clone().oneshot(()).await.is_ok() {
                    admitted += 1;
                }
            }
            (offered, admitted, svc.limiter().redis_calls())
        }));
    }
    let (mut offered, mut admitted, mut calls) = (0, 0, 0);
    for t in tasks {
        let (o, a, c) = t.await.unwrap();
        offered += o;
        admitted += a;
        calls += c;
    }
    println!(
        "redis leased mode, 4 instances, limit 10000/s, 3 s: offered {offered}, admitted {admitted}, Redis ops {calls}, {:.4} ops per admitted",
        calls as f64 / admitted.max(1) as f64
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    if let Ok(spec) = std::env::var("RATE_LIMIT_COUNT") {
        return count(&spec, &rt);
    }
    let mut c = Criterion::default().configure_from_args();
    local(&mut c, &rt);
    let url = std::env::var("TOWER_MESH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let up = std::net::TcpStream::connect_timeout(&"127.0.0.1:6379".parse().unwrap(), Duration::from_secs(1)).is_ok()
        || url != "redis://127.0.0.1:6379";
    if up {
        rt.block_on(redis(&url));
        rt.block_on(leased(&url));
    } else {
        println!("skipped the Redis benches: no Redis at {url}");
    }
    c.final_summary();
}
