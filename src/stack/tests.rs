use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use proptest::prelude::*;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

use super::*;
use crate::bulkhead::BulkheadFull;
use crate::circuit_breaker::{CircuitOpen, CircuitState, SlidingWindow};
use crate::config::ConfigError;

fn conflict_field(e: &StackError) -> &'static str {
    match e {
        StackError::Invalid { source: ConfigError::Conflict { field, .. }, .. } => field,
        StackError::Invalid { source: ConfigError::OutOfRange { field, .. }, .. } => field,
        StackError::Invalid { source: ConfigError::Zero { field }, .. } => field,
        other => panic!("not a validation error: {other:?}"),
    }
}

#[test]
fn presets_follow_the_documented_defaults() {
    let dev = ClientConfig::preset(Preset::Development);
    let test = ClientConfig::preset(Preset::Testing);
    let prod = ClientConfig::preset(Preset::Production);
    assert_eq!(dev.bulkhead.as_ref().unwrap().max_concurrent_calls, 50);
    assert_eq!(test.bulkhead.as_ref().unwrap().max_concurrent_calls, 20);
    assert_eq!(prod.bulkhead.as_ref().unwrap().max_concurrent_calls, 200);
    assert_eq!(test.circuit_breaker.as_ref().unwrap().minimum_calls, 2);
    assert!(dev.log_calls && !test.log_calls && !prod.log_calls);
    assert!(prod.retry.as_ref().unwrap().budget.is_some());
    assert_eq!(prod.circuit_breaker.as_ref().unwrap().sliding_window, SlidingWindow::Time(Duration::from_secs(60)));
    for p in [Preset::Development, Preset::Testing, Preset::Production] {
        ClientConfig::preset(p).validate().unwrap();
        ServerConfig::preset(p).validate().unwrap();
        assert_eq!(p.to_string().parse::<Preset>().unwrap(), p);
    }
    assert!(matches!("staging".parse::<Preset>(), Err(StackError::UnknownPreset(_))));
}

#[test]
fn a_section_overrides_only_what_it_says() {
    let cfg = MeshConfig::from_toml_str(
        r#"
        preset = "development"
        [client.orders]
        timeout = { total = "20s" }
        retry = { max_retries = 4, backoff = { initial = "50ms" } }
        bulkhead = false
        circuit_breaker = true
        forward_token_to = []
        [client.stock]
        log_calls = false
        [server]
        timeout = "5s"
        "#,
    )
    .unwrap();
    assert_eq!(cfg.preset, Preset::Development);
    let orders = cfg.client("orders").unwrap();
    assert_eq!(orders.name, "orders");
    assert_eq!(orders.timeout.total, Some(Duration::from_secs(20)));
    assert_eq!(orders.timeout.attempt, Some(Duration::from_secs(10)), "from the preset");
    let retry = orders.retry.unwrap();
    assert_eq!(retry.max_retries, 4);
    assert_eq!(retry.backoff.initial, Duration::from_millis(50));
    assert_eq!(retry.backoff.multiplier, 2.0, "from the preset");
    assert_eq!(retry.name, "orders");
    assert!(orders.bulkhead.is_none());
    assert_eq!(orders.circuit_breaker.unwrap().name, "orders");
    assert!(!cfg.client("stock").unwrap().log_calls);
    // An enum section changes variant: a time window over the preset's count window.
    let cfg2 = MeshConfig::from_toml_str(
        "preset = \"testing\"\n[client.a]\ncircuit_breaker = { sliding_window = { time = \"30s\" } }",
    )
    .unwrap();
    assert_eq!(
        cfg2.client("a").unwrap().circuit_breaker.unwrap().sliding_window,
        SlidingWindow::Time(Duration::from_secs(30))
    );
    // A service without a section gets the preset.
    let other = cfg.client("billing").unwrap();
    assert_eq!(other.name, "billing");
    assert_eq!(other.bulkhead.unwrap().max_concurrent_calls, 50);
    assert_eq!(cfg.server.timeout, Some(Duration::from_secs(5)));
    assert_eq!(cfg.server.max_concurrent_requests, Some(1024));
}

