use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{advance, sleep};
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use super::*;
use crate::classify::{classify_fn, CancelPolicy, FailureKind, FnClassifier, Outcome};
use crate::config::ConfigError;
use crate::error::MeshError;
use crate::BoxError;

/// Request: (outcome: 0 success, 1 failure, 2 ignored; duration in ms).
type Req = (u8, u64);
type Cls = FnClassifier<fn(Result<&u8, &&'static str>) -> Outcome>;

fn classify(r: Result<&u8, &&'static str>) -> Outcome {
    match r {
        Err(_) => Outcome::Failure(FailureKind::Error),
        Ok(2) => Outcome::Ignored,
        Ok(_) => Outcome::Success,
    }
}

fn cls() -> Cls {
    classify_fn(classify as fn(Result<&u8, &&'static str>) -> Outcome)
}

fn inner() -> impl Service<Req, Response = u8, Error = &'static str> + Clone {
    tower::service_fn(|(o, ms): Req| async move {
        if ms > 0 {
            sleep(Duration::from_millis(ms)).await;
        }
        if o == 1 {
            Err("boom")
        } else {
            Ok(o)
        }
    })
}

fn builder() -> CircuitBreakerBuilder<Cls> {
    CircuitBreakerLayer::builder()
        .name("test")
        .count_window(4)
        .minimum_calls(4)
        .wait_in_open(Duration::from_secs(10))
        .permitted_calls_in_half_open(2)
        .classifier(cls())
}

async fn call<S>(svc: &mut S, o: u8, ms: u64) -> Result<u8, BoxError>
where
    S: Service<Req, Response = u8, Error = BoxError>,
{
    svc.ready().await?.call((o, ms)).await
}

fn is_open(r: &Result<u8, BoxError>) -> bool {
    matches!(r, Err(e) if e.is::<CircuitOpen>())
}

#[tokio::test(start_paused = true)]
async fn closed_opens_at_threshold_only_after_minimum_calls() {
    let layer = builder().build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    // 3 failures: 100 % but below minimum_calls
    for _ in 0..3 {
        assert_eq!(call(&mut svc, 1, 0).await.unwrap_err().to_string(), "boom");
    }
    assert_eq!(h.state(), CircuitState::Closed);
    let m = h.metrics();
    assert_eq!((m.calls, m.failures, m.failure_rate), (3, 3, None));
    // 4th call is a success: 3/4 = 75 % >= 50 % -> open
    assert_eq!(call(&mut svc, 0, 0).await.unwrap(), 0);
    assert_eq!(h.state(), CircuitState::Open);
    assert!(is_open(&call(&mut svc, 0, 0).await));
    assert_eq!(h.metrics().not_permitted, 1);
}

#[tokio::test(start_paused = true)]
async fn below_threshold_stays_closed_and_window_slides() {
    let layer = builder().build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    // F S S S: 25 %
    for o in [1, 0, 0, 0] {
        let _ = call(&mut svc, o, 0).await;
    }
    assert_eq!(h.state(), CircuitState::Closed);
    // window of 4 now S S S F -> 25 %, then S S F F -> 50 % -> open
    let _ = call(&mut svc, 1, 0).await;
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(h.metrics().failure_rate, Some(25.0));
    let _ = call(&mut svc, 1, 0).await;
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn rejection_comes_from_the_future_with_retry_after() {
    let layer = CircuitBreakerLayer::builder().name("test").wait_in_open(Duration::from_secs(10)).build().unwrap();
    let h = layer.handle();
    let (mock, mut handle) = tower_test::mock::pair::<Req, u8>();
    let mut svc = layer.layer(mock);
    h.transition_to_open();
    advance(Duration::from_secs(3)).await;
    handle.allow(1);
    // poll_ready stays Ready while open
    tokio_test::assert_ready_ok!(tokio_test::task::spawn(()).enter(|cx, _| svc.poll_ready(cx)));
    let err = svc.call((0, 0)).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("CircuitOpen");
    assert_eq!(open.state(), CircuitState::Open);
    assert_eq!(open.name(), "test");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(MeshError::retry_after(open), Some(Duration::from_secs(7)));
    assert_eq!(open.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(open.grpc_code(), crate::classify::GrpcCode::Unavailable);
    assert!(open.to_string().contains("`test` is open"));
    // the inner service never saw the request
    assert!(handle.poll_request().is_pending() || tokio_test::task::spawn(handle.next_request()).poll().is_pending());
    assert_eq!(h.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test(start_paused = true)]
async fn half_open_closes_after_successful_probes() {
    let layer = builder().build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    for _ in 0..4 {
        let _ = call(&mut svc, 1, 0).await;
    }
    assert_eq!(h.state(), CircuitState::Open);
    advance(Duration::from_millis(9_999)).await;
    assert!(is_open(&call(&mut svc, 0, 0).await));
    advance(Duration::from_millis(1)).await;
    assert_eq!(call(&mut svc, 0, 0).await.unwrap(), 0);
    assert_eq!(h.state(), CircuitState::HalfOpen);
    assert_eq!(call(&mut svc, 0, 0).await.unwrap(), 0);
    assert_eq!(h.state(), CircuitState::Closed);
    // fresh window
    assert_eq!(h.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn half_open_reopens_and_limits_probes() {
    let layer = builder().build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    h.transition_to_half_open();
    // two probes in flight, a third is rejected
    let mut p1 = tokio_test::task::spawn(svc.ready().await.unwrap().call((1, 100)));
    let mut p2 = tokio_test::task::spawn(svc.ready().await.unwrap().call((0, 100)));
    let third = call(&mut svc, 0, 0).await;
    let e = third.unwrap_err();
    let open = e.downcast_ref::<CircuitOpen>().unwrap();
    assert_eq!((open.state(), open.retry_after()), (CircuitState::HalfOpen, None));
    assert!(p1.poll().is_pending() && p2.poll().is_pending());
    advance(Duration::from_millis(100)).await;
    assert!(tokio_test::assert_ready!(p1.poll()).is_err());
    assert_eq!(h.state(), CircuitState::HalfOpen);
    assert!(tokio_test::assert_ready!(p2.poll()).is_ok());
    // 1 of 2 failed = 50 % -> open again
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn growing_wait_in_open_and_reset() {
    let layer = builder().growing_wait_in_open(2.0, Duration::from_secs(30)).build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    let mut expected = [10, 20, 30, 30].into_iter();
    for _ in 0..3 {
        for _ in 0..4 {
            let _ = call(&mut svc, 1, 0).await;
        }
        if h.state() == CircuitState::HalfOpen {
            // probes fail
        }
        assert_eq!(h.state(), CircuitState::Open);
        let wait = expected.next().unwrap();
        assert_eq!(h.retry_after(), Some(Duration::from_secs(wait)));
        advance(Duration::from_secs(wait)).await;
        // half-open, probes fail -> re-open with longer wait
        let _ = call(&mut svc, 1, 0).await;
        let _ = call(&mut svc, 1, 0).await;
        assert_eq!(h.state(), CircuitState::Open);
        let wait = expected.next().unwrap();
        assert_eq!(h.retry_after(), Some(Duration::from_secs(wait)));
        h.reset();
        assert_eq!(h.state(), CircuitState::Closed);
        expected = [10, 20, 30, 30].into_iter();
    }
}

#[tokio::test(start_paused = true)]
async fn max_wait_in_half_open_reopens() {
    let layer = builder().max_wait_in_half_open(Duration::from_secs(5)).build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    h.transition_to_half_open();
    // one probe completes, the other never comes
    assert!(call(&mut svc, 0, 0).await.is_ok());
    advance(Duration::from_secs(5)).await;
    // the next call notices the max wait: back to open, rejected
    assert!(is_open(&call(&mut svc, 0, 0).await));
    assert_eq!(h.state(), CircuitState::Open);
    assert_eq!(h.retry_after(), Some(Duration::from_secs(10)));
}

/// A probe that never concludes (a long stream) holds its slot; at the end
/// of the max wait the breaker re-opens by itself — state, gauge and
/// listeners see it at that moment, without any call — and the open wait
/// counts from that moment, so a call one open wait later gets a probe.
#[tokio::test(start_paused = true)]
async fn max_wait_in_half_open_reopens_on_time_without_a_call() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // This runtime runs the expiry task on this thread, under this subscriber.
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let layer = metrics::with_local_recorder(&recorder, || {
        builder()
            .max_wait_in_half_open(Duration::from_secs(5))
            .on_state_change(move |c| s.lock().unwrap().push((c.from, c.to, tokio::time::Instant::now())))
            .build()
            .unwrap()
    });
    let gauge = || {
        snapshotter.snapshot().into_vec().into_iter().find_map(|(k, _, _, v)| match v {
            DebugValue::Gauge(g) if k.key().name() == "tower_mesh_circuit_breaker_state" => Some(g.into_inner()),
            _ => None,
        })
    };
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    h.transition_to_half_open();
    let since = tokio::time::Instant::now();
    // Both probes taken: one answers at once, the other streams for a minute.
    assert!(call(&mut svc, 0, 0).await.is_ok());
    let mut held = tokio_test::task::spawn(svc.ready().await.unwrap().call((0, 60_000)));
    assert!(held.poll().is_pending());
    assert!(is_open(&call(&mut svc, 0, 0).await), "every probe slot is taken");

    // Just past the end of the max wait, with no call in between.
    sleep(Duration::from_millis(5_001)).await;
    use CircuitState::*;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(Closed, HalfOpen, since), (HalfOpen, Open, since + Duration::from_secs(5))]
    );
    assert_eq!(gauge(), Some(Open as u8 as f64));
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("circuit breaker state change") && text.contains("from=\"half_open\" to=\"open\""), "{text}");
    assert_eq!(h.state(), Open);
    assert_eq!(h.metrics().state, Open);
    // The open wait (10 s) started at the end of the max wait.
    assert_eq!(h.retry_after(), Some(Duration::from_millis(9_999)));

    // One open wait after the max wait ended, a call gets a probe.
    sleep(Duration::from_millis(9_999)).await;
    assert!(call(&mut svc, 0, 0).await.is_ok());
    assert_eq!(h.state(), HalfOpen);
    // The old probe finishing now counts for nothing in the new period.
    drop(held);
    assert_eq!(h.metrics().calls, 1);
}

/// A log sink for a `tracing` subscriber (the health tests use it too).
#[derive(Clone, Default)]
pub(crate) struct Log(pub(crate) Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Without a runtime (so without the expiry timer) the end of the max wait
/// is applied when the breaker is observed, as of the moment it ended.
#[test]
fn max_wait_in_half_open_applies_as_of_its_end_without_a_timer() {
    let layer = builder().max_wait_in_half_open(Duration::from_millis(1)).build().unwrap();
    let h = layer.handle();
    h.transition_to_half_open();
    // Real time, outside any runtime: only a lower bound on the time passed.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(h.state(), CircuitState::Open);
    let rest = h.retry_after().unwrap();
    // Counted from the end of the max wait (1 ms after entering half-open),
    // not from this observation (20 ms or more after it).
    assert!(rest <= Duration::from_secs(10) - Duration::from_millis(19), "{rest:?}");
}

/// A body that stalls past a body-covering timeout (below the breaker, or
/// above it with a `ClassifyEosLayer` below) fails
/// with the timeout error, and the breaker records a failure then (the head
/// was a success); a body that ends is a success.
#[cfg(feature = "timeout")]
#[tokio::test(start_paused = true)]
async fn a_body_timing_out_is_a_failure_for_the_breaker() {
    use http_body_util::BodyExt;
    type Frames = futures::stream::BoxStream<'static, Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>>;
    let inner = tower::service_fn(|stall: bool| async move {
        let first = futures::stream::iter([Ok(http_body::Frame::data(bytes::Bytes::from_static(b"x")))]);
        let rest: Frames =
            if stall { Box::pin(futures::stream::pending()) } else { Box::pin(futures::stream::empty()) };
        let frames: Frames = Box::pin(futures::StreamExt::chain(first, rest));
        Ok::<_, BoxError>(http::Response::new(http_body_util::StreamBody::new(frames)))
    });
    let breaker = CircuitBreakerLayer::builder().count_window(4).minimum_calls(4).build().unwrap();
    let breaker = breaker.with_classifier(crate::classify::HttpClassifier::new());
    let h = breaker.handle();
    let timeout = crate::timeout::TimeoutLayer::per_attempt(Duration::from_secs(1)).cover_body();
    let mut svc = tower::ServiceBuilder::new().layer(breaker).layer(timeout).service(inner);

    let body = svc.ready().await.unwrap().call(false).await.unwrap().into_body();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "x");
    assert_eq!((h.metrics().calls, h.metrics().failures), (1, 0));

    let mut body = svc.ready().await.unwrap().call(true).await.unwrap().into_body();
    assert!(body.frame().await.unwrap().is_ok());
    assert_eq!(h.metrics().calls, 1, "not decided before the body ends");
    let e = body.frame().await.unwrap().unwrap_err();
    assert!(e.is::<crate::timeout::Elapsed>(), "{e}");
    assert_eq!((h.metrics().calls, h.metrics().failures), (2, 1));

    // A total timeout covering the body above the breaker: the breaker sees
    // the timeout through the slot of a `ClassifyEosLayer` below it.
    let breaker = CircuitBreakerLayer::builder().count_window(4).minimum_calls(4).build().unwrap();
    let breaker = breaker.with_classifier(crate::classify::HttpClassifier::new());
    let h = breaker.handle();
    let mut svc = tower::ServiceBuilder::new()
        .layer(crate::timeout::TimeoutLayer::new(Duration::from_secs(1)).cover_body())
        .layer(breaker)
        .layer(crate::classify::ClassifyEosLayer::new())
        .service(inner);
    let mut body = svc.ready().await.unwrap().call(true).await.unwrap().into_body();
    assert!(body.frame().await.unwrap().is_ok());
    let e = body.frame().await.unwrap().unwrap_err();
    let e = e.downcast::<crate::timeout::Elapsed>().unwrap();
    assert_eq!(e.kind(), crate::timeout::TimeoutKind::Total);
    assert_eq!((h.metrics().calls, h.metrics().failures), (1, 1));
}

/// Every preset bounds half-open, so a long probe cannot hold it forever.
#[cfg(feature = "stack")]
#[test]
fn every_preset_bounds_half_open() {
    use crate::stack::{ClientConfig, Preset};
    assert_eq!(CircuitBreakerConfig::default().max_wait_in_half_open, Duration::from_secs(60));
    for preset in [Preset::Development, Preset::Testing, Preset::Production] {
        let breaker = ClientConfig::preset(preset).circuit_breaker.unwrap();
        assert!(!breaker.max_wait_in_half_open.is_zero(), "{preset}");
        assert!(breaker.max_wait_in_half_open > ClientConfig::preset(preset).timeout.total.unwrap(), "{preset}");
    }
}

/// In a runtime without timers no expiry task can be armed (and asking for
/// one is not repeated); the end of the max wait is applied when observed.
#[test]
fn max_wait_in_half_open_in_a_runtime_without_timers() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let _enter = rt.enter();
    let layer = builder().max_wait_in_half_open(Duration::from_millis(1)).build().unwrap();
    let h = layer.handle();
    for _ in 0..2 {
        h.transition_to_half_open();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(h.state(), CircuitState::Open);
    }
}

/// A call admitted in one closed period and failing in a later one (after
/// open -> half-open -> closed) is not counted in the new window.
#[tokio::test(start_paused = true)]
async fn a_call_counts_only_for_the_period_it_was_admitted_in() {
    let layer = builder().build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    // Admitted while closed; fails after 30 s.
    let mut old = tokio_test::task::spawn(svc.ready().await.unwrap().call((1, 30_000)));
    assert!(old.poll().is_pending());
    for _ in 0..4 {
        let _ = call(&mut svc, 1, 0).await;
    }
    assert_eq!(h.state(), CircuitState::Open);
    advance(Duration::from_secs(10)).await;
    for _ in 0..2 {
        assert!(call(&mut svc, 0, 0).await.is_ok());
    }
    assert_eq!(h.state(), CircuitState::Closed);
    advance(Duration::from_secs(20)).await;
    assert!(old.await.is_err());
    let m = h.metrics();
    assert_eq!((m.state, m.calls, m.failures), (CircuitState::Closed, 0, 0));
    // A call of the current period is counted.
    let _ = call(&mut svc, 1, 0).await;
    assert_eq!((h.metrics().calls, h.metrics().failures), (1, 1));
}

/// A full bulkhead below is this process's load: the default classifier's
/// failure is ignored; `count_rejections(true)` counts it again.
#[cfg(feature = "bulkhead")]
#[tokio::test(start_paused = true)]
async fn rejections_from_below_are_ignored_unless_counted() {
    use crate::bulkhead::{BulkheadFull, BulkheadLayer};
    for count in [false, true] {
        let breaker = CircuitBreakerLayer::builder().count_window(4).minimum_calls(4).count_rejections(count);
        let breaker = breaker.build().unwrap();
        let h = breaker.handle();
        let bulkhead = BulkheadLayer::builder().max_concurrent_calls(1).max_wait(Duration::ZERO).build().unwrap();
        let mut svc = tower::ServiceBuilder::new().layer(breaker).layer(bulkhead).service(inner());
        let mut busy = tokio_test::task::spawn(svc.ready().await.unwrap().call((0, 60_000)));
        assert!(busy.poll().is_pending());
        for _ in 0..4 {
            let e = call(&mut svc, 0, 0).await.unwrap_err();
            assert!(e.is::<BulkheadFull>(), "{e}");
        }
        let m = h.metrics();
        if count {
            assert_eq!((m.state, m.failures), (CircuitState::Open, 4));
        } else {
            assert_eq!((m.state, m.calls), (CircuitState::Closed, 0));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn special_states_and_callbacks() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let layer = builder().on_state_change(move |c| s.lock().unwrap().push((c.from, c.to))).build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());

    h.transition_to_forced_open();
    advance(Duration::from_secs(3600)).await;
    let e = call(&mut svc, 0, 0).await.unwrap_err();
    let e = e.downcast_ref::<CircuitOpen>().unwrap();
    assert_eq!((e.state(), e.retry_after()), (CircuitState::ForcedOpen, None));

    h.transition_to_disabled();
    for _ in 0..10 {
        assert!(call(&mut svc, 1, 0).await.is_err());
    }
    assert_eq!(h.state(), CircuitState::Disabled);
    assert_eq!(h.metrics().calls, 0);

    h.transition_to_metrics_only();
    for _ in 0..10 {
        let _ = call(&mut svc, 1, 0).await;
    }
    assert_eq!(h.state(), CircuitState::MetricsOnly);
    assert_eq!(h.metrics().failure_rate, Some(100.0));

    h.transition_to_closed();
    h.transition_to_closed(); // no-op
    assert_eq!(h.metrics().calls, 0);
    use CircuitState::*;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(Closed, ForcedOpen), (ForcedOpen, Disabled), (Disabled, MetricsOnly), (MetricsOnly, Closed)]
    );
}

#[tokio::test(start_paused = true)]
async fn time_window_expires_old_buckets() {
    let layer = builder().time_window(Duration::from_secs(3)).minimum_calls(4).build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    for _ in 0..3 {
        let _ = call(&mut svc, 1, 0).await;
    }
    assert_eq!(h.metrics().calls, 3);
    advance(Duration::from_secs(3)).await;
    // the three failures have left the window
    assert_eq!(h.metrics().calls, 0);
    let _ = call(&mut svc, 1, 0).await;
    for _ in 0..3 {
        let _ = call(&mut svc, 0, 0).await;
    }
    // 1 of 4 failed
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(h.metrics().failure_rate, Some(25.0));
    advance(Duration::from_secs(1)).await;
    let _ = call(&mut svc, 1, 0).await;
    assert_eq!(h.state(), CircuitState::Closed);
    let _ = call(&mut svc, 1, 0).await; // 3 of 6
    assert_eq!(h.state(), CircuitState::Open);
}

/// In a multi-thread runtime a time window counts the successes of a clean
/// window without reading the clock, a timer ending each second; every
/// success still lands in the bucket of its second.
#[test]
fn time_window_successes_counted_under_a_timer_land_in_their_seconds() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    rt.block_on(async {
        let layer = builder().time_window(Duration::from_secs(2)).minimum_calls(1000).build().unwrap();
        let start = tokio::time::Instant::now();
        let h = layer.handle();
        let mut svc = layer.layer(inner());
        let at = |ms: u64| tokio::time::sleep_until(start + Duration::from_millis(ms));
        // Second 0. The first success opens the lock-free path, guarded.
        for _ in 0..50 {
            assert!(call(&mut svc, 0, 0).await.is_ok());
        }
        assert!(h.shared.fast_path_guarded());
        // Second 1: the timer ended second 0.
        at(1300).await;
        assert!(!h.shared.fast_path_guarded());
        for _ in 0..30 {
            assert!(call(&mut svc, 0, 0).await.is_ok());
        }
        assert!(h.shared.fast_path_guarded());
        assert_eq!(h.metrics().calls, 80);
        // Second 2: second 0 has left the two-second window.
        at(2300).await;
        assert_eq!(h.metrics().calls, 30);
        assert!(call(&mut svc, 1, 0).await.is_err());
        assert_eq!((h.metrics().calls, h.metrics().failures), (31, 1));
        // Second 3: only the failure of second 2 is left.
        at(3300).await;
        assert!(call(&mut svc, 0, 0).await.is_ok());
        assert_eq!((h.metrics().calls, h.metrics().failures), (2, 1));
    });
}

/// Successes counted concurrently on two threads across second boundaries,
/// while timers end the seconds: none is lost or counted twice.
#[test]
fn time_window_loses_no_success_counted_on_two_threads_across_seconds() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().unwrap();
    let layer = builder().time_window(Duration::from_secs(30)).minimum_calls(1000).build().unwrap();
    let h = layer.handle();
    let svc = layer.layer(inner());
    let end = std::time::Instant::now() + Duration::from_millis(2200);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let mut svc = svc.clone();
            let handle = rt.handle().clone();
            std::thread::spawn(move || {
                // Calls from outside the runtime's workers, in its context (as
                // a blocking thread's are); its idle worker fires the timers.
                let _context = handle.enter();
                let mut n = 0u64;
                while std::time::Instant::now() < end {
                    for _ in 0..100 {
                        assert!(futures::executor::block_on(call(&mut svc, 0, 0)).is_ok());
                    }
                    n += 100;
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(total > 0);
    assert_eq!(h.metrics().calls as u64, total);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_the_breaker() {
    let layer =
        builder().slow_call_duration(Duration::from_millis(500)).slow_call_rate_threshold(75.0).build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    for ms in [500, 600, 100] {
        assert!(call(&mut svc, 0, ms).await.is_ok());
    }
    assert_eq!(h.metrics().slow_calls, 2);
    assert!(call(&mut svc, 0, 499).await.is_ok());
    assert_eq!(h.state(), CircuitState::Closed); // 50 %
    assert!(call(&mut svc, 0, 700).await.is_ok());
    assert_eq!(h.state(), CircuitState::Closed); // 50 %
    assert!(call(&mut svc, 0, 700).await.is_ok());
    assert_eq!(h.state(), CircuitState::Closed); // 50 %
    assert!(call(&mut svc, 0, 700).await.is_ok());
    assert_eq!(h.state(), CircuitState::Open); // 75 %
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_count_for_nothing() {
    let layer = builder().build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    for _ in 0..10 {
        assert_eq!(call(&mut svc, 2, 0).await.unwrap(), 2);
    }
    assert_eq!(h.metrics().calls, 0);
    // ignored probes give their slot back
    h.transition_to_half_open();
    for _ in 0..5 {
        let _ = call(&mut svc, 2, 0).await;
    }
    assert_eq!(h.state(), CircuitState::HalfOpen);
    let _ = call(&mut svc, 0, 0).await;
    let _ = call(&mut svc, 0, 0).await;
    assert_eq!(h.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn http_statuses_are_classified() {
    use crate::classify::HttpClassifier;
    use http::{Response, StatusCode};
    let layer = CircuitBreakerLayer::builder()
        .count_window(4)
        .minimum_calls(4)
        .classifier(HttpClassifier::new())
        .build()
        .unwrap();
    let h = layer.handle();
    let svc = layer.layer(tower::service_fn(|s: u16| async move {
        Ok::<_, std::convert::Infallible>(Response::builder().status(s).body(()).unwrap())
    }));
    for s in [404, 200, 503, 500] {
        let r = svc.clone().oneshot(s).await.unwrap();
        assert_eq!(r.status(), StatusCode::from_u16(s).unwrap());
    }
    let m = h.metrics();
    assert_eq!((m.calls, m.failures), (4, 2));
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn deferred_outcomes_are_recorded_at_end_of_stream() {
    use crate::classify::{ClassifyEosLayer, GrpcClassifier};
    use bytes::Bytes;
    use http::{HeaderMap, Response};
    use http_body_util::{BodyExt, StreamBody};

    let layer = CircuitBreakerLayer::builder()
        .count_window(2)
        .minimum_calls(2)
        .slow_call_duration(Duration::from_secs(1))
        .classifier(GrpcClassifier::new())
        .build()
        .unwrap();
    let h = layer.handle();
    let svc = layer.layer(ClassifyEosLayer::new().layer(tower::service_fn(|code: &'static str| async move {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", code.parse().unwrap());
        let frames: Vec<Result<_, std::convert::Infallible>> =
            vec![Ok(http_body::Frame::data(Bytes::from_static(b"x"))), Ok(http_body::Frame::trailers(t))];
        Ok::<_, std::convert::Infallible>(Response::new(StreamBody::new(futures::stream::iter(frames))))
    })));

    let res = svc.clone().oneshot("13").await.unwrap();
    // not recorded until the body ends
    assert_eq!(h.metrics().calls, 0);
    sleep(Duration::from_secs(2)).await;
    let _ = res.into_body().collect().await.unwrap();
    let m = h.metrics();
    assert_eq!((m.calls, m.failures, m.slow_calls), (1, 1, 1));

    // a dropped body is cancelled -> ignored by default
    let res = svc.clone().oneshot("0").await.unwrap();
    drop(res);
    assert_eq!(h.metrics().calls, 1);
    let res = svc.clone().oneshot("14").await.unwrap();
    let _ = res.into_body().collect().await.unwrap();
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn cancel_policy_failure_counts_dropped_calls() {
    let layer = builder().cancel_policy(CancelPolicy::Failure).build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    for _ in 0..4 {
        let mut f = tokio_test::task::spawn(svc.ready().await.unwrap().call((0, 1000)));
        assert!(f.poll().is_pending());
        drop(f);
    }
    assert_eq!(h.state(), CircuitState::Open);
}

#[test]
fn config_validation_and_serde() {
    let ok = CircuitBreakerConfig::default();
    assert!(ok.validate().is_ok());
    let bad = |f: fn(&mut CircuitBreakerConfig)| {
        let mut c = CircuitBreakerConfig::default();
        f(&mut c);
        c.validate().unwrap_err()
    };
    assert!(matches!(bad(|c| c.failure_rate_threshold = 101.0), ConfigError::OutOfRange { .. }));
    assert!(matches!(bad(|c| c.slow_call_rate_threshold = -1.0), ConfigError::OutOfRange { .. }));
    assert!(matches!(bad(|c| c.sliding_window = SlidingWindow::Count(0)), ConfigError::Zero { .. }));
    assert!(matches!(bad(|c| c.sliding_window = SlidingWindow::Time(Duration::ZERO)), ConfigError::Zero { .. }));
    assert!(matches!(bad(|c| c.permitted_calls_in_half_open = 0), ConfigError::Zero { .. }));
    assert!(matches!(bad(|c| c.minimum_calls = 0), ConfigError::Zero { .. }));
    assert!(matches!(bad(|c| c.wait_in_open_multiplier = 0.5), ConfigError::OutOfRange { .. }));
    assert!(matches!(bad(|c| c.max_wait_in_open = Duration::from_secs(1)), ConfigError::Conflict { .. }));
    assert!(CircuitBreakerLayer::builder().failure_rate_threshold(f64::NAN).build().is_err());

    let c: CircuitBreakerConfig = serde_json::from_str(
        r#"{"name":"x","sliding_window":{"time":"10s"},"wait_in_open":"1m","cancel_policy":"failure"}"#,
    )
    .unwrap();
    assert_eq!(c.sliding_window, SlidingWindow::Time(Duration::from_secs(10)));
    assert_eq!(c.wait_in_open, Duration::from_secs(60));
    assert_eq!(c.cancel_policy, CancelPolicy::Failure);
    assert_eq!(c.minimum_calls, 100);
    assert!(serde_json::from_str::<CircuitBreakerConfig>(r#"{"nope":1}"#).is_err());
    let back: CircuitBreakerConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    assert_eq!(CircuitBreakerLayer::from_config(&c).unwrap().handle().name(), "x");
}

#[test]
fn response_future_is_small() {
    type F =
        ResponseFuture<std::future::Ready<Result<u8, &'static str>>, BreakerRef<crate::classify::ResultClassifier>>;
    let (fut, inner) = (std::mem::size_of::<F>(), std::mem::size_of::<std::future::Ready<Result<u8, &'static str>>>());
    println!(
        "ResponseFuture {fut} bytes, inner future {inner} bytes, Recording {}",
        std::mem::size_of::<future::Recording>()
    );
    assert!(fut <= inner + 48, "{fut}");
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_are_independent_listed_and_evicted() {
    let layer = builder().key(|req: &(u32, Req)| req.0).idle_ttl(Duration::from_secs(60)).build().unwrap();
    let registry = layer.registry();
    let svc = layer.layer(tower::service_fn(|(_, r): (u32, Req)| inner().oneshot(r)));
    for _ in 0..4 {
        assert!(svc.clone().oneshot((1, (1, 0))).await.is_err());
        assert!(svc.clone().oneshot((2, (0, 0))).await.is_ok());
    }
    assert_eq!(registry.state(&1), Some(CircuitState::Open));
    assert_eq!(registry.state(&2), Some(CircuitState::Closed));
    let e = svc.clone().oneshot((1, (0, 0))).await.unwrap_err();
    assert_eq!(e.downcast_ref::<CircuitOpen>().unwrap().name(), "test[1]");
    assert!(svc.clone().oneshot((2, (0, 0))).await.is_ok());
    let mut keys = registry.keys();
    keys.sort_by_key(|k| k.0);
    assert_eq!(keys.len(), 2);
    assert_eq!((keys[0].0, keys[0].1.state, keys[0].1.failures), (1, CircuitState::Open, 4));
    assert_eq!((keys[1].0, keys[1].1.state, keys[1].1.calls), (2, CircuitState::Closed, 4));
    assert_eq!(registry.get(&1).unwrap().name(), "test[1]");

    // key 2 stays in use, key 1 goes idle
    advance(Duration::from_secs(59)).await;
    assert!(svc.clone().oneshot((2, (0, 0))).await.is_ok());
    advance(Duration::from_secs(1)).await;
    registry.evict_idle();
    assert_eq!(registry.state(&1), None);
    assert_eq!(registry.len(), 1);
    // automatic sweep on a later call
    advance(Duration::from_secs(61)).await;
    assert!(svc.clone().oneshot((3, (0, 0))).await.is_ok());
    assert_eq!(registry.state(&2), None);
    assert_eq!(registry.len(), 1);
    // an evicted key starts afresh
    assert!(svc.clone().oneshot((1, (0, 0))).await.is_ok());
    assert_eq!(registry.state(&1), Some(CircuitState::Closed));
    assert!(builder().key(|r: &u32| *r).idle_ttl(Duration::ZERO).build::<u32>().is_err());
}

mod model;

/// Keyed breakers label their metrics with the layer's `service` and a
/// separate `key`, so series aggregate by service.
#[tokio::test]
async fn keyed_breaker_metrics_have_service_and_key_labels() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = CircuitBreakerLayer::builder()
        .name("api")
        .key(|r: &u32| *r % 2)
        .metric_keys([0u32, 1])
        .build::<u32>()
        .expect("valid configuration");
    let mut svc = layer.layer(tower::service_fn(|r: u32| async move { Ok::<_, BoxError>(r) }));
    for r in [1u32, 2, 4] {
        svc.ready().await.unwrap();
        // The key's breaker (and its metric handles) is made on first use, in `call`.
        let fut = metrics::with_local_recorder(&recorder, || svc.call(r));
        fut.await.unwrap();
    }
    let mut successes: Vec<(Vec<(String, String)>, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == "tower_mesh_circuit_breaker_calls_total")
        .filter_map(|(k, _, _, v)| {
            let labels: Vec<_> = k.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            match v {
                DebugValue::Counter(n) if labels.iter().any(|l| l == &("outcome".into(), "success".into())) => {
                    Some((labels, n))
                }
                _ => None,
            }
        })
        .collect();
    successes.sort();
    let expect = |key: &str, n: u64| {
        let labels = vec![
            ("service".to_owned(), "api".to_owned()),
            ("key".to_owned(), key.to_owned()),
            ("outcome".to_owned(), "success".to_owned()),
        ];
        (labels, n)
    };
    assert_eq!(successes, vec![expect("0", 2), expect("1", 1)]);
}

/// Successes on a full, failure-free count window skip the lock (see
/// `Shared::clean`); the window must still evict in order and the rates stay exact.
#[tokio::test(start_paused = true)]
async fn clean_window_fast_path_keeps_window_exact() {
    let layer = builder().count_window(4).minimum_calls(4).build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    for _ in 0..10 {
        call(&mut svc, 0, 0).await.unwrap();
    }
    let m = h.metrics();
    assert_eq!((m.calls, m.failures, m.failure_rate), (4, 0, Some(0.0)));
    // one failure: 1/4 = 25 %, stays closed and the window is no longer clean
    assert!(call(&mut svc, 1, 0).await.is_err());
    assert_eq!((h.metrics().failures, h.metrics().failure_rate), (1, Some(25.0)));
    // three more successes push... the failure stays in the last four calls
    for _ in 0..3 {
        call(&mut svc, 0, 0).await.unwrap();
    }
    assert_eq!(h.metrics().failures, 1);
    // the fourth evicts it: clean again
    call(&mut svc, 0, 0).await.unwrap();
    assert_eq!((h.metrics().failures, h.metrics().failure_rate), (0, Some(0.0)));
    // two failures out of four: 50 % opens
    assert!(call(&mut svc, 1, 0).await.is_err());
    assert_eq!(h.state(), CircuitState::Closed);
    assert!(call(&mut svc, 1, 0).await.is_err());
    assert_eq!(h.state(), CircuitState::Open);
    // after a manual reset the window refills before the fast path applies again
    h.reset();
    call(&mut svc, 1, 0).await.unwrap_err();
    for _ in 0..3 {
        call(&mut svc, 0, 0).await.unwrap();
    }
    assert_eq!((h.metrics().calls, h.metrics().failures), (4, 1));
}

/// Without slow-call detection calls are not timed: a very slow success is no
/// slow call; with it, it is.
#[tokio::test(start_paused = true)]
async fn slow_call_detection_is_opt_in() {
    let layer = builder().build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    call(&mut svc, 0, 120_000).await.unwrap();
    assert_eq!(h.metrics().slow_calls, 0);

    let layer = builder().slow_call_duration(Duration::from_secs(60)).build().unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(inner());
    call(&mut svc, 0, 120_000).await.unwrap();
    assert_eq!(h.metrics().slow_calls, 1);
}

/// Calls on different threads record through their thread's stripe into
/// one state: failures on two threads together trip the breaker, and its
/// counts hold every call.
#[test]
fn calls_on_several_threads_share_one_state() {
    let layer = builder().count_window(100).minimum_calls(100).build().unwrap();
    let handle = layer.handle();
    let svc =
        layer.layer(tower::service_fn(|(o, _): Req| std::future::ready(if o == 1 { Err("boom") } else { Ok(o) })));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let mut svc = svc.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
                rt.block_on(async {
                    for i in 0..25u64 {
                        // Half the calls fail.
                        let _ = svc.ready().await.unwrap().call((((t + i) % 2) as u8, 0)).await;
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Open, "50 % of 100 calls failed: {:?}", handle.metrics());
}
