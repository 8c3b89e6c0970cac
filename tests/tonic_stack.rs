//! The client stack built from configuration around a tonic `Channel`,
//! against a tonic-health server on 127.0.0.1 behind a tower layer that
//! injects failures: trailers-only `UNAVAILABLE`, outages, and `UNAVAILABLE`
//! in the trailers of an otherwise normal answer.

#![cfg(feature = "stack")]

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
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::filter::AsyncFilterLayer;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder};
use tower_mesh::circuit_breaker::{CircuitBreakerHandle, CircuitOpen, CircuitState};
use tower_mesh::classify::{ClassifyEosLayer, EosBody};
use tower_mesh::error::error_response;
use tower_mesh::stack::MeshConfig;
use tower_mesh::BoxError;

const REGISTERED: &str = "inventory.v1.Inventory";
const UNKNOWN: &str = "billing.v1.Billing";
const SERVING: i32 = ServingStatus::Serving as i32;

/// The breaker never opens on its own in the tests that count: a window of
/// 100 calls that must all be there before rates are evaluated.
const PATIENT_BREAKER: &str = "circuit_breaker = { sliding_window = { count = 100 }, minimum_calls = 100 }";
const FAST_RETRY: &str = "retry = { max_retries = 2, backoff = { initial = \"1ms\", max_delay = \"2ms\" } }";

#[tokio::test]
async fn retries_make_a_flaky_servers_failures_invisible() {
    let mut h = Harness::start(&[FAST_RETRY, PATIENT_BREAKER]).await;
    h.faults.set(Fault::EveryNth(2));
    for i in 0..20 {
        assert_eq!(h.check(REGISTERED).await.map_err(|s| s.code()), Ok(SERVING), "call {i}");
    }
    // Attempts 2, 4, 6 … failed: every call after the first needed one retry.
    assert_eq!(h.faults.attempts(), 39);
    assert_eq!(h.faults.injected(), 19);
    assert_eq!(h.faults.retries(), 19);
    assert!(h.faults.calls.lock().unwrap().values().all(|&n| n <= 2));
    // The breaker saw every attempt, failures included; the caller's metrics only calls.
    let m = h.breaker.metrics();
    assert_eq!((m.calls, m.failures, m.state), (39, 19, CircuitState::Closed));
    let c = h.counters();
    assert_eq!(c.get("tower_mesh_client_calls_total", "success"), 20);
    assert_eq!(c.get("tower_mesh_client_calls_total", "failure"), 0);
    assert_eq!(c.get("tower_mesh_retry_retries_total", ""), 19);
}

