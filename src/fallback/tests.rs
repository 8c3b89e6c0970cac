use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Request, Response, StatusCode};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use super::*;
use crate::classify::HttpClassifier;

fn response(status: StatusCode, body: &str) -> Response<String> {
    Response::builder().status(status).body(body.to_owned()).unwrap()
}

/// An upstream that answers each call with the next of `answers` (an `Err`
/// is an error made of that text), then 200 "ok".
fn upstream(
    answers: Vec<Result<Response<String>, &'static str>>,
) -> impl Service<Request<&'static str>, Response = Response<String>, Error = BoxError> + Clone {
    let answers = Arc::new(std::sync::Mutex::new(answers.into_iter()));
    tower::service_fn(move |_req: Request<&'static str>| {
        let next = answers.lock().unwrap().next().unwrap_or_else(|| Ok(response(StatusCode::OK, "ok")));
        async move { next.map_err(BoxError::from) }
    })
}

async fn send<S>(svc: &mut S, path: &'static str) -> Result<Response<String>, BoxError>
where
    S: Service<Request<&'static str>, Response = Response<String>, Error = BoxError>,
{
    let req = Request::builder().uri(path).body(path).unwrap();
    svc.ready().await?.call(req).await
}

#[tokio::test]
async fn a_failed_call_gets_the_value_and_the_marker() {
    let layer = FallbackLayer::value(response(StatusCode::OK, "fallback"))
        .classifier(HttpClassifier::new())
        .header(HeaderName::from_static("x-mesh-fallback"));
    let mut svc = ServiceBuilder::new().layer(layer).service(upstream(vec![
        Err("connection refused"),
        Ok(response(StatusCode::SERVICE_UNAVAILABLE, "")),
        Ok(response(StatusCode::NOT_FOUND, "nope")),
    ]));
    for _ in 0..2 {
        let res = send(&mut svc, "/").await.unwrap();
        assert_eq!(res.body(), "fallback");
        assert_eq!(res.headers()["x-mesh-fallback"], "failure");
        assert_eq!(res.extensions().get::<ServedByFallback>(), Some(&ServedByFallback(FallbackReason::Failed)));
    }
    // A 404 is not a failure for the HTTP classifier: passed through, unmarked.
    let res = send(&mut svc, "/").await.unwrap();
    assert_eq!((res.status(), res.body().as_str()), (StatusCode::NOT_FOUND, "nope"));
    assert!(res.extensions().get::<ServedByFallback>().is_none());
    assert!(!res.headers().contains_key("x-mesh-fallback"));
}

fn bulkhead_full() -> BoxError {
    Box::new(crate::bulkhead::BulkheadFull::new(Arc::from("b"), 1, Duration::ZERO))
}

#[tokio::test]
async fn the_trigger_chooses_rejections_or_failures() {
    let rejected = || upstream(vec![]).and_then(|_| async { Err::<Response<String>, _>(bulkhead_full()) });
    let failing = || upstream(vec![Err("boom")]);
    let fallback = || FallbackLayer::from_fn(|reason: FallbackReason| response(StatusCode::OK, reason.as_str()));

    let mut svc = fallback().on(Trigger::Rejections).layer(rejected());
    assert_eq!(send(&mut svc, "/").await.unwrap().body(), "rejected");
    let mut svc = fallback().on(Trigger::Rejections).layer(failing());
    assert_eq!(send(&mut svc, "/").await.unwrap_err().to_string(), "boom");

    let mut svc = fallback().on(Trigger::Failures).layer(failing());
    assert_eq!(send(&mut svc, "/").await.unwrap().body(), "failure");
    let mut svc = fallback().on(Trigger::Failures).layer(rejected());
    assert!(send(&mut svc, "/").await.unwrap_err().is::<crate::bulkhead::BulkheadFull>());

    let mut svc = fallback().layer(rejected());
    assert_eq!(send(&mut svc, "/").await.unwrap().body(), "rejected", "both, by default");
}

#[tokio::test(start_paused = true)]
async fn a_timeout_below_is_a_timed_out_reason() {
    let mut svc = ServiceBuilder::new()
        .layer(FallbackLayer::from_fn(|reason: FallbackReason| response(StatusCode::OK, reason.as_str())))
        .layer(crate::timeout::TimeoutLayer::new(Duration::from_secs(1)))
        .service_fn(|_: Request<&'static str>| std::future::pending::<Result<Response<String>, Infallible>>());
    assert_eq!(send(&mut svc, "/").await.unwrap().body(), "timeout");
}

#[tokio::test]
async fn a_backup_service_gets_a_copy_of_the_request() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let backup = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<&'static str>| {
            seen.lock().unwrap().push((req.uri().path().to_owned(), *req.body()));
            async { Ok::<_, Infallible>(response(StatusCode::OK, "replica")) }
        })
    };
    let mut svc = FallbackLayer::service(backup).layer(upstream(vec![Err("primary down")]));
    assert_eq!(send(&mut svc, "/menu").await.unwrap().body(), "replica");
    assert_eq!(send(&mut svc, "/other").await.unwrap().body(), "ok", "the primary answered");
    assert_eq!(*seen.lock().unwrap(), vec![("/menu".to_owned(), "/menu")]);
}

