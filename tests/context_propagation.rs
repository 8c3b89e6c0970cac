//! Context propagation across hops: an axum gateway with `CorrelationIdLayer`
//! and `JwtPropagationLayer` whose handler calls a hyper server and a tonic
//! (gRPC health) server through `CorrelationIdClientLayer` and
//! `JwtClientLayer`, all on 127.0.0.1. The downstream services see the
//! gateway's correlation id and trace id, and the caller's token — except a
//! downstream not in the allowlist, which gets the ids but no token.

#![cfg(all(feature = "jwt", feature = "correlation-id"))]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Extension, State};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{encode, EncodingKey, Header};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse};
use tower::{ServiceBuilder, ServiceExt};
use tower_mesh::correlation::{
    CorrelationIdClient, CorrelationIdClientLayer, CorrelationIdLayer, RequestContext, TraceParent,
};
use tower_mesh::jwt::{
    Algorithm, Allowlist, BearerToken, Claims, JwtClient, JwtClientLayer, JwtKey, JwtPropagationLayer,
};

const SECRET: &[u8] = b"context-propagation test secret, 32+ bytes";
const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What a downstream server received.
#[derive(Clone, Debug, Default, PartialEq)]
struct Seen {
    correlation_id: Option<String>,
    traceparent: Option<String>,
    authorization: Option<String>,
}

impl Seen {
    fn from_headers(h: &HeaderMap) -> Self {
        let get = |k: &str| h.get(k).map(|v| v.to_str().unwrap().to_string());
        Seen {
            correlation_id: get("x-correlation-id"),
            traceparent: get("traceparent"),
            authorization: get("authorization"),
        }
    }

