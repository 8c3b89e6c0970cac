use std::convert::Infallible;
use std::fmt;
use std::io;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::channel::mpsc;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use proptest::prelude::*;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_test::mock;

use super::kind::ALL;
use super::parse::{self, Pushback};
use super::*;
use crate::classify::{GrpcCode, StatusSet};
use crate::error::{error_response, ErrorResponse, MeshError, ServerErrorLayer};
use crate::BoxError;

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap()
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

const ALL_GRPC: [GrpcCode; 17] = [
    GrpcCode::Ok,
    GrpcCode::Cancelled,
    GrpcCode::Unknown,
    GrpcCode::InvalidArgument,
    GrpcCode::DeadlineExceeded,
    GrpcCode::NotFound,
    GrpcCode::AlreadyExists,
    GrpcCode::PermissionDenied,
    GrpcCode::ResourceExhausted,
    GrpcCode::FailedPrecondition,
    GrpcCode::Aborted,
    GrpcCode::OutOfRange,
    GrpcCode::Unimplemented,
    GrpcCode::Internal,
    GrpcCode::Unavailable,
    GrpcCode::DataLoss,
    GrpcCode::Unauthenticated,
];

// ---------------------------------------------------------------- mappings

#[test]
fn every_http_status_maps_to_its_kind() {
    use ServiceErrorKind::*;
    for code in 100..=999u16 {
        let expected = match code {
            100..=399 => None,
            400 => Some(InvalidArgument),
            401 => Some(Unauthenticated),
            403 => Some(PermissionDenied),
            404 => Some(NotFound),
            408 => Some(DeadlineExceeded),
            409 => Some(Conflict),
            412 | 422 => Some(FailedPrecondition),
            429 => Some(RateLimited),
            499 => Some(Cancelled),
            402 | 405..=407 | 410 | 411 | 413..=421 | 423..=428 | 430..=498 => Some(ClientError),
            501 => Some(Unimplemented),
            502 | 503 => Some(Unavailable),
            504 => Some(DeadlineExceeded),
            _ => Some(Internal), // 500, 505..=599, 600..=999
        };
        assert_eq!(ServiceErrorKind::from_http_status(status(code)), expected, "HTTP {code}");
        assert_eq!(ServiceError::from_http(status(code), &HeaderMap::new(), b"").map(|e| e.kind()), expected);
    }
}

#[test]
fn every_grpc_code_maps_to_its_kind() {
    use ServiceErrorKind::*;
    let expected = [
        None,
        Some(Cancelled),
        Some(Internal),
        Some(InvalidArgument),
        Some(DeadlineExceeded),
        Some(NotFound),
        Some(Conflict),
        Some(PermissionDenied),
        Some(RateLimited),
        Some(FailedPrecondition),
        Some(Conflict),
        Some(InvalidArgument),
        Some(Unimplemented),
        Some(Internal),
        Some(Unavailable),
        Some(Internal),
        Some(Unauthenticated),
    ];
    for (code, kind) in ALL_GRPC.into_iter().zip(expected) {
        assert_eq!(ServiceErrorKind::from_grpc_code(code), kind, "{code:?}");
        assert_eq!(ServiceError::from_grpc(code, "m").map(|e| e.kind()), kind);
        assert_eq!(crate::classify::code_from_i32(code as i32), code);
    }
    assert_eq!(crate::classify::code_from_i32(17), GrpcCode::Unknown);
    assert_eq!(crate::classify::code_from_i32(-1), GrpcCode::Unknown);
}

#[test]
fn every_kind_answers_a_status_and_code_that_map_back_to_it() {
    use ServiceErrorKind::*;
    let table = [
        (InvalidArgument, 400, GrpcCode::InvalidArgument, false),
        (Unauthenticated, 401, GrpcCode::Unauthenticated, false),
        (PermissionDenied, 403, GrpcCode::PermissionDenied, false),
        (NotFound, 404, GrpcCode::NotFound, false),
        (Conflict, 409, GrpcCode::AlreadyExists, false),
        (FailedPrecondition, 412, GrpcCode::FailedPrecondition, false),
        (RateLimited, 429, GrpcCode::ResourceExhausted, true),
        (Cancelled, 499, GrpcCode::Cancelled, false),
        (Internal, 500, GrpcCode::Internal, false),
        (Unimplemented, 501, GrpcCode::Unimplemented, false),
        (Unavailable, 503, GrpcCode::Unavailable, true),
        (DeadlineExceeded, 504, GrpcCode::DeadlineExceeded, true),
        (Transport, 502, GrpcCode::Unavailable, true),
        (ClientError, 400, GrpcCode::InvalidArgument, false),
    ];
    assert_eq!(table.len(), ALL.len());
    for (i, (kind, http, grpc, retryable)) in table.into_iter().enumerate() {
        assert_eq!(ALL[i], kind);
        assert_eq!(kind.index(), i);
        assert_eq!(kind.http_status().as_u16(), http, "{kind:?}");
        assert_eq!(kind.grpc_code(), grpc, "{kind:?}");
        assert_eq!(kind.is_retryable(), retryable, "{kind:?}");
        // Round trip, except for the two kinds no status or code names.
        if !matches!(kind, Transport | ClientError) {
            assert_eq!(ServiceErrorKind::from_http_status(kind.http_status()), Some(kind));
            assert_eq!(ServiceErrorKind::from_grpc_code(kind.grpc_code()), Some(kind));
        }
        let e = ServiceError::new(kind, "");
        assert_eq!(MeshError::http_status(&e), kind.http_status());
        assert_eq!(MeshError::grpc_code(&e), kind.grpc_code());
    }
    let labels: std::collections::HashSet<_> = ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(labels.len(), ALL.len());
    assert_eq!(ServiceErrorKind::Unavailable.to_string(), "service unavailable");
}

