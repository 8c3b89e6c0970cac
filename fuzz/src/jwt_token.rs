//! Bearer tokens from arbitrary bytes: `BearerToken`'s parsers, and
//! `JwtPropagationLayer` in front of a `service_fn`, on a current-thread
//! runtime built once.
//!
//! Input: one flag byte, then
//! - flag bit 0 clear: the raw `Authorization` value;
//! - set: a JWT header and claims (JSON, or anything) separated by `\n`,
//!   base64url-encoded into a token; with flag bit 1 it is signed with the
//!   layer's HS256 secret, otherwise what follows a second `\n` is its
//!   signature.
//!
//! Flag bit 2 picks the layer with several keys (HS256 `kid` "hs", HS384
//! `kid` "hs384", ES256 `kid` "ec": the token header is read to choose) over
//! the one with a single HS256 key and a 1 KiB cap; bit 3 sends the request
//! as gRPC.
//!
//! Properties:
//! - nothing panics;
//! - `BearerToken` accepts exactly `Bearer` (any case), spaces and an RFC
//!   6750 b64token of at most 16 KiB, shares the header's bytes, marks its
//!   value sensitive and never shows the token in `Debug`;
//! - the handler is called only for a token that `jsonwebtoken::decode` with
//!   the same key and rules accepts (no bypass), and is called for every
//!   such token the layer has a key for (no false refusal), with the same
//!   claims and the token current. The layer reads only `alg`, `kid` and
//!   `crit` of the header: it refuses `crit`, and a header with another
//!   field `jsonwebtoken` cannot read is checked by hand (`HS256`, the
//!   signature) with the claims checked by `jsonwebtoken`;
//! - a refusal is a `401` with `WWW-Authenticate: Bearer …` (gRPC:
//!   `grpc-status: 16`), carries the `JwtError`, and no header or error text
//!   repeats the token.

use std::cell::RefCell;
use std::convert::Infallible;
use std::sync::LazyLock;

use base64::Engine as _;
use http::{HeaderValue, Request, Response, StatusCode};
use jsonwebtoken::{DecodingKey, EncodingKey, Validation};
use tower::{service_fn, Layer, ServiceExt};
use tower_mesh::jwt::{Algorithm, BearerToken, Claims, JwtError, JwtKey, JwtPropagationLayer};

const SECRET: &[u8] = b"fuzzing secret for the HS256 key, 32+ bytes";
const SECRET_384: &[u8] = b"another secret, for the HS384 key, 48 bytes long!";
const EC_PUBLIC: &[u8] = include_bytes!("../../src/jwt/testdata/ec_public.pem");
const ISSUER: &str = "https://issuer.fuzz";
const AUDIENCE: &str = "fuzz";
const SINGLE_CAP: usize = 1024;
const MAX_LEN: usize = 16 * 1024;

static RT: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"));

thread_local! {
    /// What the handler saw: the claims and the current token.
    static SEEN: RefCell<Option<(Claims, Option<String>)>> = const { RefCell::new(None) };
}

fn handler() -> impl tower::Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone {
    service_fn(|req: Request<()>| async move {
        let claims = req.extensions().get::<Claims>().cloned().expect("the claims are in the extensions");
        let current = BearerToken::current().map(|t| t.expose().to_owned());
        SEEN.with(|s| *s.borrow_mut() = Some((claims, current)));
        Ok::<_, Infallible>(Response::new(String::new()))
    })
}

static SINGLE: LazyLock<JwtPropagationLayer> = LazyLock::new(|| {
    JwtPropagationLayer::builder()
        .key(JwtKey::hmac(SECRET, Algorithm::HS256).expect("a key"))
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .max_token_len(SINGLE_CAP)
        .build()
        .expect("a layer")
});

static MULTI: LazyLock<JwtPropagationLayer> = LazyLock::new(|| {
    JwtPropagationLayer::builder()
        .key(JwtKey::hmac(SECRET, Algorithm::HS256).expect("a key").with_kid("hs"))
        .key(JwtKey::hmac(SECRET_384, Algorithm::HS384).expect("a key").with_kid("hs384"))
        .key(JwtKey::ec_pem(EC_PUBLIC, Algorithm::ES256).expect("a key").with_kid("ec"))
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .build()
        .expect("a layer")
});