    fn trace(&self) -> TraceParent {
        TraceParent::parse(self.traceparent.as_deref().expect("a traceparent")).expect("a valid traceparent")
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn last(log: &Log) -> Seen {
    log.lock().unwrap().last().cloned().expect("the downstream was called")
}

/// A hyper server that records the headers of each request.
async fn hyper_downstream(log: Log) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                log.lock().unwrap().push(Seen::from_headers(req.headers()));
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
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
        let headers = request.metadata().clone().into_headers();
        self.0.lock().unwrap().push(Seen::from_headers(&headers));
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

type HttpOut = CorrelationIdClient<JwtClient<Client<HttpConnector, Empty<Bytes>>>>;
type GrpcOut = CorrelationIdClient<JwtClient<Channel>>;

/// A downstream as the gateway reaches it.
#[derive(Clone)]
struct Downstreams {
    http: HttpOut,
    http_addrs: [SocketAddr; 2],
    grpc: [GrpcOut; 2],
}

/// The handler: one call to each downstream (the allowed one first, then the
/// other, for hyper and for tonic), then answer with the `sub` it saw.
async fn handle(
    State(d): State<Downstreams>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
) -> Result<String, StatusCode> {
    assert_eq!(RequestContext::current().as_ref(), Some(&ctx), "the context is current in the handler");
    assert!(BearerToken::current().is_some(), "the token is current in the handler");
    for addr in d.http_addrs {
        let req = Request::get(format!("http://{addr}/")).body(Empty::new()).unwrap();
        let res = d.http.clone().oneshot(req).await.map_err(|_| StatusCode::BAD_GATEWAY)?;
        res.into_body().collect().await.map_err(|_| StatusCode::BAD_GATEWAY)?;
    }
    for grpc in d.grpc {
        let status = HealthClient::new(grpc)
            .check(HealthCheckRequest { service: String::new() })
            .await
            .map_err(|_| StatusCode::BAD_GATEWAY)?;
        assert_eq!(status.into_inner().status, ServingStatus::Serving as i32);
    }
    Ok(claims.sub.unwrap_or_default())
}

struct Harness {
    gateway: SocketAddr,
    /// Allowed hyper, other hyper, allowed tonic, other tonic.
    logs: [Log; 4],
}

impl Harness {
    async fn start() -> Self {
        let logs: [Log; 4] = Default::default();
        let http_addrs = [hyper_downstream(logs[0].clone()).await, hyper_downstream(logs[1].clone()).await];
        let grpc_addrs = [tonic_downstream(logs[2].clone()).await, tonic_downstream(logs[3].clone()).await];
        // Only the first hyper and the first tonic server may have the token
        // (plain-text loopback servers: explicit `http://` entries).
        let allow = Allowlist::new([format!("http://{}", http_addrs[0]), format!("http://{}", grpc_addrs[0])]).unwrap();

        let correlation_out = CorrelationIdClientLayer::new().name("gateway-out");
        let jwt_out = JwtClientLayer::new(allow).name("gateway-out");
        let http = ServiceBuilder::new()
            .layer(correlation_out.clone())
            .layer(jwt_out.clone())
            .service(Client::builder(TokioExecutor::new()).build_http());
        let grpc = grpc_addrs.map(|addr| {
            let uri: http::Uri = format!("http://{addr}").parse().unwrap();
            let channel = Channel::builder(uri.clone()).connect_lazy();
            // A tonic client's requests carry only the path below the
            // generated client: the layer is told the channel's origin.
            ServiceBuilder::new().layer(correlation_out.clone()).layer(jwt_out.clone().origin(uri)).service(channel)
        });
        let state = Downstreams { http, http_addrs, grpc };

        let jwt = JwtPropagationLayer::builder()
            .key(JwtKey::hmac(SECRET, Algorithm::HS256).unwrap())
            .issuer("https://auth.test")
            .audience("gateway")
            .name("gateway")
            .build()
            .unwrap();
        let app = Router::new()
            .route("/", get(handle))
            .with_state(state)
            .layer(ServiceBuilder::new().layer(CorrelationIdLayer::new().name("gateway")).layer(jwt));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Harness { gateway, logs }
    }

    /// Call the gateway with `headers`, from a client without any of our
    /// layers. Returns the status, the echoed correlation id and the body.
    async fn call(&self, headers: &[(&str, &str)]) -> (StatusCode, Option<String>, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut req = Request::get(format!("http://{}/", self.gateway)).body(Empty::new()).unwrap();
        for (k, v) in headers {
            req.headers_mut().append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let res = client.request(req).await.unwrap();
        let status = res.status();
        let id = res.headers().get("x-correlation-id").map(|v| v.to_str().unwrap().to_string());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, id, String::from_utf8(body.to_vec()).unwrap())
    }

    fn calls(&self) -> [usize; 4] {
        self.logs.each_ref().map(|l| l.lock().unwrap().len())
    }
}

fn token() -> String {
    let claims = serde_json::json!({
        "sub": "alice",
        "iss": "https://auth.test",
        "aud": "gateway",
        "exp": jsonwebtoken::get_current_timestamp() + 600,
    });
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

#[tokio::test]
async fn ids_and_token_follow_the_call_to_allowed_downstreams_only() {
    let h = Harness::start().await;
    let token = token();
    let bearer = format!("Bearer {token}");
    let (status, id, body) =
        h.call(&[("x-correlation-id", "order-42"), ("traceparent", TP), ("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "alice");
    assert_eq!(id.as_deref(), Some("order-42"));

    let incoming = TraceParent::parse(TP).unwrap();
    let seen = h.logs.each_ref().map(last);
    for (i, s) in seen.iter().enumerate() {
        // Every downstream: the same correlation id and trace, a new parent.
        assert_eq!(s.correlation_id.as_deref(), Some("order-42"), "downstream {i}");
        assert_eq!(s.trace().trace_id(), incoming.trace_id(), "downstream {i}");
        assert_ne!(s.trace().parent_id(), incoming.parent_id(), "downstream {i}");
    }
    // The token: to the allowed hyper and tonic servers, to no other.
    assert_eq!(seen[0].authorization.as_deref(), Some(bearer.as_str()), "allowed hyper server");
    assert_eq!(seen[1].authorization, None, "hyper server outside the allowlist");
    assert_eq!(seen[2].authorization.as_deref(), Some(bearer.as_str()), "allowed tonic server");
    assert_eq!(seen[3].authorization, None, "tonic server outside the allowlist");
}

#[tokio::test]
async fn without_incoming_ids_the_gateway_starts_them_and_still_propagates() {
    let h = Harness::start().await;
    let bearer = format!("Bearer {}", token());
    let (status, id, _) = h.call(&[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::OK);
    let id = id.expect("a generated id is echoed");
    let seen = h.logs.each_ref().map(last);
    let trace = seen[0].trace().trace_id();
    for s in &seen {
        assert_eq!(s.correlation_id.as_deref(), Some(id.as_str()));
        assert_eq!(s.trace().trace_id(), trace, "one trace for the whole request");
    }
    assert_eq!(seen.map(|s| s.authorization.is_some()), [true, false, true, false]);
}

#[tokio::test]
async fn a_refused_token_stops_at_the_gateway_with_the_id_echoed() {
    let h = Harness::start().await;
    for auth in [None, Some("Bearer not.a.token"), Some("Bearer e30.e30.e30")] {
        let mut headers = vec![("x-correlation-id", "order-43")];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let (status, id, _) = h.call(&headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(id.as_deref(), Some("order-43"), "the correlation layer sits outside the JWT layer");
    }
    assert_eq!(h.calls(), [0, 0, 0, 0], "no downstream is called for a refused request");
}

#[tokio::test]
async fn concurrent_requests_keep_their_own_ids_and_tokens() {
    let h = Harness::start().await;
    let tokens: Vec<String> = (0..6)
        .map(|i| {
            let claims = serde_json::json!({
                "sub": format!("user-{i}"),
                "iss": "https://auth.test",
                "aud": "gateway",
                "exp": jsonwebtoken::get_current_timestamp() + 600,
            });
            encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
        })
        .collect();
    let calls = tokens.iter().enumerate().map(|(i, t)| {
        let h = &h;
        async move {
            let id = format!("req-{i}");
            let bearer = format!("Bearer {t}");
            h.call(&[("x-correlation-id", &id), ("authorization", &bearer)]).await
        }
    });
    let answers = futures::future::join_all(calls).await;
    for (i, (status, _, body)) in answers.iter().enumerate() {
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(body, &format!("user-{i}"));
    }
    // Every allowed downstream call carried the token of its own request.
    for log in [&h.logs[0], &h.logs[2]] {
        let seen = log.lock().unwrap();
        assert_eq!(seen.len(), 6);
        for s in seen.iter() {
            let i: usize = s.correlation_id.as_deref().unwrap().strip_prefix("req-").unwrap().parse().unwrap();
            assert_eq!(s.authorization.as_deref(), Some(format!("Bearer {}", tokens[i]).as_str()));
        }
    }
}