#[test]
fn servers_answer_the_original_status_or_code_of_the_same_kind() {
    let h = HeaderMap::new();
    let answer = |e: &ServiceError| (MeshError::http_status(e).as_u16(), MeshError::grpc_code(e));
    let from = |code| ServiceError::from_http(status(code), &h, b"").unwrap();
    assert_eq!(answer(&from(502)), (502, GrpcCode::Unavailable));
    assert_eq!(answer(&from(422)), (422, GrpcCode::FailedPrecondition));
    assert_eq!(answer(&from(410)), (410, GrpcCode::InvalidArgument));
    assert_eq!(answer(&from(507)), (507, GrpcCode::Internal));
    // 408 is a DeadlineExceeded the gateway answers 504.
    assert_eq!(answer(&from(408)), (504, GrpcCode::DeadlineExceeded));
    let aborted = ServiceError::from_grpc(GrpcCode::Aborted, "").unwrap();
    assert_eq!(answer(&aborted), (409, GrpcCode::Aborted));
    let data_loss = ServiceError::from_grpc(GrpcCode::DataLoss, "").unwrap();
    assert_eq!(answer(&data_loss), (500, GrpcCode::DataLoss));
}

// ---------------------------------------------------------------- parsing

#[test]
fn retry_after_seconds_dates_and_garbage() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let parse = |v: &str| parse::retry_after(&HeaderValue::from_str(v).unwrap(), now);
    assert_eq!(parse("120"), Some(Duration::from_secs(120)));
    assert_eq!(parse(" 5 "), Some(Duration::from_secs(5)));
    assert_eq!(parse("0"), Some(Duration::ZERO));
    let in_30s = httpdate::fmt_http_date(now + Duration::from_secs(30));
    assert_eq!(parse(&in_30s), Some(Duration::from_secs(30)));
    let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
    assert_eq!(parse(&past), Some(Duration::ZERO));
    // Obsolete date formats are HTTP-dates too.
    let rfc850 = "Tuesday, 14-Nov-23 22:13:50 GMT"; // now + 30s
    assert_eq!(parse(rfc850), Some(Duration::from_secs(30)));
    assert_eq!(parse("99999999999999999999999"), Some(MAX_RETRY_AFTER));
    for garbage in ["", "soon", "-1", "1.5", "5s", "0x10", "Tue, 32 Nov 2023 22:13:50 GMT"] {
        assert_eq!(parse(garbage), None, "{garbage:?}");
    }
    let obs_text = HeaderValue::from_bytes(b"\xff12").unwrap();
    assert_eq!(parse::retry_after(&obs_text, now), None);
}

#[test]
fn grpc_pushback_wins_over_retry_after_and_can_refuse() {
    let now = SystemTime::now();
    let h = headers(&[("retry-after", "9"), ("grpc-retry-pushback-ms", "250")]);
    assert_eq!(parse::retry_hint(&h, now), Pushback::After(Duration::from_millis(250)));
    assert_eq!(parse::retry_hint(&headers(&[("retry-after", "9")]), now), Pushback::After(Duration::from_secs(9)));
    assert_eq!(parse::retry_hint(&headers(&[("retry-after", "never")]), now), Pushback::Unsaid);
    for refusal in ["-1", "soon", "", "1.5"] {
        assert_eq!(parse::pushback(&headers(&[("grpc-retry-pushback-ms", refusal)])), Pushback::Refused, "{refusal:?}");
    }
    // Non-ASCII spaces around the number make it malformed too (as the retry layer reads it).
    let mut nbsp = HeaderMap::new();
    nbsp.insert("grpc-retry-pushback-ms", HeaderValue::from_bytes("\u{a0}250".as_bytes()).unwrap());
    assert_eq!(parse::pushback(&nbsp), Pushback::Refused);
    // A refusal makes even an UNAVAILABLE not retryable.
    let e =
        ServiceError::from_grpc_headers(&headers(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "-1")])).unwrap();
    assert_eq!(e.kind(), ServiceErrorKind::Unavailable);
    assert_eq!(e.retry_after(), None);
    assert!(!e.is_retryable());
}

