use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

use super::fault::HeaderFaults;
use super::*;

type Res = Result<Response<String>, crate::BoxError>;

/// A service that answers `200 "ok"` and counts its calls.
fn upstream(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send> + Clone {
    tower::service_fn(move |_: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new("ok".to_owned())) }
    })
}

async fn send(
    svc: &mut (impl Service<Request<()>, Response = Response<String>, Error = crate::BoxError> + Send),
    req: Request<()>,
) -> Res {
    svc.ready().await?.call(req).await
}

fn status(res: &Res) -> Option<StatusCode> {
    res.as_ref().ok().map(|r| r.status())
}

#[tokio::test(start_paused = true)]
async fn without_faults_every_call_reaches_the_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new().layer(ChaosLayer::builder().build().unwrap()).service(upstream(calls.clone()));
    for _ in 0..10 {
        let res = send(&mut svc, Request::new(())).await.unwrap();
        assert_eq!(res.body(), "ok");
        assert!(res.extensions().get::<FaultInjected>().is_none());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

#[tokio::test(start_paused = true)]
async fn aborts_follow_the_probability_and_skip_the_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer =
        ChaosLayer::builder().seed(1).abort(Abort::Status(StatusCode::SERVICE_UNAVAILABLE), 0.3).build().unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(upstream(calls.clone()));
    let mut aborted = 0;
    for _ in 0..2_000 {
        let res = send(&mut svc, Request::new(())).await.unwrap();
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(res.extensions().get::<FaultInjected>(), Some(&FaultInjected));
            assert!(res.body().is_empty());
            aborted += 1;
        }
    }
    // 30 % of 2,000 is 600; the binomial's standard deviation is about 20.
    assert!((500..=700).contains(&aborted), "{aborted} aborted");
    assert_eq!(calls.load(Ordering::SeqCst), 2_000 - aborted);
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_faults() {
    async fn run(seed: u64) -> Vec<Option<StatusCode>> {
        let layer = ChaosLayer::builder()
            .seed(seed)
            .abort(Abort::Status(StatusCode::BAD_GATEWAY), 0.5)
            .delay(Delay::Uniform { min: Duration::ZERO, max: Duration::from_millis(10) }, 0.5)
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new().layer(layer).service(upstream(Arc::default()));
        let mut seen = Vec::new();
        for _ in 0..64 {
            seen.push(status(&send(&mut svc, Request::new(())).await));
        }
        seen
    }
    let first = run(42).await;
    assert_eq!(first, run(42).await);
    assert_ne!(first, run(43).await);
}

