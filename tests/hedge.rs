//! HedgeLayer around a real hyper-util client, against a real hyper server on
//! 127.0.0.1 whose first answer never comes.

#![cfg(feature = "hedge")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::{Layer, ServiceExt};
use tower_mesh::hedge::{HedgeDelay, HedgeLayer};
use tower_mesh::retry::HttpRequests;

/// Tells the test when the server's handler of a request was dropped
/// unfinished (the client cancelled it).
struct Cancelled(Option<mpsc::UnboundedSender<()>>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// The first request never answers; every other answers at once with its
/// number. Returns the address, the request count and the cancellations.
async fn server() -> (SocketAddr, Arc<AtomicUsize>, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (c, tx) = (c.clone(), tx.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    let guard = Cancelled(Some(tx.clone()));
                    async move {
                        let mut guard = guard;
                        if n == 0 {
                            std::future::pending::<()>().await;
                        }
                        guard.0.take();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(n.to_string()))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, count, rx)
}

#[tokio::test]
async fn a_stuck_request_is_hedged_and_cancelled_on_the_server() {
    let (addr, count, mut cancelled) = server().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let hedge = HedgeLayer::builder()
        .name("upstream")
        .delay(HedgeDelay::Fixed(Duration::from_millis(20)))
        .no_budget()
        .requests(HttpRequests::new())
        .build()
        .unwrap();
    let svc = hedge.layer(client);
    let get = Request::get(format!("http://{addr}/tail")).body(Full::new(Bytes::new())).unwrap();
    let res = svc.clone().oneshot(get).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "1", "the hedge's answer");
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // The stuck request's connection was closed: the server dropped it.
    cancelled.recv().await.expect("the first request was cancelled on the server");

    // A POST is never sent twice.
    let post = Request::post(format!("http://{addr}/orders")).body(Full::new(Bytes::from("{}"))).unwrap();
    let res = svc.oneshot(post).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "2");
    assert_eq!(count.load(Ordering::SeqCst), 3);
}
