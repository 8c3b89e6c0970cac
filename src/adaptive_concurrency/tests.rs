use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_test::{assert_pending, assert_ready_ok};
use tower::{ServiceBuilder, ServiceExt};
use tower_test::mock;

use super::*;
use crate::config::ConfigError;
use crate::error::{error_response, BoxError, MeshError};

fn limited(e: BoxError) -> ConcurrencyLimited {
    e.downcast::<ConcurrencyLimited>().map(|b| *b).expect("a ConcurrencyLimited")
}

fn aimd(initial: usize, min: usize, max: usize) -> AdaptiveConcurrencyLayer {
    AdaptiveConcurrencyLayer::builder()
        .name("t")
        .aimd(Aimd { timeout: Duration::from_millis(100), ..Aimd::default() })
        .initial_limit(initial)
        .min_limit(min)
        .max_limit(max)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn rejection_over_the_limit_is_immediate_and_typed() {
    let layer = aimd(2, 2, 2);
    let handle = layer.handle();
    let (mut svc, mut inner) = mock::spawn_layer::<u32, u32, _>(layer);

    assert_ready_ok!(svc.poll_ready());
    let f1 = svc.call(1);
    assert_ready_ok!(svc.poll_ready());
    let f2 = svc.call(2);
    assert_eq!(handle.in_flight(), 2);

    // poll_ready stays Ready; the call fails from its future, without
    // reaching the inner service and without any time passing.
    let before = tokio::time::Instant::now();
    assert_ready_ok!(svc.poll_ready());
    let err = limited(svc.call(3).await.unwrap_err());
    assert_eq!(tokio::time::Instant::now(), before);
    assert_eq!((err.name(), err.limit(), err.waited()), ("t", 2, Duration::ZERO));
    assert_eq!(err.kind(), crate::error::MeshErrorKind::Rejected);
    assert_eq!(err.grpc_code(), crate::classify::GrpcCode::ResourceExhausted);
    assert_eq!(error_response(&err).unwrap().status, 503);
    let boxed: BoxError = Box::new(err.clone());
    assert!(crate::classify::is_rejection(&boxed), "found through layer_errors");

    let (_, s1) = inner.next_request().await.unwrap();
    let (_, s2) = inner.next_request().await.unwrap();
    assert_pending!(inner.poll_request());
    s1.send_response(10);
    s2.send_response(20);
    assert_eq!((f1.await.unwrap(), f2.await.unwrap()), (10, 20));
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.limit(), 2, "max_limit holds");
}

#[tokio::test(start_paused = true)]
async fn aimd_drops_shrink_the_limit_down_to_min() {
    let layer = aimd(10, 3, 100);
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service_fn(|fail: bool| async move {
        if fail {
            Err::<(), BoxError>("boom".into())
        } else {
            Ok(())
        }
    });
    svc.clone().oneshot(true).await.unwrap_err();
    assert_eq!(handle.limit(), 9, "10 × 0.9");
    for _ in 0..30 {
        svc.clone().oneshot(true).await.unwrap_err();
    }
    assert_eq!(handle.limit(), 3, "not below min_limit");
    // Successes with the limit not in use (1 in flight of 3) do not grow it.
    svc.clone().oneshot(false).await.unwrap();
    assert_eq!(handle.limit(), 3);
}

#[tokio::test(start_paused = true)]
async fn aimd_slow_calls_are_drops() {
    let layer = aimd(1, 1, 100);
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service_fn(|ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, BoxError>(())
    });
    svc.clone().oneshot(10).await.unwrap();
    assert_eq!(handle.limit(), 2, "fast, the limit in use: + 1 / 1");
    svc.clone().oneshot(150).await.unwrap();
    assert_eq!(handle.limit(), 1, "slower than the 100 ms timeout: 2 × 0.9");
}

#[tokio::test(start_paused = true)]
async fn growth_stops_at_max_limit() {
    let layer = aimd(1, 1, 4);
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service_fn(|()| async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok::<_, BoxError>(())
    });
    let mut calls = Vec::new();
    for _ in 0..40 {
        // Keep the limit in use so that AIMD may grow it.
        calls.extend((0..handle.limit()).map(|_| svc.clone().oneshot(())));
        for r in futures::future::join_all(calls.drain(..)).await {
            r.unwrap();
        }
    }
    assert_eq!(handle.limit(), 4);
}