/// RFC 6750 `b64token`, written out again.
fn token68(b: &[u8]) -> bool {
    let body = b.iter().take_while(|&&c| c != b'=').count();
    body > 0
        && b[..body].iter().all(|c| c.is_ascii_alphanumeric() || b"-._~+/".contains(c))
        && b[body..].iter().all(|&c| c == b'=')
}

/// The token of an `Authorization` value, by the rules written out again.
fn bearer_of(v: &[u8]) -> Option<&[u8]> {
    if v.len() > MAX_LEN || v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = v[7..].trim_ascii_start();
    (token68(token) && v[7..].iter().take_while(|c| c.is_ascii_whitespace()).all(|&c| c == b' ')).then_some(token)
}

fn check_bearer(v: &[u8]) {
    if let Ok(s) = std::str::from_utf8(v) {
        match BearerToken::new(s) {
            Ok(t) => {
                assert!(token68(v) && v.len() <= MAX_LEN);
                assert_eq!(t.expose(), s);
                assert_eq!(t.len(), s.len());
                let hv = t.header_value();
                assert!(hv.is_sensitive());
                assert_eq!(hv.as_bytes(), [b"Bearer ", v].concat());
                assert_eq!(BearerToken::from_authorization(&hv).ok().as_ref(), Some(&t));
            }
            Err(_) => assert!(!(token68(v) && v.len() <= MAX_LEN)),
        }
    }
    let Ok(hv) = HeaderValue::from_bytes(v) else { return };
    match BearerToken::from_authorization(&hv) {
        Ok(t) => {
            let expected = bearer_of(v).expect("accepted by the rules");
            assert_eq!(t.expose().as_bytes(), expected);
            assert!(v.ends_with(t.expose().as_bytes()));
            assert_eq!(t.header_value(), hv);
            assert!(t.header_value().is_sensitive());
            let shown = format!("{t:?}");
            assert!(!shown.contains(t.expose()) || "BearerToken([redacted])".contains(t.expose()));
        }
        Err(_) => assert!(bearer_of(v).is_none(), "refused {:?}", String::from_utf8_lossy(v)),
    }
}

fn validation() -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 60;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.required_spec_claims = ["exp", "iss", "aud"].into_iter().map(String::from).collect();
    v
}

