//! Discovery against real hyper servers on 127.0.0.1: three endpoints behind
//! one logical name, one stopped mid-run and started again.

#![cfg(all(feature = "discovery", feature = "retry"))]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_mesh::classify::HttpClassifier;
use tower_mesh::discovery::{DiscoveryLayer, OutlierConfig, Registry};
use tower_mesh::retry::{Backoff, RetryLayer};

/// A hyper server that can be stopped (listener and open connections) and
/// started again on the same port.
struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// The accept loop.
    tasks: Option<JoinSet<()>>,
    /// The connections' tasks (locked only to spawn or take them, never
    /// across an await).
    conns: Arc<Mutex<JoinSet<()>>>,
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut s = Server { addr, hits: Arc::default(), tasks: None, conns: Arc::default() };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: TcpListener) {
        let mut tasks = JoinSet::new();
        let hits = self.hits.clone();
        let port = self.addr.port();
        let conns = self.conns.clone();
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let hits = hits.clone();
                conns.lock().unwrap().spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        hits.fetch_add(1, Ordering::Relaxed);
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(port.to_string())))) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Stop accepting and close every open connection; returns once none
    /// can serve a request any more (an aborted task still finishes the poll
    /// it is in, on another worker thread).
    async fn stop(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        let mut conns = std::mem::take(&mut *self.conns.lock().unwrap());
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }

    async fn restart(&mut self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

/// One request through the stack; `true` when it (after retries) succeeded.
async fn call<S>(svc: &mut S) -> bool
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>>,
    S::Error: std::fmt::Debug,
{
    let req = Request::get("http://orders/items").body(Full::new(Bytes::new())).unwrap();
    match svc.ready().await.unwrap().call(req).await {
        Ok(res) => {
            res.into_body().collect().await.unwrap();
            true
        }
        Err(_) => false,
    }
}

/// `n` requests from 8 concurrent callers (clones of `svc`); how many failed.
async fn burst<S>(svc: &S, n: usize) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
{
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let mut svc = svc.clone();
        tasks.spawn(async move {
            let mut failed = 0;
            for _ in 0..n / 8 {
                failed += !call(&mut svc).await as usize;
            }
            failed
        });
    }
    tasks.join_all().await.into_iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_endpoint_is_ejected_with_few_failures_and_gets_traffic_when_back() {
    let mut servers = [Server::start().await, Server::start().await, Server::start().await];
    let registry = Registry::new();
    registry.set_static("orders", servers.iter().map(|s| s.addr.to_string())).unwrap();

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let outlier = OutlierConfig {
        consecutive_failures: 2,
        base_ejection: Duration::from_millis(500),
        max_ejection: Duration::from_secs(2),
        max_ejection_percent: 50.0,
    };
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_retries(2)
                .backoff(Backoff::exponential(Duration::from_millis(5), 2.0, Duration::from_millis(50)))
                .classifier(HttpClassifier::new())
                .http()
                .build()
                .unwrap(),
        )
        .layer(DiscoveryLayer::builder(registry).classifier(HttpClassifier::new()).outlier(outlier).build().unwrap())
        .service(client);

    let mut failed = burst(&svc, 240).await;
    assert_eq!(failed, 0);
    let hits: Vec<usize> = servers.iter().map(Server::hits).collect();
    assert!(hits.iter().all(|&h| h > 10), "all three serve: {hits:?}");

    // Stop one mid-run.
    servers[1].stop().await;
    let before = servers[1].hits();
    failed += burst(&svc, 240).await;
    assert!(failed <= 3, "{failed} requests failed after retries");
    assert_eq!(servers[1].hits(), before);
    assert_eq!(svc.get_ref().ejected("orders").len(), 1, "the stopped server is ejected");

    // Start it again: once its ejection ends it gets traffic again.
    servers[1].restart().await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let before = servers[1].hits();
    failed += burst(&svc, 240).await;
    assert!(failed <= 3, "{failed} requests failed");
    assert!(servers[1].hits() > before + 10, "the restarted server gets traffic again");
    let hits: Vec<usize> = servers.iter().map(Server::hits).collect();
    println!("720 requests, {failed} failed after retries; hits per server {hits:?}");
}
