//! `Retry-After` and `grpc-retry-pushback-ms` from arbitrary bytes, read the
//! two ways the crate reads them: by `ServiceError::from_http` (the stack's
//! error of a `503`) and by the retry layer's `HttpRequests`.
//!
//! Input: one flag byte, then a header value (used when it is a valid
//! `HeaderValue`). Flag bit 0 clear: it is sent as `Retry-After`; set: as
//! `grpc-retry-pushback-ms`, next to a `Retry-After: 7` it must win over.
//!
//! Properties:
//! - nothing panics;
//! - a delay-seconds value (digits only, around it optional spaces or tabs)
//!   is exactly that many seconds (a number too large for a `u64` is "very
//!   long"); `ServiceError` caps it at `MAX_RETRY_AFTER`, the retry layer
//!   (which caps it by its backoff's `max_delay`) reads the same seconds;
//! - an HTTP-date in the past is zero, one in the future is the time until it
//!   (within the clock readings taken around the call, capped the same way);
//! - anything else is no hint at all (not zero, not a refusal);
//! - a `grpc-retry-pushback-ms` of a non-negative integer is that many
//!   milliseconds and wins over `Retry-After`; anything else refuses the
//!   retry, in both readers alike;
//! - the `Retry-After` a server writes for the error (whole seconds, rounded
//!   up) reads back as that many seconds.

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use tower_mesh::retry::{HttpRequests, Pushback, RetryRequests};
use tower_mesh::service_error::{ServiceError, MAX_RETRY_AFTER};

/// What the value says, by the rules of RFC 9110 and gRFC A6 written out again.
#[derive(Debug, PartialEq)]
enum Said {
    /// Delay-seconds (saturated at `u64::MAX`).
    Seconds(u64),
    /// An HTTP-date.
    Date(SystemTime),
    /// Nothing readable.
    Nothing,
}

/// HTTP's optional whitespace.
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

fn said(value: &HeaderValue) -> Said {
    let Ok(s) = value.to_str() else { return Said::Nothing };
    let s = trim_ows(s);
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Said::Seconds(s.parse().unwrap_or(u64::MAX));
    }
    match httpdate::parse_http_date(s) {
        Ok(at) => Said::Date(at),
        Err(_) => Said::Nothing,
    }
}

/// A pushback in milliseconds, or `None` for a refusal.
fn pushback_ms(value: &HeaderValue) -> Option<u64> {
    let ms: i64 = trim_ows(value.to_str().ok()?).parse().ok()?;
    u64::try_from(ms).ok()
}

fn retry_layer(headers: &HeaderMap) -> Pushback {
    let mut res = Response::new(());
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    *res.headers_mut() = headers.clone();
    RetryRequests::<http::Request<()>, Response<()>>::pushback(&HttpRequests::new(), &res)
}

fn check_retry_after(value: &HeaderValue) {
    let mut headers = HeaderMap::new();
    headers.insert(header::RETRY_AFTER, value.clone());
    let before = SystemTime::now();
    let err = ServiceError::from_http(StatusCode::SERVICE_UNAVAILABLE, &headers, b"").expect("503 is an error");
    let layer = retry_layer(&headers);
    let after = SystemTime::now();
    let got = err.retry_after();
    assert!(err.is_retryable(), "a Retry-After never refuses: {value:?}");

    match said(value) {
        Said::Seconds(secs) => {
            let d = Duration::from_secs(secs);
            assert_eq!(got, Some(d.min(MAX_RETRY_AFTER)), "{value:?}");
            assert_eq!(layer, Pushback::After(d), "{value:?}");
        }
        Said::Date(at) => {
            // The readers took `now` between `before` and `after`.
            let until = |now: SystemTime| at.duration_since(now).unwrap_or(Duration::ZERO);
            let (shortest, longest) = (until(after), until(before));
            if at <= before {
                assert_eq!(got, Some(Duration::ZERO), "a date in the past is zero: {value:?}");
                assert_eq!(layer, Pushback::After(Duration::ZERO), "{value:?}");
            }
            let got = got.expect("a date is a hint");
            assert!(got >= shortest.min(MAX_RETRY_AFTER) && got <= longest.min(MAX_RETRY_AFTER), "{value:?}: {got:?}");
            let Pushback::After(l) = layer else { panic!("a date is a pushback: {value:?} {layer:?}") };
            assert!(l >= shortest && l <= longest, "{value:?}: {l:?}");
        }
        Said::Nothing => {
            assert_eq!(got, None, "{value:?}");
            assert_eq!(layer, Pushback::None, "{value:?}");
        }
    }

    // What a server answers for the error reads back as its whole seconds.
    if let Some(d) = err.retry_after() {
        let res = err.to_http_response();
        let written = res.headers().get(header::RETRY_AFTER).expect("the server says when");
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        assert_eq!(said(written), Said::Seconds(secs), "{written:?} for {d:?}");
    }
}

fn check_pushback(value: &HeaderValue) {
    let mut headers = HeaderMap::new();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
    headers.insert("grpc-retry-pushback-ms", value.clone());
    let err = ServiceError::from_http(StatusCode::SERVICE_UNAVAILABLE, &headers, b"").expect("503 is an error");
    let layer = retry_layer(&headers);
    match pushback_ms(value) {
        Some(ms) => {
            let d = Duration::from_millis(ms);
            assert_eq!(err.retry_after(), Some(d.min(MAX_RETRY_AFTER)), "{value:?}");
            assert!(err.is_retryable(), "{value:?}");
            assert_eq!(layer, Pushback::After(d), "{value:?}");
        }
        None => {
            assert!(!err.is_retryable(), "a malformed or negative pushback refuses: {value:?}");
            assert_eq!(layer, Pushback::Stop, "{value:?}");
        }
    }
}

/// One input: the properties above, checked with assertions (a failure panics).
pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Ok(value) = HeaderValue::from_bytes(rest) else { return };
    if flags & 1 == 0 {
        check_retry_after(&value);
    } else {
        check_pushback(&value);
    }
}