/// The token's header as JSON, if it is a JSON object.
fn header_json(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?;
    match serde_json::from_slice(&json).ok()? {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

/// What `jsonwebtoken` alone says of `token` with the HS256 key and the
/// layer's rules. The layer also refuses a header naming `crit` extensions
/// (it understands none).
fn reference(token: &str) -> Option<Claims> {
    if header_json(token).is_some_and(|h| h.contains_key("crit")) {
        return None;
    }
    jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(SECRET), &validation()).ok().map(|d| d.claims)
}

/// For a token the layer accepted whose header `jsonwebtoken` does not read
/// (a header field the layer does not use, of another type than
/// `jsonwebtoken` wants): the layer reads `alg` and `kid` only, so check
/// that by hand — a JSON object naming `HS256`, no `crit`, a signature that
/// verifies with the HS256 key — and the claims with `jsonwebtoken`, on the
/// same claims signed again under a plain header.
fn reference_odd_header(token: &str) -> Option<Claims> {
    let header = header_json(token)?;
    if header.get("alg")?.as_str()? != "HS256" || header.contains_key("crit") {
        return None;
    }
    let (message, signature) = token.rsplit_once('.')?;
    let key = DecodingKey::from_secret(SECRET);
    if !jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, Algorithm::HS256).ok()? {
        return None;
    }
    let claims = message.split_once('.')?.1;
    let plain = format!("{}.{claims}", b64(br#"{"alg":"HS256"}"#));
    let resigned =
        jsonwebtoken::crypto::sign(plain.as_bytes(), &EncodingKey::from_secret(SECRET), Algorithm::HS256).ok()?;
    jsonwebtoken::decode::<Claims>(format!("{plain}.{resigned}"), &key, &validation()).ok().map(|d| d.claims)
}

/// Send `authorization` through the layer: the handler's view, or the refusal.
fn through_layer(
    multi: bool,
    grpc: bool,
    authorization: Option<&HeaderValue>,
) -> Result<(Claims, Option<String>), Box<Response<String>>> {
    let svc = if multi { &*MULTI } else { &*SINGLE }.layer(handler());
    let mut req = Request::new(());
    if let Some(v) = authorization {
        req.headers_mut().insert(http::header::AUTHORIZATION, v.clone());
    }
    if grpc {
        req.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    }
    SEEN.with(|s| s.borrow_mut().take());
    let res = RT.block_on(svc.oneshot(req)).expect("infallible");
    match SEEN.with(|s| s.borrow_mut().take()) {
        Some(seen) => {
            assert_eq!(res.status(), StatusCode::OK);
            Ok(seen)
        }
        None => Err(Box::new(res)),
    }
}

fn check_layer(multi: bool, grpc: bool, authorization: Option<&HeaderValue>) {
    let token = authorization.and_then(|v| bearer_of(v.as_bytes())).and_then(|t| std::str::from_utf8(t).ok());
    // Which key the layer would use for a token `jsonwebtoken` accepts with the HS256 key.
    let has_key = |t: &str| {
        let fits =
            !multi || jsonwebtoken::decode_header(t).is_ok_and(|h| matches!(h.kid.as_deref(), None | Some("hs")));
        let size = authorization.map_or(0, HeaderValue::len);
        fits && size <= if multi { 8 * 1024 } else { SINGLE_CAP }
    };
    let mut outcome = through_layer(multi, grpc, authorization);
    let mut expected = token.and_then(reference);
    if outcome.is_ok() != (expected.is_some() && token.is_some_and(has_key)) {
        // `exp` / `nbf` right at the edge: a second may have passed between the two checks.
        outcome = through_layer(multi, grpc, authorization);
        expected = token.and_then(reference);
    }
    match outcome {
        Ok((claims, current)) => {
            let token = token.expect("the handler ran without a bearer token");
            let odd_header = jsonwebtoken::decode_header(token).is_err();
            let reference = expected
                .or_else(|| odd_header.then(|| reference_odd_header(token)).flatten())
                .unwrap_or_else(|| panic!("the layer accepted a token jsonwebtoken refuses: {token}"));
            assert_eq!(claims, reference, "the handler gets the claims");
            assert_eq!(current.as_deref(), Some(token), "the token is current in the handler");
        }
        Err(res) => {
            if let (Some(t), Some(_)) = (token, &expected) {
                assert!(!has_key(t), "the layer refused a token jsonwebtoken accepts: {t}");
            }
            let err = res.extensions().get::<JwtError>().expect("the refusal carries its reason").clone();
            if authorization.is_none() {
                assert!(matches!(err, JwtError::Missing));
            }
            if grpc {
                assert_eq!(res.headers().get("grpc-status").map(HeaderValue::as_bytes), Some(&b"16"[..]));
            } else {
                assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
                let challenge = res.headers().get(http::header::WWW_AUTHENTICATE).expect("a challenge");
                let challenge = challenge.to_str().expect("ASCII");
                match err {
                    JwtError::Missing => assert_eq!(challenge, "Bearer"),
                    _ => assert!(challenge.starts_with("Bearer error=\"invalid_token\""), "{challenge}"),
                }
            }
            // Nothing repeats the token: the answer's headers are the fixed
            // ones, and the error names the reason only.
            for (name, value) in res.headers() {
                assert!(
                    ["www-authenticate", "grpc-status", "grpc-message", "content-type"].contains(&name.as_str()),
                    "unexpected header {name}: {value:?}"
                );
            }
            if let Some(t) = token.filter(|t| t.len() >= 32) {
                let tail = &t[t.len() - 32..];
                let shown = format!("{err} {err:?} {:?}", res.headers());
                assert!(!shown.contains(tail), "{shown}");
            }
        }
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// One input: the properties above, checked with assertions (a failure panics).
pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let (multi, grpc) = (flags & 4 != 0, flags & 8 != 0);
    if flags & 1 == 0 {
        check_bearer(rest);
        let value = HeaderValue::from_bytes(rest).ok();
        if rest.is_empty() {
            check_layer(multi, grpc, None);
        } else if let Some(v) = &value {
            check_layer(multi, grpc, Some(v));
        }
        return;
    }
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let (header, claims, signature) =
        (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next());
    let signing_input = format!("{}.{}", b64(header), b64(claims));
    let signature = if flags & 2 != 0 {
        jsonwebtoken::crypto::sign(signing_input.as_bytes(), &EncodingKey::from_secret(SECRET), Algorithm::HS256)
            .expect("HMAC signs")
    } else {
        b64(signature.unwrap_or_default())
    };
    let token = format!("{signing_input}.{signature}");
    check_bearer(token.as_bytes());
    let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("base64url is a valid header value");
    check_layer(multi, grpc, Some(&value));
}
