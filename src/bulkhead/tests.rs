use std::time::Duration;

use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
use tower_test::mock;

use super::*;
use crate::config::ConfigError;
use crate::error::{error_response, MeshError};

fn full(e: crate::BoxError) -> BulkheadFull {
    e.downcast::<BulkheadFull>().map(|b| *b).expect("a BulkheadFull")
}

#[tokio::test(start_paused = true)]
async fn limits_concurrency_and_rejects_from_the_future() {
    let layer = BulkheadLayer::new(2);
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer.clone());

    assert_ready_ok!(svc.poll_ready());
    let f1 = svc.call(1);
    assert_ready_ok!(svc.poll_ready());
    let f2 = svc.call(2);
    assert_eq!(layer.available_permits(), 0);

    // The third call: poll_ready is Ready, the call is rejected by its future.
    assert_ready_ok!(svc.poll_ready());
    let err = full(svc.call(3).await.unwrap_err());
    assert_eq!(err.max_concurrent_calls(), 2);
    assert_eq!(err.waited(), Duration::ZERO);
    assert_eq!(err.name(), "bulkhead");
    assert_eq!(err.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(err.grpc_code(), crate::classify::GrpcCode::ResourceExhausted);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)), "a shed client may come back in a second");
    assert_eq!(error_response(&err).unwrap().status, 503);

    // The inner service saw only the two admitted calls.
    let (r1, s1) = handle.next_request().await.unwrap();
    let (r2, s2) = handle.next_request().await.unwrap();
    assert_eq!((r1, r2), (1, 2));
    assert_pending!(handle.poll_request());

    s1.send_response(10);
    assert_eq!(f1.await.unwrap(), 10);
    assert_eq!(layer.available_permits(), 1);

    assert_ready_ok!(svc.poll_ready());
    let f4 = svc.call(4);
    let (r4, s4) = handle.next_request().await.unwrap();
    assert_eq!(r4, 4);
    s4.send_response(40);
    s2.send_response(20);
    assert_eq!(f2.await.unwrap(), 20);
    assert_eq!(f4.await.unwrap(), 40);
    assert_eq!(layer.available_permits(), 2);
}

