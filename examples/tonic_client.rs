//! tower-mesh with tonic: a gRPC health client whose `Channel` is wrapped in
//! the client stack built from configuration, calling a server that fails.
//!
//! An embedded tonic-health server on 127.0.0.1 sits behind a small tower
//! layer that injects failures: every 3rd attempt answered with a
//! trailers-only `UNAVAILABLE`, then a long outage, then recovery, then
//! failures reported in the *trailers* of an otherwise normal answer. One
//! caller checks the health of a registered service in a loop (and, every
//! 10th call, of a service the server does not know: `NOT_FOUND`).
//!
//! It shows that
//! - retries on `UNAVAILABLE` are invisible to the caller (the request body
//!   is buffered first, so the retry can send it again);
//! - `NOT_FOUND` reaches the caller at once: the caller's problem, neither
//!   retried nor a failure for the breaker;
//! - during the outage the breaker opens and the caller gets a fast
//!   `UNAVAILABLE` status made from `CircuitOpen`, without a request sent;
//!   it probes in half-open and closes once the server is back;
//! - a failure in the trailers is counted by the breaker and the metrics
//!   (through `ClassifyEosLayer`), but cannot be retried: the answer has
//!   already started.
//!
//! It needs no outside service and no `protoc`, and finishes in about 5 s.
//!
//! ```text
//! cargo run --no-default-features --features stack --example tonic_client
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::HeaderValue;
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::CompositeKey;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::filter::AsyncFilterLayer;
use tower::{Service, ServiceBuilder};
use tower_mesh::circuit_breaker::CircuitOpen;
use tower_mesh::classify::ClassifyEosLayer;
use tower_mesh::error::error_response;
use tower_mesh::stack::MeshConfig;
use tower_mesh::BoxError;

/// The client stack of the `health` service. The `testing` preset gives
/// every value; the section says what differs.
const CONFIG: &str = r#"
preset = "testing"

[client.health]
correlation = false   # the example is built without the correlation-id feature
timeout = { attempt = "250ms", total = "1s" }
retry = { max_retries = 2, backoff = { initial = "5ms", max_delay = "20ms" } }
circuit_breaker = { sliding_window = { count = 20 }, minimum_calls = 10, failure_rate_threshold = 50.0, wait_in_open = "400ms", permitted_calls_in_half_open = 3 }
bulkhead = { max_concurrent_calls = 8 }
"#;