#[test]
fn body_excerpt_is_bounded_and_safe_to_log() {
    let long = vec![b'a'; 1000];
    let e = ServiceError::from_http(StatusCode::BAD_GATEWAY, &HeaderMap::new(), &long).unwrap();
    assert_eq!(e.body_excerpt().unwrap().len(), EXCERPT_LIMIT);
    assert_eq!(ServiceError::from_http(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"").unwrap().body_excerpt(), None);

    // A character cut by the limit is dropped, not replaced.
    let mut cut = vec![b'a'; 511];
    cut.extend_from_slice("é".as_bytes());
    let excerpt = parse::body_excerpt(&cut, 512).unwrap();
    assert_eq!(excerpt, "a".repeat(511));
    let euro = "€".repeat(200); // 3 bytes each: 512 = 170 * 3 + 2
    assert_eq!(parse::body_excerpt(euro.as_bytes(), 512).unwrap(), "€".repeat(170));
    // ...but one that is complete at the limit is kept.
    assert_eq!(parse::body_excerpt("ab€".as_bytes(), 5).unwrap(), "ab€");
    // Invalid UTF-8 in the middle is replaced.
    assert_eq!(parse::body_excerpt(b"a\xffb", 512).unwrap(), "a\u{FFFD}b");

    // Control characters, except \n and \t, and bidi overrides are replaced.
    let nasty = "\x1b[31mred\x1b[0m\r\nline\tx\0\u{7f}\u{85}\u{202E}evil";
    let clean = parse::body_excerpt(nasty.as_bytes(), 512).unwrap();
    assert_eq!(clean, "\u{FFFD}[31mred\u{FFFD}[0m\u{FFFD}\nline\tx\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}evil");
    assert_eq!(parse::body_excerpt(b"abc", 0), None);
}

#[test]
fn grpc_message_is_percent_decoded() {
    let decode = |s: &[u8]| parse::percent_decode(s);
    assert_eq!(decode(b"hello%20world"), "hello world");
    assert_eq!(decode(b"%E2%9C%93 done"), "✓ done");
    assert_eq!(decode(b"100%"), "100%");
    assert_eq!(decode(b"50%2"), "50%2");
    assert_eq!(decode(b"%zz%4"), "%zz%4");
    assert_eq!(decode(b"%25"), "%");
    assert_eq!(decode(b"%FF"), "\u{FFFD}");
    assert_eq!(parse::percent_encode("café 100%\n"), "caf%C3%A9 100%25%0A");

    let h = headers(&[("grpc-status", "5"), ("grpc-message", "order%2042%20not%20found%0Aagain%1B")]);
    let e = ServiceError::from_grpc_headers(&h).unwrap();
    assert_eq!(e.kind(), ServiceErrorKind::NotFound);
    assert_eq!(e.grpc_status(), Some(GrpcCode::NotFound));
    assert_eq!(e.status(), None);
    assert_eq!(e.message(), "order 42 not found\nagain\u{FFFD}");
    assert_eq!(e.to_string(), "not found (gRPC NOT_FOUND): order 42 not found\nagain\u{FFFD}");
}

#[test]
fn grpc_headers() {
    assert!(ServiceError::from_grpc_headers(&HeaderMap::new()).is_none());
    assert!(ServiceError::from_grpc_headers(&headers(&[("grpc-status", "0")])).is_none());
    assert!(ServiceError::from_grpc(GrpcCode::Ok, "").is_none());
    let e = ServiceError::from_grpc_headers(&headers(&[("grpc-status", "bogus")])).unwrap();
    assert_eq!((e.kind(), e.grpc_status()), (ServiceErrorKind::Internal, Some(GrpcCode::Unknown)));
    assert_eq!(e.message(), "");

    // RESOURCE_EXHAUSTED: retryable only with a pushback.
    let e = ServiceError::from_grpc_headers(&headers(&[("grpc-status", "8")])).unwrap();
    assert_eq!(e.kind(), ServiceErrorKind::RateLimited);
    assert!(!e.is_retryable());
    let e =
        ServiceError::from_grpc_headers(&headers(&[("grpc-status", "8"), ("grpc-retry-pushback-ms", "1500")])).unwrap();
    assert!(e.is_retryable());
    assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
    // ...while an HTTP 429 always is.
    assert!(ServiceError::from_http(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), b"").unwrap().is_retryable());

    // A gRPC proxy's HTTP error with a grpc-status: the code is more specific.
    let h = headers(&[("grpc-status", "16"), ("grpc-message", "no%20token")]);
    let e = ServiceError::from_http(StatusCode::BAD_GATEWAY, &h, b"").unwrap();
    assert_eq!(e.kind(), ServiceErrorKind::Unauthenticated);
    assert_eq!((e.status(), e.grpc_status()), (Some(StatusCode::BAD_GATEWAY), Some(GrpcCode::Unauthenticated)));
    assert_eq!(e.message(), "no token");
    assert_eq!(e.to_string(), "unauthenticated (HTTP 502, gRPC UNAUTHENTICATED): no token");
}

