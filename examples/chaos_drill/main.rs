//! The chaos drill: break an upstream on purpose and see what each layer of
//! the production client stack buys.
//!
//! An upstream on 127.0.0.1 runs behind a `ChaosLayer` whose faults change
//! every two seconds: healthy → 30 % errors (503) → +300 ms latency → black
//! hole (never answers) → healthy. The same traffic (16 callers, one call at
//! a time each) goes through the production stack — fallback to the last
//! good answer, total timeout, retry, circuit breaker, bulkhead, attempt
//! timeout — and then bare, and the example prints, per phase, what the
//! callers saw: good answers, fallbacks, fast rejections, failures, calls
//! that never got an answer, p50 / p99 latency. About 25 seconds.
//!
//! ```text
//! cargo run --example chaos_drill --features chaos,fallback
//! ```

mod drill;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::util::BoxCloneService;
use tower::ServiceExt;
use tower_mesh::BoxError;

const PHASE: Duration = Duration::from_secs(2);
const WORKERS: usize = 16;
const PAUSE: Duration = Duration::from_millis(10);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let phases = drill::phases();
    let upstream = drill::Upstream::new(&phases);
    let addr = serve(upstream.clone()).await?;
    println!("upstream behind a ChaosLayer on {addr}; {} phases of {PHASE:?}\n", phases.len());

    // The transport: a hyper-util client that reads each body.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let transport: drill::Client = BoxCloneService::new(tower::service_fn(move |req: drill::Req| {
        let (client, uri) = (client.clone(), format!("http://{addr}{}", req.uri().path()));
        async move {
            let (mut parts, body) = req.into_parts();
            parts.uri = uri.parse()?;
            let res = client.request(Request::from_parts(parts, body)).await?;
            let (parts, body) = res.into_parts();
            Ok::<_, BoxError>(Response::from_parts(parts, body.collect().await?.to_bytes()))
        }
    }));

    let transitions = Arc::new(Mutex::new(Vec::new()));
    let stack = drill::production_stack(transport.clone(), upstream.clone(), transitions.clone());
    println!("running the traffic through the production stack ...");
    let with_stack = drill::drive(stack, &upstream, phases.len(), PHASE, WORKERS, PAUSE).await;
    println!("running the same traffic bare ...\n");
    let bare = drill::drive(transport, &upstream, phases.len(), PHASE, WORKERS, PAUSE).await;

    drill::print(&phases, &with_stack, &bare);
    println!("\ncircuit breaker transitions (phase: from -> to):");
    for (phase, from, to) in transitions.lock().unwrap().iter() {
        println!("  {:<16} {from:?} -> {to:?}", phases[*phase].name);
    }
    Ok(())
}

/// Serves `upstream` over HTTP/1 on a free loopback port. An injected I/O
/// error closes the connection, as a crashed upstream would.
async fn serve(upstream: drill::Upstream) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let upstream = upstream.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = match body.collect().await {
                            Ok(body) => body.to_bytes(),
                            Err(e) => return Err(std::io::Error::other(e)),
                        };
                        let res = upstream.oneshot(Request::from_parts(parts, Full::new(body))).await;
                        res.map(|res| res.map(Full::new)).map_err(std::io::Error::other)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}
