use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

use super::*;
use crate::deadline::Deadline;
use crate::retry::{GrpcRequests, HttpRequests, RetryBudget};
use crate::BoxError;

const MS: Duration = Duration::from_millis(1);

/// What a scripted backend saw: calls started and calls dropped unfinished.
#[derive(Clone, Default)]
struct Seen {
    started: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl Seen {
    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// Counts a call that was dropped before it answered.
struct DropGuard(Option<Arc<AtomicUsize>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            d.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A backend whose n-th call takes `script(n).0`, then answers (`respond`)
/// or, when `script(n).1` is false, fails.
fn backend_with<T: Send + 'static, R: Send + 'static>(
    script: impl Fn(usize) -> (Duration, bool) + Send + Sync + 'static,
    respond: fn(T) -> R,
) -> (impl Service<T, Response = R, Error = BoxError> + Clone, Seen) {
    let seen = Seen::default();
    let s = seen.clone();
    let script = Arc::new(script);
    let svc = service_fn(move |x: T| {
        let n = s.started.fetch_add(1, Ordering::SeqCst);
        let (latency, ok) = script(n);
        let guard = DropGuard(Some(s.dropped.clone()));
        async move {
            let mut guard = guard;
            tokio::time::sleep(latency).await;
            guard.0.take();
            if ok {
                Ok(respond(x))
            } else {
                Err(BoxError::from("down"))
            }
        }
    });
    (svc, seen)
}

fn backend<T: Send + 'static>(
    script: impl Fn(usize) -> (Duration, bool) + Send + Sync + 'static,
) -> (impl Service<T, Response = T, Error = BoxError> + Clone, Seen) {
    backend_with(script, |x| x)
}

fn fixed(ms: u64) -> HedgeBuilder {
    HedgeLayer::builder().delay(HedgeDelay::Fixed(MS * ms as u32)).no_budget()
}

#[tokio::test(start_paused = true)]
async fn a_slow_call_is_hedged_and_the_loser_dropped_at_once() {
    let (svc, seen) = backend::<u32>(|n| (if n == 0 { MS * 1000 } else { MS * 5 }, true));
    let svc = fixed(10).build().unwrap().layer(svc);
    let start = Instant::now();
    assert_eq!(svc.oneshot(7).await.unwrap(), 7);
    assert_eq!(start.elapsed(), MS * 15, "the hedge sent at 10 ms answered 5 ms later");
    assert_eq!((seen.started(), seen.dropped()), (2, 1), "the slow first call was dropped");
}

#[tokio::test(start_paused = true)]
async fn a_fast_call_sends_no_hedge_and_max_hedges_bounds_the_copies() {
    let (svc, seen) = backend::<u32>(|_| (MS * 5, true));
    let svc = fixed(10).build().unwrap().layer(svc);
    svc.oneshot(1).await.unwrap();
    assert_eq!(seen.started(), 1);

    let (svc, seen) = backend::<u32>(|n| (if n < 3 { MS * 1000 } else { MS }, true));
    let svc = fixed(10).max_hedges(2).build().unwrap().layer(svc);
    let start = Instant::now();
    svc.oneshot(1).await.unwrap();
    assert_eq!(start.elapsed(), MS * 1000, "two hedges, both slow: the first answer wins");
    assert_eq!((seen.started(), seen.dropped()), (3, 2));
}

#[tokio::test(start_paused = true)]
async fn a_failure_does_not_win() {
    // The first call fails at 50 ms; the hedge sent at 10 ms answers at 60 ms.
    let (svc, seen) = backend::<u32>(|n| (MS * 50, n > 0));
    let svc = fixed(10).build().unwrap().layer(svc);
    let start = Instant::now();
    assert_eq!(svc.oneshot(3).await.unwrap(), 3);
    assert_eq!(start.elapsed(), MS * 60);
    assert_eq!(seen.started(), 2);
    // Every copy fails: the last failure is the answer.
    let (svc, _) = backend::<u32>(|_| (MS * 50, false));
    let svc = fixed(10).build().unwrap().layer(svc);
    assert_eq!(svc.oneshot(3).await.unwrap_err().to_string(), "down");
}

#[tokio::test(start_paused = true)]
async fn percentile_delay_after_min_samples_from_the_previous_window() {
    let window = Duration::from_secs(10);
    let delay = HedgeDelay::Percentile { percentile: 95.0, min_samples: 100, window };
    let layer = HedgeLayer::builder().delay(delay).no_budget().build().unwrap();
    // Latencies 1..=100 ms, one per call.
    let (svc, seen) = backend::<u32>(|n| (MS * (n as u32 % 100 + 1), true));
    let svc = layer.layer(svc);
    let batch = |n: u32| futures::future::join_all((0..n).map(|i| svc.clone().oneshot(i)));
    assert_eq!(layer.current_delay(), None);
    batch(99).await;
    tokio::time::advance(window).await;
    batch(1).await;
    assert_eq!(layer.current_delay(), None, "99 answers: too few, no hedging");
    assert_eq!(seen.started(), 100, "no hedge while the delay is not known");
    batch(99).await;
    tokio::time::advance(window).await;
    batch(1).await;
    let p95 = layer.current_delay().expect("100 answers in the last window");
    assert!((MS * 94..=MS * 96).contains(&p95), "{p95:?}");
}

/// The lock-free recorder behind the percentile delay: p95 of a known set,
/// a new delay from each window, none once a window is too thin.
#[tokio::test(start_paused = true)]
async fn the_percentile_delay_follows_each_window_and_stops_when_answers_thin() {
    let window = Duration::from_secs(1);
    let delay = HedgeDelay::Percentile { percentile: 95.0, min_samples: 20, window };
    let layer = HedgeLayer::builder().delay(delay).no_budget().build().unwrap();
    // Latency in ms; 0: 1..=20 ms by call number.
    let latency = Arc::new(AtomicUsize::new(0));
    let l = latency.clone();
    let (svc, seen) = backend::<u32>(move |n| {
        let ms = match l.load(Ordering::SeqCst) {
            0 => n % 20 + 1,
            ms => ms,
        };
        (MS * ms as u32, true)
    });
    let svc = layer.layer(svc);
    let batch = |n: u32| futures::future::join_all((0..n).map(|i| svc.clone().oneshot(i)));
    batch(20).await;
    tokio::time::advance(window).await;
    latency.store(50, Ordering::SeqCst);
    // The first answer after the window's end closes it (and counts in the next).
    batch(1).await;
    let p95 = layer.current_delay().expect("20 answers in the last window");
    assert!((MS * 18..=MS * 20).contains(&p95), "the 19th of 1..=20 ms: {p95:?}");
    batch(19).await;
    tokio::time::advance(window).await;
    batch(1).await;
    let p95 = layer.current_delay().expect("20 answers of 50 ms");
    assert!((MS * 49..=MS * 51).contains(&p95), "{p95:?}");
    batch(4).await;
    tokio::time::advance(window).await;
    batch(1).await;
    assert_eq!(layer.current_delay(), None, "5 answers: too few");
    let before = seen.started();
    batch(3).await;
    assert_eq!(seen.started(), before + 3, "no hedge while the delay is not known");
}

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_hedges_to_a_ratio_of_requests() {
    let (svc, seen) = backend::<u32>(|_| (MS * 100, true));
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.1);
    let svc = fixed(10).budget(budget.clone()).build().unwrap().layer(svc);
    let calls = futures::future::join_all((0..100).map(|i| svc.clone().oneshot(i))).await;
    assert!(calls.iter().all(Result::is_ok));
    assert_eq!(seen.started(), 110, "10 % of 100 requests hedged");
    assert!(budget.balance().abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn no_hedge_that_cannot_answer_before_the_deadline() {
    let (svc, seen) = backend::<u32>(|n| (if n < 2 { MS * 40 } else { MS }, true));
    let svc = fixed(10).build().unwrap().layer(svc);
    // 15 ms deadline: 5 ms left at 10 ms, less than the 10 ms delay.
    Deadline::after(MS * 15).scope(svc.clone().oneshot(0)).await.unwrap();
    assert_eq!(seen.started(), 1);
    Deadline::after(MS * 100).scope(svc.oneshot(0)).await.unwrap();
    assert_eq!(seen.started(), 3, "time enough: hedged");
}

#[tokio::test(start_paused = true)]
async fn only_requests_the_retry_policy_calls_safe_are_hedged() {
    type Req = http::Request<String>;
    let (svc, seen) = backend_with(|_| (MS * 100, true), |_: Req| http::Response::new(()));
    let svc = fixed(10).requests(HttpRequests::new()).build().unwrap().layer(svc);
    svc.clone().oneshot(http::Request::post("/").body(String::new()).unwrap()).await.unwrap();
    assert_eq!(seen.started(), 1, "a POST is not hedged");
    svc.oneshot(http::Request::get("/").body(String::new()).unwrap()).await.unwrap();
    assert_eq!(seen.started(), 3);

    let (svc, seen) = backend_with(|_| (MS * 100, true), |_: Req| http::Response::new(()));
    let grpc = GrpcRequests::new().idempotent("/a.B/Get").unwrap();
    let svc = fixed(10).requests(grpc).build().unwrap().layer(svc);
    svc.clone().oneshot(http::Request::post("/a.B/Create").body(String::new()).unwrap()).await.unwrap();
    assert_eq!(seen.started(), 1, "a gRPC method not marked idempotent is not hedged");
    svc.oneshot(http::Request::post("/a.B/Get").body(String::new()).unwrap()).await.unwrap();
    assert_eq!(seen.started(), 3);
}

#[cfg(all(feature = "bulkhead", feature = "circuit-breaker"))]
#[tokio::test(start_paused = true)]
async fn losers_leak_no_permit_below_and_do_not_charge_the_breaker() {
    use crate::bulkhead::BulkheadLayer;
    use crate::circuit_breaker::{CircuitBreakerLayer, CircuitState};
    // Every other call is stuck, and the hedge of a stuck one answers;
    // from the 41st on all are stuck.
    let (svc, seen) = backend::<u32>(|n| (if n % 2 == 0 || n >= 40 { MS * 10_000 } else { MS }, true));
    let bulkhead = BulkheadLayer::new(4);
    let breaker = CircuitBreakerLayer::builder().count_window(4).minimum_calls(1).build().unwrap();
    let svc = fixed(10).build().unwrap().layer(breaker.layer(bulkhead.layer(svc)));
    for i in 0..20 {
        svc.clone().oneshot(i).await.unwrap();
    }
    assert_eq!((seen.started(), seen.dropped()), (40, 20), "20 losers, all dropped");
    assert_eq!(bulkhead.available_permits(), 4, "every loser's permit came back");
    let m = breaker.handle().metrics();
    assert_eq!((m.state, m.failures), (CircuitState::Closed, 0), "{m:?}");

    // A caller that gives up drops the first call and the hedge alike.
    let fut = svc.clone().oneshot(0);
    assert!(tokio::time::timeout(MS * 20, fut).await.is_err());
    assert_eq!((seen.started(), seen.dropped()), (42, 22));
    assert_eq!(bulkhead.available_permits(), 4);
    assert_eq!(breaker.handle().metrics().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_gives_its_hedge_budget_back_when_the_hedge_was_not_sent() {
    let (svc, _) = backend::<u32>(|_| (MS * 100, true));
    let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.0);
    let before = budget.balance();
    // One call at a time below: the hedge waits for readiness until dropped.
    let gate = tower::service_fn(move |x: u32| svc.clone().oneshot(x));
    let mut limited = tower::limit::ConcurrencyLimitLayer::new(1).layer(gate);
    let layer = fixed(10).budget(budget.clone()).build().unwrap();
    limited.ready().await.unwrap();
    let mut hedged = layer.layer(limited);
    hedged.ready().await.unwrap();
    let fut = hedged.call(1);
    assert!(tokio::time::timeout(MS * 20, fut).await.is_err());
    assert!((budget.balance() - before).abs() < 1e-9, "the token came back");
}

#[test]
fn bad_settings_are_errors() {
    let e = HedgeLayer::builder().budget_ratio(1.5).build().unwrap_err();
    assert!(e.to_string().contains("hedge.budget"), "{e}");
    let bad = HedgeDelay::Percentile { percentile: 0.0, min_samples: 1, window: Duration::from_secs(1) };
    assert!(HedgeLayer::builder().delay(bad).build().is_err());
    let bad = HedgeDelay::Percentile { percentile: 95.0, min_samples: 1, window: Duration::ZERO };
    assert!(HedgeLayer::builder().delay(bad).build().is_err());
}

#[tokio::test(start_paused = true)]
async fn metrics_count_hedges_sent_won_and_refused_by_the_budget() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A budget of exactly one hedge.
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.5);
    let layer = metrics::with_local_recorder(&recorder, || fixed(10).name("orders").budget(budget).build().unwrap());
    // Two slow calls; the hedge of the second (the third request) answers at once.
    let (svc, seen) = backend::<u32>(|n| (if n == 2 { MS } else { MS * 100 }, true));
    let svc = layer.layer(svc);
    svc.clone().oneshot(0).await.unwrap(); // deposits 0.5: no hedge
    svc.clone().oneshot(0).await.unwrap(); // 1.0: hedged, and the hedge wins
    assert_eq!(seen.started(), 3);
    let counts: std::collections::HashMap<String, u64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(k, _, _, v)| match v {
            metrics_util::debugging::DebugValue::Counter(c) => Some((k.key().name().to_string(), c)),
            _ => None,
        })
        .collect();
    assert_eq!(counts["tower_mesh_hedge_sent_total"], 1);
    assert_eq!(counts["tower_mesh_hedge_won_total"], 1);
    assert_eq!(counts["tower_mesh_hedge_budget_exhausted_total"], 1);
}