#[tokio::test(start_paused = true)]
async fn permit_held_while_inner_not_ready() {
    let layer = BulkheadLayer::new(1);
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer.clone());
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    assert_eq!(layer.available_permits(), 0, "permit reserved while the inner service gets ready");
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let f = svc.call(7);
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(8);
    assert_eq!(f.await.unwrap(), 8);
    assert_eq!(layer.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn waits_for_a_permit_then_succeeds() {
    let layer = BulkheadLayer::builder()
        .name("db")
        .max_concurrent_calls(1)
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer.clone());

    assert_ready_ok!(svc.poll_ready());
    let f1 = svc.call(1);
    // A second service (a clone) waits for the permit.
    let mut svc2 = mock::Spawn::new(svc.clone().into_inner());
    assert_pending!(svc2.poll_ready());
    tokio::time::advance(Duration::from_millis(60)).await;
    assert_pending!(svc2.poll_ready());

    let (_, s1) = handle.next_request().await.unwrap();
    s1.send_response(1);
    assert_eq!(f1.await.unwrap(), 1);
    assert!(svc2.is_woken());
    assert_ready_ok!(svc2.poll_ready());
    let f2 = svc2.call(2);
    let (_, s2) = handle.next_request().await.unwrap();
    s2.send_response(2);
    assert_eq!(f2.await.unwrap(), 2);
    assert_eq!(layer.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn rejects_after_max_wait() {
    let layer = BulkheadLayer::builder()
        .name("db")
        .max_concurrent_calls(1)
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer.clone());
    assert_ready_ok!(svc.poll_ready());
    let f1 = svc.call(1);

    let mut svc2 = mock::Spawn::new(svc.clone().into_inner());
    assert_pending!(svc2.poll_ready());
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(svc2.is_woken());
    assert_ready_ok!(svc2.poll_ready());
    let err = full(svc2.call(2).await.unwrap_err());
    assert_eq!(err.name(), "db");
    assert_eq!(err.waited(), Duration::from_millis(100));
    assert!(err.to_string().contains("bulkhead `db` is full"));

    let (_, s1) = handle.next_request().await.unwrap();
    s1.send_response(1);
    assert_eq!(f1.await.unwrap(), 1);
    assert_pending!(handle.poll_request());
    assert_eq!(layer.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn rejected_service_takes_a_permit_freed_before_call() {
    let layer = BulkheadLayer::new(1);
    let (mut svc, _handle) = mock::spawn_layer::<u32, u32, _>(layer.clone());
    let held = layer.try_acquire().unwrap();
    assert_ready_ok!(svc.poll_ready()); // would be rejected
    drop(held);
    assert_ready_ok!(svc.poll_ready()); // polled again: takes the freed permit
    assert_eq!(layer.available_permits(), 0);
}

#[tokio::test(start_paused = true)]
async fn permit_released_on_drop_of_future_and_service() {
    let layer = BulkheadLayer::new(1);
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer.clone());

    // Dropping the response future (cancellation) releases the permit.
    assert_ready_ok!(svc.poll_ready());
    let f = svc.call(1);
    assert_eq!(layer.available_permits(), 0);
    drop(f);
    assert_eq!(layer.available_permits(), 1);
    let _ = handle.next_request().await;

    // A permit taken by poll_ready but never used is released with the service.
    let mut svc2 = mock::Spawn::new(svc.clone().into_inner());
    assert_ready_ok!(svc2.poll_ready());
    assert_eq!(layer.available_permits(), 0);
    // A clone does not copy the held permit.
    let svc3 = svc2.clone().into_inner();
    assert_eq!(layer.available_permits(), 0);
    drop(svc2);
    assert_eq!(layer.available_permits(), 1);
    drop(svc3);
    assert_eq!(layer.available_permits(), 1);

    // A completed future releases its permit even if kept around.
    assert_ready_ok!(svc.poll_ready());
    let mut f = tokio_test::task::spawn(svc.call(2));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(3);
    assert_eq!(assert_ready!(f.poll()).unwrap(), 3);
    assert_eq!(layer.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn waiting_service_dropped_releases_nothing_and_leaks_nothing() {
    let layer = BulkheadLayer::builder().max_concurrent_calls(1).max_wait(Duration::from_secs(1)).build().unwrap();
    let (mut svc, _handle) = mock::spawn_layer::<u32, u32, _>(layer.clone());
    let held = layer.try_acquire().unwrap();
    assert_pending!(svc.poll_ready());
    drop(svc);
    drop(held);
    assert_eq!(layer.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn keyed_partitions_are_independent() {
    let layer = BulkheadLayer::keyed(1, |r: &(u8, u32)| r.0);
    let (mut svc, mut handle) = mock::spawn_layer::<(u8, u32), u32, _>(layer.clone());

    assert_ready_ok!(svc.poll_ready());
    let a1 = svc.call((1, 1));
    assert_ready_ok!(svc.poll_ready());
    let b1 = svc.call((2, 1));
    assert_ready_ok!(svc.poll_ready());
    let a2 = svc.call((1, 2));
    assert_eq!(layer.available_permits(&1), 0);
    assert_eq!(layer.available_permits(&2), 0);
    assert_eq!(layer.available_permits(&3), 1);
    assert_eq!(layer.partitions(), 2);

    let err = full(a2.await.unwrap_err());
    assert_eq!(err.max_concurrent_calls(), 1);

    let (r, s) = handle.next_request().await.unwrap();
    assert_eq!(r, (1, 1));
    s.send_response(1);
    let (r, s) = handle.next_request().await.unwrap();
    assert_eq!(r, (2, 1));
    drop(b1); // cancelled: partition 2's permit is back
    drop(s);
    assert_eq!(a1.await.unwrap(), 1);
    assert_eq!(layer.available_permits(&1), 1);
    assert_eq!(layer.available_permits(&2), 1);
}

#[tokio::test(start_paused = true)]
async fn keyed_waits_in_the_future() {
    let layer = BulkheadLayer::builder()
        .max_concurrent_calls(1)
        .max_wait(Duration::from_millis(50))
        .key(|r: &(u8, u32)| r.0)
        .build()
        .unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<(u8, u32), u32, _>(layer.clone());

    assert_ready_ok!(svc.poll_ready());
    let a1 = svc.call((1, 1));
    assert_ready_ok!(svc.poll_ready());
    let mut a2 = tokio_test::task::spawn(svc.call((1, 2)));
    assert_pending!(a2.poll());
    // a2 has not reached the inner service yet.
    let (r, s) = handle.next_request().await.unwrap();
    assert_eq!(r, (1, 1));
    assert_pending!(handle.poll_request());
    s.send_response(1);
    assert_eq!(a1.await.unwrap(), 1);
    assert!(a2.is_woken());
    assert_pending!(a2.poll());
    let (r, s) = handle.next_request().await.unwrap();
    assert_eq!(r, (1, 2));
    s.send_response(2);
    assert_eq!(assert_ready!(a2.poll()).unwrap(), 2);

    // Waiting too long is a rejection; dropping a waiting future leaks nothing.
    assert_ready_ok!(svc.poll_ready());
    let a3 = svc.call((1, 3));
    assert_ready_ok!(svc.poll_ready());
    let mut a4 = tokio_test::task::spawn(svc.call((1, 4)));
    assert_pending!(a4.poll());
    tokio::time::advance(Duration::from_millis(50)).await;
    let err = full(assert_ready!(a4.poll()).unwrap_err());
    assert_eq!(err.waited(), Duration::from_millis(50));
    assert_ready_ok!(svc.poll_ready());
    let mut a5 = tokio_test::task::spawn(svc.call((1, 5)));
    assert_pending!(a5.poll());
    drop(a5);
    drop(a3);
    assert_eq!(layer.available_permits(&1), 1);
}

#[test]
fn idle_partitions_are_evicted() {
    let layer = BulkheadLayer::keyed(1, |r: &u32| *r);
    let mut svc = tower::Layer::layer(&layer, tower::service_fn(|r: u32| async move { Ok::<_, crate::BoxError>(r) }));
    let mut held = Vec::new();
    for k in 0..1000u32 {
        let f = tower::Service::call(&mut svc, k);
        if k < 10 {
            held.push(f);
        }
    }
    assert!(layer.partitions() < 200, "{} partitions", layer.partitions());
    assert_eq!(layer.available_permits(&3), 0, "busy partitions are kept");
    drop(held);
    assert_eq!(layer.available_permits(&3), 1);
}

#[test]
fn config_validation_and_serde() {
    assert_eq!(
        BulkheadLayer::builder().max_concurrent_calls(0).build().unwrap_err(),
        ConfigError::Zero { field: "bulkhead.max_concurrent_calls" }
    );
    let cfg: BulkheadConfig = serde_json::from_str(r#"{"max_wait":"1s"}"#).unwrap();
    assert_eq!(cfg, BulkheadConfig { max_concurrent_calls: 25, max_wait: Duration::from_secs(1) });
    assert!(serde_json::from_str::<BulkheadConfig>(r#"{"max_calls":1}"#).is_err());
    let back: BulkheadConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    let layer = BulkheadLayer::from_config(&cfg).unwrap();
    assert_eq!(layer.available_permits(), 25);
    assert_eq!(layer.name(), "bulkhead");
    assert!(BulkheadLayer::from_config(&BulkheadConfig { max_concurrent_calls: 0, ..cfg }).is_err());
}

mod prop {
    use super::*;
    use proptest::prelude::*;
    use tokio::sync::oneshot;
    use tower::{Layer, Service};

    #[derive(Clone, Debug)]
    enum Op {
        /// poll_ready + call on service `i`.
        Call(usize),
        /// poll_ready only on service `i` (takes a permit, if free, for its next call).
        Ready(usize),
        /// Complete the `i`-th outstanding call.
        Complete(usize),
        /// Drop the `i`-th outstanding call's future.
        Drop(usize),
        /// Drop service `i` (and replace it with a fresh clone).
        DropService(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..3usize).prop_map(Op::Call),
            1 => (0..3usize).prop_map(Op::Ready),
            2 => any::<usize>().prop_map(Op::Complete),
            2 => any::<usize>().prop_map(Op::Drop),
            1 => (0..3usize).prop_map(Op::DropService),
        ]
    }

    type Inner = tower::util::ServiceFn<
        fn(oneshot::Receiver<()>) -> futures::future::BoxFuture<'static, Result<(), crate::BoxError>>,
    >;

    fn inner() -> Inner {
        tower::service_fn(|rx: oneshot::Receiver<()>| Box::pin(async move { rx.await.map_err(Into::into) }) as _)
    }

    proptest! {
        #[test]
        fn never_exceeds_max_and_releases_everything(max in 1usize..4, ops in proptest::collection::vec(op(), 1..60)) {
            let layer = BulkheadLayer::new(max);
            let mut services: Vec<_> = (0..3).map(|_| tokio_test::task::spawn(layer.layer(inner()))).collect();
            let mut holding = [false; 3];
            let mut calls = Vec::new();
            for op in ops {
                match op {
                    Op::Call(i) | Op::Ready(i) => {
                        let ready = services[i].enter(|cx, mut s| s.poll_ready(cx));
                        prop_assert!(ready.is_ready());
                        let in_use = calls.len() + holding.iter().filter(|h| **h).count();
                        if !holding[i] && in_use < max {
                            holding[i] = true;
                        }
                        if let Op::Call(_) = op {
                            let (tx, rx) = oneshot::channel();
                            let mut f = tokio_test::task::spawn(services[i].call(rx));
                            if holding[i] {
                                prop_assert!(f.poll().is_pending());
                                calls.push((tx, f));
                            } else {
                                let res = f.poll();
                                prop_assert!(matches!(res, std::task::Poll::Ready(Err(ref e)) if e.is::<BulkheadFull>()));
                            }
                            holding[i] = false;
                        }
                    }
                    Op::Complete(n) if !calls.is_empty() => {
                        let (tx, mut f) = calls.remove(n % calls.len());
                        tx.send(()).unwrap();
                        prop_assert!(matches!(f.poll(), std::task::Poll::Ready(Ok(()))));
                    }
                    Op::Drop(n) if !calls.is_empty() => {
                        drop(calls.remove(n % calls.len()));
                    }
                    Op::DropService(i) => {
                        services[i] = tokio_test::task::spawn(services[i].clone());
                        holding[i] = false;
                    }
                    _ => {}
                }
                let in_use = calls.len() + holding.iter().filter(|h| **h).count();
                prop_assert!(in_use <= max);
                prop_assert_eq!(layer.available_permits(), max - in_use);
            }
            drop(calls);
            drop(services);
            prop_assert_eq!(layer.available_permits(), max);
        }
    }
}

#[test]
fn services_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let inner = tower::service_fn(|r: u32| async move { Ok::<_, crate::BoxError>(r) });
    let mut svc = tower::Layer::layer(&BulkheadLayer::new(1), inner);
    send_sync(&svc);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let _guard = rt.enter();
    let layer = BulkheadLayer::builder().max_wait(Duration::from_secs(1)).max_concurrent_calls(1).build().unwrap();
    let mut waiting = tower::Layer::layer(&layer, inner);
    let _held = layer.try_acquire();
    let _ = tokio_test::task::spawn(()).enter(|cx, _| tower::Service::poll_ready(&mut waiting, cx));
    send_sync(&waiting); // holding the boxed wait
    let _ = tokio_test::task::spawn(()).enter(|cx, _| tower::Service::poll_ready(&mut svc, cx));
    send(&tower::Service::call(&mut svc, 1));
    let mut keyed = tower::Layer::layer(&BulkheadLayer::keyed(1, |r: &u32| *r), inner);
    send_sync(&keyed);
    send(&tower::Service::call(&mut keyed, 1));
}

#[tokio::test(start_paused = true)]
async fn metrics_are_recorded_on_the_registered_handles() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder().name("m").max_concurrent_calls(1).max_wait(Duration::from_millis(10)).build().unwrap()
    });
    // Each snapshot drains what it reads (counters and gauges are swapped to
    // zero): the values are changes since the previous snapshot.
    let values = || {
        let snapshot = snapshotter.snapshot().into_vec();
        move |name: &str| {
            snapshot.iter().find_map(|(k, _, _, v)| {
                let key = k.key();
                let ours = key.labels().any(|l| l.key() == "service" && l.value() == "m");
                (key.name() == name && ours).then(|| match v {
                    DebugValue::Counter(c) => vec![*c as f64],
                    DebugValue::Gauge(g) => vec![g.into_inner()],
                    DebugValue::Histogram(h) => h.iter().map(|x| x.into_inner()).collect(),
                })
            })
        }
    };
    let value = |name: &str| values()(name);

    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer.clone());
    assert_ready_ok!(svc.poll_ready());
    let f = svc.call(1);
    assert_eq!(value("tower_mesh_bulkhead_in_flight"), Some(vec![1.0]));

    let mut svc2 = mock::Spawn::new(svc.clone().into_inner());
    assert_pending!(svc2.poll_ready());
    tokio::time::advance(Duration::from_millis(10)).await;
    assert_ready_ok!(svc2.poll_ready());
    assert!(svc2.call(2).await.is_err());
    let now = values();
    assert_eq!(now("tower_mesh_bulkhead_rejections_total"), Some(vec![1.0]));
    assert_eq!(now("tower_mesh_bulkhead_permit_wait_seconds"), Some(vec![0.01]));

    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(1);
    f.await.unwrap();
    assert_eq!(value("tower_mesh_bulkhead_in_flight"), Some(vec![-1.0]), "back down by one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_never_exceed_the_limit() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use tower::ServiceExt;

    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let layer = BulkheadLayer::builder().max_concurrent_calls(10).max_wait(Duration::from_secs(60)).build().unwrap();
    let svc = tower::ServiceBuilder::new().layer(layer.clone()).service_fn({
        let (in_flight, max_seen) = (in_flight.clone(), max_seen.clone());
        move |_: ()| {
            let (in_flight, max_seen) = (in_flight.clone(), max_seen.clone());
            async move {
                let now = in_flight.fetch_add(1, SeqCst) + 1;
                max_seen.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                in_flight.fetch_sub(1, SeqCst);
                Ok::<_, crate::BoxError>(())
            }
        }
    });
    let tasks: Vec<_> = (0..500).map(|_| tokio::spawn(svc.clone().oneshot(()))).collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(max_seen.load(SeqCst) <= 10, "max in flight {}", max_seen.load(SeqCst));
    assert!(max_seen.load(SeqCst) >= 2, "ran concurrently");
    assert_eq!(layer.available_permits(), 10);
}