#[test]
fn http_errors_keep_status_retry_after_and_excerpt() {
    let h = headers(&[("retry-after", "7"), ("content-type", "text/plain")]);
    let e = ServiceError::from_http(StatusCode::SERVICE_UNAVAILABLE, &h, b"down for maintenance").unwrap();
    assert_eq!(e.kind(), ServiceErrorKind::Unavailable);
    assert_eq!(e.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(e.grpc_status(), None);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(e.body_excerpt(), Some("down for maintenance"));
    assert!(e.is_retryable());
    assert!(std::error::Error::source(&e).is_none());
    assert_eq!(e.to_string(), "service unavailable (HTTP 503)");
    assert!(ServiceError::from_http(StatusCode::OK, &h, b"").is_none());
    assert!(ServiceError::from_http(StatusCode::FOUND, &h, b"").is_none());
}

// ---------------------------------------------------------------- server side

#[test]
fn http_answer_is_problem_json_without_the_body_excerpt() {
    let h = headers(&[("retry-after", "2")]);
    let e = ServiceError::from_http(StatusCode::TOO_MANY_REQUESTS, &h, b"secret internal detail").unwrap();
    let res = e.to_http_response();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(res.headers()[header::RETRY_AFTER], "2");
    assert!(!res.body().contains("secret"));
    let problem: serde_json::Value = serde_json::from_str(res.body()).unwrap();
    assert_eq!(problem, serde_json::json!({"type": "about:blank", "title": "Too Many Requests", "status": 429}));

    let e = ServiceError::new(ServiceErrorKind::Cancelled, "caller \"went\" away")
        .with_retry_after(Some(Duration::from_millis(1500)));
    let res = e.to_http_response();
    assert_eq!(res.status().as_u16(), 499);
    assert_eq!(res.headers()[header::RETRY_AFTER], "2");
    let problem: serde_json::Value = serde_json::from_str(res.body()).unwrap();
    assert_eq!(problem["title"], "cancelled");
    assert_eq!(problem["detail"], "caller \"went\" away");
}

#[test]
fn grpc_answer_is_trailers_only() {
    let e = ServiceError::from_grpc(GrpcCode::Unavailable, "café 100% down")
        .unwrap()
        .with_retry_after(Some(Duration::from_millis(300)));
    let res: Response<String> = e.to_grpc_response();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["grpc-message"], "caf%C3%A9 100%25 down");
    assert_eq!(res.headers()["grpc-retry-pushback-ms"], "300");
    assert!(res.body().is_empty());
    // What a client reads back is what was sent.
    let back = ServiceError::from_grpc_headers(res.headers()).unwrap();
    assert_eq!(back.kind(), ServiceErrorKind::Unavailable);
    assert_eq!(back.message(), "café 100% down");
    assert_eq!(back.retry_after(), Some(Duration::from_millis(300)));

    let res: Response<String> = ServiceError::new(ServiceErrorKind::Internal, "").to_grpc_response();
    assert_eq!(res.headers()["grpc-status"], "13");
    assert!(!res.headers().contains_key("grpc-message"));
}

#[tokio::test]
async fn server_error_layer_answers_a_service_error() {
    let svc = ServiceBuilder::new().layer(ServerErrorLayer::new()).service_fn(|_req: Request<String>| async {
        Err::<Response<String>, _>(ServiceError::from_grpc(GrpcCode::NotFound, "no such order").unwrap())
    });
    let res = svc.clone().oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let grpc = Request::builder().header("content-type", "application/grpc").body(String::new()).unwrap();
    let res = svc.oneshot(grpc).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "5");
}

// ---------------------------------------------------------------- from_error