#[tokio::test(start_paused = true)]
async fn cancellation_releases_the_slot_and_feeds_no_sample() {
    let layer = aimd(2, 1, 100);
    let handle = layer.handle();
    let (mut svc, mut inner) = mock::spawn_layer::<u32, u32, _>(layer);

    assert_ready_ok!(svc.poll_ready());
    let f = svc.call(1);
    let _req = inner.next_request().await.unwrap();
    assert_eq!(handle.in_flight(), 1);
    tokio::time::advance(Duration::from_secs(10)).await; // way past the AIMD timeout
    drop(f);
    assert_eq!(handle.in_flight(), 0, "released on drop");
    assert_eq!(handle.limit(), 2, "a cancelled call is no sample");

    // A slot taken by poll_ready and never used goes back with the service.
    assert_ready_ok!(svc.poll_ready());
    assert_eq!(handle.in_flight(), 1);
    drop(svc);
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.limit(), 2);
}

#[cfg(feature = "bulkhead")]
#[tokio::test(start_paused = true)]
async fn rejections_from_below_are_not_drops() {
    let bulkhead = crate::bulkhead::BulkheadLayer::new(0);
    let layer = aimd(5, 1, 100);
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).layer(bulkhead).service_fn(|()| async { Ok::<_, BoxError>(()) });
    let err = svc.oneshot(()).await.unwrap_err();
    assert!(err.is::<crate::bulkhead::BulkheadFull>());
    assert_eq!(handle.limit(), 5);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_classifier_decides_what_a_drop_is() {
    use crate::classify::{classify_fn, FailureKind, Outcome};
    // An Ok(503) is a drop; an Ok(404) is ignored.
    let layer = AdaptiveConcurrencyLayer::builder()
        .aimd(Aimd::default())
        .initial_limit(10)
        .classifier(classify_fn(|r: Result<&u16, &BoxError>| match r {
            Ok(503) => Outcome::Failure(FailureKind::Custom("busy")),
            Ok(404) => Outcome::Ignored,
            _ => Outcome::Success,
        }))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service_fn(|s: u16| async move { Ok::<_, BoxError>(s) });
    assert_eq!(svc.clone().oneshot(404).await.unwrap(), 404);
    assert_eq!(handle.limit(), 10);
    assert_eq!(svc.clone().oneshot(503).await.unwrap(), 503);
    assert_eq!(handle.limit(), 9);
}

#[tokio::test(start_paused = true)]
async fn waits_for_a_slot_then_succeeds_or_is_rejected_after_max_wait() {
    let layer = AdaptiveConcurrencyLayer::builder()
        .name("w")
        .aimd(Aimd::default())
        .initial_limit(1)
        .max_limit(1)
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let (mut svc, mut inner) = mock::spawn_layer::<u32, u32, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let f1 = svc.call(1);

    let mut waiter = mock::Spawn::new(svc.clone().into_inner());
    assert_pending!(waiter.poll_ready());
    tokio::time::advance(Duration::from_millis(40)).await;
    let (_, s1) = inner.next_request().await.unwrap();
    s1.send_response(1);
    f1.await.unwrap();
    assert!(waiter.is_woken(), "a freed slot wakes the waiter");
    assert_ready_ok!(waiter.poll_ready());
    let f2 = waiter.call(2);
    assert_eq!(handle.in_flight(), 1);

    // No slot frees up: rejected after max_wait.
    assert_pending!(svc.poll_ready());
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_ready_ok!(svc.poll_ready());
    let err = limited(svc.call(3).await.unwrap_err());
    assert_eq!(err.waited(), Duration::from_millis(100));

    let (_, s2) = inner.next_request().await.unwrap();
    s2.send_response(2);
    f2.await.unwrap();
    drop((svc, waiter));
    assert_eq!(handle.in_flight(), 0);
}

/// Clients call an upstream whose latency is `base` up to `capacity` calls
/// at once and grows in proportion beyond; rejected clients retry after
/// 1 ms. Returns the limit every 100 ms of (paused) time.
async fn under_load(layer: AdaptiveConcurrencyLayer, capacity: usize, clients: usize, secs: u64) -> Vec<usize> {
    let handle = layer.handle();
    let busy = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new().layer(layer).service_fn(move |()| {
        let busy = busy.clone();
        async move {
            let n = busy.fetch_add(1, Ordering::SeqCst) + 1;
            let stretch = (n as f64 / capacity as f64).max(1.0);
            tokio::time::sleep(Duration::from_millis(10).mul_f64(stretch)).await;
            busy.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(())
        }
    });
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                while tokio::time::Instant::now() < end {
                    if svc.clone().oneshot(()).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
        })
        .collect();
    let mut limits = Vec::new();
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        limits.push(handle.limit());
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(handle.in_flight(), 0);
    limits
}

