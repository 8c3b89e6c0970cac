//! Unit tests of the JWT layers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use jsonwebtoken::{encode, EncodingKey, Header};
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};

use super::*;
use crate::classify::GrpcCode;
use crate::error::{error_response, ErrorResponse};

const SECRET: &[u8] = b"unit-test secret, 32 bytes or more";
const RSA_PRIVATE: &str = include_str!("testdata/rsa1_private.pem");
const RSA_PUBLIC: &str = include_str!("testdata/rsa1_public.pem");
const EC_PRIVATE: &str = include_str!("testdata/ec_private.pem");
const EC_PUBLIC: &str = include_str!("testdata/ec_public.pem");
const ED_PRIVATE: &str = include_str!("testdata/ed_private.pem");
const ED_PUBLIC: &str = include_str!("testdata/ed_public.pem");

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims() -> serde_json::Value {
    serde_json::json!({ "sub": "alice", "iss": "issuer", "aud": "api", "exp": now() + 300 })
}

fn hs256(claims: &serde_json::Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

fn layer() -> JwtPropagationLayer {
    JwtPropagationLayer::builder()
        .key(JwtKey::hmac(SECRET, Algorithm::HS256).unwrap())
        .issuer("issuer")
        .audience("api")
        .leeway(std::time::Duration::from_secs(5))
        .build()
        .unwrap()
}

fn bearer(token: &str) -> Request<()> {
    Request::get("/").header("authorization", format!("Bearer {token}")).body(()).unwrap()
}

/// A handler that counts its calls and answers with the `sub` it saw and the
/// current token.
fn handler(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send> + Clone {
    service_fn(move |req: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let sub = req.extensions().get::<Claims>().and_then(|c| c.sub.clone()).unwrap_or_default();
            let token = BearerToken::current().map(|t| t.expose().to_string()).unwrap_or_default();
            Ok::<_, Infallible>(Response::new(format!("{sub} {token}")))
        }
    })
}

async fn reject_reason(layer: &JwtPropagationLayer, req: Request<()>) -> String {
    let calls = Arc::new(AtomicUsize::new(0));
    let res = layer.layer(handler(calls.clone())).oneshot(req).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler must not be called");
    assert_ne!(res.status(), StatusCode::OK);
    res.extensions().get::<JwtError>().expect("the error is in the extensions").reason().to_string()
}

#[tokio::test]
async fn valid_token_reaches_the_handler_with_claims_and_current_token() {
    let token = hs256(&claims());
    let calls = Arc::new(AtomicUsize::new(0));
    let res = layer().layer(handler(calls.clone())).oneshot(bearer(&token)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body(), format!("alice {token}"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(BearerToken::current().is_none(), "the token is current only inside the handler");
}

#[tokio::test]
async fn each_bad_token_has_its_reason() {
    let l = layer();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims();
        f(&mut c);
        hs256(&c)
    };
    let missing = Request::get("/").body(()).unwrap();
    assert_eq!(reject_reason(&l, missing).await, "missing");
    assert_eq!(reject_reason(&l, bearer("not-a-jwt")).await, "malformed");
    assert_eq!(reject_reason(&l, bearer("a.b.c")).await, "malformed");
    let basic = Request::get("/").header("authorization", "Basic YWxpY2U6cHc=").body(()).unwrap();
    assert_eq!(reject_reason(&l, basic).await, "malformed");
    let two = Request::get("/")
        .header("authorization", format!("Bearer {}", hs256(&claims())))
        .header("authorization", format!("Bearer {}", hs256(&claims())))
        .body(())
        .unwrap();
    assert_eq!(reject_reason(&l, two).await, "malformed");
    assert_eq!(reject_reason(&l, bearer(&"a".repeat(9000))).await, "too_large");
    assert_eq!(reject_reason(&l, bearer(&with(&|c| c["exp"] = (now() - 60).into()))).await, "expired");
    assert_eq!(reject_reason(&l, bearer(&with(&|c| c["nbf"] = (now() + 60).into()))).await, "not_yet_valid");
    assert_eq!(reject_reason(&l, bearer(&with(&|c| c["aud"] = "other".into()))).await, "audience");
    assert_eq!(reject_reason(&l, bearer(&with(&|c| c["aud"] = serde_json::json!(["x", "y"])))).await, "audience");
    assert_eq!(reject_reason(&l, bearer(&with(&|c| c["iss"] = "evil".into()))).await, "issuer");
    assert_eq!(
        reject_reason(&l, bearer(&with(&|c| drop(c.as_object_mut().unwrap().remove("iss"))))).await,
        "missing_claim"
    );
    assert_eq!(
        reject_reason(&l, bearer(&with(&|c| drop(c.as_object_mut().unwrap().remove("exp"))))).await,
        "missing_claim"
    );
    assert_eq!(reject_reason(&l, bearer(&with(&|c| c["exp"] = "soon".into()))).await, "invalid_claims");
    let other_secret =
        encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(b"another secret....")).unwrap();
    assert_eq!(reject_reason(&l, bearer(&other_secret)).await, "signature");
    let hs384 = encode(&Header::new(Algorithm::HS384), &claims(), &EncodingKey::from_secret(SECRET)).unwrap();
    assert_eq!(reject_reason(&l, bearer(&hs384)).await, "algorithm");
    assert_eq!(reject_reason(&l, bearer(&unsigned(&claims()))).await, "algorithm");
}