/// An error that wraps another, as client libraries' errors do.
#[derive(Debug)]
struct Wrapper(BoxError);
impl fmt::Display for Wrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request failed")
    }
}
impl std::error::Error for Wrapper {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// `from_error` of a tower-mesh error: a server answers the `ServiceError`
/// exactly as it answers the error itself, and the error is the source.
fn recognised(err: BoxError) -> ServiceError {
    let direct = error_response(&*err).expect("a tower-mesh error");
    let e = ServiceError::from_error(err);
    assert_eq!(ErrorResponse::of(&e), direct);
    assert_eq!(error_response(&e), Some(direct));
    assert!(std::error::Error::source(&e).is_some());
    e
}

#[tokio::test(start_paused = true)]
async fn circuit_open_is_unavailable_with_retry_after() {
    use crate::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};
    let layer = CircuitBreakerLayer::builder().name("orders").wait_in_open(Duration::from_secs(10)).build().unwrap();
    layer.handle().transition_to_open();
    tokio::time::advance(Duration::from_secs(4)).await;
    let svc = layer.layer(tower::service_fn(|_: u32| async { Ok::<_, Infallible>(()) }));
    let err = svc.oneshot(1).await.unwrap_err();
    let e = recognised(err);
    assert_eq!(e.kind(), ServiceErrorKind::Unavailable);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(6)));
    assert!(e.is_retryable());
    assert!(std::error::Error::source(&e).unwrap().is::<CircuitOpen>());
    assert_eq!(e.to_http_response().headers()[header::RETRY_AFTER], "6");
    let e = e.with_retry_after(None);
    assert!(!e.to_http_response().headers().contains_key(header::RETRY_AFTER));
    assert_eq!(e.to_http_response().status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn bulkhead_full_is_rate_limited_and_answered_as_the_bulkhead_would() {
    use crate::bulkhead::BulkheadLayer;
    let layer = BulkheadLayer::new(1);
    let _held = layer.try_acquire().unwrap();
    let svc = layer.layer(tower::service_fn(|_: u32| async { Ok::<_, Infallible>(()) }));
    let e = recognised(svc.oneshot(1).await.unwrap_err());
    assert_eq!(e.kind(), ServiceErrorKind::RateLimited);
    assert!(e.is_retryable());
    // The bulkhead's own answer, not RateLimited's 429.
    assert_eq!(MeshError::http_status(&e), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(MeshError::grpc_code(&e), GrpcCode::ResourceExhausted);
    // Found anywhere in the source chain.
    let full = crate::bulkhead::BulkheadFull::new("b".into(), 1, Duration::ZERO);
    let e = ServiceError::from_error(Wrapper(Box::new(full)));
    assert_eq!(e.kind(), ServiceErrorKind::RateLimited);
    assert_eq!(MeshError::http_status(&e), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_deadline_exceeded_and_a_total_one_is_final() {
    use crate::timeout::TimeoutLayer;
    let slow = || {
        tower::service_fn(|_: u32| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>(())
        })
    };
    let attempt = TimeoutLayer::per_attempt(Duration::from_millis(10)).layer(slow());
    let e = recognised(attempt.oneshot(1).await.unwrap_err());
    assert_eq!(e.kind(), ServiceErrorKind::DeadlineExceeded);
    assert!(e.is_retryable());
    assert_eq!(MeshError::http_status(&e), StatusCode::GATEWAY_TIMEOUT);

    let total = TimeoutLayer::new(Duration::from_millis(10)).layer(slow());
    let e = recognised(total.oneshot(1).await.unwrap_err());
    assert_eq!(e.kind(), ServiceErrorKind::DeadlineExceeded);
    assert!(!e.is_retryable());

    let elapsed = tokio::time::timeout(Duration::from_millis(1), std::future::pending::<()>()).await.unwrap_err();
    let e = ServiceError::from_error(Wrapper(Box::new(elapsed)));
    assert_eq!(e.kind(), ServiceErrorKind::DeadlineExceeded);
}

#[cfg(feature = "discovery")]
#[test]
fn discovery_errors_by_their_grpc_code() {
    use crate::discovery::DiscoveryError;
    let e = recognised(Box::new(DiscoveryError::NoEndpoints { service: "orders".into() }));
    assert_eq!(e.kind(), ServiceErrorKind::Unavailable);
    assert!(e.is_retryable());
    let e = recognised(Box::new(DiscoveryError::MissingAuthority));
    assert_eq!(e.kind(), ServiceErrorKind::Internal);
    assert!(!e.is_retryable());
    assert_eq!(MeshError::http_status(&e), StatusCode::BAD_GATEWAY);
}

#[cfg(feature = "jwt")]
#[test]
fn jwt_errors_are_unauthenticated() {
    use crate::jwt::{JwksError, JwtError};
    let e = recognised(Box::new(JwtError::Expired));
    assert_eq!(e.kind(), ServiceErrorKind::Unauthenticated);
    assert_eq!(MeshError::http_status(&e), StatusCode::UNAUTHORIZED);
    let e = recognised(Box::new(JwtError::Exchange(std::sync::Arc::new(io::Error::other("sts down")))));
    assert_eq!(e.kind(), ServiceErrorKind::Unauthenticated);
    // As its MeshError says: the server cannot check tokens right now.
    let e = recognised(Box::new(JwtError::KeysUnavailable(std::sync::Arc::new(JwksError::NoRuntime))));
    assert_eq!(e.kind(), ServiceErrorKind::Unavailable);
}

#[cfg(feature = "jwt")]
#[tokio::test]
async fn hyper_util_connect_error_is_transport() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<String>();
    let req = Request::get(format!("http://127.0.0.1:{port}/")).body(String::new()).unwrap();
    let err = client.request(req).await.unwrap_err();
    assert!(err.is_connect());
    let e = ServiceError::from_error(err);
    assert_eq!(e.kind(), ServiceErrorKind::Transport);
    assert!(e.is_retryable());
    assert_eq!(MeshError::http_status(&e), StatusCode::BAD_GATEWAY);
}

#[test]
fn io_errors_in_the_chain() {
    use io::ErrorKind::*;
    for kind in [ConnectionRefused, ConnectionReset, ConnectionAborted, BrokenPipe, UnexpectedEof, NotConnected] {
        let e = ServiceError::from_error(Wrapper(Box::new(io::Error::from(kind))));
        assert_eq!(e.kind(), ServiceErrorKind::Transport, "{kind:?}");
        assert!(e.is_retryable());
    }
    let e = ServiceError::from_error(io::Error::from(TimedOut));
    assert_eq!(e.kind(), ServiceErrorKind::DeadlineExceeded);
    let e = ServiceError::from_error(Wrapper(Box::new(io::Error::from(PermissionDenied))));
    assert_eq!(e.kind(), ServiceErrorKind::Internal);
    assert!(!e.is_retryable());
    assert_eq!(e.to_string(), "internal error");
    assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "request failed");
    assert!(error_response(&e).is_some());
}

#[test]
fn a_service_error_in_the_chain_is_itself() {
    let inner = ServiceError::from_http(StatusCode::NOT_FOUND, &HeaderMap::new(), b"nope").unwrap();
    let e = ServiceError::from_error(inner.clone());
    assert_eq!((e.kind(), e.status(), e.body_excerpt()), (inner.kind(), inner.status(), Some("nope")));
    let e = ServiceError::from_error(Wrapper(Box::new(inner)));
    assert_eq!(e.kind(), ServiceErrorKind::NotFound);
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
    // `with_source` also takes the answer of a mesh error.
    let full = crate::bulkhead::BulkheadFull::new("b".into(), 1, Duration::ZERO);
    let e = ServiceError::new(ServiceErrorKind::Unavailable, "busy").with_source(full);
    assert_eq!(MeshError::grpc_code(&e), GrpcCode::ResourceExhausted);
}

// ---------------------------------------------------------------- the layer

type Body = StreamBody<mpsc::UnboundedReceiver<Result<Frame<Bytes>, io::Error>>>;
type Tx = mpsc::UnboundedSender<Result<Frame<Bytes>, io::Error>>;

fn open_body() -> (Tx, Body) {
    let (tx, rx) = mpsc::unbounded();
    (tx, StreamBody::new(rx))
}

fn body(chunks: &[&'static [u8]]) -> Body {
    let (tx, body) = open_body();
    for c in chunks {
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(c)))).unwrap();
    }
    body
}