#[tokio::test]
async fn a_failing_backup_returns_its_own_error() {
    let backup = tower::service_fn(|_: Request<&'static str>| async {
        Err::<Response<String>, _>(BoxError::from("replica down"))
    });
    let mut svc = FallbackLayer::service(backup).layer(upstream(vec![Err("primary down")]));
    assert_eq!(send(&mut svc, "/").await.unwrap_err().to_string(), "replica down");
}

#[tokio::test(start_paused = true)]
async fn the_stale_cache_answers_with_the_last_good_response_until_its_ttl() {
    let key = |req: &Request<&'static str>| (req.method() == http::Method::GET).then(|| req.uri().path().to_owned());
    let layer = FallbackLayer::stale(key, NonZeroUsize::new(2).unwrap(), Duration::from_secs(60))
        .classifier(HttpClassifier::new());
    let cache = layer.source().clone();
    let mut svc = layer.layer(upstream(vec![
        Ok(response(StatusCode::OK, "menu v1")),
        Ok(response(StatusCode::BAD_GATEWAY, "")),
        Err("down"),
        Err("down"),
        Err("down"),
    ]));
    assert_eq!(send(&mut svc, "/menu").await.unwrap().body(), "menu v1");
    let stale = send(&mut svc, "/menu").await.unwrap();
    assert_eq!(stale.body(), "menu v1");
    assert_eq!(stale.extensions().get::<ServedByFallback>(), Some(&ServedByFallback(FallbackReason::Failed)));
    assert_eq!(send(&mut svc, "/other").await.unwrap_err().to_string(), "down", "nothing cached for that key");
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(send(&mut svc, "/menu").await.unwrap_err().to_string(), "down", "too old");
    assert_eq!(cache.len(), 0, "the expired answer is dropped");
    // At most `capacity` keys.
    for path in ["/a", "/b", "/c", "/d"] {
        send(&mut svc, path).await.ok();
    }
    assert_eq!(cache.len(), 2);
}

#[tokio::test]
async fn fallbacks_are_counted_by_reason() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer =
        metrics::with_local_recorder(&recorder, || FallbackLayer::value(response(StatusCode::OK, "fb")).name("menu"));
    let mut svc = layer.layer(upstream(vec![Err("a"), Err("b")]));
    for _ in 0..3 {
        send(&mut svc, "/").await.unwrap();
    }
    let count = |reason: &str| {
        snapshotter.snapshot().into_vec().into_iter().find_map(|(k, _, _, v)| {
            let key = k.key();
            (key.name() == "tower_mesh_fallback_total"
                && key.labels().any(|l| l.key() == "service" && l.value() == "menu")
                && key.labels().any(|l| l.key() == "reason" && l.value() == reason))
            .then_some(v)
        })
    };
    assert_eq!(count("failure"), Some(DebugValue::Counter(2)));
}

#[tokio::test]
async fn a_panic_is_not_hidden() {
    use futures::FutureExt;
    let panicking = tower::service_fn(|_: Request<&'static str>| async {
        if true {
            panic!("upstream bug");
        }
        Ok::<Response<String>, BoxError>(response(StatusCode::OK, ""))
    });
    let mut svc = FallbackLayer::value(response(StatusCode::OK, "fb")).layer(panicking);
    let call = std::panic::AssertUnwindSafe(send(&mut svc, "/")).catch_unwind();
    assert!(call.await.is_err(), "the panic went through");
}

#[tokio::test]
async fn a_dropped_call_is_not_answered_nor_cached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = {
        let calls = calls.clone();
        move |_: FallbackReason| {
            calls.fetch_add(1, Ordering::SeqCst);
            response(StatusCode::OK, "fb")
        }
    };
    let mut svc = FallbackLayer::from_fn(counted).layer(tower::service_fn(|_: Request<&'static str>| {
        std::future::pending::<Result<Response<String>, BoxError>>()
    }));
    let call = svc.ready().await.unwrap().call(Request::new("/"));
    assert!(futures::poll!(std::pin::pin!(call)).is_pending());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[cfg(feature = "stack")] // toml
#[test]
fn config_makes_an_http_stale_layer() {
    let cfg: FallbackConfig =
        toml::from_str("on = \"rejections\"\ncapacity = 10\nttl = \"5s\"\nheader = \"x-fb\"").unwrap();
    assert_eq!((cfg.on, cfg.capacity.get(), cfg.ttl), (Trigger::Rejections, 10, Duration::from_secs(5)));
    assert!(cfg.http_layer::<(), String>("menu").is_some());
    let bad = FallbackConfig { header: Some("bad header".into()), ..FallbackConfig::default() };
    assert!(bad.http_layer::<(), String>("menu").is_none());
    assert!(toml::from_str::<FallbackConfig>("on = \"sometimes\"").is_err());
    assert_eq!(http_key(&Request::post("/x").body(()).unwrap()), None);
}