#[tokio::test(start_paused = true)]
async fn aimd_settles_near_the_capacity() {
    // Calls slower than 15 ms (1.5 × the unloaded 10 ms) are drops.
    let layer = AdaptiveConcurrencyLayer::builder()
        .aimd(Aimd { timeout: Duration::from_millis(15), ..Aimd::default() })
        .initial_limit(100)
        .max_limit(1000)
        .build()
        .unwrap();
    let limits = under_load(layer, 20, 80, 10).await;
    // Calls start to be slower than 15 ms above 30 in flight: the limit
    // saw-tooths just below that, from the first second on.
    assert!(limits[..10].iter().any(|&l| l <= 32), "{limits:?}");
    let settled = &limits[limits.len() / 2..];
    let (lo, hi) = (*settled.iter().min().unwrap(), *settled.iter().max().unwrap());
    assert!(lo >= 20 && hi <= 35, "settled within [20, 35] for capacity 20: {limits:?}");
}

#[tokio::test(start_paused = true)]
async fn gradient2_comes_down_when_load_raises_the_latency() {
    let layer = AdaptiveConcurrencyLayer::builder()
        .gradient2(Gradient2::default())
        .initial_limit(100)
        .max_limit(1000)
        .build()
        .unwrap();
    let handle = layer.handle();
    // 10 clients: 10 ms, app-limited (the limit stays); the long-term RTT learns it.
    let warm = under_load(layer.clone(), 20, 10, 2).await;
    assert!(warm.iter().all(|&l| l == 100), "{warm:?}");
    assert!(handle.long_rtt().unwrap() >= Duration::from_millis(10));
    // 80 clients: queueing would make it 40 ms.
    let limits = under_load(layer, 20, 80, 10).await;
    // Down from 100 within a second; then about where the latency is 1.5 ×
    // the long-term 10 ms (≈ 34 for this curve), creeping up slowly as that
    // average learns the overload.
    assert!(limits[..10].iter().any(|&l| l < 50), "{limits:?}");
    let settled = &limits[limits.len() / 2..];
    let (lo, hi) = (*settled.iter().min().unwrap(), *settled.iter().max().unwrap());
    assert!(lo >= 20 && hi <= 50, "settled within [20, 50] for capacity 20: {limits:?}");
}

