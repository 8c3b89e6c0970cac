//! Per-request cost of `JwtPropagationLayer` against calling
//! `jsonwebtoken::decode` directly, in the same run, for HS256, RS256, ES256
//! and an RS256 key served from a JWKS (cache hit).
//!
//! For each algorithm three subjects check the same token:
//! - `decode`: `jsonwebtoken::decode::<Claims>(token, &key, &validation)` alone;
//! - `hand_written`: a minimal middleware around a no-op service that reads
//!   `Authorization`, strips `Bearer `, calls `decode` (for the JWKS case,
//!   `decode_header` and a `HashMap` lookup by `kid` first) and puts the claims
//!   in the request's extensions;
//! - `layer`: `JwtPropagationLayer` around the same no-op service (size cap,
//!   the header read for the key choice, `jsonwebtoken::decode` with the
//!   key's `DecodingKey` and `Validation` made once, the registered claims'
//!   types checked, the token made current while the inner service runs,
//!   metrics handles, the claims in the extensions).
//!
//! The two services are driven by hand (`call` + one poll with a no-op
//! waker): their futures are ready at once. Each iteration builds the request
//! the same way (the header value shares its bytes, as hyper's do).
//!
//! After the criterion run the bench prints, per algorithm, the ratios
//! `layer / decode` (the target: ≤ 1.05) and `layer / hand_written`,
//! from criterion's median estimates.
//!
//! Run: `cargo bench --no-default-features --features jwt --bench jwt -- --warm-up-time 1 --measurement-time 3`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::Criterion;
use futures::task::noop_waker_ref;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{decode, decode_header, encode, DecodingKey, EncodingKey, Header, Validation};
use tower::{Layer, Service};
use tower_mesh::jwt::{Algorithm, Claims, Jwks, JwtKey, JwtPropagationLayer};

const GROUP: &str = "jwt";
const SECRET: &[u8] = b"benchmark HMAC secret of 32+ bytes";
const RSA_PRIVATE: &str = include_str!("../src/jwt/testdata/rsa1_private.pem");
const RSA_PUBLIC: &str = include_str!("../src/jwt/testdata/rsa1_public.pem");
const EC_PRIVATE: &str = include_str!("../src/jwt/testdata/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../src/jwt/testdata/ec_public.pem");

fn claims() -> serde_json::Value {
    serde_json::json!({
        "sub": "alice",
        "iss": "https://auth.bench",
        "aud": "orders",
        "exp": jsonwebtoken::get_current_timestamp() + 3600,
        "iat": jsonwebtoken::get_current_timestamp(),
        "scope": "orders:read orders:write",
    })
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&["https://auth.bench"]);
    v.set_audience(&["orders"]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.validate_nbf = true;
    v
}

/// The no-op service both middlewares wrap.
#[derive(Clone, Copy)]
struct Noop;

impl Service<Request<()>> for Noop {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        black_box(&req);
        ready(Ok(Response::new(())))
    }
}

/// Where the hand-written middleware finds its key.
enum Keys {
    One(DecodingKey),
    ByKid(HashMap<String, DecodingKey>),
}

/// What one would write by hand around `jsonwebtoken::decode`.
#[derive(Clone)]
struct HandWritten<S> {
    inner: S,
    keys: Arc<Keys>,
    validation: Arc<Validation>,
}

impl<S> Service<Request<()>> for HandWritten<S>
where
    S: Service<
        Request<()>,
        Response = Response<()>,
        Error = Infallible,
        Future = Ready<Result<Response<()>, Infallible>>,
    >,
{
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<()>) -> Self::Future {
        let unauthorized = || {
            let mut res = Response::new(());
            *res.status_mut() = StatusCode::UNAUTHORIZED;
            ready(Ok(res))
        };
        let Some(token) = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "))
        else {
            return unauthorized();
        };
        let key = match &*self.keys {
            Keys::One(k) => k,
            Keys::ByKid(map) => match decode_header(token).ok().and_then(|h| map.get(h.kid.as_deref()?)) {
                Some(k) => k,
                None => return unauthorized(),
            },
        };
        match decode::<Claims>(token, key, &self.validation) {
            Ok(data) => {
                req.extensions_mut().insert(data.claims);
                self.inner.call(req)
            }
            Err(_) => unauthorized(),
        }
    }
}

