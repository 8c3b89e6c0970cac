#![cfg(feature = "correlation-id")]
//! An axum gateway with `CorrelationIdLayer` whose handler calls a hyper
//! server and a tonic (gRPC health) server through `CorrelationIdClientLayer`,
//! all on 127.0.0.1: the downstream services see the gateway's correlation id
//! and trace id, each with a new parent id; invalid incoming values are
//! replaced and never echoed or logged.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{Extension, State};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse};
use tower::{ServiceBuilder, ServiceExt};
use tower_mesh::correlation::{
    CorrelationId, CorrelationIdClient, CorrelationIdClientLayer, CorrelationIdLayer, RequestContext, TraceParent,
};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What a downstream server received.
#[derive(Clone, Debug, Default, PartialEq)]
struct Seen {
    correlation_id: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Seen {
    fn from_headers(h: &HeaderMap) -> Self {
        let get = |k: &str| h.get(k).map(|v| v.to_str().unwrap().to_string());
        Seen { correlation_id: get("x-correlation-id"), traceparent: get("traceparent"), tracestate: get("tracestate") }
    }

    fn trace(&self) -> TraceParent {
        TraceParent::parse(self.traceparent.as_deref().expect("a traceparent")).expect("a valid traceparent")
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A plain hyper server that records the headers of each request.
async fn hyper_downstream(log: Log) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    log.lock().unwrap().push(Seen::from_headers(req.headers()));
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

/// A gRPC health service that records the metadata of each call.
struct RecordingHealth(Log);

#[tonic::async_trait]
impl Health for RecordingHealth {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let md = request.metadata();
        let get = |k: &str| md.get(k).map(|v| v.to_str().unwrap().to_string());
        self.0.lock().unwrap().push(Seen {
            correlation_id: get("x-correlation-id"),
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
        });
        Ok(tonic::Response::new(HealthCheckResponse { status: ServingStatus::Serving as i32 }))
    }

    type WatchStream = tonic::codegen::BoxStream<HealthCheckResponse>;

    async fn watch(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used by the test"))
    }
}

async fn tonic_downstream(log: Log) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(RecordingHealth(log)))
            .serve_with_incoming(incoming),
    );
    addr
}

#[derive(Clone)]
struct Gateway {
    http: CorrelationIdClient<Client<HttpConnector, Empty<Bytes>>>,
    grpc: CorrelationIdClient<Channel>,
    hyper_addr: SocketAddr,
}

/// The handler: one call to each downstream, then answer with the id it had.
async fn handle(State(gw): State<Gateway>, Extension(ctx): Extension<RequestContext>) -> Result<String, StatusCode> {
    assert_eq!(RequestContext::current().as_ref(), Some(&ctx), "the context is current in the handler");
    let req = Request::get(format!("http://{}/", gw.hyper_addr)).body(Empty::new()).unwrap();
    let res = gw.http.clone().oneshot(req).await.map_err(|_| StatusCode::BAD_GATEWAY)?;
    let _ = res.into_body().collect().await.map_err(|_| StatusCode::BAD_GATEWAY)?;
    let status = HealthClient::new(gw.grpc.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?;
    assert_eq!(status.into_inner().status, ServingStatus::Serving as i32);
    Ok(ctx.correlation_id.to_string())
}

struct Harness {
    gateway: SocketAddr,
    hyper_log: Log,
    grpc_log: Log,
}

impl Harness {
    async fn start() -> Self {
        logs();
        let (hyper_log, grpc_log) = (Log::default(), Log::default());
        let hyper_addr = hyper_downstream(hyper_log.clone()).await;
        let grpc_addr = tonic_downstream(grpc_log.clone()).await;
        let client_layer = CorrelationIdClientLayer::new().name("gateway-out");
        let http = Client::builder(TokioExecutor::new()).build_http();
        let channel = Channel::from_shared(format!("http://{grpc_addr}")).unwrap().connect_lazy();
        let gw = Gateway {
            http: ServiceBuilder::new().layer(client_layer.clone()).service(http),
            grpc: ServiceBuilder::new().layer(client_layer).service(channel),
            hyper_addr,
        };
        let app = Router::new()
            .route("/", get(handle))
            .layer(CorrelationIdLayer::new().name("gateway").forbid(",;"))
            .with_state(gw);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Harness { gateway, hyper_log, grpc_log }
    }

    /// Call the gateway with `headers` (raw bytes allowed), from a client
    /// without correlation layers. Returns the response's id and body.
    async fn call(&self, headers: &[(&str, &[u8])]) -> (String, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut req = Request::get(format!("http://{}/", self.gateway)).body(Empty::new()).unwrap();
        for (k, v) in headers {
            req.headers_mut()
                .append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), http::HeaderValue::from_bytes(v).unwrap());
        }
        let res = client.request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let id = res.headers()["x-correlation-id"].to_str().unwrap().to_string();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (id, String::from_utf8(body.to_vec()).unwrap())
    }

    /// What the two downstream servers saw for the last call.
    fn last(&self) -> (Seen, Seen) {
        (
            self.hyper_log.lock().unwrap().last().cloned().unwrap(),
            self.grpc_log.lock().unwrap().last().cloned().unwrap(),
        )
    }
}

