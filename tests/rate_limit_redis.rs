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
use std::sync::{Arc, Mutex};
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
/// In leased mode the times are the instants calls were admitted (µs since
/// the start), on the process's clock: leased calls are admitted locally.
async fn offer(url: &str, name: &str, lease: Option<u32>) -> (Vec<u64>, u64, u64) {
    let secs = run_secs();
    let origin = std::time::Instant::now();
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
                        Ok(()) => {
                            admitted += 1;
                            times.push(origin.elapsed().as_micros() as u64);
                        }
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
    let busiest = busiest_second(&times);
    println!("exact: busiest one-second window {busiest}");
    assert!(busiest <= RATE + BURST, "{busiest} admitted within one second");
}

/// The most of the sorted `times` (µs) within any one second.
fn busiest_second(times: &[u64]) -> u64 {
    let (mut j, mut most) = (0, 0);
    for i in 0..times.len() {
        while times[i] - times[j] >= 1_000_000 {
            j += 1;
        }
        most = most.max((i - j + 1) as u64);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_mode_stays_within_its_bound_with_few_redis_calls() {
    let Some(url) = redis_url() else { return };
    let max_lease = 100;
    let start = redis_time(&url).await;
    let (times, admitted, calls) = offer(&url, &unique("leased"), Some(max_lease)).await;
    let span_us = redis_time(&url).await - start;
    // Every token comes out of the shared GCRA: the total over the run is
    // bounded as in exact mode, plus the documented bound — what the four
    // instances may hold unspent, at most `max_lease` each.
    let exact = RATE as f64 * span_us as f64 / 1e6 + BURST as f64;
    let lease_bound = u64::from(max_lease) * 4;
    let over = admitted as f64 - exact;
    let busiest = busiest_second(&times);
    println!(
        "leased: {admitted} admitted, {calls} Redis calls ({:.3} per admitted), over-admission {over:.0} \
         (bound {lease_bound}), busiest one-second window {busiest}",
        calls as f64 / admitted as f64
    );
    assert!(over <= lease_bound as f64, "over-admission {over:.0} > {lease_bound}");
    // Within any one second: rate + burst, plus what was leased before it.
    assert!(busiest <= RATE + BURST + lease_bound, "{busiest} admitted within one second");
    let bound = exact + lease_bound as f64;
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

/// One call of [`drive`]: the phase it started in, how it ended, whether
/// the fail policy decided it, and how long it took.
#[derive(Clone, Copy, Debug)]
struct Call {
    phase: u8,
    outcome: Outcome,
    by_policy: bool,
    took: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Admitted,
    OverLimit,
    StoreUnavailable,
}

/// Calls through `svc`, one at a time, until `stop`; each call is recorded
/// with the phase current when it started.
async fn drive<S>(
    svc: S,
    limiter: impl Fn() -> u64,
    phase: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    calls: Arc<Mutex<Vec<Call>>>,
) where
    S: Service<(), Response = (), Error = BoxError> + Clone,
{
    while !stop.load(Ordering::SeqCst) {
        let p = phase.load(Ordering::SeqCst) as u8;
        let fallbacks = limiter();
        let started = std::time::Instant::now();
        let r = svc.clone().oneshot(()).await;
        let took = started.elapsed();
        let outcome = match r {
            Ok(()) => Outcome::Admitted,
            Err(e) => match e.downcast_ref::<RateLimited>().expect("only rejections").reason() {
                Reason::OverLimit => Outcome::OverLimit,
                _ => Outcome::StoreUnavailable,
            },
        };
        let by_policy = limiter() > fallbacks;
        calls.lock().unwrap().push(Call { phase: p, outcome, by_policy, took });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How Redis goes away in a fault run.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Connections are closed and new ones refused.
    Refused,
    /// Nothing Redis is sent arrives: every call times out.
    Stalled,
}

/// Redis goes away mid-run (phase 1) and comes back (phase 2). Decisions
/// are counted, not timed: every call that starts in phase 1 — the first
/// one included, so the policy applies within one Redis timeout — is
/// decided by the policy; in phase 2 Redis decides again.
async fn fault_run(policy: FailPolicy, fault: Fault) -> Option<()> {
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
    let fallbacks = {
        let l = layer.clone();
        move || l.limiter().fallback_decisions()
    };
    let svc = layer.layer(tower::service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>(()) }));
    let (phase, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let calls = Arc::new(Mutex::new(Vec::<Call>::new()));
    let task = tokio::spawn(drive(svc, fallbacks, phase.clone(), stop.clone(), calls.clone()));
    let seen = |p: u8, f: &dyn Fn(&Call) -> bool| calls.lock().unwrap().iter().filter(|c| c.phase == p && f(c)).count();

    // Redis up: the shared limit applies.
    wait_until(|| seen(0, &|c| c.outcome == Outcome::OverLimit && !c.by_policy) > 0).await;
    // Stalled first in both cases: it holds from the next byte on, so no
    // call that starts after this is answered by Redis.
    proxy.set_stalled(true);
    if let Fault::Refused = fault {
        proxy.set_refusing(true);
    }
    phase.store(1, Ordering::SeqCst);
    wait_until(|| seen(1, &|_| true) >= 20).await;
    // The stalled connections are broken: cut them, then let Redis through.
    proxy.cut();
    proxy.set_stalled(false);
    proxy.set_refusing(false);
    phase.store(2, Ordering::SeqCst);
    // Redis back: the shared limit is enforced again.
    wait_until(|| seen(2, &|c| c.outcome == Outcome::OverLimit && !c.by_policy) > 0).await;
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();

    let calls = calls.lock().unwrap();
    let down: Vec<&Call> = calls.iter().filter(|c| c.phase == 1).collect();
    println!("fault {fault:?}, {policy:?}: {} calls while down, first {:?}", down.len(), down[0]);
    for c in &down {
        assert!(c.by_policy, "decided by the fail policy, not by Redis: {c:?}");
        match policy {
            FailPolicy::Closed => assert_eq!(c.outcome, Outcome::StoreUnavailable, "{c:?}"),
            FailPolicy::Open { .. } => assert_ne!(c.outcome, Outcome::StoreUnavailable, "{c:?}"),
        }
    }
    // No call hangs: one Redis timeout at most. Only a hang detector (far
    // above the timeout, so a loaded machine does not trip it).
    let longest = calls.iter().map(|c| c.took).max().unwrap();
    assert!(longest < Duration::from_secs(10), "a call took {longest:?}");
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
async fn redis_refused_fail_closed_then_recovers() {
    fault_run(FailPolicy::Closed, Fault::Refused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stalled_fail_closed_within_one_timeout_then_recovers() {
    fault_run(FailPolicy::Closed, Fault::Stalled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refused_fail_open_uses_local_fallback_then_recovers() {
    fault_run(FailPolicy::Open { fallback: "100/s".parse().unwrap() }, Fault::Refused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stalled_fail_open_within_one_timeout_then_recovers() {
    fault_run(FailPolicy::Open { fallback: "100/s".parse().unwrap() }, Fault::Stalled).await;
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