#[test]
fn bad_documents_are_typed_errors() {
    assert!(matches!(MeshConfig::from_toml_str("preset = "), Err(StackError::Parse(_))));
    assert!(matches!(MeshConfig::from_toml_str("preset = \"staging\""), Err(StackError::UnknownPreset(_))));
    assert!(matches!(MeshConfig::from_toml_str("preset = 3"), Err(StackError::UnknownPreset(_))));
    assert!(matches!(MeshConfig::from_toml_str("clients = {}"), Err(StackError::UnknownKey(k)) if k == "clients"));
    assert!(matches!(MeshConfig::from_toml_str("client = 1"), Err(StackError::NotATable(_))));
    assert!(matches!(MeshConfig::from_toml_str("[client]\norders = 1"), Err(StackError::NotATable(_))));
    let e = MeshConfig::from_toml_str("[client.orders]\nretry = { max_retrys = 2 }").unwrap_err();
    assert!(matches!(&e, StackError::Section { service, .. } if service == "orders"), "{e:?}");
    let e = MeshConfig::from_toml_str("[client.orders]\ntimeout = { total = \"soon\" }").unwrap_err();
    assert!(matches!(e, StackError::Section { .. }), "{e:?}");
    let e = MeshConfig::from_file("/nonexistent/tower-mesh.toml").unwrap_err();
    assert!(matches!(&e, StackError::Io { path, .. } if path.contains("nonexistent")));
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn cross_field_validation() {
    let e = MeshConfig::from_toml_str("[client.a]\ntimeout = { attempt = \"5s\", total = \"1s\" }").unwrap_err();
    assert_eq!(conflict_field(&e), "timeout.attempt");
    let e = MeshConfig::from_toml_str(
        "[client.a]\ntimeout = { attempt = \"5s\", total = \"20s\" }\ncircuit_breaker = { sliding_window = { time = \"2s\" } }",
    )
    .unwrap_err();
    assert_eq!(conflict_field(&e), "circuit_breaker.sliding_window");
    let e = MeshConfig::from_toml_str("[client.a]\nbulkhead = { max_wait = \"10s\" }").unwrap_err();
    assert_eq!(conflict_field(&e), "bulkhead.max_wait");
    let e = MeshConfig::from_toml_str("[client.a]\nretry = { budget = { ratio = 1.5 } }").unwrap_err();
    assert_eq!(conflict_field(&e), "retry.budget.ratio");
    let e = MeshConfig::from_toml_str(
        "[client.a]\ntimeout = { total = \"1s\", attempt = \"1s\" }\nretry = { backoff = { initial = \"2s\" } }",
    )
    .unwrap_err();
    assert_eq!(conflict_field(&e), "retry.backoff.initial");
    let e = MeshConfig::from_toml_str("[client.a]\ncircuit_breaker = { failure_rate_threshold = 150.0 }").unwrap_err();
    assert_eq!(conflict_field(&e), "circuit_breaker.failure_rate_threshold");
    let e = MeshConfig::from_toml_str("[server]\nmax_concurrent_requests = 0").unwrap_err();
    assert_eq!(conflict_field(&e), "server.max_concurrent_requests");
    // The message names the service and, through `source`, the field.
    assert_eq!(e.to_string(), "invalid configuration for `server`");
}

#[test]
fn environment_overrides() {
    let cfg = MeshConfig::from_vars([
        ("TOWER_MESH__PRESET", "testing"),
        ("TOWER_MESH__CLIENT__ORDERS__RETRY__MAX_RETRIES", "5"),
        ("TOWER_MESH__CLIENT__ORDERS__TIMEOUT__TOTAL", "3s"),
        ("TOWER_MESH__CLIENT__ORDERS__LOG_CALLS", "true"),
        ("TOWER_MESH__SERVER__CORRELATION", "false"),
        ("PATH", "/usr/bin"),
    ])
    .unwrap();
    assert_eq!(cfg.preset, Preset::Testing);
    let orders = &cfg.clients["orders"];
    assert_eq!(orders.retry.as_ref().unwrap().max_retries, 5);
    assert_eq!(orders.timeout.total, Some(Duration::from_secs(3)));
    assert!(orders.log_calls);
    assert!(!cfg.server.correlation);
    let e = MeshConfig::from_vars([("TOWER_MESH__CLIENT____X", "1")]).unwrap_err();
    assert!(matches!(e, StackError::UnknownKey(_)));
}

#[test]
fn a_file_is_read() {
    let path = std::env::temp_dir().join(format!("tower-mesh-stack-{}.toml", std::process::id()));
    std::fs::write(&path, "preset = \"production\"\n[client.orders]\nbulkhead = { max_concurrent_calls = 7 }\n")
        .unwrap();
    let cfg = MeshConfig::from_file(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(cfg.client("orders").unwrap().bulkhead.unwrap().max_concurrent_calls, 7);
}

fn fast_client() -> ClientConfig {
    let mut cfg = ClientConfig::preset(Preset::Testing).named("orders");
    cfg.timeout.attempt = Some(Duration::from_millis(100));
    cfg.timeout.total = Some(Duration::from_secs(1));
    cfg
}

type Snap = Vec<(metrics_util::CompositeKey, Option<metrics::Unit>, Option<metrics::SharedString>, DebugValue)>;

/// One snapshot (reading drains the counters, so take it once per check).
fn snap(snapshotter: &Snapshotter) -> Snap {
    snapshotter.snapshot().into_vec()
}

fn counter(snap: &Snap, name: &str, labels: &[(&str, &str)]) -> u64 {
    snap.iter()
        .filter(|(k, _, _, _)| {
            k.key().name() == name
                && labels.iter().all(|(lk, lv)| k.key().labels().any(|l| l.key() == *lk && l.value() == *lv))
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn client_stack_retries_trips_and_counts() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let stack = metrics::with_local_recorder(&recorder, || fast_client().http_stack().unwrap());
    let breaker = stack.breaker().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut svc = ServiceBuilder::new().layer(stack).service(service_fn(move |_req: Request<String>| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::builder().status(503).body(String::new()).unwrap()) }
    }));
    // One call: the first attempt and its retry fail with 503; the breaker
    // (testing preset: 2 calls minimum) opens on the way and rejects the
    // second retry. The caller learns both: the rejection, and the 503.
    let err = svc.ready().await.unwrap().call(Request::get("/").body(String::new()).unwrap()).await.unwrap_err();
    let rejected = err.downcast_ref::<crate::retry::RetryRejected>().expect("RetryRejected");
    assert_eq!(
        rejected.last_failure(),
        crate::classify::FailureKind::HttpStatus(StatusCode::SERVICE_UNAVAILABLE),
        "the last real failure"
    );
    assert!(rejected.rejection().downcast_ref::<CircuitOpen>().is_some(), "{err}");
    assert_eq!(rejected.attempts(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(breaker.state(), CircuitState::Open);
    // Open: the next call is rejected without reaching the service.
    let before = calls.load(Ordering::SeqCst);
    let err = svc.ready().await.unwrap().call(Request::get("/").body(String::new()).unwrap()).await.unwrap_err();
    assert!(err.downcast_ref::<CircuitOpen>().is_some(), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), before);
    let rejected = counter(
        &snap(&snapshotter),
        "tower_mesh_client_calls_total",
        &[("service", "orders"), ("method", "GET"), ("outcome", "rejected")],
    );
    assert!(rejected >= 1, "rejected = {rejected}");
}

#[tokio::test(start_paused = true)]
async fn client_stack_attempt_timeout_and_success() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut cfg = fast_client();
    cfg.retry = None;
    cfg.circuit_breaker = None;
    let stack = metrics::with_local_recorder(&recorder, || cfg.http_stack().unwrap());
    let mut svc = ServiceBuilder::new().layer(stack).service(service_fn(|req: Request<String>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    }));
    let res = svc.ready().await.unwrap().call(Request::post("/fast").body(String::new()).unwrap()).await.unwrap();
    assert_eq!(res.body(), "ok");
    let err = svc.ready().await.unwrap().call(Request::get("/slow").body(String::new()).unwrap()).await.unwrap_err();
    assert!(err.downcast_ref::<crate::timeout::Elapsed>().is_some(), "{err}");
    let snap = snap(&snapshotter);
    assert_eq!(counter(&snap, "tower_mesh_client_calls_total", &[("method", "POST"), ("outcome", "success")]), 1);
    assert_eq!(counter(&snap, "tower_mesh_client_calls_total", &[("method", "GET"), ("outcome", "timeout")]), 1);
}

