//! The rate limit on real servers on 127.0.0.1: an axum server answering
//! `429` with `Retry-After` and the `RateLimit-Policy` / `RateLimit` fields,
//! a tonic server answering `RESOURCE_EXHAUSTED` with
//! `grpc-retry-pushback-ms`, and a client stack whose retry waits the
//! server's `Retry-After` before trying again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_mesh::error::ServerErrorLayer;
use tower_mesh::rate_limit::{PeerAddr, RateLimitLayer};
use tower_mesh::stack::MeshConfig;

const CONFIG: &str = r#"
    preset = "testing"
    [client.api]
    timeout = { attempt = "2s", total = "5s" }
    retry = { max_retries = 1, backoff = { initial = "1ms", max_delay = "3s" } }
    [server]
    name = "api"
    rate_limit = { rate = "1/s", burst = 2 }
"#;

async fn axum_server() -> SocketAddr {
    let cfg = MeshConfig::from_toml_str(CONFIG).unwrap();
    let app = Router::new().route("/items", get(|| async { "ok" })).layer(cfg.server.stack().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn axum_answers_429_with_retry_after_and_ratelimit_fields() {
    let addr = axum_server().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let get = || http::Request::get(format!("http://{addr}/items")).body(Full::new(Bytes::new())).unwrap();
    for _ in 0..2 {
        assert_eq!(client.request(get()).await.unwrap().status(), 200, "the burst is admitted");
    }
    let res = client.request(get()).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["ratelimit-policy"], "\"api\";q=1;w=1");
    assert_eq!(res.headers()["ratelimit"], "\"api\";r=0;t=1");
}

#[tokio::test]
async fn client_retry_waits_the_servers_retry_after() {
    let addr = axum_server().await;
    let cfg = MeshConfig::from_toml_str(CONFIG).unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = ServiceBuilder::new().layer(cfg.client("api").unwrap().http_stack().unwrap()).service(client);
    let get = || http::Request::get(format!("http://{addr}/items")).body(Full::new(Bytes::new())).unwrap();
    for _ in 0..2 {
        assert_eq!(svc.clone().oneshot(get()).await.unwrap().status(), 200);
    }
    // Over the limit: the server says `Retry-After: 1`; the retry sleeps
    // that second (not its 1 ms backoff) and is admitted — a retry sent
    // before it would get a second 429, and there is one retry only.
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.status(), 200, "the retry after Retry-After is admitted");
}

/// An axum server counting the requests that reach it, and peer-keyed
/// limits read from axum's `ConnectInfo<SocketAddr>`.
async fn counting_server(config: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let cfg = MeshConfig::from_toml_str(config).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let handler = move || {
        seen.fetch_add(1, Ordering::SeqCst);
        async { "ok" }
    };
    let stack = cfg.server.stack_with_peer(PeerAddr::of::<ConnectInfo<SocketAddr>>()).unwrap();
    let app = Router::new().route("/items", get(handler)).layer(stack);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let make = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, make).await.unwrap() });
    (addr, hits)
}

#[tokio::test]
async fn client_retry_waits_its_own_rate_limits_retry_after() {
    const CLIENT_LIMITED: &str = r#"
        preset = "testing"
        [client.api]
        timeout = { attempt = "2s", total = "5s" }
        retry = { max_retries = 1, backoff = { initial = "1ms", max_delay = "1ms" } }
        rate_limit = { rate = "1/s", burst = 1 }
    "#;
    let (addr, hits) = counting_server(CLIENT_LIMITED).await;
    let cfg = MeshConfig::from_toml_str(CLIENT_LIMITED).unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = ServiceBuilder::new().layer(cfg.client("api").unwrap().http_stack().unwrap()).service(client);
    let get = || http::Request::get(format!("http://{addr}/items")).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(svc.clone().oneshot(get()).await.unwrap().status(), 200);
    // Over the client's own limit: rejected before it is sent, retried
    // after the rejection's Retry-After (not the 1 ms backoff), admitted.
    assert_eq!(svc.clone().oneshot(get()).await.unwrap().status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 2, "the rejected attempt never reached the server");
}

#[tokio::test]
async fn peer_ip_keys_read_axums_connect_info() {
    const PEER: &str = r#"
        [server]
        name = "api"
        rate_limit = { rate = "1/min", burst = 1, key = "peer-ip" }
    "#;
    let (addr, hits) = counting_server(PEER).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let get = || http::Request::get(format!("http://{addr}/items")).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(client.request(get()).await.unwrap().status(), 200);
    let res = client.request(get()).await.unwrap();
    assert_eq!(res.status(), 429, "127.0.0.1 has spent its limit");
    // Another peer address (loopback 127.0.0.2) has its own limit; without
    // the peer read from ConnectInfo both would share the anonymous one.
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(Some("127.0.0.2".parse().unwrap()));
    let other = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    assert_eq!(other.request(get()).await.unwrap().status(), 200, "127.0.0.2 is another key");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn tonic_answers_resource_exhausted_with_pushback() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let (reporter, health) = tonic_health::server::health_reporter();
    drop(reporter);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limit = RateLimitLayer::builder().name("grpc").rate("1/s".parse().unwrap()).burst(1).build().unwrap();
    let server = tonic::transport::Server::builder()
        .layer(ServiceBuilder::new().layer(ServerErrorLayer::new()).layer(limit).into_inner())
        .add_service(health)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = HealthClient::new(channel);
    let req = || HealthCheckRequest { service: String::new() };
    assert!(client.check(req()).await.is_ok());
    let status = client.check(req()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let pushback: u64 = status.metadata().get("grpc-retry-pushback-ms").unwrap().to_str().unwrap().parse().unwrap();
    assert!(pushback > 0 && pushback <= 1000, "{pushback}");
}