fn response(code: u16, headers: &[(&'static str, &str)], body: Body) -> Response<Body> {
    let mut res = Response::new(body);
    *res.status_mut() = status(code);
    *res.headers_mut() = self::headers(headers);
    res
}

type Mocked = MapServiceError<mock::Mock<Request<()>, Response<Body>>>;

fn service(layer: MapServiceErrorLayer) -> (mock::Spawn<Mocked>, mock::Handle<Request<()>, Response<Body>>) {
    mock::spawn_layer(layer)
}

async fn call(layer: MapServiceErrorLayer, res: Result<Response<Body>, BoxError>) -> Result<Response<Body>, BoxError> {
    let (mut svc, mut handle) = service(layer);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Request::new(()));
    let (_, send) = handle.next_request().await.unwrap();
    match res {
        Ok(r) => send.send_response(r),
        Err(e) => send.send_error(e),
    }
    fut.await
}

fn service_error(e: BoxError) -> ServiceError {
    *e.downcast::<ServiceError>().expect("the layer's errors are ServiceErrors")
}

#[tokio::test]
async fn success_passes_untouched_with_its_body() {
    let (tx, b) = open_body();
    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"hello ")))).unwrap();
    let res = call(MapServiceErrorLayer::new(), Ok(response(200, &[("x-a", "1")], b))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-a"], "1");
    // The body was not read: what is sent later still arrives, all of it.
    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"world")))).unwrap();
    drop(tx);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "hello world");

    let res = call(MapServiceErrorLayer::new(), Ok(response(304, &[], body(&[])))).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    let res = call(MapServiceErrorLayer::new(), Ok(response(200, &[("grpc-status", "0")], body(&[])))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn error_status_becomes_a_service_error_with_excerpt_and_retry_after() {
    let res = response(503, &[("retry-after", "4")], body(&[b"over", b"loaded\x1b\n"]));
    let e = service_error(call(MapServiceErrorLayer::new(), Ok(res)).await.unwrap_err());
    assert_eq!(e.kind(), ServiceErrorKind::Unavailable);
    assert_eq!(e.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(4)));
    assert_eq!(e.body_excerpt(), Some("overloaded\u{FFFD}\n"));
    assert!(e.is_retryable());

    // A trailers-only gRPC error on a 200.
    let res = response(200, &[("grpc-status", "7"), ("grpc-message", "not%20yours")], body(&[]));
    let e = service_error(call(MapServiceErrorLayer::new(), Ok(res)).await.unwrap_err());
    assert_eq!(e.kind(), ServiceErrorKind::PermissionDenied);
    assert_eq!(e.message(), "not yours");
    assert_eq!(e.status(), None);
    // ...unless turned off.
    let res = response(200, &[("grpc-status", "7")], body(&[]));
    assert!(call(MapServiceErrorLayer::new().grpc_status(false), Ok(res)).await.is_ok());
}

