use std::convert::Infallible;
use std::time::Duration;

use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_test::mock;

use super::*;
use crate::config::ConfigError;
use crate::deadline::{Deadline, DeadlineCarrier};
use crate::error::MeshError;

fn elapsed(e: crate::BoxError) -> Elapsed {
    *e.downcast::<Elapsed>().expect("an Elapsed")
}

#[tokio::test(start_paused = true)]
async fn total_timeout_fires() {
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(TimeoutLayer::new(Duration::from_millis(100)));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call(1));
    let (req, _send) = handle.next_request().await.unwrap();
    assert_eq!(req, 1);
    assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_millis(99)).await;
    assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_millis(1)).await;
    let e = elapsed(assert_ready!(fut.poll()).unwrap_err());
    assert_eq!(e, Elapsed::new(TimeoutKind::Total, Duration::from_millis(100)));
    assert_eq!(e.http_status(), http::StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(e.grpc_code(), crate::classify::GrpcCode::DeadlineExceeded);
    assert_eq!(e.to_string(), "request timed out after 100ms (total timeout)");
}

#[tokio::test(start_paused = true)]
async fn per_attempt_timeout_fires() {
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(TimeoutLayer::per_attempt(Duration::from_millis(30)));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call(1));
    let _req = handle.next_request().await.unwrap();
    assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_millis(30)).await;
    let e = elapsed(assert_ready!(fut.poll()).unwrap_err());
    assert_eq!((e.kind(), e.timeout()), (TimeoutKind::Attempt, Duration::from_millis(30)));
}

#[tokio::test(start_paused = true)]
async fn per_attempt_is_capped_by_the_enclosing_deadline() {
    // Under an enclosing deadline on the task (as a total timeout above sets).
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(TimeoutLayer::per_attempt(Duration::from_secs(1)));
    assert_ready_ok!(svc.poll_ready());
    let outer = Deadline::after(Duration::from_millis(50));
    let mut fut = tokio_test::task::spawn(outer.sync_scope(|| svc.call(1)));
    let _req = handle.next_request().await.unwrap();
    assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_millis(50)).await;
    let e = elapsed(assert_ready!(fut.poll()).unwrap_err());
    assert_eq!((e.kind(), e.timeout()), (TimeoutKind::Total, Duration::from_millis(50)));

    // Stacked: total 80ms above a per-attempt 1s; the attempt ends at 80ms.
    let (svc, mut handle) = mock::pair::<u32, u32>();
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(80)))
        .layer(TimeoutLayer::per_attempt(Duration::from_secs(1)))
        .service(svc);
    let mut fut = tokio_test::task::spawn(svc.oneshot(1));
    assert_pending!(fut.poll());
    let _req = handle.next_request().await.unwrap();
    tokio::time::advance(Duration::from_millis(80)).await;
    let e = elapsed(assert_ready!(fut.poll()).unwrap_err());
    assert_eq!((e.kind(), e.timeout()), (TimeoutKind::Total, Duration::from_millis(80)));

    // A shorter attempt timeout is not extended by the total.
    let (svc, mut handle) = mock::pair::<u32, u32>();
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(10)))
        .layer(TimeoutLayer::per_attempt(Duration::from_millis(20)))
        .service(svc);
    let mut fut = tokio_test::task::spawn(svc.oneshot(1));
    assert_pending!(fut.poll());
    let _req = handle.next_request().await.unwrap();
    tokio::time::advance(Duration::from_millis(20)).await;
    let e = elapsed(assert_ready!(fut.poll()).unwrap_err());
    assert_eq!((e.kind(), e.timeout()), (TimeoutKind::Attempt, Duration::from_millis(20)));
}

#[tokio::test(start_paused = true)]
async fn inner_sees_the_deadline_in_call_and_while_polled() {
    let start = tokio::time::Instant::now();
    let svc = ServiceBuilder::new().layer(TimeoutLayer::new(Duration::from_secs(3))).service_fn(|_: ()| {
        let in_call = Deadline::current();
        async move {
            let before = Deadline::current();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after_sleep = Deadline::current();
            Ok::<_, Infallible>((in_call, before, after_sleep))
        }
    });
    assert_eq!(Deadline::current(), None);
    let (in_call, before, after_sleep) = svc.oneshot(()).await.unwrap();
    let expected = Some(Deadline::at(start + Duration::from_secs(3)));
    assert_eq!(in_call, expected);
    assert_eq!(before, expected);
    assert_eq!(after_sleep, expected);
    assert_eq!(Deadline::current(), None, "the scope ends with the call");
}