#[tokio::test(start_paused = true)]
async fn a_delay_comes_before_the_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ChaosLayer::builder().delay(Delay::Fixed(Duration::from_millis(300)), 1.0).build().unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(upstream(calls.clone()));
    let start = Instant::now();
    let mut fut = std::pin::pin!(svc.ready().await.unwrap().call(Request::new(())));
    tokio::time::sleep(Duration::from_millis(299)).await;
    assert!(futures::poll!(fut.as_mut()).is_pending());
    assert_eq!(calls.load(Ordering::SeqCst), 0, "not called during the delay");
    let res = fut.await.unwrap();
    assert_eq!(res.body(), "ok");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_delayed_call_never_reaches_the_service_and_frees_its_slot() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ChaosLayer::builder().delay(Delay::Fixed(Duration::from_secs(5)), 1.0).build().unwrap();
    // One call at a time below the chaos layer: a delayed call holds the slot.
    let mut svc = ServiceBuilder::new().layer(layer).concurrency_limit(1).service(upstream(calls.clone()));
    let fut = svc.ready().await.unwrap().call(Request::new(()));
    drop(fut);
    // The slot is free again: the next call gets readiness at once.
    assert!(futures::poll!(std::pin::pin!(svc.ready())).is_ready());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_black_hole_never_answers_until_the_caller_gives_up() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ChaosLayer::builder().black_hole(1.0).build().unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(upstream(calls.clone()));
    let fut = svc.ready().await.unwrap().call(Request::new(()));
    let out = tokio::time::timeout(Duration::from_secs(3600), fut).await;
    assert!(out.is_err(), "answered: {out:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn an_aborted_connection_is_an_io_error() {
    let layer = ChaosLayer::builder().abort(Abort::connection_reset(), 1.0).build().unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(upstream(Arc::default()));
    let err = send(&mut svc, Request::new(())).await.unwrap_err();
    let fault = err.downcast_ref::<InjectedFault>().expect("an InjectedFault");
    assert_eq!(fault.kind(), io::ErrorKind::ConnectionReset);
    let source = std::error::Error::source(fault).unwrap().downcast_ref::<io::Error>().unwrap();
    assert_eq!(source.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(err.to_string(), "injected fault: connection reset");
}

#[tokio::test(start_paused = true)]
async fn a_grpc_abort_is_a_trailers_only_answer() {
    let layer = ChaosLayer::builder().abort("grpc:14".parse().unwrap(), 1.0).build().unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(upstream(Arc::default()));
    let res = send(&mut svc, Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.extensions().get::<FaultInjected>(), Some(&FaultInjected));
}

#[tokio::test(start_paused = true)]
async fn only_matching_requests_get_faults() {
    let matcher = RequestMatch::new()
        .method(Method::GET)
        .path_prefix("/api")
        .header(HeaderName::from_static("x-canary"), HeaderValue::from_static("1"));
    let layer = ChaosLayer::builder().abort(Abort::Status(StatusCode::IM_A_TEAPOT), 1.0).only(matcher).build().unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(upstream(Arc::default()));
    let req = |method: Method, path: &str, canary: bool| {
        let mut b = Request::builder().method(method).uri(path);
        if canary {
            b = b.header("x-canary", "1");
        }
        b.body(()).unwrap()
    };
    let teapot = Some(StatusCode::IM_A_TEAPOT);
    assert_eq!(status(&send(&mut svc, req(Method::GET, "/api/x", true)).await), teapot);
    assert_eq!(status(&send(&mut svc, req(Method::POST, "/api/x", true)).await), Some(StatusCode::OK));
    assert_eq!(status(&send(&mut svc, req(Method::GET, "/other", true)).await), Some(StatusCode::OK));
    assert_eq!(status(&send(&mut svc, req(Method::GET, "/api/x", false)).await), Some(StatusCode::OK));
}

fn from(ip: [u8; 4], headers: &[(&str, &str)]) -> Request<()> {
    let mut req = Request::new(());
    for (n, v) in headers {
        req.headers_mut().insert(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    req.extensions_mut().insert(SocketAddr::from((ip, 40_000)));
    req
}

#[tokio::test(start_paused = true)]
async fn fault_headers_are_honoured_only_from_allowed_callers() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ChaosLayer::builder()
        .header_faults(AllowedCallers::PeerIps(vec![[10, 0, 0, 1].into()]))
        .max_header_delay(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(upstream(calls.clone()));
    let abort = [(ABORT_HEADER, "503")];
    assert_eq!(status(&send(&mut svc, from([10, 0, 0, 1], &abort)).await), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(status(&send(&mut svc, from([10, 0, 0, 2], &abort)).await), Some(StatusCode::OK), "not allowed");
    assert_eq!(status(&send(&mut svc, Request::new(())).await), Some(StatusCode::OK), "no peer address");
    let bad = [(ABORT_HEADER, "nonsense"), (DELAY_HEADER, "-5")];
    assert_eq!(status(&send(&mut svc, from([10, 0, 0, 1], &bad)).await), Some(StatusCode::OK), "malformed: ignored");
    // A delay is cut at the maximum.
    let start = Instant::now();
    let slow = [(DELAY_HEADER, "3600000")];
    assert_eq!(status(&send(&mut svc, from([10, 0, 0, 1], &slow)).await), Some(StatusCode::OK));
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let reset = [(ABORT_HEADER, "reset")];
    assert!(send(&mut svc, from([10, 0, 0, 1], &reset)).await.is_err());
    let hole = [(ABORT_HEADER, "black-hole")];
    let fut = send(&mut svc, from([10, 0, 0, 1], &hole));
    assert!(tokio::time::timeout(Duration::from_secs(60), fut).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn fault_headers_are_ignored_unless_switched_on() {
    let mut svc = ServiceBuilder::new().layer(ChaosLayer::builder().build().unwrap()).service(upstream(Arc::default()));
    let res = send(&mut svc, from([127, 0, 0, 1], &[(ABORT_HEADER, "503")])).await;
    assert_eq!(status(&res), Some(StatusCode::OK));
}

#[tokio::test(start_paused = true)]
async fn injected_faults_are_counted() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        ChaosLayer::builder()
            .name("up")
            .delay(Delay::Fixed(Duration::from_millis(1)), 1.0)
            .abort(Abort::Grpc(14), 1.0)
            .build()
            .unwrap()
    });
    let mut svc = ServiceBuilder::new().layer(layer).service(upstream(Arc::default()));
    for _ in 0..3 {
        send(&mut svc, Request::new(())).await.unwrap();
    }
    let counters: Vec<(String, DebugValue)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == "tower_mesh_chaos_injected_total")
        .filter(|(k, ..)| k.key().labels().any(|l| l.key() == "service" && l.value() == "up"))
        .map(|(k, _, _, v)| (k.key().labels().find(|l| l.key() == "fault").unwrap().value().to_owned(), v))
        .collect();
    assert!(counters.contains(&("delay".into(), DebugValue::Counter(3))), "{counters:?}");
    assert!(counters.contains(&("abort_grpc".into(), DebugValue::Counter(3))), "{counters:?}");
    assert!(counters.contains(&("black_hole".into(), DebugValue::Counter(0))), "{counters:?}");
}

#[test]
fn bad_settings_are_refused() {
    let b = ChaosLayer::builder;
    assert_eq!(b().abort(Abort::connection_reset(), 1.5).build().unwrap_err(), ChaosConfigError::Probability("abort"));
    assert_eq!(b().black_hole(-0.1).build().unwrap_err(), ChaosConfigError::Probability("black_hole"));
    assert_eq!(
        b().delay(Delay::Fixed(Duration::ZERO), f64::NAN).build().unwrap_err(),
        ChaosConfigError::Probability("delay")
    );
    let backwards = Delay::Uniform { min: Duration::from_secs(2), max: Duration::from_secs(1) };
    assert_eq!(b().delay(backwards, 0.5).build().unwrap_err(), ChaosConfigError::DelayRange);
    assert!(matches!(b().abort(Abort::Grpc(0), 0.5).build(), Err(ChaosConfigError::AbortCode(_))));
    assert!(matches!(
        b().header_faults(AllowedCallers::PeerIps(vec![])).build(),
        Err(ChaosConfigError::HeaderFaults(_))
    ));
    for bad in ["99", "600", "grpc:17", "grpc:x", "", "503 "] {
        assert!(bad.parse::<Abort>().is_err(), "{bad:?}");
    }
    assert_eq!("reset".parse::<Abort>().unwrap(), Abort::Io(io::ErrorKind::ConnectionReset));
}

#[cfg(feature = "stack")] // toml
#[test]
fn config_builds_the_layer_and_guards_production() {
    let parse = |s: &str| toml::from_str::<ChaosConfig>(s);
    let off = parse("abort = { with = \"503\", probability = 1.0 }").unwrap();
    assert!(off.layer("up", false).unwrap().is_none(), "off unless enabled");
    let on = parse(
        r#"
        enabled = true
        seed = 7
        delay = { min = "10ms", max = "20ms", probability = 0.5 }
        abort = { with = "grpc:14", probability = 0.1 }
        black_hole = 0.01
        only = { methods = ["get"], path_prefix = "/api", headers = { x-canary = "1" } }
        header_faults = { allowed_ips = ["127.0.0.1"], max_delay = "5s" }
        "#,
    )
    .unwrap();
    assert!(on.layer("up", false).unwrap().is_some());
    assert!(matches!(on.layer("up", true), Err(ChaosConfigError::HeaderFaults(_))), "production refuses header faults");
    let mut no_headers = on.clone();
    no_headers.header_faults = None;
    assert!(no_headers.layer("up", true).unwrap().is_some(), "production allows configured faults");
    let two_shapes = parse("enabled = true\ndelay = { fixed = \"1s\", mean = \"1s\", probability = 0.5 }").unwrap();
    assert_eq!(two_shapes.layer("up", false).unwrap_err(), ChaosConfigError::DelayShape);
    let bad_abort = parse("enabled = true\nabort = { with = \"boom\", probability = 0.5 }").unwrap();
    assert!(matches!(bad_abort.layer("up", false), Err(ChaosConfigError::AbortCode(_))));
    let bad_method = parse("enabled = true\nonly = { methods = [\"G T\"] }").unwrap();
    assert!(matches!(bad_method.layer("up", false), Err(ChaosConfigError::Method(_))));
    assert!(parse("enabled = true\nunknown = 1").is_err());
}

proptest! {
    #[test]
    fn fault_headers_never_panic(delay in any::<Vec<u8>>(), abort in any::<Vec<u8>>()) {
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&delay) {
            headers.insert(DELAY_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_bytes(&abort) {
            headers.insert(ABORT_HEADER, v);
        }
        let faults = HeaderFaults::read(&headers, Duration::from_secs(1));
        prop_assert!(faults.delay.is_none_or(|d| d <= Duration::from_secs(1)));
    }

    #[test]
    fn delays_stay_in_their_range(u in 0.0f64..1.0, min in 0u64..1_000, span in 0u64..1_000) {
        let (min, max) = (Duration::from_millis(min), Duration::from_millis(min + span));
        let d = Delay::Uniform { min, max }.sample(u);
        prop_assert!(min <= d && d <= max);
        let mean = Duration::from_millis(100);
        prop_assert!(Delay::Exponential(mean).sample(u) <= mean * 10);
    }
}

#[cfg(feature = "stack")]
#[test]
fn the_server_config_carries_chaos_and_production_refuses_header_faults() {
    use crate::stack::{MeshConfig, Preset};
    let toml = |preset: &str| {
        format!(
            "preset = \"{preset}\"\n[server.chaos]\nenabled = true\nabort = {{ with = \"503\", probability = 0.1 }}\nheader_faults = {{ allowed_ips = [\"127.0.0.1\"] }}\n"
        )
    };
    let cfg = MeshConfig::from_toml_str(&toml("testing")).unwrap();
    assert!(cfg.server.chaos_layer(Preset::Testing).unwrap().is_some());
    let err = MeshConfig::from_toml_str(&toml("production")).unwrap_err();
    let source = std::error::Error::source(&err).unwrap();
    assert!(matches!(source.downcast_ref::<ChaosConfigError>(), Some(ChaosConfigError::HeaderFaults(_))), "{source}");
    let off = MeshConfig::from_toml_str("preset = \"production\"").unwrap();
    assert_eq!(off.server.chaos_layer(Preset::Production).unwrap().map(|_| ()), None, "off by default");
}
