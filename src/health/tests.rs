use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::bulkhead::BulkheadLayer;
use crate::circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer, CircuitState};

fn breaker(name: &str) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder().name(name).wait_in_open(Duration::from_secs(60)).build().unwrap()
}

/// Call `svc` with `method` and return the status, the headers and the body as JSON.
async fn call(svc: HealthService, method: Method) -> (StatusCode, http::HeaderMap, Bytes) {
    let req = Request::builder().method(method).uri("/health").body(()).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

async fn get(svc: HealthService) -> (StatusCode, Value) {
    let (status, _, body) = call(svc, Method::GET).await;
    (status, serde_json::from_slice(&body).unwrap())
}

fn breaker_details(report: &HealthReport, name: &str) -> BreakerDetails {
    match &report.component(name).unwrap().details {
        ComponentDetails::CircuitBreaker(d) => d.clone(),
        other => panic!("not a breaker: {other:?}"),
    }
}

#[test]
fn no_component_is_up() {
    let report = Health::new().report();
    assert_eq!(report.status, Status::Up);
    assert!(report.is_ready());
    assert!(report.components.is_empty());
}

#[tokio::test(start_paused = true)]
async fn breaker_states_are_reflected_in_the_report() {
    let layer = breaker("payments");
    let handle = layer.handle();
    let health = Health::new().breaker(layer.handle());

    let r = health.report();
    assert_eq!((r.status, r.components[0].status), (Status::Up, Status::Up));
    assert_eq!(r.components[0].kind, ComponentKind::CircuitBreaker);
    assert!(!r.components[0].critical);
    assert_eq!(breaker_details(&r, "payments").state, CircuitState::Closed);
    assert_eq!(breaker_details(&r, "payments").retry_after_ms, None);

    handle.transition_to_half_open();
    let r = health.report();
    assert_eq!((r.status, r.components[0].status), (Status::Degraded, Status::Degraded));

    // Open: down, but by default the report is only degraded and ready.
    handle.transition_to_open();
    let r = health.report();
    assert_eq!((r.status, r.components[0].status), (Status::Degraded, Status::Down));
    assert!(r.is_ready());
    let d = breaker_details(&r, "payments");
    assert_eq!(d.state, CircuitState::Open);
    assert_eq!(d.retry_after_ms, Some(60_000));
    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(breaker_details(&health.report(), "payments").retry_after_ms, Some(40_000));

    handle.transition_to_forced_open();
    let r = health.report();
    assert_eq!((r.status, r.components[0].status), (Status::Degraded, Status::Down));
    assert_eq!(breaker_details(&r, "payments").retry_after_ms, None);

    type Transition = fn(&CircuitBreakerHandle);
    let manual: [(Transition, CircuitState); 3] = [
        (CircuitBreakerHandle::transition_to_disabled, CircuitState::Disabled),
        (CircuitBreakerHandle::transition_to_metrics_only, CircuitState::MetricsOnly),
        (CircuitBreakerHandle::transition_to_closed, CircuitState::Closed),
    ];
    for (transition, state) in manual {
        transition(&handle);
        let r = health.report();
        assert_eq!((r.status, r.components[0].status), (Status::Up, Status::Up), "{state}");
        assert_eq!(breaker_details(&r, "payments").state, state);
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_fails_readiness_only_when_asked() {
    let layer = breaker("payments");
    let health = Health::new().breaker(layer.handle());
    layer.handle().transition_to_open();
    let (status, json) = get(health.readiness()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["status"], "degraded");
    assert_eq!(json["components"][0]["status"], "down");
    assert_eq!(json["components"][0]["critical"], false);

    let health = health.breaker_fails_readiness(true);
    let (status, json) = get(health.readiness()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json["status"], "down");
    assert_eq!(json["components"][0]["critical"], true);

    // Once the wait is over the breaker admits probes on the next call: an
    // instance taken out of rotation would never get that call.
    tokio::time::advance(Duration::from_secs(60)).await;
    let (status, json) = get(health.readiness()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["components"][0]["details"]["state"], "open");
    assert_eq!(json["components"][0]["details"]["retry_after_ms"], 0);
    assert_eq!(json["components"][0]["status"], "degraded");

    // Forced open stays down until a manual transition.
    layer.handle().transition_to_forced_open();
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(get(health.readiness()).await.0, StatusCode::SERVICE_UNAVAILABLE);
    layer.handle().reset();
    assert_eq!(get(health.readiness()).await.0, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_real_trip_shows_counters() {
    let layer = CircuitBreakerLayer::builder().name("inventory").count_window(4).minimum_calls(4).build().unwrap();
    let health = Health::new().breaker(layer.handle());
    let svc = tower::ServiceBuilder::new().layer(layer).service_fn(|fail: bool| async move {
        if fail {
            Err("boom")
        } else {
            Ok(())
        }
    });
    for fail in [false, true, true, true] {
        let _ = svc.clone().oneshot(fail).await;
    }
    let _ = svc.clone().oneshot(false).await; // rejected
    let d = breaker_details(&health.report(), "inventory");
    assert_eq!(d.state, CircuitState::Open);
    assert_eq!((d.calls, d.failures, d.not_permitted), (4, 3, 1));
    assert_eq!(d.failure_rate, Some(75.0));
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_report_the_worst_key() {
    let layer = CircuitBreakerLayer::builder()
        .name("upstreams")
        .count_window(2)
        .minimum_calls(2)
        .key(|req: &(&'static str, bool)| req.0)
        .build()
        .unwrap();
    let health = Health::new().keyed_breakers("upstreams", layer.registry());
    let r = health.report();
    assert_eq!(r.status, Status::Up);
    let ComponentDetails::KeyedCircuitBreakers(d) = &r.components[0].details else { panic!() };
    assert_eq!((d.keys, d.open, d.half_open), (0, 0, 0));

    let svc = tower::ServiceBuilder::new().layer(layer.clone()).service_fn(|(_, fail): (&str, bool)| async move {
        if fail {
            Err("boom")
        } else {
            Ok(())
        }
    });
    for _ in 0..2 {
        let _ = svc.clone().oneshot(("a", false)).await;
        let _ = svc.clone().oneshot(("b", true)).await;
        let _ = svc.clone().oneshot(("c", false)).await;
    }
    layer.registry().get(&"c").unwrap().transition_to_half_open();

    let r = health.report();
    assert_eq!(r.components[0].kind, ComponentKind::CircuitBreaker);
    assert_eq!((r.status, r.components[0].status), (Status::Degraded, Status::Down));
    let ComponentDetails::KeyedCircuitBreakers(d) = &r.components[0].details else { panic!() };
    assert_eq!((d.keys, d.open, d.half_open), (3, 1, 1));
    let listed: Vec<(&str, Status)> = d.breakers.iter().map(|b| (b.key.as_str(), b.status)).collect();
    assert_eq!(listed, [("\"b\"", Status::Down), ("\"c\"", Status::Degraded), ("\"a\"", Status::Up)]);
    assert_eq!(d.breakers[0].breaker.retry_after_ms, Some(60_000));

    let json = serde_json::to_value(&r).unwrap();
    let first = &json["components"][0]["details"]["breakers"][0];
    assert_eq!(first["key"], "\"b\"");
    assert_eq!(first["state"], "open");
    assert_eq!(first["failure_rate"], 100.0);

    let health = health.breaker_fails_readiness(true);
    assert_eq!(health.report().status, Status::Down);
}

#[test]
fn bulkhead_reports_in_flight_and_is_degraded_when_full() {
    let layer = BulkheadLayer::builder().name("inventory").max_concurrent_calls(2).build().unwrap();
    let health = Health::new().bulkhead(&layer, 2);
    let r = health.report();
    assert_eq!(r.components[0].name, "inventory");
    assert_eq!(r.components[0].kind, ComponentKind::Bulkhead);
    assert_eq!(
        r.components[0].details,
        ComponentDetails::Bulkhead(BulkheadDetails { in_flight: 0, max: 2, available: 2 })
    );
    assert_eq!(r.status, Status::Up);

    let one = layer.try_acquire().unwrap();
    let r = health.report();
    assert_eq!(
        r.components[0].details,
        ComponentDetails::Bulkhead(BulkheadDetails { in_flight: 1, max: 2, available: 1 })
    );
    assert_eq!(r.status, Status::Up);

    let two = layer.try_acquire().unwrap();
    let r = health.report();
    assert_eq!(
        r.components[0].details,
        ComponentDetails::Bulkhead(BulkheadDetails { in_flight: 2, max: 2, available: 0 })
    );
    assert_eq!((r.status, r.components[0].status), (Status::Degraded, Status::Degraded));
    assert!(r.is_ready());
    drop((one, two));
    assert_eq!(health.report().status, Status::Up);
}

#[tokio::test]
async fn custom_checks_decide_readiness() {
    let state = Arc::new(AtomicU8::new(0));
    let s = state.clone();
    let health = Health::new().check("database", move || match s.load(Ordering::SeqCst) {
        0 => ComponentStatus::up(),
        1 => ComponentStatus::degraded("replica lag 12s"),
        _ => ComponentStatus::down("connection refused"),
    });

    let (status, json) = get(health.readiness()).await;
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("up")));
    assert_eq!(json["components"][0]["kind"], "custom");
    assert_eq!(json["components"][0]["details"]["message"], Value::Null);

    state.store(1, Ordering::SeqCst);
    let (status, json) = get(health.readiness()).await;
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("degraded")));
    assert_eq!(json["components"][0]["details"]["message"], "replica lag 12s");

    state.store(2, Ordering::SeqCst);
    let (status, json) = get(health.readiness()).await;
    assert_eq!((status, json["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("down")));
    assert_eq!(json["components"][0]["status"], "down");
    assert_eq!(json["components"][0]["details"]["message"], "connection refused");

    state.store(0, Ordering::SeqCst);
    assert_eq!(get(health.readiness()).await.0, StatusCode::OK);
}

#[test]
fn a_panicking_check_is_down() {
    let health = Health::new().check("flaky", || panic!("check bug")).check("fine", ComponentStatus::up);
    let r = health.report();
    assert_eq!(r.status, Status::Down);
    assert_eq!(r.component("flaky").unwrap().status, Status::Down);
    assert_eq!(
        r.component("flaky").unwrap().details,
        ComponentDetails::Custom(CustomDetails { message: Some("the check panicked".into()) })
    );
    assert_eq!(r.component("fine").unwrap().status, Status::Up);
}

#[test]
fn component_status_constructors() {
    assert_eq!(ComponentStatus::up().status(), Status::Up);
    assert_eq!(ComponentStatus::up().message(), None);
    assert_eq!(ComponentStatus::degraded("slow").message(), Some("slow"));
    assert_eq!(ComponentStatus::down("gone").status(), Status::Down);
    assert_eq!(ComponentStatus::from(Status::Degraded).with_message("x").message(), Some("x"));
    assert!(Status::Up < Status::Degraded && Status::Degraded < Status::Down);
    assert_eq!(Status::Degraded.to_string(), "degraded");
}

#[tokio::test(start_paused = true)]
async fn json_shape_and_headers() {
    let layer = breaker("payments");
    let bulkhead = BulkheadLayer::builder().name("pool").max_concurrent_calls(4).build().unwrap();
    let health = Health::new()
        .breaker(layer.handle())
        .bulkhead(&bulkhead, 4)
        .check("cache", || ComponentStatus::degraded("cold"));
    layer.handle().transition_to_open();

    let (status, headers, body) = call(health.readiness(), Method::GET).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "no-store");
    let json: Value = serde_json::from_slice(&body).unwrap();
    let expected = serde_json::json!({
        "status": "degraded",
        "components": [
            {
                "name": "payments", "kind": "circuit_breaker", "status": "down", "critical": false,
                "details": {
                    "state": "open", "failure_rate": null, "slow_call_rate": null, "calls": 0,
                    "failures": 0, "slow_calls": 0, "not_permitted": 0, "retry_after_ms": 60000
                }
            },
            {
                "name": "pool", "kind": "bulkhead", "status": "up", "critical": false,
                "details": { "in_flight": 0, "max": 4, "available": 4 }
            },
            {
                "name": "cache", "kind": "custom", "status": "degraded", "critical": true,
                "details": { "message": "cold" }
            }
        ]
    });
    assert_eq!(json, expected);
}

#[tokio::test]
async fn liveness_is_always_up() {
    let health = Health::new().check("database", || ComponentStatus::down("gone"));
    assert_eq!(get(health.readiness()).await.0, StatusCode::SERVICE_UNAVAILABLE);
    let (status, headers, body) = call(health.liveness(), Method::GET).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(&body[..], br#"{"status":"up"}"#);
}

#[tokio::test]
async fn head_is_answered_and_other_methods_are_not_allowed() {
    let health = Health::new().check("database", || ComponentStatus::down("gone"));
    let (status, headers, _) = call(health.readiness(), Method::HEAD).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["content-type"], "application/json");
    for svc in [health.readiness(), health.liveness()] {
        let (status, headers, body) = call(svc, Method::POST).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers["allow"], "GET, HEAD");
        assert!(body.is_empty());
    }
}

#[tokio::test]
async fn clones_share_their_components() {
    let health = Health::new();
    let ready = health.readiness();
    assert_eq!(get(ready.clone()).await.1["components"], serde_json::json!([]));
    let _ = health.clone().check("late", || ComponentStatus::down("not yet"));
    let (status, json) = get(ready).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json["components"][0]["name"], "late");
    assert!(format!("{health:?}").contains("late"));
}

#[test]
fn the_gauge_follows_the_status() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let state = Arc::new(AtomicU8::new(0));
    let s = state.clone();
    let health = Health::new()
        .check("cache", move || match s.load(Ordering::SeqCst) {
            0 => ComponentStatus::up(),
            1 => ComponentStatus::degraded("cold"),
            _ => ComponentStatus::down("gone"),
        })
        .check("db", ComponentStatus::up);
    let gauges = || -> HashMap<String, f64> {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == "tower_mesh_health_status")
            .map(|(k, _, _, v)| {
                let component = k.key().labels().find(|l| l.key() == "component").unwrap().value().to_owned();
                match v {
                    metrics_util::debugging::DebugValue::Gauge(g) => (component, g.into_inner()),
                    other => panic!("not a gauge: {other:?}"),
                }
            })
            .collect()
    };
    for (value, expected) in [(0, 1.0), (1, 0.5), (2, 0.0), (0, 1.0)] {
        state.store(value, Ordering::SeqCst);
        metrics::with_local_recorder(&recorder, || health.report());
        let g = gauges();
        assert_eq!(g["cache"], expected);
        assert_eq!(g["db"], 1.0);
    }
}

#[test]
fn status_changes_are_logged_once() {
    let out = crate::circuit_breaker::tests::Log::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let logs = || String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    let changes = || logs().matches("health status changed").count();

    let state = Arc::new(AtomicU8::new(0));
    let s = state.clone();
    let health = Health::new().check("cache", move || {
        if s.load(Ordering::SeqCst) == 0 {
            ComponentStatus::up()
        } else {
            ComponentStatus::down("gone")
        }
    });
    health.report();
    health.report();
    assert_eq!(changes(), 0, "a first report that is up logs nothing: {}", logs());

    state.store(1, Ordering::SeqCst);
    health.report();
    health.report();
    assert_eq!(changes(), 1, "{}", logs());
    let l = logs();
    assert!(l.contains("WARN"), "{l}");
    assert!(l.contains("component=\"cache\"") || l.contains("component=cache"), "{l}");
    assert!(l.contains("from=\"up\"") || l.contains("from=up"), "{l}");
    assert!(l.contains("to=\"down\"") || l.contains("to=down"), "{l}");

    state.store(0, Ordering::SeqCst);
    health.report();
    assert_eq!(changes(), 2, "{}", logs());
    assert!(logs().lines().last().unwrap().contains("INFO"), "{}", logs());

    // A component down at the first report is logged.
    let other = Health::new().check("queue", || ComponentStatus::down("gone"));
    other.report();
    assert_eq!(changes(), 3, "{}", logs());
    assert!(logs().contains("from=\"unknown\"") || logs().contains("from=unknown"), "{}", logs());
}

#[tokio::test]
async fn axum_router_on_a_loopback_listener() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let state = Arc::new(AtomicU8::new(0));
    let s = state.clone();
    let health = Health::new().check("database", move || {
        if s.load(Ordering::SeqCst) == 0 {
            ComponentStatus::up()
        } else {
            ComponentStatus::down("connection refused")
        }
    });
    let app = axum::Router::new()
        .route_service("/ready", health.readiness())
        .route_service("/live", health.liveness())
        .route("/", axum::routing::get(|| async { "hello" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let fetch = |path: &'static str| {
        let client = client.clone();
        async move {
            let uri: http::Uri = format!("http://{addr}{path}").parse().unwrap();
            let res = client.get(uri).await.unwrap();
            let (parts, body) = res.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (parts.status, parts.headers, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };

    let (status, headers, json) = fetch("/ready").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(json["status"], "up");
    assert_eq!(json["components"][0]["name"], "database");

    state.store(1, Ordering::SeqCst);
    let (status, _, json) = fetch("/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json["components"][0]["details"]["message"], "connection refused");

    let (status, _, json) = fetch("/live").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json, serde_json::json!({ "status": "up" }));

    // Through the router without a socket, as well.
    let res = axum::Router::new()
        .route_service("/ready", health.readiness())
        .oneshot(Request::get("/ready").body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    server.abort();
}

#[cfg(feature = "discovery")]
mod discovery {
    use super::*;
    use crate::discovery::Registry;

    fn details(report: &HealthReport) -> DiscoveryDetails {
        match &report.components[0].details {
            ComponentDetails::Discovery(d) => d.clone(),
            other => panic!("not discovery: {other:?}"),
        }
    }

    #[tokio::test]
    async fn no_endpoints_is_down_and_not_ready() {
        let registry = Registry::new();
        registry.register("orders");
        let health = Health::new().discovery("orders-upstream", registry.clone(), "orders");
        let (status, json) = get(health.readiness()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json["status"], "down");
        let c = &json["components"][0];
        assert_eq!(
            (c["name"].as_str(), c["kind"].as_str(), c["status"].as_str()),
            (Some("orders-upstream"), Some("discovery"), Some("down"))
        );
        assert_eq!(c["critical"], true);
        assert_eq!(
            c["details"],
            serde_json::json!({ "service": "orders", "registered": true, "endpoints": 0, "stale": false })
        );

        registry.set_static("orders", ["10.0.0.1:8080", "10.0.0.2:8080"]).unwrap();
        let (status, json) = get(health.readiness()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["status"], "up");
        assert_eq!(json["components"][0]["details"]["endpoints"], 2);
    }

    #[tokio::test]
    async fn stale_endpoints_are_degraded_but_ready() {
        let registry = Registry::new();
        registry.set_static("orders", ["10.0.0.1:8080"]).unwrap();
        registry.mark_stale("orders");
        let health = Health::new().discovery("orders", registry.clone(), "orders");
        let (status, json) = get(health.readiness()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["status"], "degraded");
        assert_eq!(json["components"][0]["status"], "degraded");
        assert_eq!(json["components"][0]["details"]["stale"], true);
        assert_eq!(json["components"][0]["details"]["endpoints"], 1);

        // A refresh clears the mark.
        registry.set_static("orders", ["10.0.0.1:8080"]).unwrap();
        assert_eq!(health.report().status, Status::Up);
    }

    #[test]
    fn an_unknown_service_is_down() {
        let registry = Registry::new();
        let health = Health::new().discovery("billing", registry.clone(), "billing");
        let r = health.report();
        assert_eq!(r.status, Status::Down);
        assert_eq!(
            details(&r),
            DiscoveryDetails { service: "billing".into(), registered: false, endpoints: 0, stale: false }
        );
        registry.set_static("billing", ["10.0.0.9:443"]).unwrap();
        assert_eq!(health.report().status, Status::Up);
        registry.remove("billing");
        assert_eq!(health.report().status, Status::Down);
    }
}
