//! An axum gateway that validates the caller's JWT and calls a downstream
//! service with the request's correlation id, trace context and token.
//!
//! Everything runs on 127.0.0.1 (ephemeral ports), started by the example:
//!
//! - a downstream hyper server, which records what each request carried;
//! - the gateway: axum with `CorrelationIdLayer` (outermost, so even a
//!   refused request gets its id echoed) and `JwtPropagationLayer`
//!   (HS256 tokens from a static secret, issuer and audience checked). Its
//!   handler calls the downstream server through a hyper-util client wrapped
//!   in `CorrelationIdClientLayer` and `JwtClientLayer`, whose allowlist holds
//!   the downstream's authority.
//!
//! The example then calls the gateway itself: with a valid token, a
//! correlation id and a `traceparent`; with a token signed by another key
//! (`401`); with a correlation id the gateway refuses and replaces; and with
//! a bare CR in the id, which hyper's HTTP parser refuses before any layer
//! runs. After each call it prints what the downstream server saw.
//!
//! ```text
//! cargo run --example axum_gateway --no-default-features --features correlation-id,jwt
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Extension, State};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{encode, EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_mesh::correlation::{
    CorrelationIdClient, CorrelationIdClientLayer, CorrelationIdLayer, RequestContext, TraceParent,
};
use tower_mesh::jwt::{Algorithm, Allowlist, Claims, JwtClient, JwtClientLayer, JwtKey, JwtPropagationLayer};

/// The gateway's HMAC secret (in production: from a secret store).
const SECRET: &[u8] = b"axum-gateway example secret, at least 32 bytes";
const ISSUER: &str = "https://auth.example";
const AUDIENCE: &str = "gateway";

/// What the downstream server received on one request.
#[derive(Clone, Debug, Default)]
struct Seen {
    correlation_id: Option<String>,
    traceparent: Option<String>,
    /// Whether an `Authorization` header came (the token itself is not kept).
    got_token: bool,
    /// Whether it was the exact token the caller sent to the gateway.
    token: Option<String>,
}

impl Seen {
    fn from_headers(h: &HeaderMap) -> Self {
        let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let token = get("authorization");
        Seen {
            correlation_id: get("x-correlation-id"),
            traceparent: get("traceparent"),
            got_token: token.is_some(),
            token,
        }
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Start the downstream hyper server; it records each request's headers.
async fn downstream(log: Log) -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                log.lock().unwrap().push(Seen::from_headers(req.headers()));
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"order 42: shipped")))) }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    });
    Ok(addr)
}

/// The gateway's client: correlation first (it reads the current context),
/// then the JWT layer (it reads the current token), then hyper-util.
type Outbound = CorrelationIdClient<JwtClient<Client<HttpConnector, Empty<Bytes>>>>;

#[derive(Clone)]
struct Gateway {
    client: Outbound,
    downstream: SocketAddr,
}

/// The gateway's handler: runs only for a valid token, with the context and
/// the claims in the request's extensions.
async fn order(
    State(gw): State<Gateway>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
) -> Result<String, StatusCode> {
    let req = Request::get(format!("http://{}/orders/42", gw.downstream)).body(Empty::new()).unwrap();
    let res = gw.client.oneshot(req).await.map_err(|_| StatusCode::BAD_GATEWAY)?;
    let body = res.into_body().collect().await.map_err(|_| StatusCode::BAD_GATEWAY)?.to_bytes();
    Ok(format!(
        "hello {} (request {}): downstream says {:?}",
        claims.sub.as_deref().unwrap_or("?"),
        ctx.correlation_id,
        String::from_utf8_lossy(&body)
    ))
}

/// Start the gateway on 127.0.0.1.
async fn gateway(downstream: SocketAddr) -> Result<SocketAddr, BoxError> {
    let client = ServiceBuilder::new()
        .layer(CorrelationIdClientLayer::new().name("gateway-out"))
        .layer(JwtClientLayer::new(Allowlist::new([format!("http://{downstream}")])?).name("gateway-out"))
        .service(Client::builder(TokioExecutor::new()).build_http());
    let jwt = JwtPropagationLayer::builder()
        .key(JwtKey::hmac(SECRET, Algorithm::HS256)?)
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .name("gateway")
        .build()?;
    let app = Router::new()
        .route("/orders/42", get(order))
        .with_state(Gateway { client, downstream })
        .layer(ServiceBuilder::new().layer(CorrelationIdLayer::new().name("gateway")).layer(jwt));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// A token for `alice`, valid for five minutes, signed with `secret`.
fn token(secret: &[u8]) -> Result<String, BoxError> {
    let claims = serde_json::json!({
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": jsonwebtoken::get_current_timestamp() + 300,
    });
    Ok(encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))?)
}

