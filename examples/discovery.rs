//! Discovery: three local hyper upstreams behind the logical name `orders`,
//! a client through retry and discovery, one upstream killed and brought back.
//!
//! Four workers send `GET http://orders/items` through
//! `RetryLayer` → `DiscoveryLayer` → a hyper-util client; the layer resolves
//! `orders` in a `Registry` (a static list of the three upstreams) and routes
//! each request to one of them (p2c over peak-EWMA). Every second the example
//! prints how many requests each upstream served, how many failed after
//! retries, and which endpoints are ejected. At 4 s upstream `b` is killed
//! (listener closed, open connections dropped): the retry layer hides the
//! failures and outlier detection ejects `b`. At 9 s `b` comes back: once its
//! ejection ends it serves traffic again. It needs no outside service and
//! finishes in about 14 seconds.
//!
//! ```text
//! cargo run --example discovery --features discovery
//! ```

use std::convert::Infallible;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_mesh::classify::HttpClassifier;
use tower_mesh::discovery::{DiscoveryLayer, OutlierConfig, Registry};
use tower_mesh::retry::{Backoff, RetryLayer};

const KILL_AT: u64 = 4;
const REVIVE_AT: u64 = 9;
const RUN_FOR: u64 = 14;
const WORKERS: usize = 4;
/// Pause of each worker between two requests (about 4 × 100 requests a second).
const PACE: Duration = Duration::from_millis(10);

/// A hyper server on 127.0.0.1 that can be killed and started again on the same port.
struct Upstream {
    name: &'static str,
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    tasks: Option<JoinSet<()>>,
}

impl Upstream {
    async fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let mut up = Upstream { name, addr, served: Arc::default(), tasks: None };
        up.serve(listener);
        up
    }

    fn serve(&mut self, listener: TcpListener) {
        let mut tasks = JoinSet::new();
        let served = self.served.clone();
        let name = self.name;
        tasks.spawn(async move {
            // Connections live in this set: dropping it (kill) drops them all.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let served = served.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        served.fetch_add(1, Ordering::Relaxed);
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name)))) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Close the listener and every open connection.
    fn kill(&mut self) {
        self.tasks = None;
    }

    async fn revive(&mut self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Ejections are logged by the layer as `tracing` warnings, as they happen.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    let mut ups = [Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await];
    let registry = Registry::new();
    registry.set_static("orders", ups.iter().map(|u| u.addr.to_string()))?;
    for u in &ups {
        println!("upstream {} on {}", u.name, u.addr);
    }

    // Eject after 3 failures in a row, for 1 s, then 2 s, … at most 3 s; at
    // most half of the endpoints (here: one) at a time.
    let outlier = OutlierConfig {
        consecutive_failures: 3,
        base_ejection: Duration::from_secs(1),
        max_ejection: Duration::from_secs(3),
        max_ejection_percent: 50.0,
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_retries(2)
                .backoff(Backoff::exponential(Duration::from_millis(5), 2.0, Duration::from_millis(50)))
                .classifier(HttpClassifier::new())
                .http()
                .build()?,
        )
        .layer(DiscoveryLayer::builder(registry).classifier(HttpClassifier::new()).outlier(outlier).build()?)
        .service(client);

    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    for _ in 0..WORKERS {
        let mut svc = svc.clone();
        let (failed, stop) = (failed.clone(), stop.clone());
        workers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get("http://orders/items").body(Full::new(Bytes::new())).expect("request");
                let ok = match svc.ready().await {
                    Ok(ready) => match ready.call(req).await {
                        Ok(res) => res.into_body().collect().await.is_ok(),
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(PACE).await;
            }
        });
    }

    println!("\n  time      a      b      c   failed   ejected");
    let start = Instant::now();
    let mut last = [0u64; 3];
    let mut last_failed = 0;
    let mut b_after_revival = 0;
    for second in 1..=RUN_FOR {
        tokio::time::sleep_until(start + Duration::from_secs(second)).await;
        let now: Vec<u64> = ups.iter().map(Upstream::served).collect();
        let f = failed.load(Ordering::Relaxed);
        let ejected: Vec<String> = svc
            .get_ref()
            .ejected("orders")
            .iter()
            .map(|e| ups.iter().find(|u| u.addr.to_string() == e.as_str()).map_or(e.to_string(), |u| u.name.to_owned()))
            .collect();
        println!(
            "  {second:>3} s  {:>5}  {:>5}  {:>5}   {:>6}   {}",
            now[0] - last[0],
            now[1] - last[1],
            now[2] - last[2],
            f - last_failed,
            if ejected.is_empty() { "-".to_owned() } else { ejected.join(", ") }
        );
        if second > REVIVE_AT {
            b_after_revival += now[1] - last[1];
        }
        last.copy_from_slice(&now);
        last_failed = f;

        if second == KILL_AT {
            ups[1].kill();
            println!("  ---- upstream b killed ({})", ups[1].addr);
        }
        if second == REVIVE_AT {
            ups[1].revive().await;
            println!("  ---- upstream b back on {}", ups[1].addr);
        }
    }
    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}

    let total: u64 = ups.iter().map(Upstream::served).sum();
    println!(
        "\n{total} requests served (a {}, b {}, c {}); {} failed after retries; b served {b_after_revival} after it came back",
        ups[0].served(),
        ups[1].served(),
        ups[2].served(),
        failed.load(Ordering::Relaxed),
    );
    Ok(())
}