#[test]
fn config_validation_and_serde() {
    let bad = |f: fn(AdaptiveConcurrencyBuilder) -> AdaptiveConcurrencyBuilder| {
        f(AdaptiveConcurrencyLayer::builder()).build().unwrap_err()
    };
    assert!(matches!(bad(|b| b.min_limit(0)), ConfigError::OutOfRange { field: "adaptive_concurrency.min_limit", .. }));
    assert!(matches!(
        bad(|b| b.min_limit(10).max_limit(5)),
        ConfigError::OutOfRange { field: "adaptive_concurrency.max_limit", .. }
    ));
    assert!(matches!(
        bad(|b| b.initial_limit(2000)),
        ConfigError::OutOfRange { field: "adaptive_concurrency.initial_limit", .. }
    ));
    assert!(matches!(
        bad(|b| b.gradient2(Gradient2 { smoothing: 0.0, ..Gradient2::default() })),
        ConfigError::OutOfRange { field: "adaptive_concurrency.gradient2.smoothing", .. }
    ));
    assert!(matches!(
        bad(|b| b.aimd(Aimd { backoff_ratio: 1.0, ..Aimd::default() })),
        ConfigError::OutOfRange { field: "adaptive_concurrency.aimd.backoff_ratio", .. }
    ));
    assert!(matches!(
        bad(|b| b.aimd(Aimd { timeout: Duration::ZERO, ..Aimd::default() })),
        ConfigError::Zero { field: "adaptive_concurrency.aimd.timeout" }
    ));

    let cfg: AdaptiveConcurrencyConfig = serde_json::from_str(
        r#"{ "algorithm": "aimd", "initial_limit": 10, "max_wait": "5ms",
             "aimd": { "timeout": "200ms", "backoff_ratio": 0.8 } }"#,
    )
    .unwrap();
    assert_eq!(cfg.algorithm, AlgorithmKind::Aimd);
    assert_eq!(cfg.max_wait, Duration::from_millis(5));
    assert_eq!(cfg.aimd, Aimd { timeout: Duration::from_millis(200), backoff_ratio: 0.8, increase: 1.0 });
    assert_eq!(cfg.gradient2, Gradient2::default());
    let layer = AdaptiveConcurrencyLayer::from_config(&cfg).unwrap();
    assert_eq!((layer.name(), layer.handle().limit()), ("adaptive_concurrency", 10));
    assert!(serde_json::from_str::<AdaptiveConcurrencyConfig>(r#"{ "algorithm": "vegas" }"#).is_err());
    assert!(serde_json::from_str::<AdaptiveConcurrencyConfig>(r#"{ "limit": 3 }"#).is_err());
}

#[test]
fn services_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let inner = tower::service_fn(|r: u32| async move { Ok::<_, BoxError>(r) });
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let _guard = rt.enter();
    let layer = AdaptiveConcurrencyLayer::builder().max_wait(Duration::from_secs(1)).build().unwrap();
    let mut svc = tower::Layer::layer(&layer, inner);
    send_sync(&svc);
    send_sync(&layer.handle());
    let _ = tokio_test::task::spawn(()).enter(|cx, _| tower::Service::poll_ready(&mut svc, cx));
    send(&tower::Service::call(&mut svc, 1));
}

#[tokio::test(start_paused = true)]
async fn metrics_are_recorded() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || aimd(1, 1, 10));
    // Each snapshot drains what it reads: take one, then look into it.
    let values = || {
        let snapshot = snapshotter.snapshot().into_vec();
        move |name: &str| {
            snapshot.iter().find_map(|(k, _, _, v)| {
                let key = k.key();
                let ours = key.labels().any(|l| l.key() == "service" && l.value() == "t");
                (key.name() == name && ours).then(|| match v {
                    DebugValue::Counter(c) => *c as f64,
                    DebugValue::Gauge(g) => g.into_inner(),
                    DebugValue::Histogram(_) => f64::NAN,
                })
            })
        }
    };
    let value = |name: &str| values()(name);
    let (mut svc, mut inner) = mock::spawn_layer::<u32, u32, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let f = svc.call(1);
    assert_eq!(value("tower_mesh_adaptive_concurrency_in_flight"), Some(1.0));
    assert_ready_ok!(svc.poll_ready());
    svc.call(2).await.unwrap_err();
    assert_eq!(value("tower_mesh_adaptive_concurrency_rejections_total"), Some(1.0));
    tokio::time::advance(Duration::from_millis(20)).await;
    let (_, send) = inner.next_request().await.unwrap();
    send.send_response(1);
    f.await.unwrap();
    let now = values();
    assert_eq!(now("tower_mesh_adaptive_concurrency_limit"), Some(2.0));
    assert_eq!(now("tower_mesh_adaptive_concurrency_rtt_short_seconds"), Some(0.02));
    assert_eq!(now("tower_mesh_adaptive_concurrency_in_flight"), Some(0.0));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Through the layer: whatever the results and latencies, the limit
        /// stays within [min, max] and every slot comes back.
        #[test]
        fn the_limit_stays_within_bounds_and_slots_come_back(
            gradient in any::<bool>(),
            min in 1usize..8,
            span in 0usize..20,
            calls in proptest::collection::vec((0u64..300, any::<bool>()), 1..80),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async move {
                let builder = AdaptiveConcurrencyLayer::builder().initial_limit(min).min_limit(min).max_limit(min + span);
                let builder = if gradient { builder.gradient2(Gradient2::default()) } else { builder.aimd(Aimd { timeout: Duration::from_millis(100), ..Aimd::default() }) };
                let layer = builder.build().unwrap();
                let handle = layer.handle();
                let svc = ServiceBuilder::new().layer(layer).service_fn(|(ms, fail): (u64, bool)| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    if fail { Err::<(), BoxError>("x".into()) } else { Ok(()) }
                });
                let calls = calls.into_iter().map(|c| svc.clone().oneshot(c));
                let _ = futures::future::join_all(calls).await;
                prop_assert!((min..=min + span).contains(&handle.limit()));
                prop_assert_eq!(handle.in_flight(), 0);
                Ok(())
            })?;
        }
    }
}
