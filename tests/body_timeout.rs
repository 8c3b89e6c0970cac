//! A body-covering timeout and the circuit breaker around a real hyper-util
//! client, against a real hyper server on 127.0.0.1 that sends a response
//! head and a first chunk, then stalls.

#![cfg(all(feature = "circuit-breaker", feature = "timeout"))]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_mesh::circuit_breaker::CircuitBreakerLayer;
use tower_mesh::classify::HttpClassifier;
use tower_mesh::timeout::{Elapsed, TimeoutKind, TimeoutLayer};

type Frames = futures::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>;

/// `/stall` answers a head and one chunk, then nothing until the connection
/// is dropped; any other path a whole body.
async fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let first = futures::stream::iter([Ok(Frame::data(Bytes::from_static(b"first")))]);
                    let frames: Frames = if req.uri().path() == "/stall" {
                        first.chain(futures::stream::pending()).boxed()
                    } else {
                        first.boxed()
                    };
                    Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_stalled_body_times_out_and_counts_as_a_failure() {
    let addr = server().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let breaker = CircuitBreakerLayer::builder().name("stream").count_window(10).minimum_calls(10).build().unwrap();
    let breaker = breaker.with_classifier(HttpClassifier::new());
    let handle = breaker.handle();
    // Generous for a response head on a loaded machine; the stalled body
    // never ends, so only the timeout can end it.
    let timeout = TimeoutLayer::per_attempt(Duration::from_secs(5)).cover_body();
    let mut svc = ServiceBuilder::new().layer(breaker).layer(timeout).service(client);
    let get = |path: &str| Request::get(format!("http://{addr}{path}")).body(Full::new(Bytes::new())).unwrap();

    let res = svc.ready().await.unwrap().call(get("/whole")).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "first");
    let m = handle.metrics();
    assert_eq!((m.calls, m.failures), (1, 0));

    let res = svc.ready().await.unwrap().call(get("/stall")).await.unwrap();
    assert!(res.status().is_success());
    let mut body = res.into_body();
    assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "first");
    assert_eq!(handle.metrics().calls, 1, "the stalled call is not decided before its body ends");
    let err = body.frame().await.unwrap().unwrap_err();
    let elapsed = err.downcast_ref::<Elapsed>().expect("the body's error is the timeout");
    assert_eq!((elapsed.kind(), elapsed.timeout()), (TimeoutKind::Attempt, Duration::from_secs(5)));
    assert!(body.frame().await.is_none());
    let m = handle.metrics();
    assert_eq!((m.calls, m.failures), (2, 1));
}