const REGISTERED: &str = "inventory.v1.Inventory";
const UNKNOWN: &str = "billing.v1.Billing";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Breaker transitions are `tracing` events; print them as they happen.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .with_ansi(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .init();
    // Metric handles are registered when the stack is built: recorder first.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder)?;

    let faults = Arc::new(Faults::default());
    let addr = start_server(faults.clone()).await?;
    println!("tonic-health server on {addr}; `{REGISTERED}` is SERVING, `{UNKNOWN}` is not registered");

    // The stack from configuration, around the tonic Channel:
    //   status mapping → request buffering → [observe → timeout → retry →
    //   breaker → bulkhead → attempt timeout] → body back to tonic's →
    //   end-of-stream classification → Channel
    let stack = MeshConfig::from_toml_str(CONFIG)?.client("health")?.grpc_stack()?;
    let breaker = stack.breaker().expect("the preset has a breaker");
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let svc = ServiceBuilder::new()
        .map_err(to_status)
        .layer(AsyncFilterLayer::new(buffer_request))
        .layer(stack)
        .map_request(|req: http::Request<Full<Bytes>>| req.map(Body::new))
        .layer(ClassifyEosLayer::new())
        .service(channel);
    let mut client = HealthClient::new(svc);

    let phases = [
        (Fault::EveryNth(3), Duration::from_millis(1200), "flaky: every 3rd attempt UNAVAILABLE"),
        (Fault::Outage, Duration::from_millis(1500), "outage: every attempt UNAVAILABLE"),
        (Fault::None, Duration::from_millis(1200), "recovered"),
        (Fault::TrailersEveryNth(4), Duration::from_millis(800), "every 4th answer UNAVAILABLE in trailers"),
    ];
    let started = Instant::now();
    let mut total = Tally::default();
    let mut n = 0u64;
    println!();
    for (fault, length, name) in phases {
        println!("{:>6.2}s phase: {name}", started.elapsed().as_secs_f64());
        faults.set(fault);
        let (attempts0, retries0) = faults.attempts_and_retries();
        let mut tally = Tally::default();
        let end = Instant::now() + length;
        while Instant::now() < end {
            n += 1;
            let service = if n.is_multiple_of(10) { UNKNOWN } else { REGISTERED };
            let mut req = tonic::Request::new(HealthCheckRequest { service: service.into() });
            // The same id on every attempt of this call: the server counts retries with it.
            req.metadata_mut().insert("x-call-id", n.to_string().parse()?);
            let t0 = Instant::now();
            let result = client.check(req).await;
            tally.add(result.map(|r| r.into_inner().status), t0.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (attempts, retries) = faults.attempts_and_retries();
        println!(
            "{:>6.2}s   {} calls: {} SERVING, {} NOT_FOUND, {} UNAVAILABLE, {} circuit open; server: {} attempts, {} retries",
            started.elapsed().as_secs_f64(),
            tally.calls,
            tally.serving,
            tally.not_found,
            tally.unavailable,
            tally.circuit_open,
            attempts - attempts0,
            retries - retries0,
        );
        total.merge(tally);
    }

    let (attempts, retries) = faults.attempts_and_retries();
    // One snapshot: taking one resets the debugging recorder's counters.
    let snapshot = snapshotter.snapshot().into_vec();
    let counts = |name: &str, label: &str| counters(&snapshot, name, label);
    println!("\n== summary after {:.1}s", started.elapsed().as_secs_f64());
    println!("calls made by the caller             {}", total.calls);
    println!("  SERVING                            {}", total.serving);
    println!("  NOT_FOUND (unknown service)        {}", total.not_found);
    println!("  UNAVAILABLE from the server        {}", total.unavailable);
    println!("  UNAVAILABLE: circuit open          {}", total.circuit_open);
    println!("  other                              {}", total.other);
    println!("attempts the server received         {attempts}");
    println!("retries the server saw               {retries}");
    let (not_found, retried) = faults.not_found_retried();
    println!("NOT_FOUND answers sent, then retried {not_found}, {retried}");
    println!("failures injected by the server      {}", faults.injected.load(Ordering::SeqCst));
    if let Some(open) = total.median_circuit_open() {
        println!("median time of a circuit-open call   {:.2} ms, no request sent", ms(open));
    }
    println!("breaker: state now {}, calls rejected {}", breaker.state(), breaker.metrics().not_permitted);
    for (labels, v) in counts("tower_mesh_circuit_breaker_transitions_total", "") {
        println!("  transitions {labels:<30} {v}");
    }
    for (labels, v) in counts("tower_mesh_circuit_breaker_calls_total", "outcome") {
        println!("  attempts recorded {labels:<24} {v}");
    }
    for (labels, v) in counts("tower_mesh_client_calls_total", "outcome") {
        println!("tower_mesh_client_calls_total {labels:<12} {v}");
    }
    for name in ["tower_mesh_retry_retries_total", "tower_mesh_retry_exhausted_total"] {
        println!("{name:<37} {}", counts(name, "").iter().map(|(_, v)| v).sum::<u64>());
    }
    Ok(())
}

/// tonic's request body is a stream that can be sent once. Unary requests
/// are small: collect the body so the retry layer can send it again.
async fn buffer_request(req: http::Request<Body>) -> Result<http::Request<Full<Bytes>>, Status> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(http::Request::from_parts(parts, Full::new(bytes)))
}

/// The stack's errors as the status the caller's tonic client returns: a
/// tower-mesh error gets the code a server would answer it with (circuit
/// open → `UNAVAILABLE`, timeout → `DEADLINE_EXCEEDED`, ...) and stays
/// reachable as the status's source; anything else as tonic maps it.
fn to_status(e: BoxError) -> Status {
    match error_response(&*e) {
        Some(answer) => {
            let mut status = Status::new(Code::from(answer.grpc as i32), e.to_string());
            status.set_source(Arc::from(e));
            status
        }
        None => Status::from_error(e),
    }
}

fn is_circuit_open(status: &Status) -> bool {
    let mut cur = std::error::Error::source(status);
    while let Some(e) = cur {
        if e.is::<CircuitOpen>() {
            return true;
        }
        cur = e.source();
    }
    false
}

#[derive(Default)]
struct Tally {
    calls: u64,
    serving: u64,
    not_found: u64,
    unavailable: u64,
    circuit_open: u64,
    other: u64,
    /// How long the calls rejected by the open breaker took.
    circuit_open_took: Vec<Duration>,
}

impl Tally {
    fn add(&mut self, result: Result<i32, Status>, took: Duration) {
        self.calls += 1;
        match result {
            Ok(s) if s == ServingStatus::Serving as i32 => self.serving += 1,
            Ok(_) => self.other += 1,
            Err(s) if s.code() == Code::NotFound => self.not_found += 1,
            Err(s) if is_circuit_open(&s) => {
                self.circuit_open += 1;
                self.circuit_open_took.push(took);
            }
            Err(s) if s.code() == Code::Unavailable => self.unavailable += 1,
            Err(_) => self.other += 1,
        }
    }

    fn merge(&mut self, t: Tally) {
        self.calls += t.calls;
        self.serving += t.serving;
        self.not_found += t.not_found;
        self.unavailable += t.unavailable;
        self.circuit_open += t.circuit_open;
        self.other += t.other;
        self.circuit_open_took.extend(t.circuit_open_took);
    }

    fn median_circuit_open(&self) -> Option<Duration> {
        let mut v = self.circuit_open_took.clone();
        v.sort();
        v.get(v.len() / 2).copied()
    }
}

type Metric = (CompositeKey, Option<metrics::Unit>, Option<metrics::SharedString>, DebugValue);

/// Counters named `name`, summed by the value of `label` (or by all labels
/// but `service` when `label` is empty).
fn counters(snapshot: &[Metric], name: &str, label: &str) -> Vec<(String, u64)> {
    let mut sums: Vec<(String, u64)> = Vec::new();
    for (key, _, _, value) in snapshot {
        let (DebugValue::Counter(v), true) = (value, key.key().name() == name) else { continue };
        let labels: Vec<String> = key
            .key()
            .labels()
            .filter(|l| if label.is_empty() { l.key() != "service" } else { l.key() == label })
            .map(|l| l.value().to_owned())
            .collect();
        let labels = labels.join(" -> ");
        match sums.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, sum)) => *sum += *v,
            None => sums.push((labels, *v)),
        }
    }
    sums.retain(|(_, v)| *v > 0);
    sums.sort();
    sums
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// --- the server -----------------------------------------------------------

