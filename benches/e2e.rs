//! End to end on loopback: what the recommended stacks add to a real HTTP call.
//!
//! - `client`: one GET at a time from a hyper-util client to a hyper server on
//!   127.0.0.1, bare vs wrapped in the full recommended client stack of the
//!   `production` preset (metrics, correlation id, total timeout, retry with
//!   budget, circuit breaker, bulkhead, attempt timeout) — target: ≤ 3 %
//!   added to the median latency;
//! - `server`: 64 concurrent keep-alive clients against an axum router, bare
//!   vs with the server stack (metrics, correlation id, load shedding,
//!   request timeout) — target: ≥ 0.97× the bare throughput.
//!
//! Everything — clients, the hyper upstream, the axum servers — runs on one
//! current-thread runtime, so what is measured is the work of the request
//! path (client, server and the loopback in the kernel) and not where two
//! worker threads happened to place the tasks (which swung results by ±20 %
//! between runs on a 2-core machine). With no network in between this is the
//! harshest setting for a ratio: any real hop adds latency the stack does not.
//! Requests are sent from tasks on the runtime, as an application does (not
//! from `block_on` on the bench thread, whose wake-ups would dwarf what is
//! measured), and the server load keeps its 64 connections open, as a load
//! generator such as `wrk` does: opening a connection per batch fills the
//! loopback with `TIME_WAIT` sockets and slows whichever subject runs later.
//!
//! Subjects alternate in one run; after criterion, a summary of alternating
//! rounds (ABBA order) prints the medians and ratios.
//!
//! Run: `cargo bench --features full --bench e2e`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_mesh::stack::{ClientConfig, Preset, ServerConfig};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const CONCURRENCY: usize = 64;
const SERVER_BATCH: usize = 2_000;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A plain hyper server answering "ok".
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(CONCURRENCY).build_http()
}

async fn send<S, B>(svc: &mut S, uri: &str)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert!(res.status().is_success());
    res.into_body().collect().await.unwrap();
}

/// `n` requests one after the other, from a task on the runtime; the time
/// they took.
fn sequential<S, B>(rt: &Runtime, svc: &S, uri: &str, n: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Send,
    B::Error: std::fmt::Debug,
    B::Data: Send,
{
    let mut svc = svc.clone();
    let uri = uri.to_owned();
    rt.block_on(async move {
        tokio::spawn(async move {
            let start = Instant::now();
            for _ in 0..n {
                send(&mut svc, &uri).await;
            }
            start.elapsed()
        })
        .await
        .unwrap()
    })
}

/// `CONCURRENCY` clients, each keeping its own connection open across
/// batches, warmed up.
async fn clients(uri: &str) -> Vec<HttpClient> {
    let clients: Vec<HttpClient> = (0..CONCURRENCY).map(|_| client()).collect();
    load(&clients, uri, CONCURRENCY * 4).await;
    clients
}

/// `n` requests from `CONCURRENCY` tasks, one per client.
async fn load(clients: &[HttpClient], uri: &str, n: usize) -> Duration {
    let start = Instant::now();
    let per_task = n / clients.len();
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| {
            let (mut c, uri) = (c.clone(), uri.to_owned());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    send(&mut c, &uri).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn routers() -> (Router, Router) {
    async fn handler() -> &'static str {
        "ok"
    }
    let bare = Router::new().route("/items", get(handler));
    let mut cfg = ServerConfig::preset(Preset::Production);
    cfg.name = "bench".into();
    let layered = Router::new().route("/items", get(handler)).layer(cfg.stack().unwrap());
    (bare, layered)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let rt = runtime();
    let up = rt.block_on(upstream());
    let uri = format!("http://{up}/items");
    let mut cfg = ClientConfig::preset(Preset::Production).named("bench");
    cfg.metrics = true;
    let bare = client();
    let stacked = ServiceBuilder::new().layer(cfg.http_stack().unwrap()).service(client());
    // Warm both connections.
    sequential(&rt, &bare, &uri, 100);
    sequential(&rt, &stacked, &uri, 100);

    let (bare_router, layered_router) = routers();
    let bare_uri = format!("http://{}/items", rt.block_on(serve(bare_router)));
    let layered_uri = format!("http://{}/items", rt.block_on(serve(layered_router)));
    let bare_clients = rt.block_on(clients(&bare_uri));
    let layered_clients = rt.block_on(clients(&layered_uri));

    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(5));

    {
        let mut g = c.benchmark_group("e2e/client");
        g.bench_function("bare hyper-util", |b| b.iter_custom(|n| sequential(&rt, &bare, &uri, n)));
        g.bench_function("recommended stack", |b| b.iter_custom(|n| sequential(&rt, &stacked, &uri, n)));
        g.finish();
    }
    {
        let mut g = c.benchmark_group("e2e/server");
        g.throughput(Throughput::Elements(SERVER_BATCH as u64));
        g.sample_size(20);
        for (name, u, cs) in [("bare axum", &bare_uri, &bare_clients), ("server stack", &layered_uri, &layered_clients)]
        {
            g.bench_with_input(BenchmarkId::from_parameter(name), u, |b, u| {
                b.iter_custom(|iters| {
                    rt.block_on(async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += load(cs, u, SERVER_BATCH).await;
                        }
                        total
                    })
                })
            });
        }
        g.finish();
    }

    // Alternating rounds, ABBA, so drift hits both alike.
    let rounds = 12;
    let (mut bare_lat, mut stack_lat) = (Vec::new(), Vec::new());
    let (mut bare_tp, mut stack_tp) = (Vec::new(), Vec::new());
    let (n_seq, n_load) = (5_000, 10 * SERVER_BATCH);
    for round in 0..rounds {
        let mut bare_round = || {
            bare_lat.push(sequential(&rt, &bare, &uri, n_seq).as_secs_f64() * 1e6 / n_seq as f64);
            bare_tp.push(n_load as f64 / rt.block_on(load(&bare_clients, &bare_uri, n_load)).as_secs_f64());
        };
        let mut stack_round = || {
            stack_lat.push(sequential(&rt, &stacked, &uri, n_seq).as_secs_f64() * 1e6 / n_seq as f64);
            stack_tp.push(n_load as f64 / rt.block_on(load(&layered_clients, &layered_uri, n_load)).as_secs_f64());
        };
        if round % 2 == 0 {
            bare_round();
            stack_round();
        } else {
            stack_round();
            bare_round();
        }
    }
    let (bl, sl) = (median(&mut bare_lat), median(&mut stack_lat));
    let (bt, st) = (median(&mut bare_tp), median(&mut stack_tp));
    println!("\n== e2e summary ({rounds} alternating rounds, medians)");
    println!(
        "client: bare {bl:.1} µs/request, recommended stack {sl:.1} µs/request: {:+.1} % (target ≤ 3 %)",
        (sl / bl - 1.0) * 100.0
    );
    println!("server: bare axum {bt:.0} req/s, server stack {st:.0} req/s: {:.3}× (target ≥ 0.97×)", st / bt);
    c.final_summary();
}