#[tokio::test]
async fn unavailable_is_a_failure_not_found_is_not() {
    let mut h = Harness::start(&[FAST_RETRY, PATIENT_BREAKER]).await;
    // NOT_FOUND is the caller's problem: passed on at once, not retried, a
    // success for the breaker.
    for _ in 0..5 {
        let status = h.check(UNKNOWN).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    assert_eq!(h.faults.attempts(), 5);
    let m = h.breaker.metrics();
    assert_eq!((m.calls, m.failures), (5, 0));

    // UNAVAILABLE (trailers-only): retried, then passed on; every attempt a failure.
    h.faults.set(Fault::Outage);
    for _ in 0..3 {
        let status = h.check(REGISTERED).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(!is_circuit_open(&status), "{status:?}");
    }
    assert_eq!(h.faults.attempts(), 5 + 3 * 3);
    let m = h.breaker.metrics();
    assert_eq!((m.calls, m.failures), (14, 9));

    let c = h.counters();
    assert_eq!(c.get("tower_mesh_client_calls_total", "success"), 5);
    assert_eq!(c.get("tower_mesh_client_calls_total", "failure"), 3);
    assert_eq!(c.get("tower_mesh_retry_retries_total", ""), 6);
    assert_eq!(c.get("tower_mesh_retry_exhausted_total", ""), 3);
}

#[tokio::test]
async fn a_failure_in_the_trailers_counts_for_the_breaker() {
    let mut h = Harness::start(&[FAST_RETRY, PATIENT_BREAKER]).await;
    assert_eq!(h.check(REGISTERED).await.map_err(|s| s.code()), Ok(SERVING));
    // The answer starts normally; `UNAVAILABLE` comes in its trailers.
    h.faults.set(Fault::TrailersEveryNth(1));
    for _ in 0..2 {
        let status = h.check(REGISTERED).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(status.message(), "failed after answering");
    }
    // Classified at the end of the stream: a failure for the breaker and the
    // metrics, but too late to retry.
    assert_eq!(h.faults.attempts(), 3);
    let m = h.breaker.metrics();
    assert_eq!((m.calls, m.failures), (3, 2));
    let c = h.counters();
    assert_eq!(c.get("tower_mesh_client_calls_total", "success"), 1);
    assert_eq!(c.get("tower_mesh_client_calls_total", "failure"), 2);
    assert_eq!(c.get("tower_mesh_retry_retries_total", ""), 0);
}

#[tokio::test]
async fn the_breaker_opens_on_an_outage_and_the_caller_gets_a_status() {
    let breaker = "circuit_breaker = { sliding_window = { count = 10 }, minimum_calls = 5, \
                   failure_rate_threshold = 50.0, wait_in_open = \"100ms\", permitted_calls_in_half_open = 2 }";
    let mut h = Harness::start(&[FAST_RETRY, breaker]).await;
    assert_eq!(h.check(REGISTERED).await.map_err(|s| s.code()), Ok(SERVING));

    h.faults.set(Fault::Outage);
    let (mut failed, mut rejected) = (0, 0);
    while h.breaker.state() != CircuitState::Open {
        assert!(failed + rejected < 10, "the breaker did not open");
        let status = h.check(REGISTERED).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        // The call during which it opened ends with the rejection of its retry.
        match is_circuit_open(&status) {
            true => rejected += 1,
            false => failed += 1,
        }
    }
    assert!(failed > 0);

    // Open: the caller gets UNAVAILABLE at once, made from `CircuitOpen`,
    // and the server sees nothing — not even a retry.
    let attempts = h.faults.attempts();
    for _ in 0..5 {
        let status = h.check(REGISTERED).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(is_circuit_open(&status), "{status:?}");
        assert!(status.message().contains("circuit breaker `health` is open"), "{status:?}");
    }
    assert_eq!(h.faults.attempts(), attempts);
    assert!(h.breaker.metrics().not_permitted >= 5);
    let c = h.counters();
    assert_eq!(c.get("tower_mesh_client_calls_total", "success"), 1);
    assert_eq!(c.get("tower_mesh_client_calls_total", "failure"), failed);
    assert_eq!(c.get("tower_mesh_client_calls_total", "rejected"), 5 + rejected);

    // The server is back: after the open wait the probes succeed and the breaker closes.
    h.faults.set(Fault::None);
    let mut tries = 0;
    while h.breaker.state() != CircuitState::Closed {
        tries += 1;
        assert!(tries <= 200, "the breaker did not close");
        match h.check(REGISTERED).await {
            Ok(status) => assert_eq!(status, SERVING),
            Err(status) => {
                assert!(is_circuit_open(&status), "{status:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert_eq!(h.check(REGISTERED).await.map_err(|s| s.code()), Ok(SERVING));
}

/// The one method of the health service the tests call.
const CHECK: &str = "/grpc.health.v1.Health/Check";

/// Waits until the server has seen `n` attempts (attempts still on the wire
/// when the caller gave up may arrive a little later), then gives them.
async fn attempts_after(h: &Harness, n: u64) -> u64 {
    for _ in 0..1000 {
        if h.faults.attempts() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.faults.attempts()
}

#[tokio::test]
async fn a_call_the_server_may_have_processed_is_sent_once_unless_marked_idempotent() {
    let timeouts = "timeout = { attempt = \"1s\", total = \"10s\" }";
    let mut h = Harness::start(&[FAST_RETRY, PATIENT_BREAKER, timeouts]).await;
    // DEADLINE_EXCEEDED, INTERNAL, UNKNOWN from the server: it may have done
    // the work. Sent once, the status passed on.
    for (i, code) in [Code::DeadlineExceeded, Code::Internal, Code::Unknown].into_iter().enumerate() {
        h.faults.set(Fault::Code(code));
        let status = h.check(REGISTERED).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(h.faults.attempts(), i as u64 + 1, "{code:?}");
    }
    // No answer within the attempt timeout: sent once, the caller gets
    // DEADLINE_EXCEEDED made from the timeout.
    h.faults.set(Fault::Hang);
    let status = h.check(REGISTERED).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(attempts_after(&h, 4).await, 4);
    assert_eq!(h.faults.retries(), 0);
    let c = h.counters();
    assert_eq!(c.get("tower_mesh_retry_retries_total", ""), 0);

    // The same method marked idempotent in the configuration: retried.
    let retry = format!(
        "retry = {{ max_retries = 2, backoff = {{ initial = \"1ms\", max_delay = \"2ms\" }}, idempotent = [\"{CHECK}\"] }}"
    );
    let mut h = Harness::start(&[&retry, PATIENT_BREAKER, timeouts]).await;
    h.faults.set(Fault::Code(Code::DeadlineExceeded));
    let status = h.check(REGISTERED).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(h.faults.attempts(), 3);
    h.faults.set(Fault::Hang);
    let status = h.check(REGISTERED).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(attempts_after(&h, 6).await, 6);
    assert_eq!(h.faults.retries(), 4);
}

#[tokio::test]
async fn a_refused_connection_is_retried_the_call_never_left() {
    // A port nobody listens on (bound, then freed).
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut h = Harness::with_channel(Arc::new(Faults::default()), channel, &[FAST_RETRY, PATIENT_BREAKER]);
    let status = h.check(REGISTERED).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The health check is not marked idempotent, yet retried: no server
    // could have processed it.
    let c = h.counters();
    assert_eq!(c.get("tower_mesh_retry_retries_total", ""), 2);
    assert_eq!(c.get("tower_mesh_retry_exhausted_total", ""), 1);
}

// --- the client ------------------------------------------------------------

type GrpcService = BoxCloneService<http::Request<Body>, http::Response<EosBody<Body>>, Status>;

struct Harness {
    faults: Arc<Faults>,
    client: HealthClient<GrpcService>,
    breaker: CircuitBreakerHandle,
    metrics: Snapshotter,
    next_id: u64,
}

impl Harness {
    /// A server, and a client with the `testing` preset's stack changed by
    /// `lines` of the `[client.health]` section.
    async fn start(lines: &[&str]) -> Harness {
        let faults = Arc::new(Faults::default());
        let addr = start_server(faults.clone()).await;
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        Harness::with_channel(faults, channel, lines)
    }

    /// A client of `channel` (`faults` counts what its server sees).
    fn with_channel(faults: Arc<Faults>, channel: Channel, lines: &[&str]) -> Harness {
        let toml = format!("preset = \"testing\"\n[client.health]\ncorrelation = false\n{}\n", lines.join("\n"));
        let client = MeshConfig::from_toml_str(&toml).unwrap().client("health").unwrap();
        // The metric handles are registered when the stack is built: with a
        // local recorder, this test's calls are counted apart from the others'.
        let recorder = DebuggingRecorder::new();
        let metrics = recorder.snapshotter();
        let stack = metrics::with_local_recorder(&recorder, || client.grpc_stack()).unwrap();
        let breaker = stack.breaker().unwrap();
        let svc = ServiceBuilder::new()
            .map_err(to_status)
            .layer(AsyncFilterLayer::new(buffer_request))
            .layer(stack)
            .map_request(|req: http::Request<Full<Bytes>>| req.map(Body::new))
            .layer(ClassifyEosLayer::new())
            .service(channel);
        Harness { faults, client: HealthClient::new(BoxCloneService::new(svc)), breaker, metrics, next_id: 0 }
    }

    /// One health check, with an id the server counts attempts by.
    async fn check(&mut self, service: &str) -> Result<i32, Status> {
        self.next_id += 1;
        let mut req = tonic::Request::new(HealthCheckRequest { service: service.into() });
        req.metadata_mut().insert("x-call-id", self.next_id.to_string().parse().unwrap());
        self.client.check(req).await.map(|r| r.into_inner().status)
    }

    /// The counters since the last call, summed over every label but `outcome`.
    fn counters(&self) -> Counters {
        let mut sums = HashMap::new();
        for (key, _, _, value) in self.metrics.snapshot().into_vec() {
            if let DebugValue::Counter(v) = value {
                let outcome = key.key().labels().find(|l| l.key() == "outcome").map(|l| l.value().to_owned());
                *sums.entry((key.key().name().to_owned(), outcome.unwrap_or_default())).or_insert(0) += v;
            }
        }
        Counters(sums)
    }
}

struct Counters(HashMap<(String, String), u64>);

impl Counters {
    fn get(&self, name: &str, outcome: &str) -> u64 {
        self.0.get(&(name.to_owned(), outcome.to_owned())).copied().unwrap_or(0)
    }
}

/// tonic's request body can be sent once; collected, the retry can send it again.
async fn buffer_request(req: http::Request<Body>) -> Result<http::Request<Full<Bytes>>, Status> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(http::Request::from_parts(parts, Full::new(bytes)))
}

/// A tower-mesh error becomes the status a server would answer with, the
/// error kept as its source.
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

// --- the server ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// Every `n`th attempt gets a trailers-only `UNAVAILABLE`.
    EveryNth(u64),
    /// Every attempt gets a trailers-only `UNAVAILABLE`.
    Outage,
    /// Every `n`th attempt is answered, with `UNAVAILABLE` in the trailers.
    TrailersEveryNth(u64),
    /// Every attempt gets a trailers-only status with this code.
    Code(Code),
    /// Every attempt is held and never answered.
    Hang,
}

struct Faults {
    fault: Mutex<Fault>,
    attempts: AtomicU64,
    injected: AtomicU64,
    /// Attempts per `x-call-id`.
    calls: Mutex<HashMap<u64, u64>>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fault: Mutex::new(Fault::None),
            attempts: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            calls: Mutex::new(HashMap::new()),
        }
    }
}

impl Faults {
    fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::SeqCst)
    }

    fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Attempts beyond the first of each call.
    fn retries(&self) -> u64 {
        self.calls.lock().unwrap().values().map(|n| n - 1).sum()
    }
}

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
        if let Some(id) = req.headers().get("x-call-id").and_then(|v| v.to_str().ok()?.parse().ok()) {
            *self.faults.calls.lock().unwrap().entry(id).or_insert(0) += 1;
        }
        let fault = *self.faults.fault.lock().unwrap();
        match fault {
            Fault::Outage => self.reject(),
            Fault::Code(code) => {
                let res = Status::new(code, "injected").into_http();
                Box::pin(async move { Ok(res) })
            }
            Fault::Hang => Box::pin(std::future::pending()),
            Fault::EveryNth(k) if n.is_multiple_of(k) => self.reject(),
            Fault::TrailersEveryNth(k) if n.is_multiple_of(k) => {
                self.faults.injected.fetch_add(1, Ordering::SeqCst);
                let answer = self.inner.call(req);
                Box::pin(async move {
                    let res = answer.await?;
                    Ok(res.map(|body| Body::new(body.map_frame(unavailable_trailers))))
                })
            }
            _ => Box::pin(self.inner.call(req)),
        }
    }
}

impl<S> FaultInjection<S> {
    fn reject<E>(&self) -> BoxFuture<'static, Result<http::Response<Body>, E>> {
        self.faults.injected.fetch_add(1, Ordering::SeqCst);
        let res = Status::unavailable("injected outage").into_http();
        Box::pin(async move { Ok(res) })
    }
}

fn unavailable_trailers(frame: Frame<Bytes>) -> Frame<Bytes> {
    match frame.into_trailers() {
        Ok(mut trailers) => {
            trailers.insert("grpc-status", HeaderValue::from(Code::Unavailable as i32));
            trailers.insert("grpc-message", HeaderValue::from_static("failed%20after%20answering"));
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

async fn start_server(faults: Arc<Faults>) -> std::net::SocketAddr {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status(REGISTERED, tonic_health::ServingStatus::Serving).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(move |inner| FaultInjection { inner, faults: faults.clone() }))
        .add_service(health)
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(async move {
        let _reporter = reporter;
        server.await.unwrap();
    });
    addr
}