/// `POST` answers by path: `/slow*` after 5 s, `/deadline` a trailers-only
/// `DEADLINE_EXCEEDED`, `/unavailable` a trailers-only `UNAVAILABLE`, any
/// other path `OK`. Counts the attempts per path.
fn grpc_backend(
    seen: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send> + Clone {
    service_fn(move |req: Request<String>| {
        let path = req.uri().path().to_owned();
        *seen.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
        async move {
            let method = path.rsplit('/').next().unwrap_or_default().to_owned();
            let code = match method.as_str() {
                m if m.starts_with("Slow") => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "0"
                }
                "Deadline" => "4",
                "Unavailable" => "14",
                _ => "0",
            };
            let res = Response::builder().header("content-type", "application/grpc").header("grpc-status", code);
            Ok::<_, Infallible>(res.body(String::new()).unwrap())
        }
    })
}

fn grpc_call(path: &str) -> Request<String> {
    Request::post(path).header("content-type", "application/grpc").body(String::from("\0\0\0\0\0")).unwrap()
}

#[tokio::test(start_paused = true)]
async fn grpc_stack_sends_a_call_the_server_may_have_processed_once() {
    // The production preset: attempt 3 s, total 10 s, 2 retries. One method
    // is marked idempotent in the configuration.
    let cfg = MeshConfig::from_toml_str(
        "preset = \"production\"\n[client.orders]\nretry = { idempotent = [\"/orders.v1.Orders/SlowGet\"] }\n",
    )
    .unwrap();
    let stack = cfg.client("orders").unwrap().grpc_stack().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let mut svc = ServiceBuilder::new().layer(stack).service(grpc_backend(seen.clone()));
    let count = |path: &str| seen.lock().unwrap().get(path).copied().unwrap_or(0);

    // Answered after the attempt timeout: the server may have created the
    // order. Sent once; the caller gets the timeout.
    let err = svc.ready().await.unwrap().call(grpc_call("/orders.v1.Orders/SlowCreate")).await.unwrap_err();
    assert!(err.downcast_ref::<crate::timeout::Elapsed>().is_some(), "{err}");
    assert_eq!(count("/orders.v1.Orders/SlowCreate"), 1);

    // DEADLINE_EXCEEDED from the server: sent once, the answer passed on.
    let res = svc.ready().await.unwrap().call(grpc_call("/orders.v1.Orders/Deadline")).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "4");
    assert_eq!(count("/orders.v1.Orders/Deadline"), 1);

    // UNAVAILABLE: the server did not process it; retried, 3 attempts in all.
    let res = svc.ready().await.unwrap().call(grpc_call("/orders.v1.Orders/Unavailable")).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(count("/orders.v1.Orders/Unavailable"), 3);

    // The method marked idempotent is retried after its attempt timeouts
    // until the total timeout ends the call.
    let err = svc.ready().await.unwrap().call(grpc_call("/orders.v1.Orders/SlowGet")).await.unwrap_err();
    assert!(err.downcast_ref::<crate::timeout::Elapsed>().is_some(), "{err}");
    assert_eq!(count("/orders.v1.Orders/SlowGet"), 3);
}

