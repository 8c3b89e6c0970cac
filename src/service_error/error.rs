//! [`ServiceError`]: what a failed call became, and how a server answers it.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::kind::{grpc_name, ServiceErrorKind};
use super::parse::{self, Pushback, EXCERPT_LIMIT};
use crate::classify::GrpcCode;
use crate::error::{to_response, BoxError, ErrorResponse, MeshError, MeshErrorKind};

/// One error for any failed call: an HTTP error status, a gRPC status, a
/// failed connection, or a tower-mesh layer's rejection.
///
/// Built by [`from_http`](Self::from_http), [`from_grpc`](Self::from_grpc),
/// [`from_grpc_headers`](Self::from_grpc_headers) and
/// [`from_error`](Self::from_error), or for you by
/// [`MapServiceErrorLayer`](super::MapServiceErrorLayer). It keeps:
///
/// - its [`kind`](Self::kind), which decides [`is_retryable`](Self::is_retryable)
///   and how a server answers it;
/// - the [`status`](Self::status) and/or [`grpc_status`](Self::grpc_status) it
///   came from;
/// - a [`message`](Self::message) (a gRPC status message, or one you give);
/// - a [`body_excerpt`](Self::body_excerpt) of the error response, for logs;
/// - [`retry_after`](Self::retry_after), from `Retry-After`,
///   `grpc-retry-pushback-ms` or an open circuit breaker;
/// - the error it was made from as its [`source`](StdError::source).
///
/// `Display` shows the kind, the status and the message — never the body
/// excerpt, nor the source (walk [`source`](StdError::source) for that).
///
/// As a [`MeshError`], a server ([`ServerErrorLayer`](crate::error::ServerErrorLayer),
/// [`to_http_response`](Self::to_http_response), [`to_grpc_response`](Self::to_grpc_response))
/// answers it with:
/// - the answer of the tower-mesh error it was made from, if any (a full
///   bulkhead stays `503` / `RESOURCE_EXHAUSTED` as it would unwrapped);
/// - else the status / code it came from when that maps to the same kind and,
///   for HTTP, is in the same class as the kind's own status (a downstream
///   `410` stays `410`, `ABORTED` stays `ABORTED`, but a `408` is answered `504`);
/// - else the kind's [`http_status`](ServiceErrorKind::http_status) /
///   [`grpc_code`](ServiceErrorKind::grpc_code).
#[derive(Clone, Debug)]
pub struct ServiceError {
    kind: ServiceErrorKind,
    status: Option<StatusCode>,
    grpc: Option<GrpcCode>,
    message: Option<Box<str>>,
    excerpt: Option<Box<str>>,
    retry_after: Option<Duration>,
    retry_refused: bool,
    local: Option<ErrorResponse>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl ServiceError {
    /// An error of `kind` with a message (empty for none). The message is
    /// shown by `Display` and sent as the `detail` / `grpc-message` of a
    /// server's answer: do not put secrets in it.
    pub fn new(kind: ServiceErrorKind, message: impl Into<String>) -> Self {
        let message = message.into();
        ServiceError {
            kind,
            status: None,
            grpc: None,
            message: (!message.is_empty()).then(|| parse::sanitize(&message).into_boxed_str()),
            excerpt: None,
            retry_after: None,
            retry_refused: false,
            local: None,
            source: None,
        }
    }

    /// The error for an HTTP response with status `status`, `headers` and
    /// (the start of) its `body`; `None` when `status` is below `400`.
    ///
    /// The kind comes from the status (see [`ServiceErrorKind::from_http_status`]),
    /// or from a non-zero `grpc-status` in `headers` when there is one (a
    /// gRPC proxy's error). The message is the percent-decoded `grpc-message`,
    /// if any; `retry_after` comes from `grpc-retry-pushback-ms`, else
    /// `Retry-After`; the body excerpt is its first 512 bytes.
    pub fn from_http(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Option<Self> {
        ServiceErrorKind::from_http_status(status)?;
        Some(Self::from_response(status, headers, body, EXCERPT_LIMIT, SystemTime::now()))
    }

    /// The error for a gRPC status `code` with its (decoded) `message`;
    /// `None` for `OK`.
    pub fn from_grpc(code: GrpcCode, message: impl Into<String>) -> Option<Self> {
        let kind = ServiceErrorKind::from_grpc_code(code)?;
        let mut e = Self::new(kind, message);
        e.grpc = Some(code);
        Some(e)
    }

    /// The error for the `grpc-status` (and `grpc-message`,
    /// `grpc-retry-pushback-ms`) in `headers` — the headers of a trailers-only
    /// response, or the trailers of a streamed one. `None` when there is no
    /// `grpc-status` or it is `0`; a malformed one is `UNKNOWN`.
    pub fn from_grpc_headers(headers: &HeaderMap) -> Option<Self> {
        let code = parse::grpc_status(headers)?;
        let mut e = Self::from_grpc(code, parse::grpc_message(headers).unwrap_or_default())?;
        e.set_retry_hint(parse::retry_hint(headers, SystemTime::now()));
        Some(e)
    }

    /// The error for an error of the transport or of a layer, found by walking
    /// its source chain (the outermost error that says something wins):
    ///
    /// | in the chain | kind |
    /// |---|---|
    /// | a `ServiceError` | itself (returned as it is) |
    /// | [`CircuitOpen`](crate::circuit_breaker::CircuitOpen) | `Unavailable`, with its `retry_after` |
    /// | [`BulkheadFull`](crate::bulkhead::BulkheadFull) | `RateLimited` (its gRPC code, `RESOURCE_EXHAUSTED`) |
    /// | [`Elapsed`](crate::timeout::Elapsed), `tokio::time::error::Elapsed` | `DeadlineExceeded` (not retryable for a total timeout: no time is left) |
    /// | `DiscoveryError` (feature `discovery`) | by its gRPC code: `Unavailable`, or `Internal` for a request it cannot route |
    /// | `JwtError` (feature `jwt`) | `Unauthenticated` (`Unavailable` for `KeysUnavailable`, as its `MeshError` says) |
    /// | hyper-util client error with `is_connect()`; hyper `is_closed`, `is_incomplete_message`, `is_canceled` (features `jwt`, `discovery-http`) | `Transport` |
    /// | hyper `is_timeout` (same features) | `DeadlineExceeded` |
    /// | `std::io::Error` `ConnectionRefused`, `ConnectionReset`, `ConnectionAborted`, `NotConnected`, `BrokenPipe`, `AddrNotAvailable`, `HostUnreachable`, `NetworkUnreachable`, `UnexpectedEof` | `Transport` |
    /// | `std::io::Error` `TimedOut` | `DeadlineExceeded` |
    /// | anything else | `Internal` |
    ///
    /// A tower-mesh error's kind follows its [`MeshError::grpc_code`] (the more
    /// specific of its two codes), and a server answers the `ServiceError` as
    /// it would answer that error. The error becomes the
    /// [`source`](StdError::source).
    pub fn from_error(err: impl Into<BoxError>) -> Self {
        let err: BoxError = err.into();
        let err = match err.downcast::<ServiceError>() {
            Ok(e) => return *e,
            Err(err) => err,
        };
        let mut e = match recognise_chain(&*err) {
            Recognised::Service(e) => return e,
            Recognised::Mesh { answer, refuse_retry } => {
                let kind = ServiceErrorKind::from_grpc_code(answer.grpc).unwrap_or(ServiceErrorKind::Internal);
                let mut e = Self::new(kind, "");
                e.retry_after = answer.retry_after;
                e.retry_refused = refuse_retry;
                e.local = Some(answer);
                e
            }
            Recognised::Kind(kind) => Self::new(kind, ""),
            Recognised::Nothing => Self::new(ServiceErrorKind::Internal, ""),
        };
        e.source = Some(Arc::from(err));
        e
    }

    /// The error of a response the caller treats as failed: kind from the
    /// status when it is an error status, else from `grpc-status`, else
    /// `Internal` (a status the caller chose to see as an error, e.g. a 3xx).
    pub(crate) fn from_response(
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        excerpt_limit: usize,
        now: SystemTime,
    ) -> Self {
        let grpc = parse::grpc_status(headers).filter(|c| *c != GrpcCode::Ok);
        let kind = grpc
            .and_then(ServiceErrorKind::from_grpc_code)
            .or_else(|| ServiceErrorKind::from_http_status(status))
            .unwrap_or(ServiceErrorKind::Internal);
        let mut e = Self::new(kind, "");
        e.status = (!status.is_success() || grpc.is_none()).then_some(status);
        e.grpc = grpc;
        if grpc.is_some() {
            e.message = parse::grpc_message(headers).filter(|m| !m.is_empty()).map(String::into_boxed_str);
        }
        e.excerpt = parse::body_excerpt(body, excerpt_limit).map(String::into_boxed_str);
        e.set_retry_hint(parse::retry_hint(headers, now));
        e
    }

    fn set_retry_hint(&mut self, hint: Pushback) {
        match hint {
            Pushback::Unsaid => {}
            Pushback::After(d) => self.retry_after = Some(d),
            Pushback::Refused => self.retry_refused = true,
        }
    }

    /// Set how long to wait before trying again.
    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after.map(|d| d.min(parse::MAX_RETRY_AFTER));
        self
    }

    /// Set the error this one was caused by. If it is (or is caused by) a
    /// tower-mesh error, a server answers as it would answer that error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        let source: BoxError = source.into();
        self.local = crate::error::error_response(&*source);
        self.source = Some(Arc::from(source));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ServiceErrorKind {
        self.kind
    }

    /// The HTTP status of the response this error was made from, if any (not
    /// the status a server answers it with: see [`MeshError::http_status`]).
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The gRPC status code this error was made from, if any.
    pub fn grpc_status(&self) -> Option<GrpcCode> {
        self.grpc
    }

    /// The message: the decoded `grpc-message`, or the one given to
    /// [`new`](Self::new) / [`from_grpc`](Self::from_grpc); empty when there
    /// is none. Control characters other than `\n` and `\t` are replaced.
    pub fn message(&self) -> &str {
        self.message.as_deref().unwrap_or("")
    }

    /// The start (at most 512 bytes by default) of the error response's body,
    /// decoded lossily as UTF-8 with control characters other than `\n` and
    /// `\t` replaced: fit for a log line, and never part of `Display` or of a
    /// server's answer. `None` when the body was empty or not read.
    pub fn body_excerpt(&self) -> Option<&str> {
        self.excerpt.as_deref()
    }

    /// How long to wait before trying again, when the server said so
    /// (`Retry-After` in seconds or as an HTTP date, `grpc-retry-pushback-ms`)
    /// or an open circuit breaker knows. At most one day.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the same request may succeed if sent again:
    /// [`ServiceErrorKind::is_retryable`], except that
    /// - a negative or malformed `grpc-retry-pushback-ms` (gRFC A6: the server
    ///   asks not to retry) and a total timeout make it `false`;
    /// - a gRPC `RESOURCE_EXHAUSTED` is retryable only with a pushback (the
    ///   code also covers exhausted quotas and full disks that a retry does
    ///   not fix), while an HTTP `429` and a full bulkhead always are.
    pub fn is_retryable(&self) -> bool {
        if self.retry_refused || !self.kind.is_retryable() {
            return false;
        }
        let grpc_exhausted = self.grpc == Some(GrpcCode::ResourceExhausted) && self.status.is_none();
        !(grpc_exhausted && self.retry_after.is_none())
    }

    /// The answer a server gives this error (see the type's docs).
    fn answer(&self) -> ErrorResponse {
        if let Some(local) = self.local {
            return ErrorResponse { retry_after: self.retry_after, ..local };
        }
        let kind = self.kind;
        let status = self
            .status
            .filter(|s| {
                ServiceErrorKind::from_http_status(*s) == Some(kind)
                    && s.as_u16() / 100 == kind.http_status().as_u16() / 100
            })
            .unwrap_or_else(|| kind.http_status());
        let grpc = self
            .grpc
            .filter(|c| ServiceErrorKind::from_grpc_code(*c) == Some(kind))
            .unwrap_or_else(|| kind.grpc_code());
        ErrorResponse { status, grpc, retry_after: self.retry_after }
    }

    /// An HTTP answer to this error: its status (see the type's docs),
    /// `Retry-After` (whole seconds, rounded up) when known, and an
    /// `application/problem+json` body (RFC 9457) with `type` `about:blank`,
    /// `title` the status's reason phrase, `status`, and `detail` the
    /// [`message`](Self::message) when there is one. The body excerpt of a
    /// downstream response is never included.
    pub fn to_http_response(&self) -> Response<String> {
        let answer = self.answer();
        let mut res: Response<String> = to_response(answer, false);
        let title = answer.status.canonical_reason().unwrap_or_else(|| self.kind.describe());
        let mut problem = serde_json::Map::new();
        problem.insert("type".into(), "about:blank".into());
        problem.insert("title".into(), title.into());
        problem.insert("status".into(), answer.status.as_u16().into());
        if let Some(m) = self.message.as_deref() {
            problem.insert("detail".into(), m.into());
        }
        *res.body_mut() = serde_json::Value::Object(problem).to_string();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        res
    }

    /// A gRPC trailers-only answer to this error: HTTP `200`, `content-type:
    /// application/grpc`, `grpc-status` (see the type's docs), the
    /// percent-encoded [`message`](Self::message) as `grpc-message` when there
    /// is one, and `grpc-retry-pushback-ms` / `Retry-After` when known.
    pub fn to_grpc_response<B: Default>(&self) -> Response<B> {
        let mut res: Response<B> = to_response(self.answer(), true);
        if let Some(m) = self.message.as_deref() {
            if let Ok(v) = HeaderValue::from_str(&parse::percent_encode(m)) {
                res.headers_mut().insert("grpc-message", v);
            }
        }
        res
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.describe())?;
        match (self.status, self.grpc) {
            (Some(s), Some(code)) => write!(f, " (HTTP {}, gRPC {})", s.as_u16(), grpc_name(code))?,
            (None, Some(code)) => write!(f, " (gRPC {})", grpc_name(code))?,
            (Some(s), None) => write!(f, " (HTTP {})", s.as_u16())?,
            (None, None) => {}
        }
        if let Some(m) = self.message.as_deref() {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

impl StdError for ServiceError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

impl MeshError for ServiceError {
    fn http_status(&self) -> StatusCode {
        self.answer().status
    }

    fn grpc_code(&self) -> GrpcCode {
        self.answer().grpc
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// What [`recognise_chain`] found.
enum Recognised {
    /// A `ServiceError` nested in the chain.
    Service(ServiceError),
    /// A tower-mesh layer's error.
    Mesh { answer: ErrorResponse, refuse_retry: bool },
    /// An error of a known kind.
    Kind(ServiceErrorKind),
    /// Nothing known.
    Nothing,
}

fn recognise_chain(err: &(dyn StdError + 'static)) -> Recognised {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(found) = recognise(e) {
            return found;
        }
        cur = e.source();
    }
    Recognised::Nothing
}

fn recognise(e: &(dyn StdError + 'static)) -> Option<Recognised> {
    if let Some(e) = e.downcast_ref::<ServiceError>() {
        return Some(Recognised::Service(e.clone()));
    }
    if let Some(mesh) = crate::layer_errors::as_mesh_error(e) {
        let refuse_retry = mesh.kind() == MeshErrorKind::DeadlineExceeded;
        return Some(Recognised::Mesh { answer: ErrorResponse::of(mesh), refuse_retry });
    }
    if e.is::<tokio::time::error::Elapsed>() {
        return Some(Recognised::Kind(ServiceErrorKind::DeadlineExceeded));
    }
    #[cfg(any(feature = "jwt", feature = "discovery-http"))]
    {
        if let Some(e) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            if e.is_connect() {
                return Some(Recognised::Kind(ServiceErrorKind::Transport));
            }
        }
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            if e.is_timeout() {
                return Some(Recognised::Kind(ServiceErrorKind::DeadlineExceeded));
            }
            if e.is_closed() || e.is_incomplete_message() || e.is_canceled() {
                return Some(Recognised::Kind(ServiceErrorKind::Transport));
            }
        }
    }
    if let Some(e) = e.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::*;
        match e.kind() {
            ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe | AddrNotAvailable
            | HostUnreachable | NetworkUnreachable | UnexpectedEof => {
                return Some(Recognised::Kind(ServiceErrorKind::Transport))
            }
            TimedOut => return Some(Recognised::Kind(ServiceErrorKind::DeadlineExceeded)),
            _ => {}
        }
    }
    None
}
