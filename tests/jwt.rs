//! JwtPropagationLayer and JwtClientLayer against real hyper servers on
//! 127.0.0.1: the protected service, a JWKS server whose keys rotate, and
//! downstream services that report the `Authorization` header they got.

#![cfg(feature = "jwt")]

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{encode, EncodingKey, Header};
use tokio::net::TcpListener;
use tower::{service_fn, Layer, Service, ServiceBuilder};
use tower_mesh::jwt::{Algorithm, Allowlist, BearerToken, Claims, Jwks, JwtClientLayer, JwtKey, JwtPropagationLayer};

const SECRET: &[u8] = b"integration-test secret of 32+ bytes";
const RSA1_PRIVATE: &str = include_str!("../src/jwt/testdata/rsa1_private.pem");
const RSA1_PUBLIC: &str = include_str!("../src/jwt/testdata/rsa1_public.pem");
const RSA2_PRIVATE: &str = include_str!("../src/jwt/testdata/rsa2_private.pem");
const EC_PRIVATE: &str = include_str!("../src/jwt/testdata/ec_private.pem");

// ----- servers -----

/// Serve `svc` over HTTP/1 on 127.0.0.1 (a fresh port); the accept loop runs
/// until the test's runtime ends.
async fn serve<S>(svc: S) -> SocketAddr
where
    S: Service<Request<Incoming>, Response = Response<String>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    });
    addr
}

/// A JWKS endpoint whose document can be changed, counting its requests.
#[derive(Clone)]
struct JwksServer {
    doc: Arc<Mutex<(StatusCode, String)>>,
    hits: Arc<AtomicUsize>,
    addr: SocketAddr,
}

impl JwksServer {
    async fn start(keys: &[Jwk]) -> Self {
        let doc = Arc::new(Mutex::new((StatusCode::OK, String::new())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (d, h) = (doc.clone(), hits.clone());
        let addr = serve(service_fn(move |_req: Request<Incoming>| {
            h.fetch_add(1, Ordering::SeqCst);
            let (status, body) = d.lock().unwrap().clone();
            async move {
                let mut res = Response::new(body);
                *res.status_mut() = status;
                Ok::<_, Infallible>(res)
            }
        }))
        .await;
        let server = JwksServer { doc, hits, addr };
        server.set(keys);
        server
    }

    fn set(&self, keys: &[Jwk]) {
        let doc = serde_json::to_string(&JwkSet { keys: keys.to_vec() }).unwrap();
        *self.doc.lock().unwrap() = (StatusCode::OK, doc);
    }

    fn set_raw(&self, status: StatusCode, body: &str) {
        *self.doc.lock().unwrap() = (status, body.to_string());
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The protected service: the handler answers `sub` and the current token,
/// and counts its calls.
async fn protected(layer: JwtPropagationLayer) -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let handler = service_fn(move |req: Request<Incoming>| {
        c.fetch_add(1, Ordering::SeqCst);
        let sub = req.extensions().get::<Claims>().and_then(|c| c.sub.clone()).unwrap_or_default();
        let token = BearerToken::current().map(|t| t.expose().to_string()).unwrap_or_default();
        async move { Ok::<_, Infallible>(Response::new(format!("{sub} {token}"))) }
    });
    (serve(layer.layer(handler)).await, calls)
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    grpc_status: Option<String>,
    body: String,
}

async fn call(addr: SocketAddr, auth: Option<&str>) -> Answer {
    let mut req = Request::get(format!("http://{addr}/orders"));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    answer(client().request(req.body(Empty::new()).unwrap()).await.unwrap()).await
}

async fn answer(res: Response<Incoming>) -> Answer {
    let header = |n: &str| res.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let (status, challenge, grpc_status) = (res.status(), header("www-authenticate"), header("grpc-status"));
    let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Answer { status, challenge, grpc_status, body }
}

// ----- tokens -----

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims() -> serde_json::Value {
    serde_json::json!({ "sub": "alice", "iss": "https://auth.test", "aud": "orders", "exp": now() + 600 })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).unwrap()
}

fn rsa1() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA1_PRIVATE.as_bytes()).unwrap()
}