#[tokio::test(start_paused = true)]
async fn http_stack_sends_a_post_once_after_an_attempt_timeout() {
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let count = |method: &str| seen.lock().unwrap().get(method).copied().unwrap_or(0);
    let backend = {
        let seen = seen.clone();
        service_fn(move |req: Request<String>| {
            *seen.lock().unwrap().entry(req.method().to_string()).or_insert(0) += 1;
            async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        })
    };
    let stack = ClientConfig::preset(Preset::Production).named("orders").http_stack().unwrap();
    let mut svc = ServiceBuilder::new().layer(stack).service(backend.clone());
    let err = svc.ready().await.unwrap().call(Request::post("/orders").body(String::from("{}")).unwrap()).await;
    assert!(err.unwrap_err().downcast_ref::<crate::timeout::Elapsed>().is_some());
    assert_eq!(count("POST"), 1, "a POST the server may have processed is sent once");
    let err = svc.ready().await.unwrap().call(Request::get("/orders/1").body(String::new()).unwrap()).await;
    assert!(err.unwrap_err().downcast_ref::<crate::timeout::Elapsed>().is_some());
    assert_eq!(count("GET"), 3, "a GET is retried until the total timeout");

    // A method the configuration declares idempotent is retried like a GET.
    let cfg = MeshConfig::from_toml_str("[client.orders]\nretry = { idempotent = [\"post\"] }").unwrap();
    let stack = cfg.client("orders").unwrap().http_stack().unwrap();
    let mut svc = ServiceBuilder::new().layer(stack).service(backend);
    let err = svc.ready().await.unwrap().call(Request::post("/orders").body(String::from("{}")).unwrap()).await;
    assert!(err.unwrap_err().downcast_ref::<crate::timeout::Elapsed>().is_some());
    assert_eq!(count("POST"), 1 + 3);
}

