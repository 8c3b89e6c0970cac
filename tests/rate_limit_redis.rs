//! The shared rate limiter against the real local Redis
//! (TOWER_MESH_REDIS_URL, default redis://127.0.0.1:6379): four instances
//! sharing one limit, leased mode, Redis cut mid-run through a TCP proxy.
//!
//! Admitted decisions are counted against Redis's clock (the script returns
//! `TIME`), not against the test's pace, so a loaded machine slows the test
//! without failing it.

#[path = "support/services.rs"]
mod services;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tower::{Service, ServiceExt};
use tower_layer::Layer;
use tower_mesh::rate_limit::redis::{FailPolicy, RedisRateLimiter};
use tower_mesh::rate_limit::{RateLimited, Reason};
use tower_mesh::BoxError;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

fn redis_url() -> Option<String> {
    services::require_service("Redis", "TOWER_MESH_REDIS_URL", DEFAULT_URL)?;
    Some(services::env_or("TOWER_MESH_REDIS_URL", DEFAULT_URL))
}

/// A fresh limit name per run, so runs do not share state.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("test-{name}-{}-{nanos}", std::process::id())
}

/// How long the four-instance runs last: 10 s, or TOWER_MESH_RATE_LIMIT_SECS.
fn run_secs() -> u64 {
    std::env::var("TOWER_MESH_RATE_LIMIT_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10)
}

const RATE: u64 = 1000;
const BURST: u64 = 100;

/// Four limiters (four connections), each in its own task offering 1,000
/// decisions per second (4,000/s in all) for the run: every admitted
/// decision's Redis time. Ticks missed on a loaded machine are caught up.
async fn offer(url: &str, name: &str, lease: Option<u32>) -> (Vec<u64>, u64, u64) {
    let secs = run_secs();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut builder = RedisRateLimiter::builder(url)
            .name(name)
            .rate(format!("{RATE}/s").parse().unwrap())
            .burst(BURST as u32)
            .timeout(Duration::from_secs(2))
            .on_error(FailPolicy::Closed);
        if let Some(max) = lease {
            builder = builder.lease(max, Duration::from_millis(200));
        }
        let layer = builder.build().unwrap();
        tasks.push(tokio::spawn(async move {
            let svc = layer.layer(tower::service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>(()) }));
            let mut times = Vec::new();
            let mut admitted = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = tokio::time::Instant::now() + Duration::from_secs(secs);
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                if lease.is_some() {
                    match svc.clone().oneshot(()).await {
                        Ok(()) => admitted += 1,
                        Err(e) => {
                            let e = e.downcast_ref::<RateLimited>().expect("only rejections");
                            assert_eq!(e.reason(), Reason::OverLimit);
                        }
                    }
                } else {
                    let d = svc.limiter().try_acquire_n("global", 1, false).await.expect("Redis decides");
                    if d.granted == 1 {
                        admitted += 1;
                        times.push(d.redis_time_us);
                    }
                }
            }
            (times, admitted, svc.limiter().redis_calls())
        }));
    }
    let mut all = Vec::new();
    let (mut admitted, mut calls) = (0, 0);
    for t in tasks {
        let (times, a, c) = t.await.unwrap();
        all.extend(times);
        admitted += a;
        calls += c;
    }
    all.sort_unstable();
    (all, admitted, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_share_one_exact_limit() {
    let Some(url) = redis_url() else { return };
    let (times, admitted, _) = offer(&url, &unique("exact"), None).await;
    let span_us = times.last().unwrap() - times.first().unwrap();
    let expected = RATE as f64 * span_us as f64 / 1e6 + BURST as f64;
    let ratio = admitted as f64 / expected;
    println!("exact: {admitted} admitted over {span_us} µs of Redis time, expected {expected:.0} ({ratio:.4})");
    assert!((0.98..=1.02).contains(&ratio), "admitted {admitted}, expected {expected:.0} ± 2 %");
    // No one-second window (Redis time) above rate + burst.
    let mut j = 0;
    for i in 0..times.len() {
        while times[i] - times[j] >= 1_000_000 {
            j += 1;
        }
        let in_window = (i - j + 1) as u64;
        assert!(in_window <= RATE + BURST, "{in_window} admitted within one second");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_mode_stays_within_its_bound_with_few_redis_calls() {
    let Some(url) = redis_url() else { return };
    let max_lease = 100;
    let start = redis_time(&url).await;
    let (_, admitted, calls) = offer(&url, &unique("leased"), Some(max_lease)).await;
    let span_us = redis_time(&url).await - start;
    // Every token comes out of the shared GCRA: the total over the run is
    // bounded as in exact mode, plus at most one lease per instance spent
    // after the span.
    let bound = RATE as f64 * span_us as f64 / 1e6 + BURST as f64 + f64::from(max_lease) * 4.0;
    println!(
        "leased: {admitted} admitted, {calls} Redis calls ({:.3} per admitted), bound {bound:.0}",
        calls as f64 / admitted as f64
    );
    assert!(admitted as f64 <= bound, "admitted {admitted} > bound {bound:.0}");
    assert!(admitted as f64 >= 0.9 * (bound - f64::from(max_lease) * 4.0), "admitted {admitted}: leases lost too much");
    let per_admitted = calls as f64 / admitted as f64;
    assert!(per_admitted <= 0.1, "leases save Redis calls: {calls} calls for {admitted} admitted");
}

async fn redis_time(url: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    s * 1_000_000 + us
}

/// Calls through `svc` until `stop`: (admitted, over-limit rejections,
/// store-unavailable rejections), and the longest a call took.
async fn drive<S>(svc: S, stop: Arc<AtomicBool>, counts: Arc<[AtomicU64; 3]>, longest: Arc<AtomicU64>)
where
    S: Service<(), Response = (), Error = BoxError> + Clone,
{
    while !stop.load(Ordering::SeqCst) {
        let started = std::time::Instant::now();
        let r = svc.clone().oneshot(()).await;
        longest.fetch_max(started.elapsed().as_millis() as u64, Ordering::SeqCst);
        let i = match r {
            Ok(()) => 0,
            Err(e) => match e.downcast_ref::<RateLimited>().expect("only rejections").reason() {
                Reason::OverLimit => 1,
                _ => 2,
            },
        };
        counts[i].fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn fault_run(policy: FailPolicy) -> Option<()> {
    let url = redis_url()?;
    let proxy = services::proxy::Proxy::start(services::host_port(&url)).await;
    let timeout = Duration::from_millis(100);
    let layer = RedisRateLimiter::builder(format!("redis://{}", proxy.addr()))
        .name(unique("fault"))
        .rate("50/s".parse().unwrap())
        .burst(5)
        .timeout(timeout)
        .retry_backoff(Duration::from_millis(100))
        .on_error(policy)
        .build()
        .unwrap();
    let limiter_calls = {
        let l = layer.clone();
        move || l.limiter().redis_calls()
    };
    let svc = layer.layer(tower::service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>(()) }));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let longest = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(drive(svc, stop.clone(), counts.clone(), longest.clone()));
    let snapshot = |c: &[AtomicU64; 3]| [0, 1, 2].map(|i| c[i].load(Ordering::SeqCst));

    // Redis up: the shared limit applies (some over-limit rejections).
    wait_until(|| snapshot(&counts)[1] > 0).await;
    // Cut Redis: the policy is observed soon after one timeout.
    proxy.set_refusing(true);
    let at_cut = snapshot(&counts);
    match policy {
        FailPolicy::Closed => wait_until(|| snapshot(&counts)[2] > 0).await,
        FailPolicy::Open { .. } => {
            let calls = limiter_calls();
            wait_until(|| snapshot(&counts)[0] > at_cut[0] + 20).await;
            assert!(limiter_calls() <= calls + 3, "admitted by the local fallback, not by Redis");
            assert_eq!(snapshot(&counts)[2], 0, "fail open never rejects for the store");
        }
    }
    // Redis back: the shared limit is enforced again.
    proxy.set_refusing(false);
    let calls = limiter_calls();
    wait_until(|| limiter_calls() > calls + 20).await;
    let back = snapshot(&counts);
    wait_until(|| snapshot(&counts)[1] > back[1]).await;
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    let longest = longest.load(Ordering::SeqCst);
    println!("fault {policy:?}: counts {:?}, longest call {longest} ms", snapshot(&counts));
    // No call hangs: each waits at most a connect or a decision timeout
    // (generous margin for a loaded machine, far below a hang).
    assert!(longest < 20 * timeout.as_millis() as u64, "a call took {longest} ms");
    Some(())
}

/// Poll `cond` every 10 ms, for at most 30 s.
async fn wait_until(mut cond: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_fail_closed_then_recovers() {
    fault_run(FailPolicy::Closed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_fail_open_uses_local_fallback_then_recovers() {
    fault_run(FailPolicy::Open { fallback: "100/s".parse().unwrap() }).await;
}

#[tokio::test]
async fn script_reloaded_after_script_flush_and_keys_expire() {
    let Some(url) = redis_url() else { return };
    let name = unique("flush");
    let layer =
        RedisRateLimiter::builder(url.as_str()).name(&name).rate("10/s".parse().unwrap()).burst(2).build().unwrap();
    let l = layer.limiter();
    let d = l.try_acquire_n("global", 1, false).await.unwrap();
    assert_eq!((d.granted, d.remaining), (1, 1));
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
    // NOSCRIPT: loaded again, decided.
    let d = l.try_acquire_n("global", 1, false).await.unwrap();
    assert_eq!((d.granted, d.remaining), (1, 0));
    let d = l.try_acquire_n("global", 1, false).await.unwrap();
    assert_eq!(d.granted, 0);
    assert!(d.retry_after > Duration::ZERO && d.retry_after <= Duration::from_millis(100));
    // Partial grants (leases) take what is there.
    let key = format!("tower-mesh:rl:{name}:global");
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!(ttl > 0 && ttl <= 201, "the key expires when the bucket is full again: {ttl} ms");
    // Through the service: a 429-able rejection with the Redis retry_after.
    let mut svc = layer.layer(tower::service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>(()) }));
    let e = svc.ready().await.unwrap().call(()).await.unwrap_err();
    let e = e.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(e.reason(), Reason::OverLimit);
}