/// The server layer leaves the token's characters to the verification
/// (`jsonwebtoken` decodes all three parts as unpadded base64url): a token
/// with any other character in any part — `b64token` characters outside
/// base64url (`~ + / =`), separators, obs-text — never reaches the handler,
/// and is never made current.
#[tokio::test]
async fn a_token_with_a_character_outside_base64url_is_refused_in_every_part() {
    let l = layer();
    let token = hs256(&claims());
    let dots: Vec<usize> = token.match_indices('.').map(|(i, _)| i).collect();
    // A position inside the header, the claims and the signature.
    let positions = [dots[0] / 2, (dots[0] + dots[1]) / 2, (dots[1] + token.len()) / 2];
    for bad in [b'~', b'+', b'/', b'=', b'!', b'"', b' ', b'\t', 0x80, 0xff] {
        for at in positions {
            let mut value = format!("Bearer {token}").into_bytes();
            value.insert(7 + at, bad);
            let header = HeaderValue::from_bytes(&value).unwrap();
            let req = Request::get("/").header("authorization", header).body(()).unwrap();
            let reason = reject_reason(&l, req).await;
            // A changed header or signature part no longer decodes; a changed
            // claims part no longer matches the signature, which is checked first.
            assert!(matches!(reason.as_str(), "malformed" | "signature"), "byte {bad:#04x} at {at}: {reason}");
        }
    }
    // Padding after the signature is refused as well.
    assert_eq!(reject_reason(&l, bearer(&format!("{token}=="))).await, "malformed");
}

/// An `alg: none` token (no signature).
fn unsigned(claims: &serde_json::Value) -> String {
    use jwt_base64::Engine;
    let b64 = |v: &serde_json::Value| jwt_base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", b64(&serde_json::json!({"alg": "none", "typ": "JWT"})), b64(claims))
}

#[tokio::test]
async fn leeway_lets_a_just_expired_token_through() {
    let mut c = claims();
    c["exp"] = (now() - 2).into();
    let calls = Arc::new(AtomicUsize::new(0));
    let res = layer().layer(handler(calls)).oneshot(bearer(&hs256(&c))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn rejection_is_401_with_a_challenge_or_grpc_unauthenticated() {
    let l = layer();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = l.layer(handler(calls));
    let res = svc.clone().oneshot(bearer("x.y.z")).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\", error_description=\"malformed token\""
    );
    // RFC 6750 §3.1: no error code when no token came.
    let res = svc.clone().oneshot(Request::get("/").body(()).unwrap()).await.unwrap();
    assert_eq!(res.headers()["www-authenticate"], "Bearer");

    let grpc = Request::post("/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("authorization", "Bearer x.y.z")
        .body(())
        .unwrap();
    let res = svc.oneshot(grpc).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "trailers-only gRPC answer");
    assert_eq!(res.headers()["grpc-status"], "16");
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert!(res.headers().get("www-authenticate").is_none());
}

#[tokio::test]
async fn realm_goes_in_the_challenge() {
    let l = JwtPropagationLayer::builder()
        .key(JwtKey::hmac(SECRET, Algorithm::HS256).unwrap())
        .any_audience()
        .realm("orders\"\r\n")
        .build()
        .unwrap();
    let res = l.layer(handler(Arc::default())).oneshot(bearer("x.y.z")).await.unwrap();
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer realm=\"orders\", error=\"invalid_token\", error_description=\"malformed token\""
    );
}