#[test]
fn idempotent_entries_are_checked_for_their_protocol() {
    let cfg = |list: &str| {
        MeshConfig::from_toml_str(&format!("[client.a]\nretry = {{ idempotent = {list} }}"))
            .unwrap()
            .client("a")
            .unwrap()
    };
    let grpc = cfg("[\"/orders.v1.Orders/GetOrder\", \"/stock.v1.Stock/*\"]");
    grpc.grpc_stack().unwrap();
    let e = grpc.http_stack().unwrap_err();
    assert!(matches!(&e, StackError::Section { service, .. } if service == "a"), "{e:?}");
    let http = cfg("[\"POST\", \"PATCH\"]");
    http.http_stack().unwrap();
    let e = http.grpc_stack().unwrap_err();
    let source = std::error::Error::source(&e).unwrap().to_string();
    assert!(source.contains("`POST` cannot be marked idempotent"), "{source}");
}

#[tokio::test(start_paused = true)]
async fn the_stack_honours_retry_after_beyond_max_delay_and_gives_up_past_the_deadline() {
    // The testing preset: backoff at most 100 ms, total timeout 5 s.
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let backend = {
        let arrivals = arrivals.clone();
        service_fn(move |req: Request<String>| {
            let n = {
                let mut a = arrivals.lock().unwrap();
                a.push(tokio::time::Instant::now());
                a.len()
            };
            let after = req.uri().path().trim_start_matches('/').to_owned();
            async move {
                let res = if n == 1 || after == "30" {
                    Response::builder().status(503).header("retry-after", after).body(String::new()).unwrap()
                } else {
                    Response::new(String::new())
                };
                Ok::<_, Infallible>(res)
            }
        })
    };
    let mut cfg = ClientConfig::preset(Preset::Testing).named("orders");
    cfg.circuit_breaker = None; // the testing breaker would open on the first 503
    let mut svc = ServiceBuilder::new().layer(cfg.http_stack().unwrap()).service(backend);
    let res = svc.ready().await.unwrap().call(Request::get("/2").body(String::new()).unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    {
        let a = arrivals.lock().unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1] - a[0], Duration::from_secs(2), "as the server asked, not the 100 ms max_delay");
    }
    // The server asks for 30 s, past the 5 s total timeout: no retry, the
    // caller gets the server's answer at once.
    let start = tokio::time::Instant::now();
    let res = svc.ready().await.unwrap().call(Request::get("/30").body(String::new()).unwrap()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "30");
    assert_eq!(arrivals.lock().unwrap().len(), 3);
    assert_eq!(tokio::time::Instant::now(), start);
}

#[tokio::test]
async fn a_dropped_call_gives_its_bulkhead_permit_back_and_counts_as_cancelled() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut cfg = fast_client();
    cfg.bulkhead.as_mut().unwrap().max_concurrent_calls = 1;
    let stack = metrics::with_local_recorder(&recorder, || cfg.http_stack().unwrap());
    let bulkhead = stack.bulkhead().unwrap().clone();
    let mut svc = ServiceBuilder::new().layer(stack).service(service_fn(|_req: Request<String>| async {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let fut = svc.ready().await.unwrap().call(Request::get("/").body(String::new()).unwrap());
    assert_eq!(bulkhead.available_permits(), 0);
    // A second call while the first holds the only permit is rejected at once.
    let err = svc.ready().await.unwrap().call(Request::get("/").body(String::new()).unwrap()).await.unwrap_err();
    assert!(err.downcast_ref::<BulkheadFull>().is_some(), "{err}");
    drop(fut);
    assert_eq!(bulkhead.available_permits(), 1);
    assert_eq!(counter(&snap(&snapshotter), "tower_mesh_client_calls_total", &[("outcome", "cancelled")]), 1);
}

#[tokio::test]
async fn disabled_sections_leave_the_layers_out() {
    let mut cfg = fast_client();
    cfg.retry = None;
    cfg.circuit_breaker = None;
    cfg.bulkhead = None;
    cfg.timeout = Default::default();
    cfg.metrics = false;
    let stack = cfg.http_stack().unwrap();
    assert!(stack.breaker().is_none() && stack.bulkhead().is_none());
    let dbg = format!("{stack:?}");
    assert!(dbg.contains("retry: false") && dbg.contains("total_timeout: false"), "{dbg}");
    let svc = ServiceBuilder::new()
        .layer(stack)
        .service(service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }));
    svc.oneshot(Request::new(())).await.unwrap();
}

