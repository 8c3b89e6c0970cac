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
//! Each also runs the nearest stack built from existing crates, so the
//! figures say what such a stack costs anyway:
//!
//! - client: tower-http `SetRequestId` (`x-correlation-id`, UUID v4), tower's
//!   total timeout, tower's `Retry` with a `TpsBudget` (20 %) and a policy
//!   that clones the request, tower-resilience's circuit breaker (count
//!   window of 100: its time window rescans every call in it), tower's
//!   `ConcurrencyLimit` (200) and attempt timeout. It has no metrics and no
//!   `traceparent` (one header less on the wire than ours);
//! - server: tower-http `SetRequestId` + `PropagateRequestId`, axum's
//!   `HandleErrorLayer` over tower's `LoadShed` + `ConcurrencyLimit` (1024),
//!   tower-http's `Timeout` (504). No metrics, no trace context.
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
//! Subjects take turns in one run; after criterion, a summary of rounds in a
//! rotating order prints the medians and the ratios to bare.
//!
//! Run: `cargo bench --features full --bench e2e`. `scripts/count-e2e.sh`
//! runs it in a counting mode under callgrind instead: instructions per
//! request of every subject, and of the stack without each of its layers
//! (counts, unlike wall time, do not drift between runs).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
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
use tower::retry::budget::{Budget, TpsBudget};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
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

type Req = Request<Full<Bytes>>;

/// tower's retry policy doing what the stack's retry does on the success
/// path: a deposit in the budget per call, a copy of the request kept for a
/// retry; failures (5xx, errors) retried twice within the budget.
#[derive(Clone)]
struct TowerRetry {
    budget: Arc<TpsBudget>,
    retries: u32,
}

impl<B, E> tower::retry::Policy<Req, Response<B>, E> for TowerRetry {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Response<B>, E>) -> Option<Self::Future> {
        if self.retries == 0 {
            self.budget.deposit();
        }
        let failed = match result {
            Ok(res) => res.status().is_server_error(),
            Err(_) => true,
        };
        if !failed || self.retries >= 2 || !self.budget.withdraw() {
            return None;
        }
        self.retries += 1;
        Some(tokio::time::sleep(Duration::from_secs(1)))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(tower_peer::copy_request(req))
    }
}

#[path = "support/tower_peer.rs"]
mod tower_peer;
use tower_peer::breaker_error;

/// The client stack built from tower, tower-http and tower-resilience (see
/// the module docs).
macro_rules! tower_client_stack {
    ($client:expr) => {{
        use tower_resilience::circuitbreaker::{CircuitBreakerLayer, SlidingWindowType};
        let breaker = CircuitBreakerLayer::builder()
            .sliding_window_type(SlidingWindowType::CountBased)
            .sliding_window_size(100)
            .build()
            .unwrap();
        let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
        ServiceBuilder::new()
            .layer(tower_http::request_id::SetRequestIdLayer::new(
                http::HeaderName::from_static("x-correlation-id"),
                tower_http::request_id::MakeRequestUuid,
            ))
            .timeout(Duration::from_secs(10))
            .layer(tower::retry::RetryLayer::new(TowerRetry { budget, retries: 0 }))
            .map_err(breaker_error)
            .layer(breaker)
            .concurrency_limit(200)
            .timeout(Duration::from_secs(3))
            .service($client)
    }};
}

/// Bare, with our server stack, with the tower / tower-http equivalent.
fn routers() -> [Router; 3] {
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    async fn handler() -> &'static str {
        "ok"
    }
    let bare = Router::new().route("/items", get(handler));
    let mut cfg = ServerConfig::preset(Preset::Production);
    cfg.name = "bench".into();
    cfg.metrics &= !off("metrics");
    cfg.correlation &= !off("correlation");
    if off("shedding") {
        cfg.max_concurrent_requests = None;
    }
    if off("timeout") {
        cfg.timeout = None;
    }
    let layered = Router::new().route("/items", get(handler)).layer(cfg.stack().unwrap());
    let id = http::HeaderName::from_static("x-correlation-id");
    let tower = Router::new().route("/items", get(handler)).layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(id.clone(), MakeRequestUuid))
            .layer(PropagateRequestIdLayer::new(id))
            .layer(axum::error_handling::HandleErrorLayer::new(|_: BoxError| async {
                http::StatusCode::SERVICE_UNAVAILABLE
            }))
            .load_shed()
            .concurrency_limit(1024)
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                http::StatusCode::GATEWAY_TIMEOUT,
                Duration::from_secs(30),
            )),
    );
    [bare, layered, tower]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// One subject's measurements, a value per round.
struct Rounds {
    latency: Vec<f64>,
    throughput: Vec<f64>,
}

/// Whether `E2E_OFF` (a comma-separated list) names `layer`: the counting
/// mode measures the stack without it.
fn off(layer: &str) -> bool {
    std::env::var("E2E_OFF").is_ok_and(|v| v.split(',').any(|l| l.trim() == layer))
}

/// The `production` client stack, less the layers `E2E_OFF` names.
fn client_config() -> ClientConfig {
    let mut cfg = ClientConfig::preset(Preset::Production).named("bench");
    cfg.metrics = !off("metrics");
    cfg.correlation &= !off("correlation");
    if off("retry") {
        cfg.retry = None;
    }
    if off("breaker") {
        cfg.circuit_breaker = None;
    }
    if off("bulkhead") {
        cfg.bulkhead = None;
    }
    if off("attempt-timeout") {
        cfg.timeout.attempt = None;
    }
    if off("total-timeout") {
        cfg.timeout.total = None;
    }
    cfg
}