#[tokio::test(start_paused = true)]
async fn http_requests_carry_the_deadline_and_grpc_timeout() {
    let start = tokio::time::Instant::now();
    let (svc, mut handle) = mock::pair::<http::Request<()>, http::Response<()>>();
    let svc =
        ServiceBuilder::new().layer(TimeoutLayer::new(Duration::from_millis(250)).grpc_timeout(true)).service(svc);
    let mut fut = tokio_test::task::spawn(svc.clone().oneshot(http::Request::new(())));
    assert_pending!(fut.poll());
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.deadline(), Some(Deadline::at(start + Duration::from_millis(250))));
    assert_eq!(req.headers()["grpc-timeout"], "250000u");
    send.send_response(http::Response::new(()));
    assert!(assert_ready!(fut.poll()).is_ok());

    // Without grpc_timeout: no header. A request that already carries an
    // earlier deadline keeps it, and the timeout fires then.
    let (svc, mut handle) = mock::pair::<http::Request<()>, http::Response<()>>();
    let svc = ServiceBuilder::new().layer(TimeoutLayer::new(Duration::from_secs(5))).service(svc);
    let mut req = http::Request::new(());
    let early = Deadline::after(Duration::from_millis(40));
    req.set_deadline(early);
    let mut fut = tokio_test::task::spawn(svc.oneshot(req));
    assert_pending!(fut.poll());
    let (req, _send) = handle.next_request().await.unwrap();
    assert_eq!(req.deadline(), Some(early));
    assert!(req.headers().get("grpc-timeout").is_none());
    tokio::time::advance(Duration::from_millis(40)).await;
    let e = elapsed(assert_ready!(fut.poll()).unwrap_err());
    assert_eq!(e.timeout(), Duration::from_millis(40));
}

/// The deadline travels in the request: a per-attempt timeout in another
/// task (behind a `Buffer`'s worker, or a spawned task) still ends by the
/// total deadline set above, and the service there sees it.
#[tokio::test(start_paused = true)]
async fn the_deadline_survives_a_task_hop() {
    let start = tokio::time::Instant::now();
    let total = Deadline::at(start + Duration::from_millis(300));
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(300)))
        .buffer(8)
        .layer(TimeoutLayer::per_attempt(Duration::from_secs(1)))
        .service_fn(|req: http::Request<u64>| {
            let in_call = Deadline::current();
            async move {
                tokio::time::sleep(Duration::from_millis(*req.body())).await;
                Ok::<_, Infallible>((req.deadline(), in_call))
            }
        });
    let (carried, in_call) = svc.clone().oneshot(http::Request::new(10)).await.unwrap();
    assert_eq!(carried, Some(total));
    assert_eq!(in_call, Some(total), "the attempt's deadline is the total one, in the worker's task");

    // The attempt's own timer fires at the total deadline, in the worker's task.
    let e = elapsed(svc.oneshot(http::Request::new(5_000)).await.unwrap_err());
    assert_eq!(e.kind(), TimeoutKind::Total);
    assert_eq!(tokio::time::Instant::now() - start, Duration::from_millis(310));

    // A spawned task calling a timed service with the request it was given.
    let attempt = ServiceBuilder::new()
        .layer(TimeoutLayer::per_attempt(Duration::from_secs(1)))
        .service_fn(|req: http::Request<()>| async move { Ok::<_, Infallible>(req.deadline()) });
    let hop = ServiceBuilder::new().layer(TimeoutLayer::new(Duration::from_millis(200))).service_fn(
        move |req: http::Request<()>| {
            let attempt = attempt.clone();
            async move { Ok::<_, Infallible>(tokio::spawn(attempt.oneshot(req)).await.unwrap().unwrap()) }
        },
    );
    let now = tokio::time::Instant::now();
    assert_eq!(
        hop.oneshot(http::Request::new(())).await.unwrap(),
        Some(Deadline::at(now + Duration::from_millis(200)))
    );
}

