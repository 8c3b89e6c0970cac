//! The config-built stacks on real servers on 127.0.0.1: a hyper-util client
//! with the recommended client stack against a hyper upstream, and an axum
//! router with the server stack, JWT validation and the readiness endpoint.

#![cfg(all(feature = "stack", feature = "correlation-id", feature = "jwt"))]

mod support;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{encode, EncodingKey, Header};
use support::upstream::{Mode, Upstream};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_mesh::circuit_breaker::{CircuitOpen, CircuitState};
use tower_mesh::correlation::RequestContext;
use tower_mesh::health::Health;
use tower_mesh::jwt::{Algorithm, JwtKey, JwtPropagationLayer};
use tower_mesh::stack::MeshConfig;

const SECRET: &[u8] = b"integration-secret-integration-32";

const CONFIG: &str = r#"
preset = "testing"

[client.orders]
timeout = { attempt = "500ms", total = "3s" }
retry = { max_retries = 2, backoff = { initial = "10ms", max_delay = "50ms" } }
circuit_breaker = { sliding_window = { count = 10 }, minimum_calls = 10, wait_in_open = "300ms", permitted_calls_in_half_open = 2 }

[server]
name = "api"
timeout = "300ms"
max_concurrent_requests = 2
"#;

fn get_items(up: &Upstream) -> Request<Full<Bytes>> {
    Request::get(up.uri("/items")).body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn config_built_client_stack_retries_trips_and_recovers() {
    let up = Upstream::start().await;
    let cfg = MeshConfig::from_toml_str(CONFIG).unwrap();
    let stack = cfg.client("orders").unwrap().http_stack().unwrap();
    let breaker = stack.breaker().unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut svc = ServiceBuilder::new().layer(stack).service(client);

    // Healthy: one attempt per call.
    let res = svc.ready().await.unwrap().call(get_items(&up)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.control.requests(), 1);

    // Failing: each call is tried 3 times; once 9 of the last 10 attempts failed the breaker opens.
    up.control.set(Mode::Status(503));
    let mut open_seen = false;
    for _ in 0..6 {
        match svc.ready().await.unwrap().call(get_items(&up)).await {
            Ok(res) => assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE),
            Err(e) => {
                assert!(e.downcast_ref::<CircuitOpen>().is_some(), "{e}");
                open_seen = true;
            }
        }
    }
    assert!(open_seen);
    assert_eq!(breaker.state(), CircuitState::Open);
    let attempts = up.control.requests() - 1;
    assert!((9..=12).contains(&attempts), "{attempts} attempts reached the upstream");

    // Healed: after the open wait, probes close the breaker again.
    up.control.set(Mode::Healthy);
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..2 {
        assert_eq!(svc.ready().await.unwrap().call(get_items(&up)).await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
}

struct Server {
    addr: std::net::SocketAddr,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl Server {
    async fn call(&self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, String) {
        let mut req = Request::get(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = self.client.request(req.body(Empty::new()).unwrap()).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
    }
}

async fn start_server() -> (Server, tower_mesh::circuit_breaker::CircuitBreakerHandle) {
    let cfg = MeshConfig::from_toml_str(CONFIG).unwrap();
    let stack = cfg.server.stack().unwrap();
    let downstream = cfg.client("orders").unwrap().http_stack().unwrap();
    let breaker = downstream.breaker().unwrap();
    let health = Health::new().breaker(breaker.clone()).bulkhead(stack.load_shedding().unwrap(), 2);
    let jwt = JwtPropagationLayer::builder()
        .key(JwtKey::hmac(SECRET, Algorithm::HS256).unwrap())
        .issuer("https://auth.test")
        .audience("api")
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/items",
            get(|| async { RequestContext::current().map(|c| c.correlation_id.to_string()).unwrap_or_default() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .layer(jwt)
        .route_service("/ready", health.readiness())
        .layer(stack);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (Server { addr, client: Client::builder(TokioExecutor::new()).build_http() }, breaker)
}

fn bearer() -> String {
    let claims = serde_json::json!({
        "sub": "alice", "iss": "https://auth.test", "aud": "api",
        "exp": jsonwebtoken::get_current_timestamp() + 600,
    });
    format!("Bearer {}", encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).unwrap())
}

#[tokio::test]
async fn axum_with_the_server_stack() {
    let (srv, breaker) = start_server().await;
    let auth = bearer();

    // Valid token: the handler runs with the caller's id in scope; the id is echoed.
    let (status, headers, body) = srv.call("/items", &[("authorization", &auth), ("x-correlation-id", "req-1")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "req-1");
    assert_eq!(headers["x-correlation-id"], "req-1");

    // No token: 401 from the JWT layer, id still echoed.
    let (status, headers, _) = srv.call("/items", &[("x-correlation-id", "req-2")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["x-correlation-id"], "req-2");

    // A CRLF-free but invalid id is replaced, never echoed.
    let (_, headers, body) = srv.call("/items", &[("authorization", &auth), ("x-correlation-id", "a b")]).await;
    assert_ne!(headers["x-correlation-id"], "a b");
    assert_eq!(headers["x-correlation-id"].to_str().unwrap(), body);

    // Too slow: 504.
    let (status, _, _) = srv.call("/slow", &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);

    // Over the limit of 2 in flight: the third is shed with 503 and Retry-After.
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let srv = Server { addr: srv.addr, client: srv.client.clone() };
            let auth = auth.clone();
            tokio::spawn(async move { srv.call("/slow", &[("authorization", &auth)]).await })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut retry_after = false;
    for c in calls {
        let (status, headers, _) = c.await.unwrap();
        retry_after |= status == StatusCode::SERVICE_UNAVAILABLE && headers.contains_key("retry-after");
        statuses.push(status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [503, 504, 504]);
    assert!(retry_after, "a shed request says when to come back");

    // Readiness: ready with a closed breaker, still ready (but reported) with an open one.
    let (status, _, body) = srv.call("/ready", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["status"], "up", "{body}");
    breaker.transition_to_forced_open();
    let (status, _, body) = srv.call("/ready", &[]).await;
    assert_eq!(status, StatusCode::OK, "a dependency's open breaker does not take this instance out: {body}");
    assert!(body.contains("orders"), "{body}");
    assert_ne!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"], "up");
}