/// A handler under `stack`: `/hold` answers once `gate` is notified, `/slow`
/// after 5 s, `/boom` with a 500, any other path at once with a 200.
fn gated(
    stack: ServerStack,
    gate: Arc<tokio::sync::Notify>,
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send + 'static> {
    ServiceBuilder::new().layer(stack).service(service_fn(move |req: Request<String>| {
        let gate = gate.clone();
        async move {
            match req.uri().path() {
                "/hold" => gate.notified().await,
                "/slow" => tokio::time::sleep(Duration::from_secs(5)).await,
                "/boom" => return Ok(Response::builder().status(500).body(String::new()).unwrap()),
                _ => {}
            }
            Ok::<_, Infallible>(Response::new(String::from("done")))
        }
    }))
}

#[tokio::test]
async fn server_stack_sheds_load_and_times_out() {
    let mut cfg = ServerConfig::preset(Preset::Testing);
    cfg.max_concurrent_requests = Some(1);
    cfg.timeout = Some(Duration::from_millis(50));
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut svc = gated(cfg.stack().unwrap(), gate.clone());
    let held = tokio::spawn(svc.ready().await.unwrap().call(Request::get("/hold").body(String::new()).unwrap()));
    tokio::task::yield_now().await;
    let shed = svc
        .ready()
        .await
        .unwrap()
        .call(Request::get("/x").header("x-correlation-id", "abc-123").body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    #[cfg(feature = "correlation-id")]
    assert_eq!(shed.headers()["x-correlation-id"], "abc-123", "the id is echoed on a shed request too");
    gate.notify_one();
    assert_eq!(held.await.unwrap().unwrap().status(), StatusCode::OK);
    let slow = svc.ready().await.unwrap().call(Request::get("/slow").body(String::new()).unwrap()).await.unwrap();
    assert_eq!(slow.status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn server_stack_answers_grpc_errors_as_grpc() {
    let mut cfg = ServerConfig::preset(Preset::Testing);
    cfg.timeout = Some(Duration::from_millis(20));
    let svc = ServiceBuilder::new().layer(cfg.stack().unwrap()).service(service_fn(|_req: Request<String>| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let req = Request::post("/pkg.Svc/Call").header("content-type", "application/grpc").body(String::new()).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "4"); // DEADLINE_EXCEEDED
}

#[cfg(feature = "discovery")]
#[tokio::test]
async fn static_endpoints_route_through_discovery() {
    let mut cfg = fast_client();
    cfg.endpoints = vec!["127.0.0.1:9001".into(), "127.0.0.1:9002".into()];
    let stack = cfg.http_stack().unwrap();
    assert_eq!(stack.registry().unwrap().resolution("orders").map(|r| r.endpoints().len()), Some(2));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let mut svc = ServiceBuilder::new().layer(stack).service(service_fn(move |req: Request<String>| {
        s.lock().unwrap().push(req.uri().authority().unwrap().to_string());
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    }));
    for _ in 0..20 {
        svc.ready()
            .await
            .unwrap()
            .call(Request::get("http://orders/items").body(String::new()).unwrap())
            .await
            .unwrap();
    }
    let seen = seen.lock().unwrap();
    // Every request went to one of the configured endpoints, never to `orders`.
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|a| a == "127.0.0.1:9001" || a == "127.0.0.1:9002"), "{seen:?}");
}

proptest! {
    // Whatever values a file holds, loading it is a config or a typed error.
    #[test]
    fn loading_never_panics(
        total in 0u64..5_000,
        attempt in 0u64..5_000,
        window in 0u64..100,
        ratio in -1.0f64..2.0,
        threshold in -10.0f64..120.0,
        max in 0usize..5,
        wait in 0u64..3_000,
    ) {
        let doc = format!(
            "[client.s]\ntimeout = {{ total = \"{total}ms\", attempt = \"{attempt}ms\" }}\n\
             circuit_breaker = {{ failure_rate_threshold = {threshold:?}, sliding_window = {{ time = \"{window}s\" }} }}\n\
             retry = {{ budget = {{ ratio = {ratio:?} }} }}\n\
             bulkhead = {{ max_concurrent_calls = {max}, max_wait = \"{wait}ms\" }}\n"
        );
        match MeshConfig::from_toml_str(&doc) {
            Ok(cfg) => {
                let c = cfg.client("s").unwrap();
                prop_assert!(c.validate().is_ok());
                prop_assert!(c.http_stack().is_ok());
            }
            Err(StackError::Invalid { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn server_metrics_tell_shed_and_timed_out_requests_apart() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut cfg = ServerConfig::preset(Preset::Testing);
    cfg.name = "edge".into();
    cfg.max_concurrent_requests = Some(1);
    cfg.timeout = Some(Duration::from_millis(30));
    let stack = metrics::with_local_recorder(&recorder, || cfg.stack().unwrap());
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut svc = gated(stack, gate.clone());
    let get = |path: &str| Request::get(path).body(String::new()).unwrap();
    let held = tokio::spawn(svc.ready().await.unwrap().call(get("/hold")));
    tokio::task::yield_now().await;
    assert_eq!(svc.ready().await.unwrap().call(get("/x")).await.unwrap().status(), 503);
    gate.notify_one();
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    assert_eq!(svc.ready().await.unwrap().call(get("/slow")).await.unwrap().status(), 504);
    assert_eq!(svc.ready().await.unwrap().call(get("/boom")).await.unwrap().status(), 500);
    let snap = snap(&snapshotter);
    let requests =
        |outcome| counter(&snap, "tower_mesh_server_requests_total", &[("service", "edge"), ("outcome", outcome)]);
    assert_eq!(requests("rejected"), 1, "the shed request");
    assert_eq!(requests("timeout"), 1, "the timed-out request");
    assert_eq!(requests("failure"), 1, "the handler's 500");
    assert_eq!(requests("success"), 1);
}

#[cfg(feature = "rate-limit")]
mod rate_limit {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::time::Instant;

    use tower::{ServiceBuilder, ServiceExt};

    use crate::stack::MeshConfig;

    const TOML: &str = r#"
        preset = "testing"
        [client.orders]
        timeout = { attempt = "200ms", total = "1s" }
        rate_limit = { rate = "10/s", burst = 1, max_wait = "150ms" }
        [server]
        rate_limit = { rate = "2/s", burst = 2, key = "header:x-api-key" }
    "#;

    #[test]
    fn config_is_validated_at_load() {
        let cfg = MeshConfig::from_toml_str(TOML).unwrap();
        let r = cfg.server.rate_limit.as_ref().unwrap();
        assert_eq!(r.policy().burst, 2);
        assert_eq!(r.key, Some("header:x-api-key".parse().unwrap()));
        for bad in [
            r#"[server]
               rate_limit = { rate = "fast" }"#,
            r#"[server]
               rate_limit = { rate = "1/s", key = "cookie:x" }"#,
            r#"[server]
               rate_limit = { rate = "1/s", burst = 0 }"#,
            r#"[client.a]
               timeout = { total = "1s" }
               rate_limit = { rate = "1/s", max_wait = "2s" }"#,
        ] {
            let err = MeshConfig::from_toml_str(bad).and_then(|c| {
                c.server.stack()?;
                c.client("a")?.http_stack().map(|_| ())
            });
            assert!(err.is_err(), "{bad}");
        }
        #[cfg(not(feature = "rate-limit-redis"))]
        assert!(MeshConfig::from_toml_str("[server]\nrate_limit = { store = \"redis://x\" }")
            .and_then(|c| c.server.stack().map(|_| ()))
            .is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn server_stack_limits_per_key_with_429() {
        let cfg = MeshConfig::from_toml_str(TOML).unwrap();
        let svc =
            ServiceBuilder::new().layer(cfg.server.stack().unwrap()).service_fn(|_req: http::Request<String>| async {
                Ok::<_, Infallible>(http::Response::new(String::from("ok")))
            });
        let req = |key: &str| http::Request::get("/").header("x-api-key", key).body(String::new()).unwrap();
        for _ in 0..2 {
            assert_eq!(svc.clone().oneshot(req("a")).await.unwrap().status(), 200);
        }
        let res = svc.clone().oneshot(req("a")).await.unwrap();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()["retry-after"], "1");
        assert_eq!(res.headers()["ratelimit"], "\"server\";r=0;t=1");
        assert_eq!(svc.clone().oneshot(req("b")).await.unwrap().status(), 200, "another key has its own limit");
    }

    #[tokio::test(start_paused = true)]
    async fn client_stack_throttles_each_attempt_within_max_wait() {
        let cfg = MeshConfig::from_toml_str(TOML).unwrap();
        let stack = cfg.client("orders").unwrap().http_stack().unwrap();
        let svc = ServiceBuilder::new().layer(stack).service_fn(
            |_req: http::Request<http_body_util::Full<bytes::Bytes>>| async {
                Ok::<_, Infallible>(http::Response::new(String::from("ok")))
            },
        );
        let req = || http::Request::get("http://orders/").body(Default::default()).unwrap();
        let start = tokio::time::Instant::now();
        svc.clone().oneshot(req()).await.unwrap();
        svc.clone().oneshot(req()).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(100), "the second call waited for its permit");
        // Two at once: one waits 100 ms, the other would wait 200 ms >
        // max_wait: rejected, and retried after the rejection's Retry-After.
        let (a, b) = tokio::join!(svc.clone().oneshot(req()), svc.clone().oneshot(req()));
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    const RETRYING: &str = r#"
        preset = "testing"
        [client.orders]
        timeout = { attempt = "200ms", total = "5s" }
        retry = { max_retries = 1, backoff = { initial = "1ms", max_delay = "1ms" } }
        rate_limit = { rate = "1/s", burst = 1 }
        [client.reports]
        timeout = { attempt = "200ms", total = "5s" }
        retry = { max_retries = 1, backoff = { initial = "1ms", max_delay = "1ms" } }
        rate_limit = { rate = "1/min", burst = 1 }
    "#;

    /// When calls reached the backend.
    type Arrivals = Arc<Mutex<Vec<Instant>>>;
    type Res = http::Response<String>;
    use crate::BoxError;

    /// A client stack for `name` of [`RETRYING`] and the instants its calls
    /// reach the backend.
    fn retrying(
        name: &str,
    ) -> (impl tower::Service<http::Request<String>, Response = Res, Error = BoxError> + Clone, Arrivals) {
        let cfg = MeshConfig::from_toml_str(RETRYING).unwrap();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let seen = arrivals.clone();
        let svc = ServiceBuilder::new().layer(cfg.client(name).unwrap().http_stack().unwrap()).service_fn(
            move |_req: http::Request<String>| {
                seen.lock().unwrap().push(Instant::now());
                async { Ok::<_, Infallible>(http::Response::new(String::from("ok"))) }
            },
        );
        (svc, arrivals)
    }

    #[tokio::test(start_paused = true)]
    async fn client_retry_waits_a_local_rejections_retry_after() {
        let (svc, arrivals) = retrying("orders");
        let req = || http::Request::get("http://orders/").body(String::new()).unwrap();
        svc.clone().oneshot(req()).await.unwrap();
        // Over the limit: rejected before it leaves; the retry waits the
        // rejection's Retry-After (1 s, not the 1 ms backoff) and goes.
        svc.clone().oneshot(req()).await.unwrap();
        let a = arrivals.lock().unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1] - a[0], Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_when_the_rejections_wait_ends_after_the_deadline() {
        let (svc, arrivals) = retrying("reports");
        let req = || http::Request::get("http://reports/").body(String::new()).unwrap();
        svc.clone().oneshot(req()).await.unwrap();
        let start = Instant::now();
        // A minute to wait, 5 s of total timeout: the rejection at once.
        let err = svc.clone().oneshot(req()).await.unwrap_err();
        let limited = crate::rate_limit::headers::find(&*err).expect("the RateLimited");
        assert_eq!(limited.retry_after(), Duration::from_secs(60));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(arrivals.lock().unwrap().len(), 1);
    }
}