/// Call the gateway with a plain hyper-util client (none of our layers).
async fn call(gateway: SocketAddr, headers: &[(&str, &str)]) -> Result<(), BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::get(format!("http://{gateway}/orders/42")).body(Empty::new())?;
    for (name, value) in headers {
        req.headers_mut()
            .append(http::HeaderName::from_bytes(name.as_bytes())?, HeaderValue::from_bytes(value.as_bytes())?);
    }
    let res = client.request(req).await?;
    let (parts, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    println!("  gateway answered {}", parts.status);
    if let Some(id) = parts.headers.get("x-correlation-id") {
        println!("  echoed x-correlation-id: {id:?}");
    }
    if let Some(challenge) = parts.headers.get("www-authenticate") {
        println!("  www-authenticate: {challenge:?}");
    }
    if !body.is_empty() {
        println!("  body: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// Print what the downstream saw since `before` requests.
fn report(log: &Log, before: usize, bearer: Option<&str>) {
    let seen = log.lock().unwrap();
    if seen.len() == before {
        println!("  downstream: not called");
    }
    for s in &seen[before..] {
        println!("  downstream saw x-correlation-id: {:?}", s.correlation_id.as_deref().unwrap_or("(none)"));
        println!("  downstream saw traceparent:      {:?}", s.traceparent.as_deref().unwrap_or("(none)"));
        let same = bearer.is_some() && s.token.as_deref() == bearer;
        println!("  downstream got the token:        {} (the caller's own: {same})", s.got_token);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let log = Log::default();
    let downstream = downstream(log.clone()).await?;
    let gateway = gateway(downstream).await?;
    println!("downstream hyper server on {downstream}, gateway (axum) on {gateway}\n");

    let incoming_tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let bearer = format!("Bearer {}", token(SECRET)?);

    println!("1. valid token, x-correlation-id: order-42, traceparent: {incoming_tp}");
    let before = log.lock().unwrap().len();
    call(gateway, &[("authorization", &bearer), ("x-correlation-id", "order-42"), ("traceparent", incoming_tp)])
        .await?;
    report(&log, before, Some(&bearer));
    if let Some(tp) = log.lock().unwrap().last().and_then(|s| s.traceparent.clone()) {
        let (sent, received) = (TraceParent::parse(&tp)?, TraceParent::parse(incoming_tp)?);
        println!(
            "  same trace id: {}, new parent id: {} (was {})",
            sent.trace_id() == received.trace_id(),
            sent.parent_id(),
            received.parent_id()
        );
    }

    println!("\n2. token signed with another secret, x-correlation-id: order-43");
    let forged = format!("Bearer {}", token(b"not the gateway's secret, but 32+ bytes long")?);
    let before = log.lock().unwrap().len();
    call(gateway, &[("authorization", &forged), ("x-correlation-id", "order-43")]).await?;
    report(&log, before, None);

    println!("\n3. valid token, x-correlation-id with a tab and a non-ASCII byte: refused by the layer, replaced");
    let before = log.lock().unwrap().len();
    call(gateway, &[("authorization", &bearer), ("x-correlation-id", "order\t44-caf\u{e9}")]).await?;
    report(&log, before, Some(&bearer));

    println!("\n4. valid token, x-correlation-id with a CR (header injection attempt), as raw bytes");
    let before = log.lock().unwrap().len();
    let mut stream = TcpStream::connect(gateway).await?;
    let request = format!(
        "GET /orders/42 HTTP/1.1\r\nhost: gateway\r\nauthorization: {bearer}\r\n\
         x-correlation-id: order-45\rset-cookie: evil=1\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    println!("  gateway answered {:?}", response.lines().next().unwrap_or_default());
    println!(
        "  the id or the injected header in the answer: {}",
        response.contains("order-45") || response.contains("evil")
    );
    report(&log, before, Some(&bearer));
    Ok(())
}