#[tokio::test]
async fn reads_no_more_than_the_limit() {
    // The body never ends: the future must finish once it has the limit.
    let (tx, b) = open_body();
    for _ in 0..3 {
        tx.unbounded_send(Ok(Frame::data(Bytes::from(vec![b'x'; 300])))).unwrap();
    }
    let e = service_error(call(MapServiceErrorLayer::new(), Ok(response(500, &[], b))).await.unwrap_err());
    assert_eq!(e.body_excerpt().map(str::len), Some(512));
    // The rest of the body was dropped unread with the response.
    assert!(tx.is_closed());

    let e = service_error(
        call(MapServiceErrorLayer::new().excerpt_limit(4), Ok(response(404, &[], body(&[b"abcdef"]))))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.body_excerpt(), Some("abcd"));

    // Limit zero: the body is not polled at all, even if it never ends.
    let (_tx, b) = open_body();
    let e =
        service_error(call(MapServiceErrorLayer::new().excerpt_limit(0), Ok(response(404, &[], b))).await.unwrap_err());
    assert_eq!((e.kind(), e.body_excerpt()), (ServiceErrorKind::NotFound, None));
}

#[tokio::test]
async fn a_failing_body_keeps_what_was_read() {
    let (tx, b) = open_body();
    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"partial")))).unwrap();
    tx.unbounded_send(Err(io::Error::from(io::ErrorKind::ConnectionReset))).unwrap();
    let e = service_error(call(MapServiceErrorLayer::new(), Ok(response(502, &[], b))).await.unwrap_err());
    assert_eq!(e.kind(), ServiceErrorKind::Unavailable);
    assert_eq!(e.body_excerpt(), Some("partial"));
}

#[tokio::test]
async fn inner_errors_go_through_from_error() {
    let refused: BoxError = Box::new(io::Error::from(io::ErrorKind::ConnectionRefused));
    let e = service_error(call(MapServiceErrorLayer::new(), Err(refused)).await.unwrap_err());
    assert_eq!(e.kind(), ServiceErrorKind::Transport);
    assert!(std::error::Error::source(&e).unwrap().is::<io::Error>());

    let e = service_error(call(MapServiceErrorLayer::new(), Err("boom".into())).await.unwrap_err());
    assert_eq!(e.kind(), ServiceErrorKind::Internal);
}

#[tokio::test]
async fn poll_ready_errors_are_service_errors() {
    #[derive(Debug)]
    struct Broken;
    impl Service<Request<()>> for Broken {
        type Response = Response<Body>;
        type Error = io::Error;
        type Future = std::future::Ready<Result<Response<Body>, io::Error>>;
        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), io::Error>> {
            std::task::Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionReset)))
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            unreachable!("never ready")
        }
    }
    let mut svc = MapServiceErrorLayer::new().layer(Broken);
    let e = service_error(svc.ready().await.unwrap_err());
    assert_eq!(e.kind(), ServiceErrorKind::Transport);
}

#[tokio::test]
async fn dropping_the_future_mid_body_drops_the_body() {
    let (mut svc, mut handle) = service(MapServiceErrorLayer::new());
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call(Request::new(())));
    assert_pending!(fut.poll());
    let (_, send) = handle.next_request().await.unwrap();
    let (tx, b) = open_body();
    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"slow")))).unwrap();
    send.send_response(response(500, &[], b));
    // Reading the body: waits for more.
    assert_pending!(fut.poll());
    assert!(!tx.is_closed());
    drop(fut);
    assert!(tx.is_closed());
}