/// What the server does with the next attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Answer every attempt.
    None,
    /// Answer every `n`th attempt with a trailers-only `UNAVAILABLE`.
    EveryNth(u64),
    /// Answer every attempt with `UNAVAILABLE`.
    Outage,
    /// Answer every `n`th attempt normally, then put `UNAVAILABLE` in its trailers.
    TrailersEveryNth(u64),
}

/// The fault injector's setting and what it saw.
struct Faults {
    fault: Mutex<Fault>,
    attempts: AtomicU64,
    injected: AtomicU64,
    /// Attempts per `x-call-id`.
    calls: Mutex<HashMap<u64, u64>>,
    /// Calls answered `NOT_FOUND`, with the attempt that got the answer.
    not_found: Mutex<HashMap<u64, u64>>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fault: Mutex::new(Fault::None),
            attempts: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            calls: Mutex::new(HashMap::new()),
            not_found: Mutex::new(HashMap::new()),
        }
    }
}

impl Faults {
    fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Attempts so far, and how many of them were retries of a call.
    fn attempts_and_retries(&self) -> (u64, u64) {
        let retries = self.calls.lock().unwrap().values().map(|n| n - 1).sum();
        (self.attempts.load(Ordering::SeqCst), retries)
    }

    /// `NOT_FOUND` answers, and how many of them were followed by another
    /// attempt of the same call.
    fn not_found_retried(&self) -> (usize, usize) {
        let calls = self.calls.lock().unwrap();
        let not_found = self.not_found.lock().unwrap();
        (not_found.len(), not_found.iter().filter(|(id, at)| calls[*id] > **at).count())
    }
}

/// A tower layer under tonic's server: counts attempts by call id, and
/// fails them as [`Faults`] says.
#[derive(Clone)]
struct FaultInjection<S> {
    inner: S,
    faults: Arc<Faults>,
}

impl<S> Service<http::Request<Body>> for FaultInjection<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let n = self.faults.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let id = req.headers().get("x-call-id").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).map(|id| {
            let mut calls = self.faults.calls.lock().unwrap();
            let attempt = calls.entry(id).or_insert(0);
            *attempt += 1;
            (id, *attempt)
        });
        let fault = *self.faults.fault.lock().unwrap();
        if fault == Fault::Outage || matches!(fault, Fault::EveryNth(k) if n.is_multiple_of(k)) {
            self.faults.injected.fetch_add(1, Ordering::SeqCst);
            let res = Status::unavailable("injected outage").into_http();
            return Box::pin(async move { Ok(res) });
        }
        let in_trailers = matches!(fault, Fault::TrailersEveryNth(k) if n.is_multiple_of(k));
        let (faults, answer) = (self.faults.clone(), self.inner.call(req));
        Box::pin(async move {
            let res = answer.await?;
            if let (Some((id, attempt)), Some(b"5")) = (id, res.headers().get("grpc-status").map(HeaderValue::as_bytes))
            {
                faults.not_found.lock().unwrap().insert(id, attempt);
            }
            if !in_trailers {
                return Ok(res);
            }
            // Let the handler answer, then change the status in its trailers.
            Ok(res.map(|body| {
                Body::new(body.map_frame(move |frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        faults.injected.fetch_add(1, Ordering::SeqCst);
                        trailers.insert("grpc-status", HeaderValue::from(Code::Unavailable as i32));
                        trailers.insert("grpc-message", HeaderValue::from_static("failed%20after%20answering"));
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                }))
            }))
        })
    }
}

async fn start_server(faults: Arc<Faults>) -> std::io::Result<std::net::SocketAddr> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status(REGISTERED, tonic_health::ServingStatus::Serving).await;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(move |inner| FaultInjection { inner, faults: faults.clone() }))
        .add_service(health)
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(async move {
        let _reporter = reporter;
        if let Err(e) = server.await {
            eprintln!("server failed: {e}");
        }
    });
    Ok(addr)
}