fn rsa2() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap()
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    jwk
}

fn hs_layer() -> JwtPropagationLayer {
    JwtPropagationLayer::builder()
        .key(JwtKey::hmac(SECRET, Algorithm::HS256).unwrap())
        .issuer("https://auth.test")
        .audience("orders")
        .leeway(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn rsa_layer() -> JwtPropagationLayer {
    JwtPropagationLayer::builder()
        .key(JwtKey::rsa_pem(RSA1_PUBLIC, Algorithm::RS256).unwrap())
        .issuer("https://auth.test")
        .audience("orders")
        .build()
        .unwrap()
}

fn hs(claims: &serde_json::Value) -> String {
    sign(Algorithm::HS256, None, claims, &EncodingKey::from_secret(SECRET))
}

fn with(f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> serde_json::Value {
    let mut c = claims();
    f(c.as_object_mut().unwrap());
    c
}

/// Assert a refusal: 401, the challenge, the handler not called.
#[track_caller]
fn assert_refused(a: &Answer, calls: &AtomicUsize, description: &str) {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
    let expected = format!("Bearer error=\"invalid_token\", error_description=\"{description}\"");
    assert_eq!(a.challenge.as_deref(), Some(expected.as_str()));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler must never be called");
}

// ----- the server side -----

#[tokio::test]
async fn valid_token_reaches_the_handler() {
    let (addr, calls) = protected(hs_layer()).await;
    let token = hs(&claims());
    let a = call(addr, Some(&format!("Bearer {token}"))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, format!("alice {token}"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn missing_token() {
    let (addr, calls) = protected(hs_layer()).await;
    let a = call(addr, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.challenge.as_deref(), Some("Bearer"));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn garbage_token() {
    let (addr, calls) = protected(hs_layer()).await;
    for garbage in ["Bearer garbage", "Bearer a.b.c", "Bearer e30.e30.e30", "Bearer ...", "Token abc", "Bearer a%b"] {
        assert_refused(&call(addr, Some(garbage)).await, &calls, "malformed token");
    }
}

#[tokio::test]
async fn oversized_token() {
    let (addr, calls) = protected(hs_layer()).await;
    // A validly signed token, padded by a large claim past the 8 KiB cap.
    let big = hs(&with(|c| drop(c.insert("pad".into(), "x".repeat(9000).into()))));
    assert_refused(&call(addr, Some(&format!("Bearer {big}"))).await, &calls, "token too large");
}

#[tokio::test]
async fn expired_token() {
    let (addr, calls) = protected(hs_layer()).await;
    let expired = hs(&with(|c| drop(c.insert("exp".into(), (now() - 60).into()))));
    assert_refused(&call(addr, Some(&format!("Bearer {expired}"))).await, &calls, "token expired");
}

#[tokio::test]
async fn token_not_valid_yet() {
    let (addr, calls) = protected(hs_layer()).await;
    let early = hs(&with(|c| drop(c.insert("nbf".into(), (now() + 60).into()))));
    assert_refused(&call(addr, Some(&format!("Bearer {early}"))).await, &calls, "token not valid yet");
}

#[tokio::test]
async fn wrong_audience() {
    let (addr, calls) = protected(hs_layer()).await;
    let t = hs(&with(|c| drop(c.insert("aud".into(), "billing".into()))));
    assert_refused(&call(addr, Some(&format!("Bearer {t}"))).await, &calls, "wrong audience");
    let t = hs(&with(|c| drop(c.remove("aud"))));
    assert_refused(&call(addr, Some(&format!("Bearer {t}"))).await, &calls, "missing claim");
}

#[tokio::test]
async fn wrong_issuer() {
    let (addr, calls) = protected(hs_layer()).await;
    let t = hs(&with(|c| drop(c.insert("iss".into(), "https://evil.test".into()))));
    assert_refused(&call(addr, Some(&format!("Bearer {t}"))).await, &calls, "untrusted issuer");
}

#[tokio::test]
async fn alg_none() {
    let (addr, calls) = protected(hs_layer()).await;
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{header}.{}.", b64(claims().to_string().as_bytes()));
    assert_refused(&call(addr, Some(&format!("Bearer {unsigned}"))).await, &calls, "algorithm not allowed");
    // Also with a signature part copied from a real token.
    let real = hs(&claims());
    let sig = real.rsplit('.').next().unwrap();
    let forged = format!("{header}.{}.{sig}", b64(claims().to_string().as_bytes()));
    assert_refused(&call(addr, Some(&format!("Bearer {forged}"))).await, &calls, "algorithm not allowed");
}

fn b64(bytes: &[u8]) -> String {
    use jwt_base64::Engine;
    jwt_base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let (addr, calls) = protected(rsa_layer()).await;
    // The classic key-confusion attack: the server's public key (which anyone
    // has) used as an HMAC secret.
    let forged = sign(Algorithm::HS256, None, &claims(), &EncodingKey::from_secret(RSA1_PUBLIC.as_bytes()));
    assert_refused(&call(addr, Some(&format!("Bearer {forged}"))).await, &calls, "algorithm not allowed");
    // The genuine RS256 token passes.
    let genuine = sign(Algorithm::RS256, None, &claims(), &rsa1());
    assert_eq!(call(addr, Some(&format!("Bearer {genuine}"))).await.status, StatusCode::OK);
}

#[tokio::test]
async fn token_signed_by_another_key_is_refused() {
    let (addr, calls) = protected(rsa_layer()).await;
    let other = sign(Algorithm::RS256, None, &claims(), &rsa2());
    assert_refused(&call(addr, Some(&format!("Bearer {other}"))).await, &calls, "bad signature");
    let es = sign(Algorithm::ES256, None, &claims(), &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap());
    assert_refused(&call(addr, Some(&format!("Bearer {es}"))).await, &calls, "algorithm not allowed");
}

#[tokio::test]
async fn grpc_request_gets_unauthenticated_trailers_only() {
    let (addr, calls) = protected(hs_layer()).await;
    let req = Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("authorization", "Bearer nope")
        .body(Empty::new())
        .unwrap();
    let a = answer(client().request(req).await.unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.grpc_status.as_deref(), Some("16"));
    assert!(a.body.is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

// ----- JWKS -----

fn jwks_layer(jwks: &JwksServer, min_refresh: Duration) -> JwtPropagationLayer {
    JwtPropagationLayer::builder()
        .jwks(Jwks::new(&jwks.url()).unwrap().min_refresh_interval(min_refresh))
        .issuer("https://auth.test")
        .audience("orders")
        .build()
        .unwrap()
}

/// Let the rate limiter's clock move `by` (tokio's clock; the servers keep
/// running on real time before and after).
async fn skip_time(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test(flavor = "current_thread")]
async fn jwks_rotation_refreshes_once_per_interval() {
    let jwks = JwksServer::start(&[jwk(&rsa1(), Algorithm::RS256, "k1")]).await;
    let (addr, calls) = protected(jwks_layer(&jwks, Duration::from_secs(60))).await;
    let token = |kid: &str, key: &EncodingKey| format!("Bearer {}", sign(Algorithm::RS256, Some(kid), &claims(), key));

    // First use: the set is fetched once, then served from the cache.
    assert_eq!(jwks.hits(), 0, "fetched on first use, not before");
    for _ in 0..3 {
        assert_eq!(call(addr, Some(&token("k1", &rsa1()))).await.status, StatusCode::OK);
    }
    assert_eq!(jwks.hits(), 1);

    // The issuer rotates: k2 appears. Within the interval, no second fetch.
    jwks.set(&[jwk(&rsa1(), Algorithm::RS256, "k1"), jwk(&rsa2(), Algorithm::RS256, "k2")]);
    let before = calls.load(Ordering::SeqCst);
    let a = call(addr, Some(&token("k2", &rsa2()))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.challenge.as_deref(), Some("Bearer error=\"invalid_token\", error_description=\"unknown key\""));
    assert_eq!(jwks.hits(), 1, "rate-limited");
    assert_eq!(calls.load(Ordering::SeqCst), before);

    // After the interval, the unknown kid refreshes the set — once, even for
    // many requests at the same time — and the request that caused it waits
    // for it and passes.
    skip_time(Duration::from_secs(61)).await;
    let k2 = token("k2", &rsa2());
    let answers = futures::future::join_all((0..8).map(|_| call(addr, Some(&k2)))).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
    assert_eq!(jwks.hits(), 2);

    // A made-up kid right after: refused without a fetch.
    let a = call(addr, Some(&token("k3", &rsa1()))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(jwks.hits(), 2);
    // Known keys keep working.
    assert_eq!(call(addr, Some(&token("k1", &rsa1()))).await.status, StatusCode::OK);
    assert_eq!(jwks.hits(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn jwks_unknown_kid_after_refresh_is_refused() {
    let jwks = JwksServer::start(&[jwk(&rsa1(), Algorithm::RS256, "k1")]).await;
    let (addr, calls) = protected(jwks_layer(&jwks, Duration::from_secs(60))).await;
    let t = sign(Algorithm::RS256, Some("ghost"), &claims(), &rsa2());
    assert_refused(&call(addr, Some(&format!("Bearer {t}"))).await, &calls, "unknown key");
    assert_eq!(jwks.hits(), 1, "one fetch for the first unknown kid");
    // A key the set has, but the token was signed by another: bad signature.
    let t = sign(Algorithm::RS256, Some("k1"), &claims(), &rsa2());
    assert_refused(&call(addr, Some(&format!("Bearer {t}"))).await, &calls, "bad signature");
    // HS256 naming the RSA key, with its public key as secret.
    let forged = sign(Algorithm::HS256, Some("k1"), &claims(), &EncodingKey::from_secret(RSA1_PUBLIC.as_bytes()));
    assert_refused(&call(addr, Some(&format!("Bearer {forged}"))).await, &calls, "algorithm not allowed");
}

#[tokio::test(flavor = "current_thread")]
async fn jwks_ignores_encryption_and_symmetric_keys_and_disallowed_algorithms() {
    let mut enc = jwk(&rsa1(), Algorithm::RS256, "enc");
    enc.common.public_key_use = Some(PublicKeyUse::Encryption);
    let oct = jwk(&EncodingKey::from_secret(SECRET), Algorithm::HS256, "oct");
    let ps = jwk(&rsa1(), Algorithm::PS256, "ps");
    let es = jwk(&EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(), Algorithm::ES256, "es");
    let jwks = JwksServer::start(&[enc, oct, ps, es]).await;
    let (addr, calls) = protected(jwks_layer(&jwks, Duration::from_secs(60))).await;
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    assert_eq!(
        call(addr, Some(&format!("Bearer {}", sign(Algorithm::ES256, Some("es"), &claims(), &ec)))).await.status,
        StatusCode::OK
    );
    let before = calls.load(Ordering::SeqCst);
    for (alg, kid, key) in [
        (Algorithm::RS256, "enc", rsa1()),
        (Algorithm::HS256, "oct", EncodingKey::from_secret(SECRET)),
        (Algorithm::PS256, "ps", rsa1()),
    ] {
        let a = call(addr, Some(&format!("Bearer {}", sign(alg, Some(kid), &claims(), &key)))).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{kid}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), before);
}

#[tokio::test(flavor = "current_thread")]
async fn jwks_unreachable_or_broken_is_503_and_cached_keys_survive_a_failed_refresh() {
    // Nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let layer = JwtPropagationLayer::builder()
        .jwks(Jwks::new(&format!("http://{closed}/jwks")).unwrap())
        .audience("orders")
        .build()
        .unwrap();
    let (addr, calls) = protected(layer).await;
    let t = format!("Bearer {}", sign(Algorithm::RS256, Some("k1"), &claims(), &rsa1()));
    let a = call(addr, Some(&t)).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.challenge, None);
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    for (status, body) in
        [(StatusCode::INTERNAL_SERVER_ERROR, "oops"), (StatusCode::OK, "not json"), (StatusCode::OK, r#"{"keys":[]}"#)]
    {
        let jwks = JwksServer::start(&[]).await;
        jwks.set_raw(status, body);
        let (addr, calls) = protected(jwks_layer(&jwks, Duration::from_secs(60))).await;
        assert_eq!(call(addr, Some(&t)).await.status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    // Loaded once, then the endpoint breaks: the cached keys go on working,
    // and a new kid is refused (401, not 503: keys are known).
    let jwks = JwksServer::start(&[jwk(&rsa1(), Algorithm::RS256, "k1")]).await;
    let (addr, _) = protected(jwks_layer(&jwks, Duration::from_secs(60))).await;
    assert_eq!(call(addr, Some(&t)).await.status, StatusCode::OK);
    jwks.set_raw(StatusCode::BAD_GATEWAY, "");
    skip_time(Duration::from_secs(61)).await;
    let other = format!("Bearer {}", sign(Algorithm::RS256, Some("k2"), &claims(), &rsa2()));
    assert_eq!(call(addr, Some(&other)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(jwks.hits(), 2);
    assert_eq!(call(addr, Some(&t)).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "current_thread")]
async fn jwks_document_size_is_capped() {
    let jwks = JwksServer::start(&[jwk(&rsa1(), Algorithm::RS256, "k1")]).await;
    let layer = JwtPropagationLayer::builder()
        .jwks(Jwks::new(&jwks.url()).unwrap().max_size(64))
        .audience("orders")
        .build()
        .unwrap();
    let (addr, _) = protected(layer).await;
    let t = format!("Bearer {}", sign(Algorithm::RS256, Some("k1"), &claims(), &rsa1()));
    assert_eq!(call(addr, Some(&t)).await.status, StatusCode::SERVICE_UNAVAILABLE);
}

// ----- the client side -----

/// A downstream that answers with the `authorization` it got (or `-`).
async fn downstream() -> SocketAddr {
    serve(service_fn(|req: Request<Incoming>| async move {
        let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_string());
        Ok::<_, Infallible>(Response::new(auth.unwrap_or_else(|| "-".into())))
    }))
    .await
}

/// A gateway: validates the token, then calls each downstream through a
/// hyper-util client with the JWT client layer; answers what they saw.
async fn gateway(allow: Allowlist, downstreams: Vec<SocketAddr>) -> SocketAddr {
    let out = ServiceBuilder::new().layer(JwtClientLayer::new(allow)).service(client());
    let handler = service_fn(move |_req: Request<Incoming>| {
        let out = out.clone();
        let downstreams = downstreams.clone();
        async move {
            let mut seen = Vec::new();
            for d in downstreams {
                let req = Request::get(format!("http://{d}/")).body(Empty::<Bytes>::new()).unwrap();
                let res = tower::ServiceExt::oneshot(out.clone(), req).await.unwrap();
                seen.push(answer(res).await.body);
            }
            Ok::<_, Infallible>(Response::new(seen.join("|")))
        }
    });
    serve(hs_layer().layer(handler)).await
}

#[tokio::test]
async fn downstream_outside_the_allowlist_gets_no_token() {
    let (allowed, other) = (downstream().await, downstream().await);
    let gw = gateway(Allowlist::new([format!("http://{allowed}")]).unwrap(), vec![allowed, other]).await;
    let token = hs(&claims());
    let a = call(gw, Some(&format!("Bearer {token}"))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, format!("Bearer {token}|-"));
    // Same host, other port: not allowed either when the entry names a port.
    let gw = gateway(Allowlist::new([format!("http://127.0.0.1:{}", allowed.port())]).unwrap(), vec![other]).await;
    assert_eq!(call(gw, Some(&format!("Bearer {token}"))).await.body, "-");
    // An entry without `http://` allows https only: nothing over plain http.
    let gw = gateway(Allowlist::new([allowed.to_string()]).unwrap(), vec![allowed]).await;
    assert_eq!(call(gw, Some(&format!("Bearer {token}"))).await.body, "-");
    // An empty allowlist sends nothing anywhere.
    let gw = gateway(Allowlist::none(), vec![allowed]).await;
    assert_eq!(call(gw, Some(&format!("Bearer {token}"))).await.body, "-");
}

// ----- logs -----

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Run `f` on a fresh runtime and return what was logged meanwhile (at
/// `TRACE`, everything: ours, hyper's, the test's own).
///
/// The subscriber is this test binary's global default, installed on first
/// use: a thread-scoped one (`with_default`) can miss events whose callsites
/// other tests' threads registered at the same moment.
fn captured<F: Future>(f: F) -> (F::Output, String) {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    let buf = LOGS.get_or_init(|| {
        let buf = Captured::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    });
    let from = buf.0.lock().unwrap().len();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let out = rt.block_on(f);
    drop(rt);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()[from..]).into_owned();
    (out, text)
}

#[test]
fn logs_never_contain_a_token() {
    let good = hs(&claims());
    let expired = hs(&with(|c| drop(c.insert("exp".into(), (now() - 60).into()))));
    let forged = sign(Algorithm::HS256, None, &claims(), &EncodingKey::from_secret(b"not the secret at all"));
    let kid_token = sign(Algorithm::RS256, Some("rotated-kid"), &claims(), &rsa2());
    let tokens = [good.clone(), expired.clone(), forged.clone(), kid_token.clone()];
    let ((), logs) = captured(async {
        let (allowed, other) = (downstream().await, downstream().await);
        let gw = gateway(Allowlist::new([format!("http://{allowed}")]).unwrap(), vec![allowed, other]).await;
        for t in &tokens[..3] {
            let a = call(gw, Some(&format!("Bearer {t}"))).await;
            tracing::info!(status = a.status.as_u16(), "answer");
        }
        let jwks = JwksServer::start(&[jwk(&rsa1(), Algorithm::RS256, "k1")]).await;
        let (addr, _) = protected(jwks_layer(&jwks, Duration::from_secs(60))).await;
        call(addr, Some(&format!("Bearer {}", tokens[3]))).await;
        // Debug of the things that hold a token.
        let token = BearerToken::new(&good).unwrap();
        tracing::info!(?token, header = ?token.header_value(), "debug output");
    });
    // The capture works: the refusals, the withheld token, the JWKS load are there …
    assert!(logs.contains("refused bearer token"), "{logs}");
    assert!(logs.contains("reason=\"expired\"") || logs.contains("reason=expired"), "{logs}");
    assert!(logs.contains("bearer token withheld"), "{logs}");
    assert!(logs.contains("loaded JWKS"), "{logs}");
    assert!(logs.contains("BearerToken([redacted])"), "{logs}");
    // … and no token, nor any of its signatures, nor the kid from the request.
    for t in &tokens {
        assert!(!logs.contains(t.as_str()), "a token leaked into the logs");
        let signature = t.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a signature leaked into the logs");
    }
    assert!(!logs.contains("rotated-kid"));
}