/// Counting mode (`E2E_COUNT=side:subject:n`, run under callgrind by
/// `scripts/count-e2e.sh`): `n` requests of one subject and nothing else,
/// so that the difference of two counts is the work of `n` requests.
/// `side` is `client` (sequential round trips) or `server` (the concurrent
/// load); `subject` is `bare`, `stack` or `tower`.
fn count(spec: &str) {
    let mut parts = spec.split(':');
    let (Some(side), Some(subject), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("E2E_COUNT is side:subject:n, e.g. client:stack:1000");
    };
    let n: usize = n.parse().expect("E2E_COUNT: n is a number");
    let i = match subject {
        "bare" => 0,
        "stack" => 1,
        "tower" => 2,
        other => panic!("E2E_COUNT: unknown subject {other} (bare, stack, tower)"),
    };
    let rt = runtime();
    match side {
        "client" => {
            let uri = format!("http://{}/items", rt.block_on(upstream()));
            match i {
                0 => {
                    sequential(&rt, &client(), &uri, n as u64);
                }
                1 => {
                    let stacked = ServiceBuilder::new().layer(client_config().http_stack().unwrap()).service(client());
                    sequential(&rt, &stacked, &uri, n as u64);
                }
                _ => {
                    sequential(&rt, &tower_client_stack!(client()), &uri, n as u64);
                }
            }
        }
        "server" => {
            let router = routers().into_iter().nth(i).expect("three routers");
            let uri = format!("http://{}/items", rt.block_on(serve(router)));
            let cs = rt.block_on(clients(&uri));
            rt.block_on(load(&cs, &uri, n));
        }
        other => panic!("E2E_COUNT: unknown side {other} (client, server)"),
    }
}

fn main() {
    if let Ok(spec) = std::env::var("E2E_COUNT") {
        return count(&spec);
    }
    let rt = runtime();
    let up = rt.block_on(upstream());
    let uri = format!("http://{up}/items");
    let bare = client();
    let stacked = ServiceBuilder::new().layer(client_config().http_stack().unwrap()).service(client());
    let tower = tower_client_stack!(client());
    // Warm the connections.
    sequential(&rt, &bare, &uri, 100);
    sequential(&rt, &stacked, &uri, 100);
    sequential(&rt, &tower, &uri, 100);

    let server_uris: Vec<String> =
        routers().into_iter().map(|r| format!("http://{}/items", rt.block_on(serve(r)))).collect();
    let server_clients: Vec<Vec<HttpClient>> = server_uris.iter().map(|u| rt.block_on(clients(u))).collect();
    let server_names = ["bare axum", "server stack", "tower-http equivalent"];

    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(5));

    {
        let mut g = c.benchmark_group("e2e/client");
        g.bench_function("bare hyper-util", |b| b.iter_custom(|n| sequential(&rt, &bare, &uri, n)));
        g.bench_function("recommended stack", |b| b.iter_custom(|n| sequential(&rt, &stacked, &uri, n)));
        g.bench_function("tower equivalent", |b| b.iter_custom(|n| sequential(&rt, &tower, &uri, n)));
        g.finish();
    }
    {
        let mut g = c.benchmark_group("e2e/server");
        g.throughput(Throughput::Elements(SERVER_BATCH as u64));
        g.sample_size(20);
        for ((name, u), cs) in server_names.iter().zip(&server_uris).zip(&server_clients) {
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

    // Rounds in a rotating order, so drift hits every subject alike.
    let rounds = 12;
    let mut subjects: Vec<Rounds> = (0..3).map(|_| Rounds { latency: Vec::new(), throughput: Vec::new() }).collect();
    let (n_seq, n_load) = (5_000, 10 * SERVER_BATCH);
    for round in 0..rounds {
        for k in 0..3 {
            let i = (round + k) % 3;
            let lat = match i {
                0 => sequential(&rt, &bare, &uri, n_seq),
                1 => sequential(&rt, &stacked, &uri, n_seq),
                _ => sequential(&rt, &tower, &uri, n_seq),
            };
            subjects[i].latency.push(lat.as_secs_f64() * 1e6 / n_seq as f64);
            let elapsed = rt.block_on(load(&server_clients[i], &server_uris[i], n_load));
            subjects[i].throughput.push(n_load as f64 / elapsed.as_secs_f64());
        }
    }
    let lat: Vec<f64> = subjects.iter_mut().map(|s| median(&mut s.latency)).collect();
    let tp: Vec<f64> = subjects.iter_mut().map(|s| median(&mut s.throughput)).collect();
    println!("\n== e2e summary ({rounds} rotating rounds, medians)");
    println!("client: bare hyper-util {:.1} µs/request", lat[0]);
    for (i, name) in [(1, "recommended stack"), (2, "tower equivalent")] {
        println!("  {name}: {:.1} µs/request, {:+.1} % (target ≤ 3 %)", lat[i], (lat[i] / lat[0] - 1.0) * 100.0);
    }
    println!("server: bare axum {:.0} req/s", tp[0]);
    for i in 1..3 {
        println!("  {}: {:.0} req/s, {:.3}× (target ≥ 0.97×)", server_names[i], tp[i], tp[i] / tp[0]);
    }
    c.final_summary();
}