#[tokio::test]
async fn which_statuses_are_errors_is_configurable() {
    let layer = || MapServiceErrorLayer::new().statuses_where(|s| s.as_u16() >= 400 && s != StatusCode::NOT_FOUND);
    assert!(call(layer(), Ok(response(404, &[], body(&[])))).await.is_ok());
    assert!(call(layer(), Ok(response(410, &[], body(&[])))).await.is_err());

    // A 3xx made an error is Internal, with its status.
    let mut set = StatusSet::empty();
    set.insert(StatusCode::FOUND);
    let e = service_error(
        call(MapServiceErrorLayer::new().statuses(set), Ok(response(302, &[], body(&[])))).await.unwrap_err(),
    );
    assert_eq!((e.kind(), e.status()), (ServiceErrorKind::Internal, Some(StatusCode::FOUND)));
    assert!(call(MapServiceErrorLayer::new().statuses(set), Ok(response(500, &[], body(&[])))).await.is_ok());
}

#[tokio::test]
async fn errors_are_counted_by_kind() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || MapServiceErrorLayer::new().name("orders"));
    let _ = call(layer.clone(), Ok(response(503, &[], body(&[])))).await;
    let _ = call(layer.clone(), Ok(response(502, &[], body(&[])))).await;
    let _ = call(layer.clone(), Ok(response(404, &[], body(&[])))).await;
    let _ = call(layer.clone(), Ok(response(200, &[], body(&[])))).await;
    let mut counts: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == "tower_mesh_service_errors_total")
        .filter_map(|(k, _, _, v)| {
            let labels: Vec<_> = k.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            if !labels.contains(&("service".into(), "orders".into())) {
                return None; // the series `new()` registered before `name()`
            }
            let kind = labels.into_iter().find(|(k, _)| k == "kind").unwrap().1;
            match v {
                DebugValue::Counter(n) if n > 0 => Some((kind, n)),
                _ => None,
            }
        })
        .collect();
    counts.sort();
    assert_eq!(counts, vec![("not_found".to_owned(), 1), ("unavailable".to_owned(), 2)]);
}

#[test]
fn futures_and_services_are_send_and_sync() {
    fn send<T: Send>(_: &T) {}
    fn sync<T: Sync>(_: &T) {}
    let mut svc = MapServiceErrorLayer::new().layer(mock::pair::<Request<()>, Response<Body>>().0);
    sync(&svc);
    send(&svc.call(Request::new(())));
    sync(&ServiceError::new(ServiceErrorKind::Internal, ""));
    assert!(format!("{:?}", MapServiceErrorLayer::new().name("x")).contains("\"x\""));
}

// ---------------------------------------------------------------- properties

fn header_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["grpc-status", "grpc-message", "retry-after", "grpc-retry-pushback-ms", "content-type"])
}

proptest! {
    #[test]
    fn any_status_keeps_its_class(code in 100u16..=599) {
        let s = status(code);
        match ServiceError::from_http(s, &HeaderMap::new(), b"") {
            None => prop_assert!(code < 400),
            Some(e) => {
                prop_assert!(code >= 400);
                let class = |s: StatusCode| s.as_u16() / 100;
                if code == 408 {
                    // The one documented exception: a downstream's request
                    // timeout is a DeadlineExceeded, answered 504.
                    prop_assert_eq!(e.kind(), ServiceErrorKind::DeadlineExceeded);
                } else {
                    prop_assert_eq!(class(e.kind().http_status()), class(s));
                    prop_assert_eq!(class(MeshError::http_status(&e)), class(s));
                }
                prop_assert_eq!(e.status(), Some(s));
            }
        }
    }

    #[test]
    fn from_http_never_panics(
        code in 100u16..=999,
        body in prop::collection::vec(any::<u8>(), 0..2048),
        hs in prop::collection::vec((header_name(), prop::collection::vec(any::<u8>(), 0..40)), 0..6),
    ) {
        let mut headers = HeaderMap::new();
        for (name, value) in hs {
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                headers.append(name, v);
            }
        }
        if let Some(e) = ServiceError::from_http(status(code), &headers, &body) {
            let _ = (e.to_string(), format!("{e:?}"), e.is_retryable(), e.to_http_response());
            let _: Response<()> = e.to_grpc_response();
            if let Some(x) = e.body_excerpt() {
                prop_assert!(x.chars().count() <= EXCERPT_LIMIT);
                prop_assert!(!x.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
            }
            prop_assert!(!e.message().chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
            prop_assert!(e.retry_after().is_none_or(|d| d <= MAX_RETRY_AFTER));
        }
        let _ = ServiceError::from_grpc_headers(&headers);
    }

    #[test]
    fn grpc_message_round_trips(message in any::<String>()) {
        let encoded = parse::percent_encode(&message);
        prop_assert!(HeaderValue::from_str(&encoded).is_ok());
        prop_assert_eq!(parse::percent_decode(encoded.as_bytes()), message);
    }

    #[test]
    fn percent_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse::percent_decode(&bytes);
    }
}
