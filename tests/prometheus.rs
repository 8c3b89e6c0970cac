//! The client stack's metrics through `metrics-exporter-prometheus`: a
//! `PrometheusRecorder` installed locally while the stack is built (its
//! handles are registered then) renders the calls made afterwards.

#![cfg(feature = "stack")]

use std::convert::Infallible;

use http::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::{ServiceBuilder, ServiceExt};
use tower_mesh::stack::MeshConfig;

const CONFIG: &str = r#"
preset = "testing"

[client.orders]
correlation = false

[client.quiet]
correlation = false
metrics = false
"#;

/// `/fail` answers 503, anything else 200.
async fn upstream(req: Request<String>) -> Result<Response<String>, Infallible> {
    let status = if req.uri().path() == "/fail" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    Ok(Response::builder().status(status).body(String::new()).unwrap())
}

fn request(method: Method, path: &str) -> Request<String> {
    Request::builder().method(method).uri(path).body(String::new()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn calls_are_rendered_by_service_method_and_outcome() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let config = MeshConfig::from_toml_str(CONFIG).unwrap().client("orders").unwrap();
    let stack = metrics::with_local_recorder(&recorder, || config.http_stack()).unwrap();
    let svc = ServiceBuilder::new().layer(stack).service_fn(upstream);

    for _ in 0..3 {
        let res = svc.clone().oneshot(request(Method::GET, "/items")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = svc.clone().oneshot(request(Method::POST, "/items")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Retried twice (the testing preset), then passed on as it is.
    let res = svc.clone().oneshot(request(Method::GET, "/fail")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);

    let text = handle.render();
    for line in [
        r#"tower_mesh_client_calls_total{service="orders",method="GET",outcome="success"} 3"#,
        r#"tower_mesh_client_calls_total{service="orders",method="POST",outcome="success"} 1"#,
        r#"tower_mesh_client_calls_total{service="orders",method="GET",outcome="failure"} 1"#,
        r#"tower_mesh_client_calls_total{service="orders",method="GET",outcome="rejected"} 0"#,
        r#"tower_mesh_client_call_duration_seconds_count{service="orders",method="GET",outcome="success"} 3"#,
        r#"tower_mesh_retry_retries_total{service="orders"} 2"#,
        r#"tower_mesh_circuit_breaker_calls_total{service="orders",outcome="failure"} 3"#,
        r#"tower_mesh_circuit_breaker_state{service="orders"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
    }
}

#[tokio::test]
async fn metrics_off_registers_no_call_series() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let config = MeshConfig::from_toml_str(CONFIG).unwrap().client("quiet").unwrap();
    let stack = metrics::with_local_recorder(&recorder, || config.http_stack()).unwrap();
    let res = ServiceBuilder::new().layer(stack).service_fn(upstream).oneshot(request(Method::GET, "/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let text = handle.render();
    assert!(!text.contains("tower_mesh_client_calls_total"), "{text}");
    assert!(!text.contains("tower_mesh_client_call_duration_seconds"), "{text}");
    // The layers' own metrics do not depend on the switch.
    assert!(text.contains(r#"tower_mesh_retry_attempts_total{service="quiet"} 1"#), "{text}");
}