/// Everything tower-mesh logs in this test binary, at every level.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::Layer as _;
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || Writer(writer.clone()))
            .with_filter(tracing_subscriber::filter::Targets::new().with_target("tower_mesh", tracing::Level::TRACE));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();
        buf
    })
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged() -> Vec<u8> {
    logs().lock().unwrap().clone()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn downstreams_see_the_same_id_and_trace_with_new_parent_ids() {
    let h = Harness::start().await;
    let (echoed, handled) = h
        .call(&[
            ("x-correlation-id", b"order-4711"),
            ("traceparent", TP.as_bytes()),
            ("tracestate", b"acme=t1, rojo=00f0"),
        ])
        .await;
    assert_eq!(echoed, "order-4711");
    assert_eq!(handled, "order-4711");
    let (http, grpc) = h.last();
    let incoming = TraceParent::parse(TP).unwrap();
    for seen in [&http, &grpc] {
        assert_eq!(seen.correlation_id.as_deref(), Some("order-4711"));
        assert_eq!(seen.trace().trace_id(), incoming.trace_id(), "same trace");
        assert_ne!(seen.trace().parent_id(), incoming.parent_id(), "a new parent id");
        assert!(seen.trace().sampled());
        assert_eq!(seen.tracestate.as_deref(), Some("acme=t1,rojo=00f0"));
    }
    assert_ne!(http.trace().parent_id(), grpc.trace().parent_id(), "one parent id per call");
}

#[tokio::test]
async fn x_request_id_is_accepted_and_sent_on_as_the_correlation_id() {
    let h = Harness::start().await;
    let (echoed, _) = h.call(&[("x-request-id", b"lb-0042")]).await;
    assert_eq!(echoed, "lb-0042");
    let (http, grpc) = h.last();
    assert_eq!(http.correlation_id.as_deref(), Some("lb-0042"));
    assert_eq!(grpc.correlation_id.as_deref(), Some("lb-0042"));
}

#[tokio::test]
async fn without_incoming_ids_one_fresh_id_and_trace_reach_both_downstreams() {
    let h = Harness::start().await;
    let (echoed, handled) = h.call(&[]).await;
    assert_eq!(echoed, handled);
    assert!(CorrelationId::parse(&echoed).is_ok());
    let (http, grpc) = h.last();
    assert_eq!(http.correlation_id.as_deref(), Some(echoed.as_str()));
    assert_eq!(grpc.correlation_id.as_deref(), Some(echoed.as_str()));
    assert_eq!(http.trace().trace_id(), grpc.trace().trace_id(), "one new trace for the request");
    assert_eq!(http.tracestate, None);
    // The next request is another trace with another id.
    let (again, _) = h.call(&[]).await;
    assert_ne!(again, echoed);
    assert_ne!(h.last().0.trace().trace_id(), http.trace().trace_id());
}

#[tokio::test]
async fn over_long_non_ascii_and_control_ids_are_replaced_never_echoed_nor_logged() {
    let h = Harness::start().await;
    let long = format!("LONGSECRET{}", "x".repeat(200));
    let cases: [&[u8]; 5] = [
        long.as_bytes(),
        "UTF8SECRET-caf\u{e9}".as_bytes(),
        b"TABSECRET\tx",
        b"SPACESECRET x",
        b"SEPSECRET,x", // a separator this gateway forbids
    ];
    for bad in cases {
        let (echoed, handled) = h.call(&[("x-correlation-id", bad), ("x-request-id", bad)]).await;
        assert_ne!(echoed.as_bytes(), bad);
        assert!(!echoed.contains("SECRET"));
        assert_eq!(echoed, handled, "the handler has the replacement");
        let (http, grpc) = h.last();
        assert_eq!(http.correlation_id.as_deref(), Some(echoed.as_str()));
        assert_eq!(grpc.correlation_id.as_deref(), Some(echoed.as_str()));
    }
    let logs = logged();
    assert!(contains(&logs, b"replaced an invalid incoming correlation id"));
    assert!(!contains(&logs, b"SECRET"), "{}", String::from_utf8_lossy(&logs));
}

#[tokio::test]
async fn a_cr_in_an_id_never_reaches_the_handler_nor_the_response() {
    let h = Harness::start().await;
    // Header injection attempt with a bare CR (an http::HeaderValue cannot
    // even hold one, so it is sent as raw bytes).
    let mut stream = TcpStream::connect(h.gateway).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: gw\r\nx-correlation-id: CRSECRET\rset-cookie: evil=1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(!text.contains("CRSECRET") && !text.contains("evil"), "{text}");
    assert!(h.hyper_log.lock().unwrap().is_empty(), "the handler never ran");
    assert!(!contains(&logged(), b"CRSECRET"));
    // And the non-HTTP entry points refuse CR and LF outright.
    assert!(CorrelationId::parse("a\r\nset-cookie: evil=1").is_err());
    assert!(RequestContext::from_parts("a\nb", None, None).is_err());
}

#[tokio::test]
async fn a_malformed_traceparent_starts_a_new_trace() {
    let h = Harness::start().await;
    let malformed: [&[u8]; 6] = [
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent id
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // v00 too long
        b"not a traceparent",
    ];
    for bad in malformed {
        let (echoed, _) =
            h.call(&[("x-correlation-id", b"tp-test"), ("traceparent", bad), ("tracestate", b"a=1")]).await;
        assert_eq!(echoed, "tp-test");
        let (http, grpc) = h.last();
        let trace = http.trace().trace_id();
        assert_eq!(grpc.trace().trace_id(), trace, "one new trace for both calls");
        assert_ne!(trace.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!((http.tracestate, grpc.tracestate), (None, None), "no tracestate without a valid traceparent");
    }
    // A future version is read by its first fields and sent on as version 00.
    let future = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later";
    h.call(&[("traceparent", future)]).await;
    let (http, _) = h.last();
    assert_eq!(http.trace().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(http.traceparent.unwrap().starts_with("00-"));
}
