//! The adaptive concurrency limit on real servers on 127.0.0.1: an axum
//! server sheds load with it in front of a hyper upstream whose latency
//! grows with the calls in flight. The limit comes down, and the calls over
//! it are answered `503` with `Retry-After` by the `ServerErrorLayer`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::ServiceBuilder;
use tower_mesh::adaptive_concurrency::{AdaptiveConcurrencyLayer, Aimd, Gradient2, LimitHandle};
use tower_mesh::error::ServerErrorLayer;

/// A hyper server answering after `per_call` × the requests in flight.
async fn slow_under_load(per_call: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let busy = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let busy = busy.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let busy = busy.clone();
                    async move {
                        let n = busy.fetch_add(1, Ordering::SeqCst) + 1;
                        tokio::time::sleep(per_call * n as u32).await;
                        busy.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// An axum server whose one route calls the upstream, with the limit and the
/// server error mapping in front.
async fn shedding_server(layer: AdaptiveConcurrencyLayer, upstream: SocketAddr) -> SocketAddr {
    async fn proxy(State((client, upstream)): State<(HttpClient, SocketAddr)>) -> Result<String, StatusCode> {
        let req = http::Request::get(format!("http://{upstream}/")).body(Empty::new()).unwrap();
        let res = client.request(req).await.map_err(|_| StatusCode::BAD_GATEWAY)?;
        let body = res.into_body().collect().await.map_err(|_| StatusCode::BAD_GATEWAY)?;
        Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
    }
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let app = Router::new()
        .route("/", get(proxy))
        .with_state((client, upstream))
        .layer(ServiceBuilder::new().layer(ServerErrorLayer::new()).layer(layer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[derive(Debug, Default)]
struct Tally {
    ok: AtomicUsize,
    shed: AtomicUsize,
}

/// `clients` clients each sending `each` requests one after the other.
async fn load(addr: SocketAddr, clients: usize, each: usize) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, tally) = (client.clone(), tally.clone());
            tokio::spawn(async move {
                for _ in 0..each {
                    let req = http::Request::get(format!("http://{addr}/")).body(Empty::new()).unwrap();
                    let res = client.request(req).await.unwrap();
                    match res.status() {
                        StatusCode::OK => tally.ok.fetch_add(1, Ordering::SeqCst),
                        StatusCode::SERVICE_UNAVAILABLE => {
                            assert_eq!(res.headers()["retry-after"], "1");
                            tally.shed.fetch_add(1, Ordering::SeqCst)
                        }
                        other => panic!("unexpected {other}"),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    tally
}

fn assert_shed(handle: &LimitHandle, tally: &Tally, from: usize) {
    let (ok, shed) = (tally.ok.load(Ordering::SeqCst), tally.shed.load(Ordering::SeqCst));
    assert!(handle.limit() < from, "the limit came down from {from}: {}", handle.limit());
    assert!(shed > 0, "calls over the limit were shed with 503 ({ok} ok)");
    assert!(ok > 0, "calls under the limit were served ({shed} shed)");
    assert_eq!(handle.in_flight(), 0, "every slot came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aimd_limit_comes_down_and_the_excess_gets_503() {
    // 64 calls at once take 64 × 2 ms, far above the 40 ms timeout: drops.
    let layer = AdaptiveConcurrencyLayer::builder()
        .name("front")
        .aimd(Aimd { timeout: Duration::from_millis(40), ..Aimd::default() })
        .initial_limit(64)
        .max_limit(64)
        .build()
        .unwrap();
    let handle = layer.handle();
    let addr = shedding_server(layer, slow_under_load(Duration::from_millis(2)).await).await;
    let tally = load(addr, 64, 15).await;
    assert_shed(&handle, &tally, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradient2_limit_comes_down_when_latency_rises_and_the_excess_gets_503() {
    let layer = AdaptiveConcurrencyLayer::builder()
        .name("front")
        .gradient2(Gradient2::default())
        .initial_limit(64)
        .max_limit(64)
        .build()
        .unwrap();
    let handle = layer.handle();
    let addr = shedding_server(layer, slow_under_load(Duration::from_millis(2)).await).await;
    // Unloaded first, for several 100 ms windows: the long-term latency
    // learns the 2 ms.
    let warm = load(addr, 1, 400).await;
    assert_eq!(warm.ok.load(Ordering::SeqCst), 400);
    assert_eq!(handle.limit(), 64, "one call at a time is app-limited: the limit stays");
    assert!(handle.long_rtt().is_some());
    let tally = load(addr, 64, 15).await;
    assert_shed(&handle, &tally, 64);
}