/// A total timeout relies on a timed attempt inside while it waits, and
/// still fires on time whatever the inner future does once that attempt is over.
#[tokio::test(start_paused = true)]
async fn a_total_timeout_covered_by_an_attempt_timeout_still_fires_on_time() {
    let attempt = || {
        ServiceBuilder::new().layer(TimeoutLayer::per_attempt(Duration::from_secs(1))).service_fn(
            |ms: u64| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, Infallible>(())
            },
        )
    };
    // The attempt completes (10 ms, covered), then the call waits untimed.
    let then_wait =
        ServiceBuilder::new().layer(TimeoutLayer::new(Duration::from_millis(100))).service_fn(move |_: ()| {
            let a = attempt();
            async move {
                a.oneshot(10).await.unwrap();
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, Infallible>(())
            }
        });
    let start = tokio::time::Instant::now();
    let e = elapsed(then_wait.oneshot(()).await.unwrap_err());
    assert_eq!((e.kind(), tokio::time::Instant::now() - start), (TimeoutKind::Total, Duration::from_millis(100)));

    // The attempt is cut at the total deadline; the call swallows that error
    // and waits on: the total timeout fails it at that same instant.
    let swallow =
        ServiceBuilder::new().layer(TimeoutLayer::new(Duration::from_millis(100))).service_fn(move |_: ()| {
            let a = attempt();
            async move {
                let cut = a.oneshot(5_000).await;
                assert_eq!(elapsed(cut.unwrap_err()).kind(), TimeoutKind::Total);
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(())
            }
        });
    let start = tokio::time::Instant::now();
    let e = elapsed(swallow.oneshot(()).await.unwrap_err());
    assert_eq!((e.kind(), tokio::time::Instant::now() - start), (TimeoutKind::Total, Duration::from_millis(100)));

    // Nothing inside is timed: the total timeout's own timer.
    let bare = ServiceBuilder::new().layer(TimeoutLayer::new(Duration::from_millis(70))).service_fn(|_: ()| async {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(())
    });
    let start = tokio::time::Instant::now();
    let e = elapsed(bare.oneshot(()).await.unwrap_err());
    assert_eq!((e.kind(), tokio::time::Instant::now() - start), (TimeoutKind::Total, Duration::from_millis(70)));
}

#[tokio::test(start_paused = true)]
async fn fast_responses_and_inner_errors_pass_through() {
    let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(TimeoutLayer::new(Duration::from_millis(100)));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call(1));
    let (_, send) = handle.next_request().await.unwrap();
    tokio::time::advance(Duration::from_millis(99)).await;
    send.send_response(42);
    assert_eq!(assert_ready!(fut.poll()).unwrap(), 42);

    #[derive(Debug)]
    struct Boom;
    impl std::fmt::Display for Boom {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("boom")
        }
    }
    impl std::error::Error for Boom {}
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(2);
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(Boom);
    assert!(fut.await.unwrap_err().is::<Boom>());

    // Readiness is the inner service's.
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn server_error_layer_maps_elapsed_to_504() {
    let svc = ServiceBuilder::new()
        .layer(crate::error::ServerErrorLayer::new())
        .layer(TimeoutLayer::new(Duration::from_millis(10)))
        .service_fn(|_req: http::Request<String>| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Infallible>(http::Response::new(String::new()))
        });
    let res = svc.clone().oneshot(http::Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), http::StatusCode::GATEWAY_TIMEOUT);

    let grpc = http::Request::builder().header("content-type", "application/grpc").body(String::new()).unwrap();
    let res = svc.oneshot(grpc).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "4");
}