#[test]
fn errors_map_to_401_unauthenticated_through_server_error_layer() {
    let e = JwtError::Expired;
    assert_eq!(
        error_response(&e),
        Some(ErrorResponse { status: StatusCode::UNAUTHORIZED, grpc: GrpcCode::Unauthenticated, retry_after: None })
    );
    let boxed: crate::BoxError = Box::new(JwtError::Exchange(Arc::new(std::fmt::Error)));
    assert_eq!(error_response(&*boxed).unwrap().status, StatusCode::UNAUTHORIZED);
    let e = JwtError::KeysUnavailable(Arc::new(JwksError::Timeout));
    assert_eq!(error_response(&e).unwrap().grpc, GrpcCode::Unavailable);
    assert_eq!(e.to_string(), "token keys unavailable");
    assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "JWKS request timed out");
}

#[tokio::test]
async fn server_error_layer_answers_an_exchange_failure_401() {
    let svc =
        tower::ServiceBuilder::new().layer(crate::error::ServerErrorLayer::new()).service_fn(|_: Request<()>| async {
            Err::<Response<String>, _>(JwtError::Exchange(Arc::new(std::fmt::Error)))
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn rs256_es256_and_eddsa_keys_verify_their_tokens_only() {
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
    let l = JwtPropagationLayer::builder()
        .key(JwtKey::rsa_pem(RSA_PUBLIC, Algorithm::RS256).unwrap().with_kid("rsa"))
        .key(JwtKey::ec_pem(EC_PUBLIC, Algorithm::ES256).unwrap().with_kid("ec"))
        .key(JwtKey::ed_pem(ED_PUBLIC).unwrap())
        .audience("api")
        .build()
        .unwrap();
    let token = |alg, kid: Option<&str>, key: &EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        encode(&h, &claims(), key).unwrap()
    };
    for t in [
        token(Algorithm::RS256, Some("rsa"), &rsa),
        token(Algorithm::ES256, Some("ec"), &ec),
        token(Algorithm::EdDSA, None, &ed),
        // Without a kid: the first key of the token's algorithm.
        token(Algorithm::RS256, None, &rsa),
    ] {
        let res = l.layer(handler(Arc::default())).oneshot(bearer(&t)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    // The EC token presented as the RSA key's: that key's algorithm wins.
    assert_eq!(reject_reason(&l, bearer(&token(Algorithm::ES256, Some("rsa"), &ec))).await, "algorithm");
    assert_eq!(reject_reason(&l, bearer(&token(Algorithm::RS256, Some("nope"), &rsa))).await, "unknown_key");
    // HS256 with the RSA public key as secret: refused before any HMAC.
    let forged =
        encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(RSA_PUBLIC.as_bytes())).unwrap();
    assert_eq!(reject_reason(&l, bearer(&forged)).await, "algorithm");
}

#[test]
fn configuration_errors() {
    let err = |b: JwtPropagationBuilder<Claims>| b.build().unwrap_err().to_string();
    assert_eq!(err(JwtPropagationLayer::builder().any_audience()), "no JWT key and no JWKS URL configured");
    let key = || JwtKey::hmac(SECRET, Algorithm::HS256).unwrap();
    assert!(err(JwtPropagationLayer::builder().key(key())).contains("jwt.audience"));
    assert!(err(JwtPropagationLayer::builder().key(key()).any_audience().max_token_len(0)).contains("max_token_len"));
    assert!(
        err(JwtPropagationLayer::builder().key(key()).any_audience().max_token_len(1 << 20)).contains("max_token_len")
    );
    assert_eq!(
        err(JwtPropagationLayer::builder().key(key().with_kid("a")).key(key().with_kid("a")).any_audience()),
        "two JWT keys with kid `a`"
    );
    assert_eq!(
        JwtKey::rsa_pem(RSA_PUBLIC, Algorithm::HS256).unwrap_err().to_string(),
        "algorithm HS256 cannot be used with an RSA key"
    );
    assert!(JwtKey::rsa_pem("not a pem", Algorithm::RS256).is_err());
    assert!(JwtKey::ec_pem(RSA_PUBLIC, Algorithm::ES256).is_err());
    assert!(Jwks::new("ftp://x/jwks").is_err());
    assert!(Jwks::new("/jwks").is_err());
    assert!(Jwks::new("http://user@host/jwks").is_err());
    let jwks = Jwks::new("http://127.0.0.1:1/jwks").unwrap().algorithms([Algorithm::HS256]);
    assert!(err(JwtPropagationLayer::builder().jwks(jwks).any_audience()).contains("jwt.jwks.algorithms"));
}

#[test]
fn key_debug_shows_no_key_material() {
    let k = JwtKey::hmac(SECRET, Algorithm::HS256).unwrap().with_kid("k");
    let s = format!("{k:?} {:?}", layer());
    assert!(!s.contains("unit-test"), "{s}");
    assert!(s.contains("HS256"));
}

#[test]
fn bearer_token_parsing() {
    let v = |s: &str| BearerToken::from_authorization(&HeaderValue::from_str(s).unwrap());
    assert_eq!(v("Bearer abc.def.ghi").unwrap().expose(), "abc.def.ghi");
    assert_eq!(v("bearer   abc==").unwrap().expose(), "abc==");
    assert_eq!(v("BEARER a-b_c~d+e/f").unwrap().len(), 11);
    for bad in [
        "Bearer",
        "Bearer ",
        "Bearer  ",
        "Bearerabc",
        "Basic abc",
        "Bearer a b",
        "Bearer a=b",
        "Bearer =",
        "Bearer a,b",
    ] {
        assert!(matches!(v(bad), Err(JwtError::Malformed)), "{bad}");
    }
    let t = v("Bearer abc").unwrap();
    assert_eq!(format!("{t:?}"), "BearerToken([redacted])");
    let h = t.header_value();
    assert!(h.is_sensitive());
    assert_eq!(h, "Bearer abc");
    assert_eq!(format!("{h:?}"), "Sensitive");
    assert!(BearerToken::new("").is_err());
    assert!(matches!(BearerToken::new(&"a".repeat(20_000)), Err(JwtError::TooLarge { .. })));
    assert_eq!(BearerToken::new("x.y.z").unwrap().header_value(), "Bearer x.y.z");
}

#[tokio::test]
async fn token_scope_follows_the_future_and_nests() {
    let outer = BearerToken::new("outer").unwrap();
    let inner = BearerToken::new("inner").unwrap();
    let fut = outer.scope(async move {
        assert_eq!(BearerToken::current().unwrap().expose(), "outer");
        tokio::task::yield_now().await;
        inner
            .scope(async {
                tokio::task::yield_now().await;
                assert_eq!(BearerToken::current().unwrap().expose(), "inner");
            })
            .await;
        assert_eq!(BearerToken::current().unwrap().expose(), "outer");
    });
    assert!(BearerToken::current().is_none());
    fut.await;
    assert!(BearerToken::current().is_none());
}

#[tokio::test]
async fn dropping_the_response_future_releases_the_request() {
    // A handler that never completes: dropping the future drops everything,
    // and the token is not left current.
    let svc = layer().layer(service_fn(|_req: Request<()>| async {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let mut fut = tokio_test::task::spawn(svc.oneshot(bearer(&hs256(&claims()))));
    assert!(fut.poll().is_pending());
    drop(fut);
    assert!(BearerToken::current().is_none());
}

#[test]
fn claims_audience_is_one_or_many() {
    let c: Claims = serde_json::from_str(r#"{"aud":["a","b"],"x":1}"#).unwrap();
    assert_eq!(c.aud, ["a", "b"]);
    assert_eq!(c.extra["x"], 1);
    let c: Claims = serde_json::from_str(r#"{"aud":"a"}"#).unwrap();
    assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"aud":"a"}"#);
    let c: Claims = serde_json::from_str(r#"{"aud":null}"#).unwrap();
    assert!(c.aud.is_empty());
}

#[tokio::test]
async fn custom_claims_type() {
    #[derive(Clone, serde::Deserialize)]
    struct Mine {
        sub: String,
        scope: String,
    }
    let l = JwtPropagationLayer::builder()
        .key(JwtKey::hmac(SECRET, Algorithm::HS256).unwrap())
        .audience("api")
        .claims::<Mine>()
        .build()
        .unwrap();
    let mut c = claims();
    c["scope"] = "read".into();
    let svc = l.layer(service_fn(|req: Request<()>| async move {
        let m = req.extensions().get::<Mine>().unwrap();
        Ok::<_, Infallible>(Response::new(format!("{} {}", m.sub, m.scope)))
    }));
    assert_eq!(svc.clone().oneshot(bearer(&hs256(&c))).await.unwrap().into_body(), "alice read");
    // Claims that don't fit the type: refused.
    let res = svc.oneshot(bearer(&hs256(&claims()))).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

fn counters(snapshotter: &metrics_util::debugging::Snapshotter) -> HashMap<String, u64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(k, _, _, v)| match v {
            metrics_util::debugging::DebugValue::Counter(c) => {
                let labels: Vec<String> = k.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
                Some((format!("{}{{{}}}", k.key().name(), labels.join(",")), c))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn metrics_count_validated_rejected_and_outbound() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (server, client) = metrics::with_local_recorder(&recorder, || {
        let server = JwtPropagationLayer::builder()
            .key(JwtKey::hmac(SECRET, Algorithm::HS256).unwrap())
            .audience("api")
            .name("edge")
            .build()
            .unwrap();
        let client = JwtClientLayer::new(Allowlist::new(["http://ok.local"]).unwrap()).name("out");
        (server, client)
    });
    let svc = server.layer(handler(Arc::default()));
    svc.clone().oneshot(bearer(&hs256(&claims()))).await.unwrap();
    svc.clone().oneshot(bearer("x.y.z")).await.unwrap();
    svc.clone().oneshot(Request::get("/").body(()).unwrap()).await.unwrap();
    let out = client.layer(service_fn(|_: Request<()>| async { Ok::<_, Infallible>(()) }));
    let to = |uri: &str| Request::get(uri).body(()).unwrap();
    out.clone().oneshot(to("http://ok.local/")).await.unwrap();
    let token = BearerToken::new("t").unwrap();
    token.clone().scope(out.clone().oneshot(to("http://ok.local/"))).await.unwrap();
    token.scope(out.oneshot(to("http://nope.local/"))).await.unwrap();
    let c = counters(&snapshotter);
    assert_eq!(c["tower_mesh_jwt_validated_total{service=edge}"], 1);
    assert_eq!(c["tower_mesh_jwt_rejected_total{service=edge,reason=malformed}"], 1);
    assert_eq!(c["tower_mesh_jwt_rejected_total{service=edge,reason=missing}"], 1);
    assert_eq!(c["tower_mesh_jwt_rejected_total{service=edge,reason=expired}"], 0);
    assert_eq!(c["tower_mesh_jwt_outbound_total{service=out,outcome=no_token}"], 1);
    assert_eq!(c["tower_mesh_jwt_outbound_total{service=out,outcome=attached}"], 1);
    assert_eq!(c["tower_mesh_jwt_outbound_total{service=out,outcome=not_allowed}"], 1);
}

// ----- client side -----

/// A downstream that answers with the `authorization` header it got.
fn echo_auth() -> impl tower::Service<Request<()>, Response = Option<HeaderValue>, Error = Infallible> + Clone {
    service_fn(|req: Request<()>| async move { Ok::<_, Infallible>(req.headers().get("authorization").cloned()) })
}

#[tokio::test]
async fn client_attaches_only_to_allowed_targets() {
    let client = JwtClientLayer::new(Allowlist::new(["api.local:8443", "*.mesh"]).unwrap()).layer(echo_auth());
    let token = BearerToken::new("tok").unwrap();
    let send = |uri: &'static str| {
        let client = client.clone();
        token.clone().scope(async move { client.oneshot(Request::get(uri).body(()).unwrap()).await.unwrap() })
    };
    let sent = send("https://api.local:8443/").await.unwrap();
    assert_eq!(sent, "Bearer tok");
    assert!(sent.is_sensitive());
    assert!(send("https://api.local/").await.is_none(), "port 443 is not 8443");
    assert!(send("https://api.local.evil:8443/").await.is_none());
    assert!(send("https://a.b.mesh/").await.is_some());
    assert!(send("https://mesh/").await.is_none());
    assert!(send("/relative").await.is_none(), "no target, no token");
    // Outside a request's scope: nothing to send.
    assert!(client.clone().oneshot(Request::get("https://a.mesh/").body(()).unwrap()).await.unwrap().is_none());
}

#[tokio::test]
async fn client_sends_no_token_in_clear_text_unless_the_entry_says_http() {
    let allow = Allowlist::new(["allowed.host", "*.mesh", "http://dev.host:8080", "https://tls.host"]).unwrap();
    let client = JwtClientLayer::new(allow).layer(echo_auth());
    let token = BearerToken::new("tok").unwrap();
    let send = |uri: &'static str| {
        let client = client.clone();
        token.clone().scope(async move { client.oneshot(Request::get(uri).body(()).unwrap()).await.unwrap() })
    };
    // A plain entry means https only.
    assert_eq!(send("https://allowed.host/").await.unwrap(), "Bearer tok");
    assert!(send("http://allowed.host/").await.is_none(), "token sent over plain http");
    assert!(send("http://allowed.host:443/").await.is_none(), "token sent over plain http");
    assert!(send("http://a.mesh/").await.is_none(), "token sent over plain http");
    assert!(send("https://a.mesh/").await.is_some());
    // An explicit `http://` entry allows plain http, to that target only.
    assert_eq!(send("http://dev.host:8080/").await.unwrap(), "Bearer tok");
    assert!(send("http://dev.host:8081/").await.is_none());
    assert!(send("https://dev.host:8080/").await.is_none(), "an http:// entry allows http only");
    // An explicit `https://` entry is the default.
    assert!(send("https://tls.host/").await.is_some());
    assert!(send("http://tls.host/").await.is_none());
    // Any other scheme: nothing.
    assert!(send("ws://allowed.host/").await.is_none());
    // A path-only request with an origin without a scheme: scheme unknown.
    let origin_only = JwtClientLayer::new(Allowlist::new(["allowed.host"]).unwrap())
        .origin(http::Uri::from_static("allowed.host"))
        .layer(echo_auth());
    let got = token.clone().scope(origin_only.oneshot(Request::get("/x").body(()).unwrap())).await.unwrap();
    assert!(got.is_none(), "token sent to an origin of unknown scheme");
}

#[tokio::test]
async fn client_keeps_a_callers_authorization_and_uses_the_origin() {
    let allow = Allowlist::new(["http://grpc.local:50051"]).unwrap();
    let client = JwtClientLayer::new(allow).origin("http://grpc.local:50051".parse().unwrap()).layer(echo_auth());
    let token = BearerToken::new("tok").unwrap();
    let path_only = token.clone().scope(client.clone().oneshot(Request::post("/pkg.Svc/M").body(()).unwrap()));
    assert_eq!(path_only.await.unwrap().unwrap(), "Bearer tok");
    let own = Request::get("http://grpc.local:50051/").header("authorization", "Basic x").body(()).unwrap();
    assert_eq!(token.scope(client.oneshot(own)).await.unwrap().unwrap(), "Basic x");
}

#[tokio::test]
async fn client_exchange_swaps_the_token_per_target() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let client = JwtClientLayer::new(Allowlist::new(["http://*.local"]).unwrap())
        .exchange(exchange_fn(move |token: BearerToken, target: http::uri::Authority| {
            s.lock().unwrap().push((token.expose().to_string(), target.to_string()));
            async move {
                tokio::task::yield_now().await;
                BearerToken::new(&format!("for-{}", target.host().replace('.', "-"))).map_err(Into::into)
            }
        }))
        .layer(echo_auth());
    let token = BearerToken::new("inbound").unwrap();
    let got = token.clone().scope(client.clone().oneshot(Request::get("http://a.local/").body(()).unwrap())).await;
    assert_eq!(got.unwrap().unwrap(), "Bearer for-a-local");
    // Not allowed: no exchange either.
    let got = token.scope(client.oneshot(Request::get("http://other/").body(()).unwrap())).await;
    assert!(got.unwrap().is_none());
    assert_eq!(*seen.lock().unwrap(), [("inbound".to_string(), "a.local".to_string())]);
}

#[tokio::test]
async fn client_exchange_failure_sends_nothing() {
    let called = Arc::new(AtomicUsize::new(0));
    let c = called.clone();
    let client = JwtClientLayer::new(Allowlist::new(["http://a.local"]).unwrap())
        .exchange(exchange_fn(|_, _| async { Err::<BearerToken, _>("token service down".into()) }))
        .layer(service_fn(move |_: Request<()>| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(()) }
        }));
    let err = BearerToken::new("t")
        .unwrap()
        .scope(client.oneshot(Request::get("http://a.local/").body(()).unwrap()))
        .await
        .unwrap_err();
    let err = err.downcast_ref::<JwtError>().unwrap();
    assert_eq!(err.reason(), "exchange");
    assert_eq!(std::error::Error::source(err).unwrap().to_string(), "token service down");
    assert_eq!(called.load(Ordering::SeqCst), 0);
}

// ----- allowlist -----

#[test]
fn allowlist_entries() {
    for bad in [
        "",
        "*",
        "*.",
        "*.*.a",
        "a.*.b",
        "a@b",
        "ftp://a",
        "http://",
        "http://a/",
        "http://http://a",
        "a/b",
        "*.127.0.0.1",
        "*.[::1]",
        "a..b",
        ".a",
        "a:",
        "a:99999",
    ] {
        assert!(Allowlist::new([bad]).is_err(), "{bad:?} should be refused");
    }
    let a = Allowlist::new(["API.Local.", "[::1]:8080", "*.Mesh", "HTTP://Dev.Local:80", "https://tls.local"]).unwrap();
    assert_eq!(format!("{a:?}"), r#"["api.local", "[::1]:8080", "*.mesh", "http://dev.local:80", "tls.local"]"#);
    let ok = |uri: &str| a.allows_uri(&uri.parse().unwrap());
    assert!(ok("https://api.local/"));
    assert!(ok("https://API.LOCAL.:9/"));
    assert!(ok("https://[::1]:8080/"));
    assert!(!ok("https://[::1]:8081/"));
    assert!(ok("https://x.MESH/"));
    assert!(!ok("https://user@api.local/"), "user info is never trusted");
    assert!(!ok("http://api.local/"), "plain http needs an http:// entry");
    assert!(ok("http://dev.local/"));
    assert!(!ok("https://dev.local:80/"));
    assert!(ok("https://tls.local/"));
    assert!(Allowlist::none().is_empty());
    assert!(!Allowlist::none().allows_uri(&"http://a/".parse().unwrap()));
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"
}

fn domain() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..4).prop_map(|l| l.join("."))
}

fn allows(list: &Allowlist, host: &str, port: Option<u16>) -> bool {
    let authority = match port {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    list.allows(&authority.parse().unwrap(), Some(&http::uri::Scheme::HTTPS))
}

proptest! {
    #[test]
    fn exact_entry_matches_only_that_host(host in domain(), other in domain(), port in 1u16.., upper in any::<bool>()) {
        let list = Allowlist::new([host.as_str()]).unwrap();
        let shown = if upper { host.to_ascii_uppercase() } else { host.clone() };
        prop_assert!(allows(&list, &shown, Some(port)));
        prop_assert!(allows(&list, &shown, None));
        prop_assert_eq!(allows(&list, &other, Some(port)), other == host);
        // Neither a subdomain nor a longer name that ends or starts the same.
        for near in [format!("{other}.{host}"), format!("{host}.{other}"), format!("x{host}")] {
            prop_assert!(!allows(&list, &near, None), "{} matched {}", near, host);
        }
    }

    #[test]
    fn entry_with_port_needs_that_port(host in domain(), port in 1u16.., other in 1u16..) {
        let list = Allowlist::new([format!("{host}:{port}")]).unwrap();
        prop_assert!(allows(&list, &host, Some(port)));
        prop_assert_eq!(allows(&list, &host, Some(other)), other == port);
        prop_assert_eq!(allows(&list, &host, None), port == 443, "no port: https's 443");
    }

    #[test]
    fn wildcard_matches_strict_subdomains_only(suffix in domain(), sub in domain(), glued in label()) {
        let list = Allowlist::new([format!("*.{suffix}")]).unwrap();
        let under = format!("{sub}.{suffix}");
        let glued = format!("{glued}{suffix}");
        prop_assert!(allows(&list, &under, Some(443)));
        prop_assert!(!allows(&list, &suffix, None));
        prop_assert!(!allows(&list, &glued, None));
        let reversed = format!("{suffix}.{sub}");
        prop_assert_eq!(allows(&list, &reversed, None), reversed.ends_with(&format!(".{suffix}")));
    }

    #[test]
    fn bearer_parsing_never_panics(value in "[ -~]{0,64}") {
        if let Ok(v) = HeaderValue::from_str(&value) {
            if let Ok(t) = BearerToken::from_authorization(&v) {
                prop_assert!(value.ends_with(t.expose()));
                prop_assert!(!t.is_empty());
            }
        }
    }
}