/// One request through `svc`, whose future must be ready at once.
#[inline]
fn drive<S>(svc: &mut S, token: &HeaderValue, cx: &mut Context<'_>) -> StatusCode
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible>,
{
    let mut req = Request::new(());
    req.headers_mut().insert(AUTHORIZATION, token.clone());
    let _ = svc.poll_ready(cx);
    let fut = pin!(svc.call(req));
    match fut.poll(cx) {
        Poll::Ready(Ok(res)) => res.status(),
        _ => unreachable!("the services answer at once"),
    }
}

struct Case {
    name: &'static str,
    token: String,
    alg: Algorithm,
    key: DecodingKey,
    keys: Keys,
    layer: JwtPropagationLayer,
}

fn static_case(name: &'static str, alg: Algorithm, enc: EncodingKey, dec: DecodingKey, key: JwtKey) -> Case {
    let token = encode(&Header::new(alg), &claims(), &enc).unwrap();
    let layer =
        JwtPropagationLayer::builder().key(key).issuer("https://auth.bench").audience("orders").build().unwrap();
    Case { name, token, alg, key: dec.clone(), keys: Keys::One(dec), layer }
}

/// An RS256 key from a JWKS served over HTTP on 127.0.0.1; the layer's cache
/// is filled before measuring.
fn jwks_case(rt: &tokio::runtime::Runtime) -> Case {
    let enc = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("bench-1".into());
    let mut other =
        Jwk::from_encoding_key(&EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(), Algorithm::ES256).unwrap();
    other.common.key_id = Some("bench-2".into());
    let doc = Bytes::from(serde_json::to_vec(&JwkSet { keys: vec![jwk.clone(), other.clone()] }).unwrap());
    let addr = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let doc = doc.clone();
                let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let doc = doc.clone();
                    async move { Ok::<_, Infallible>(Response::new(http_body_util::Full::new(doc))) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        });
        addr
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("bench-1".into());
    let token = encode(&header, &claims(), &enc).unwrap();
    let layer = JwtPropagationLayer::builder()
        .jwks(Jwks::new(&format!("http://{addr}/jwks")).unwrap())
        .issuer("https://auth.bench")
        .audience("orders")
        .build()
        .unwrap();
    // Fill the cache: the first request waits for the fetch.
    let status = rt.block_on(async {
        let mut req = Request::new(());
        req.headers_mut().insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        let mut svc = layer.layer(Noop);
        svc.call(req).await.unwrap().status()
    });
    assert_eq!(status, StatusCode::OK, "JWKS warm-up");
    let key = DecodingKey::from_jwk(&jwk).unwrap();
    let by_kid = HashMap::from([
        ("bench-1".to_string(), key.clone()),
        ("bench-2".to_string(), DecodingKey::from_jwk(&other).unwrap()),
    ]);
    Case { name: "jwks_rs256", token, alg: Algorithm::RS256, key, keys: Keys::ByKid(by_kid), layer }
}

fn main() {
    let started = SystemTime::now();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _guard = rt.enter();

    let cases = vec![
        static_case(
            "hs256",
            Algorithm::HS256,
            EncodingKey::from_secret(SECRET),
            DecodingKey::from_secret(SECRET),
            JwtKey::hmac(SECRET, Algorithm::HS256).unwrap(),
        ),
        static_case(
            "rs256",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            DecodingKey::from_rsa_pem(RSA_PUBLIC.as_bytes()).unwrap(),
            JwtKey::rsa_pem(RSA_PUBLIC, Algorithm::RS256).unwrap(),
        ),
        static_case(
            "es256",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
            DecodingKey::from_ec_pem(EC_PUBLIC.as_bytes()).unwrap(),
            JwtKey::ec_pem(EC_PUBLIC, Algorithm::ES256).unwrap(),
        ),
        jwks_case(&rt),
    ];

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    let mut cx = Context::from_waker(noop_waker_ref());
    {
        let mut group = criterion.benchmark_group(GROUP);
        for case in cases {
            let validation = validation(case.alg);
            let header: HeaderValue = format!("Bearer {}", case.token).parse().unwrap();
            let _ = header.clone(); // share the bytes from here on, as a parsed header does
            assert_eq!(decode::<Claims>(&case.token, &case.key, &validation).unwrap().claims.sub.unwrap(), "alice");

            group.bench_function(format!("{}/decode", case.name), |b| {
                b.iter(|| decode::<Claims>(black_box(&case.token), &case.key, &validation).is_ok())
            });

            let mut hand =
                HandWritten { inner: Noop, keys: Arc::new(case.keys), validation: Arc::new(validation.clone()) };
            assert_eq!(drive(&mut hand, &header, &mut cx), StatusCode::OK);
            group.bench_function(format!("{}/hand_written", case.name), |b| {
                b.iter(|| drive(&mut hand, black_box(&header), &mut cx))
            });

            let mut layered = case.layer.layer(Noop);
            assert_eq!(drive(&mut layered, &header, &mut cx), StatusCode::OK);
            group.bench_function(format!("{}/layer", case.name), |b| {
                b.iter(|| drive(&mut layered, black_box(&header), &mut cx))
            });
        }
        group.finish();
    }
    criterion.final_summary();

    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        summary(started);
    }
}

fn criterion_dir() -> Option<PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
    };
    Some(target.join("criterion").join(GROUP)).filter(|d| d.is_dir())
}

/// The median of one subject, if criterion wrote it during this run.
fn median(case: &str, subject: &str, since: SystemTime) -> Option<f64> {
    // Criterion names the directory of `case/subject` in a group `case_subject`.
    let path = criterion_dir()?.join(format!("{case}_{subject}")).join("new").join("estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= since;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    fresh.then(|| json["median"]["point_estimate"].as_f64()).flatten()
}

fn summary(since: SystemTime) {
    println!("\nJWT validation per request (medians; target layer/decode <= 1.05):");
    println!(
        "{:<12} {:>12} {:>14} {:>12} {:>14} {:>20}",
        "case", "decode", "hand_written", "layer", "layer/decode", "layer/hand_written"
    );
    for case in ["hs256", "rs256", "es256", "jwks_rs256"] {
        let (Some(d), Some(h), Some(l)) =
            (median(case, "decode", since), median(case, "hand_written", since), median(case, "layer", since))
        else {
            println!("{case:<12} (no fresh estimates: filtered run?)");
            continue;
        };
        println!("{case:<12} {:>10.0}ns {:>12.0}ns {:>10.0}ns {:>13.3}x {:>19.3}x", d, h, l, l / d, l / h);
    }
}