#[test]
fn config_validation_and_layers() {
    let ms = Duration::from_millis;
    assert_eq!(TimeoutConfig::default().layers().map(|l| (l.total.is_none(), l.attempt.is_none())), Ok((true, true)));
    let zero = TimeoutConfig { attempt: Some(Duration::ZERO), ..Default::default() };
    assert_eq!(zero.validate(), Err(ConfigError::Zero { field: "timeout.attempt" }));
    let zero = TimeoutConfig { total: Some(Duration::ZERO), ..Default::default() };
    assert_eq!(zero.validate(), Err(ConfigError::Zero { field: "timeout.total" }));
    let conflict = TimeoutConfig { attempt: Some(ms(300)), total: Some(ms(200)), grpc_timeout: false };
    assert!(matches!(conflict.validate(), Err(ConfigError::Conflict { field: "timeout.attempt", .. })));
    let equal = TimeoutConfig { attempt: Some(ms(200)), total: Some(ms(200)), grpc_timeout: false };
    assert_eq!(equal.validate(), Ok(()));

    let cfg: TimeoutConfig = serde_json::from_str(r#"{"total":"2s"}"#).unwrap();
    assert_eq!(cfg, TimeoutConfig { attempt: None, total: Some(Duration::from_secs(2)), grpc_timeout: false });
    assert!(serde_json::from_str::<TimeoutConfig>(r#"{"deadline":"2s"}"#).is_err());
    let back: TimeoutConfig = serde_json::from_str(&serde_json::to_string(&equal).unwrap()).unwrap();
    assert_eq!(back, equal);
    let layers = equal.layers().unwrap();
    assert_eq!(layers.total.as_ref().map(|l| (l.kind(), l.duration())), Some((TimeoutKind::Total, ms(200))));
    assert_eq!(layers.attempt.as_ref().map(|l| (l.kind(), l.duration())), Some((TimeoutKind::Attempt, ms(200))));
    assert!(conflict.layers().is_err());
}

#[test]
fn services_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let _guard = rt.enter();
    let mut svc = tower::Layer::layer(
        &TimeoutLayer::new(Duration::from_secs(1)),
        tower::service_fn(|r: u32| async move { Ok::<_, Infallible>(r) }),
    );
    send_sync(&svc);
    send_sync(&tower::Service::call(&mut svc, 1));
}

#[tokio::test(start_paused = true)]
async fn elapsed_counter_is_recorded() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer =
        metrics::with_local_recorder(&recorder, || TimeoutLayer::per_attempt(Duration::from_millis(5)).name("t"));
    // Each snapshot drains the counters: values are increments since the last one.
    let value = |kind: &str| {
        snapshotter.snapshot().into_vec().into_iter().find_map(|(k, _, _, v)| {
            let key = k.key();
            let labels: Vec<_> = key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            (key.name() == "tower_mesh_timeout_elapsed_total"
                && labels.contains(&("service".into(), "t".into()))
                && labels.contains(&("kind".into(), kind.into())))
            .then_some(v)
        })
    };
    assert_eq!(value("attempt"), Some(DebugValue::Counter(0)), "pre-registered");
    let svc = ServiceBuilder::new().layer(layer).service_fn(|_: ()| std::future::pending::<Result<(), Infallible>>());
    assert!(svc.clone().oneshot(()).await.is_err());
    assert!(svc.clone().oneshot(()).await.is_err());
    assert_eq!(value("attempt"), Some(DebugValue::Counter(2)));
    assert_eq!(value("total"), Some(DebugValue::Counter(0)));
    // Capped by an enclosing deadline: counted as a total timeout.
    let outer = Deadline::after(Duration::from_millis(1));
    assert!(outer.scope(svc.oneshot(())).await.is_err());
    assert_eq!(value("total"), Some(DebugValue::Counter(1)));
}

/// A body that stalls: `frames` data frames at once, then nothing, ever.
fn stalling_body(frames: usize) -> impl http_body::Body<Data = bytes::Bytes, Error = Infallible> + Unpin {
    use futures::StreamExt;
    let data = futures::stream::iter((0..frames).map(|_| Ok(http_body::Frame::data(bytes::Bytes::from_static(b"x")))));
    http_body_util::StreamBody::new(data.chain(futures::stream::pending()))
}

/// By default the body is not timed; with `cover_body` a body that stalls
/// past the deadline yields an `Elapsed` (and then ends), and the frames
/// before it pass through.
#[tokio::test(start_paused = true)]
async fn a_body_stalling_past_the_deadline_times_out_when_covered() {
    use http_body::Body as _;
    use http_body_util::BodyExt;
    let svc =
        tower::service_fn(|_: http::Request<()>| async { Ok::<_, Infallible>(http::Response::new(stalling_body(1))) });

    // Head only: the body just waits.
    let res = TimeoutLayer::new(Duration::from_secs(1)).layer(svc).oneshot(http::Request::new(())).await.unwrap();
    let mut body = res.into_body();
    assert!(body.frame().await.unwrap().is_ok());
    assert!(tokio::time::timeout(Duration::from_secs(3600), body.frame()).await.is_err(), "not timed");

    let layer = TimeoutLayer::per_attempt(Duration::from_secs(1)).name("b").cover_body();
    let res = layer.layer(svc).oneshot(http::Request::new(())).await.unwrap();
    assert!(res.extensions().get::<crate::classify::EosSlot>().is_some(), "the body's end is reported");
    let mut body = res.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    let start = tokio::time::Instant::now();
    let e = elapsed(body.frame().await.unwrap().unwrap_err());
    assert_eq!(e, Elapsed::new(TimeoutKind::Attempt, Duration::from_secs(1)));
    assert_eq!(start.elapsed(), Duration::from_secs(1), "at the deadline set when the call was made");
    assert!(body.is_end_stream());
    assert!(body.frame().await.is_none());
}

/// A body that ends in time passes through with its trailers, and nothing
/// times out afterwards.
#[tokio::test(start_paused = true)]
async fn a_body_ending_in_time_is_untouched() {
    use http_body_util::BodyExt;
    let svc = tower::service_fn(|_: http::Request<()>| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body =
            http_body_util::Full::new(bytes::Bytes::from_static(b"hi")).with_trailers(async { Some(Ok(trailers)) });
        Ok::<_, Infallible>(http::Response::new(body))
    });
    let res = TimeoutLayer::new(Duration::from_secs(1))
        .cover_body()
        .layer(svc)
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "hi");
}
