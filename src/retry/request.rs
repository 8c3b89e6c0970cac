use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use http_body_util::{Empty, Full};

use crate::classify::{FailureKind, GrpcCode};

/// What the server said about retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushback {
    /// Nothing: use the backoff.
    None,
    /// Wait this long before the retry (`Retry-After`, `grpc-retry-pushback-ms`).
    After(Duration),
    /// Do not retry (a negative or malformed `grpc-retry-pushback-ms`).
    Stop,
}

/// How the retry layer copies a request before sending it, so it can send it
/// again, and what it reads from a response about retrying.
///
/// * [`CloneRequests`] (the default): any `Req: Clone`; no pushback.
/// * [`HttpRequests`]: `http::Request`s with idempotent methods and replayable
///   bodies; honours `Retry-After` and `grpc-retry-pushback-ms`.
/// * [`GrpcRequests`]: gRPC calls; a method not marked idempotent is retried
///   only when the failure shows the server did not process it.
pub trait RetryRequests<Req, Res> {
    /// A copy to send if the call must be retried, or `None` if this request
    /// must not be retried.
    fn clone_request(&self, req: &Req) -> Option<Req>;

    /// What the response asks of the retry.
    fn pushback(&self, res: &Res) -> Pushback {
        let _ = res;
        Pushback::None
    }

    /// Whether a request whose attempt failed as `failure` says may be sent
    /// again (`copy` is the copy about to be sent). Asked only for a failure
    /// the classifier and `retry_if` would retry. Default: yes.
    fn may_retry(&self, copy: &Req, failure: &AttemptFailure<'_>) -> bool {
        let _ = (copy, failure);
        true
    }

    /// Whether a copy of `req` may be sent while the first is still in
    /// flight (a [hedge](crate::hedge)): both may be processed. Default: yes
    /// (the request is already replayable); [`GrpcRequests`] says yes only
    /// for methods marked idempotent.
    fn may_hedge(&self, req: &Req) -> bool {
        let _ = req;
        true
    }
}

/// What is known of a failed attempt when the retry layer asks
/// [`RetryRequests::may_retry`].
#[derive(Clone, Copy, Debug)]
pub struct AttemptFailure<'a> {
    kind: FailureKind,
    pushback: Pushback,
    error: Option<&'a (dyn std::error::Error + 'static)>,
}

impl<'a> AttemptFailure<'a> {
    /// A failure of this kind, with what the response said about retrying
    /// ([`Pushback::None`] for an error).
    pub fn new(kind: FailureKind, pushback: Pushback) -> Self {
        AttemptFailure { kind, pushback, error: None }
    }

    /// The attempt ended in this error.
    pub fn with_error(mut self, error: &'a (dyn std::error::Error + 'static)) -> Self {
        self.error = Some(error);
        self
    }

    /// The classifier's kind.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// What the response said about retrying.
    pub fn pushback(&self) -> Pushback {
        self.pushback
    }

    /// The attempt's error, when it ended in one the retry layer can read
    /// (a [`BoxError`](crate::BoxError), as in the configured stack, or an
    /// `std::io::Error`).
    pub fn error(&self) -> Option<&'a (dyn std::error::Error + 'static)> {
        self.error
    }

    /// Whether the request never reached the server: the error's chain
    /// holds an I/O error of kind `ConnectionRefused` (a connection that
    /// could not be opened, as hyper-util and tonic report it).
    pub fn not_sent(&self) -> bool {
        let mut cur = self.error;
        while let Some(e) = cur {
            if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

/// Retries any `Clone` request.
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneRequests;

impl<Req: Clone, Res> RetryRequests<Req, Res> for CloneRequests {
    #[inline]
    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// Request bodies that can be sent again: already in memory, and copied only
/// when no larger than the limit.
pub trait ReplayBody: Sized {
    /// A copy of the body if it is at most `limit` bytes.
    fn replay(&self, limit: usize) -> Option<Self>;
}

impl ReplayBody for Full<Bytes> {
    fn replay(&self, limit: usize) -> Option<Self> {
        let size = self.size_hint().exact()?;
        (size <= limit as u64).then(|| self.clone())
    }
}

impl ReplayBody for Empty<Bytes> {
    fn replay(&self, _limit: usize) -> Option<Self> {
        Some(Empty::new())
    }
}

impl ReplayBody for String {
    fn replay(&self, limit: usize) -> Option<Self> {
        (self.len() <= limit).then(|| self.clone())
    }
}

impl ReplayBody for Bytes {
    fn replay(&self, limit: usize) -> Option<Self> {
        (self.len() <= limit).then(|| self.clone())
    }
}

impl ReplayBody for Vec<u8> {
    fn replay(&self, limit: usize) -> Option<Self> {
        (self.len() <= limit).then(|| self.clone())
    }
}

impl ReplayBody for () {
    fn replay(&self, _limit: usize) -> Option<Self> {
        Some(())
    }
}

/// Retries `http::Request`s safely: only idempotent methods (GET, HEAD,
/// OPTIONS, TRACE, PUT, DELETE by default, and those added with
/// [`method`](HttpRequests::method)) and only with a body that is in
/// memory and at most `max_body` bytes (default 64 KiB) — anything else is sent
/// once and never retried, whatever the failure (a `503`, an error, a
/// per-attempt timeout), so a body is never partially replayed and a `POST`
/// the server may have acted on is never sent twice. Server
/// pushback (`Retry-After` in seconds or as an HTTP-date,
/// `grpc-retry-pushback-ms`) replaces the backoff delay, even when longer
/// than the backoff's `max_delay` (up to the layer's `max_pushback`).
///
/// ```
/// use tower_mesh::retry::{HttpRequests, RetryRequests};
/// use http::{Method, Request, Response};
///
/// let p = HttpRequests::new();
/// let get = Request::get("/").body(String::new()).unwrap();
/// let post = Request::post("/").body(String::from("{}")).unwrap();
/// assert!(RetryRequests::<_, Response<()>>::clone_request(&p, &get).is_some());
/// assert!(RetryRequests::<_, Response<()>>::clone_request(&p, &post).is_none());
/// let p = p.method(Method::POST); // the caller knows these POSTs are idempotent
/// assert!(RetryRequests::<_, Response<()>>::clone_request(&p, &post).is_some());
/// ```
#[derive(Clone, Debug)]
pub struct HttpRequests {
    methods: u16,
    // Behind an `Arc`: the layer clones this per call, which must not allocate.
    extra: Arc<[Method]>,
    max_body: usize,
}

const GET: u16 = 1;
const HEAD: u16 = 1 << 1;
const OPTIONS: u16 = 1 << 2;
const TRACE: u16 = 1 << 3;
const PUT: u16 = 1 << 4;
const DELETE: u16 = 1 << 5;
const POST: u16 = 1 << 6;
const PATCH: u16 = 1 << 7;

fn method_bit(m: &Method) -> Option<u16> {
    Some(match *m {
        Method::GET => GET,
        Method::HEAD => HEAD,
        Method::OPTIONS => OPTIONS,
        Method::TRACE => TRACE,
        Method::PUT => PUT,
        Method::DELETE => DELETE,
        Method::POST => POST,
        Method::PATCH => PATCH,
        _ => return None,
    })
}

impl Default for HttpRequests {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpRequests {
    /// Idempotent methods, bodies up to 64 KiB.
    pub fn new() -> Self {
        HttpRequests { methods: GET | HEAD | OPTIONS | TRACE | PUT | DELETE, extra: Arc::from([]), max_body: 64 * 1024 }
    }

    /// Also retry `method`: the caller declares its requests idempotent, so
    /// they are retried after any failure, per-attempt timeouts included.
    pub fn method(mut self, method: Method) -> Self {
        match method_bit(&method) {
            Some(bit) => self.methods |= bit,
            None => {
                let mut extra = self.extra.to_vec();
                extra.push(method);
                self.extra = extra.into();
            }
        }
        self
    }

    /// [`method`](HttpRequests::method) by name (`POST`, `patch`:
    /// upper-cased), as configuration gives it.
    pub fn idempotent(self, name: &str) -> Result<Self, InvalidIdempotent> {
        let method = Method::from_bytes(name.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| InvalidIdempotent { value: name.to_owned(), reason: "not an HTTP method name" })?;
        Ok(self.method(method))
    }

    /// Never retry `method`.
    pub fn without_method(mut self, method: Method) -> Self {
        if let Some(bit) = method_bit(&method) {
            self.methods &= !bit;
        }
        if self.extra.contains(&method) {
            self.extra = self.extra.iter().filter(|m| **m != method).cloned().collect();
        }
        self
    }

    /// Largest body that is kept for replay.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    fn allows(&self, m: &Method) -> bool {
        match method_bit(m) {
            Some(bit) => self.methods & bit != 0,
            None => self.extra.contains(m),
        }
    }
}

impl<B: ReplayBody, ResB> RetryRequests<Request<B>, Response<ResB>> for HttpRequests {
    fn clone_request(&self, req: &Request<B>) -> Option<Request<B>> {
        if !self.allows(req.method()) {
            return None;
        }
        copy_request(req, self.max_body)
    }

    fn pushback(&self, res: &Response<ResB>) -> Pushback {
        pushback_from_headers(res.headers())
    }
}

/// A request named idempotent that cannot be one: an HTTP method name that
/// is not a token, or a gRPC method path not of the form
/// `/package.Service/Method` (or `/package.Service/*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidIdempotent {
    value: String,
    reason: &'static str,
}

impl InvalidIdempotent {
    /// The value given.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for InvalidIdempotent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` cannot be marked idempotent: {}", self.value, self.reason)
    }
}

impl std::error::Error for InvalidIdempotent {}

/// Retries gRPC calls (`http::Request`s to a tonic `Channel`) as gRPC's retry
/// design (gRFC A6) says is safe:
///
/// * a method marked [idempotent](GrpcRequests::idempotent) is retried after
///   any failure the classifier reports (`UNAVAILABLE`, `DEADLINE_EXCEEDED`,
///   `INTERNAL`, `UNKNOWN`, errors, per-attempt timeouts, …);
/// * any other method only when the server did not process the call:
///   `UNAVAILABLE`, `RESOURCE_EXHAUSTED` with server pushback
///   (`grpc-retry-pushback-ms`), or a connection refused
///   ([`AttemptFailure::not_sent`]). Never after `DEADLINE_EXCEEDED`,
///   `INTERNAL`, `UNKNOWN`, another transport error or a per-attempt
///   timeout: the server may have done the work.
///
/// Only bodies in memory and at most `max_body` bytes (default 64 KiB) are
/// kept for replay (buffer tonic's body first); anything else is sent once.
/// Server pushback replaces the backoff delay, even when longer than the
/// backoff's `max_delay` (up to the layer's `max_pushback`); a negative or
/// malformed one means "do not retry".
///
/// ```
/// use tower_mesh::classify::{FailureKind, GrpcCode};
/// use tower_mesh::retry::{AttemptFailure, GrpcRequests, Pushback, RetryRequests};
///
/// let p = GrpcRequests::new().idempotent("/orders.v1.Orders/GetOrder").unwrap();
/// let call = |path: &str| http::Request::post(path).body(String::new()).unwrap();
/// let may = |path: &str, code| {
///     let failure = AttemptFailure::new(FailureKind::Grpc(code), Pushback::None);
///     RetryRequests::<_, http::Response<()>>::may_retry(&p, &call(path), &failure)
/// };
/// assert!(may("/orders.v1.Orders/CreateOrder", GrpcCode::Unavailable));
/// assert!(!may("/orders.v1.Orders/CreateOrder", GrpcCode::DeadlineExceeded));
/// assert!(may("/orders.v1.Orders/GetOrder", GrpcCode::DeadlineExceeded));
/// assert!(GrpcRequests::new().idempotent("GetOrder").is_err());
/// ```
#[derive(Clone, Debug)]
pub struct GrpcRequests {
    // Exact paths, and service prefixes ending in `/` (from `/svc/*`).
    // Behind an `Arc`: the layer clones this per call, which must not allocate.
    idempotent: Arc<[String]>,
    max_body: usize,
}

impl Default for GrpcRequests {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcRequests {
    /// No method marked idempotent, bodies up to 64 KiB.
    pub fn new() -> Self {
        GrpcRequests { idempotent: Arc::from([]), max_body: 64 * 1024 }
    }

    /// Mark a method idempotent by its full path, `/package.Service/Method`,
    /// or every method of a service with `/package.Service/*`: retried after
    /// any failure, not only when the server did not process it.
    pub fn idempotent(mut self, path: &str) -> Result<Self, InvalidIdempotent> {
        let invalid = |reason| InvalidIdempotent { value: path.to_owned(), reason };
        let rest = path.strip_prefix('/').ok_or_else(|| invalid("a gRPC method path starts with `/`"))?;
        let (service, method) = rest
            .split_once('/')
            .ok_or_else(|| invalid("expected `/package.Service/Method` or `/package.Service/*`"))?;
        if service.is_empty() || method.is_empty() || method.contains('/') {
            return Err(invalid("expected `/package.Service/Method` or `/package.Service/*`"));
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("a gRPC method path has no spaces"));
        }
        if method != "*" && method.contains('*') {
            return Err(invalid("`*` stands only for a whole method name"));
        }
        let entry = if method == "*" { format!("/{service}/") } else { path.to_owned() };
        let mut list = self.idempotent.to_vec();
        list.push(entry);
        self.idempotent = list.into();
        Ok(self)
    }

    /// Largest body that is kept for replay.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Whether the method at `path` is marked idempotent.
    pub fn is_idempotent(&self, path: &str) -> bool {
        self.idempotent.iter().any(|e| if e.ends_with('/') { path.starts_with(e.as_str()) } else { path == e })
    }
}

impl<B: ReplayBody, ResB> RetryRequests<Request<B>, Response<ResB>> for GrpcRequests {
    fn clone_request(&self, req: &Request<B>) -> Option<Request<B>> {
        copy_request(req, self.max_body)
    }

    fn pushback(&self, res: &Response<ResB>) -> Pushback {
        pushback_from_headers(res.headers())
    }

    fn may_hedge(&self, req: &Request<B>) -> bool {
        self.is_idempotent(req.uri().path())
    }

    fn may_retry(&self, copy: &Request<B>, failure: &AttemptFailure<'_>) -> bool {
        if self.is_idempotent(copy.uri().path()) {
            return true;
        }
        match failure.kind() {
            FailureKind::Grpc(GrpcCode::Unavailable) => true,
            FailureKind::Grpc(GrpcCode::ResourceExhausted) => matches!(failure.pushback(), Pushback::After(_)),
            _ => failure.not_sent(),
        }
    }
}

fn copy_request<B: ReplayBody>(req: &Request<B>, max_body: usize) -> Option<Request<B>> {
    let body = req.body().replay(max_body)?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}

/// Read `grpc-retry-pushback-ms` (negative or malformed: stop) or `Retry-After`
/// (delta-seconds or HTTP-date; malformed: ignored).
pub(crate) fn pushback_from_headers(headers: &HeaderMap) -> Pushback {
    if let Some(v) = headers.get("grpc-retry-pushback-ms") {
        return match v.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()) {
            Some(ms) if ms >= 0 => Pushback::After(Duration::from_millis(ms as u64)),
            _ => Pushback::Stop,
        };
    }
    let Some(v) = headers.get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()) else {
        return Pushback::None;
    };
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // delay-seconds (digits only, no sign); more than a u64 holds is "a
        // very long time" (the backoff's `max_delay` caps it).
        return Pushback::After(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    match httpdate::parse_http_date(v) {
        Ok(at) => Pushback::After(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)),
        Err(_) => Pushback::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(pushback_from_headers(&headers(&[("retry-after", "3")])), Pushback::After(Duration::from_secs(3)));
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(61));
        match pushback_from_headers(&headers(&[("retry-after", &in_a_minute)])) {
            Pushback::After(d) => assert!(d > Duration::from_secs(55) && d <= Duration::from_secs(61), "{d:?}"),
            other => panic!("{other:?}"),
        }
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(100));
        assert_eq!(pushback_from_headers(&headers(&[("retry-after", &past)])), Pushback::After(Duration::ZERO));
        assert_eq!(pushback_from_headers(&headers(&[("retry-after", "soon")])), Pushback::None);
        assert_eq!(pushback_from_headers(&HeaderMap::new()), Pushback::None);
    }

    #[test]
    fn retry_after_delay_seconds_are_digits_only_and_saturate() {
        assert_eq!(pushback_from_headers(&headers(&[("retry-after", "+5")])), Pushback::None);
        assert_eq!(
            pushback_from_headers(&headers(&[("retry-after", "184467440737095516160000")])),
            Pushback::After(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn grpc_pushback() {
        assert_eq!(
            pushback_from_headers(&headers(&[("grpc-retry-pushback-ms", "250")])),
            Pushback::After(Duration::from_millis(250))
        );
        assert_eq!(pushback_from_headers(&headers(&[("grpc-retry-pushback-ms", "-1")])), Pushback::Stop);
        assert_eq!(pushback_from_headers(&headers(&[("grpc-retry-pushback-ms", "x")])), Pushback::Stop);
    }

    #[test]
    fn http_requests_copy_everything_or_nothing() {
        let p = HttpRequests::new().max_body(4);
        let mut req =
            Request::put("http://a/b").header("x-k", "v").body(Full::new(Bytes::from_static(b"1234"))).unwrap();
        req.extensions_mut().insert(7u8);
        let copy = RetryRequests::<_, Response<()>>::clone_request(&p, &req).expect("replayable");
        assert_eq!(copy.method(), Method::PUT);
        assert_eq!(copy.uri(), "http://a/b");
        assert_eq!(copy.headers()["x-k"], "v");
        assert_eq!(copy.extensions().get::<u8>(), Some(&7));
        let big = Request::put("/").body(Full::new(Bytes::from_static(b"12345"))).unwrap();
        assert!(RetryRequests::<_, Response<()>>::clone_request(&p, &big).is_none(), "over the limit");
        let patch = Request::patch("/").body(String::new()).unwrap();
        assert!(RetryRequests::<_, Response<()>>::clone_request(&HttpRequests::new(), &patch).is_none());
        let p = HttpRequests::new().without_method(Method::DELETE).method(Method::from_bytes(b"PURGE").unwrap());
        let del = Request::delete("/").body(()).unwrap();
        assert!(RetryRequests::<_, Response<()>>::clone_request(&p, &del).is_none());
        let purge = Request::builder().method("PURGE").uri("/").body(()).unwrap();
        assert!(RetryRequests::<_, Response<()>>::clone_request(&p, &purge).is_some());
    }

    #[test]
    fn grpc_requests_retry_unprocessed_calls_only_unless_idempotent() {
        let p = GrpcRequests::new()
            .idempotent("/orders.v1.Orders/GetOrder")
            .unwrap()
            .idempotent("/stock.v1.Stock/*")
            .unwrap();
        let call = |path: &str| Request::post(path).body(Bytes::new()).unwrap();
        let may = |path: &str, kind: FailureKind, pushback| {
            RetryRequests::<_, Response<()>>::may_retry(&p, &call(path), &AttemptFailure::new(kind, pushback))
        };
        let create = "/orders.v1.Orders/CreateOrder";
        let grpc = FailureKind::Grpc;
        assert!(may(create, grpc(GrpcCode::Unavailable), Pushback::None));
        for code in [GrpcCode::DeadlineExceeded, GrpcCode::Internal, GrpcCode::Unknown, GrpcCode::DataLoss] {
            assert!(!may(create, grpc(code), Pushback::None), "{code:?}");
        }
        assert!(!may(create, FailureKind::Timeout, Pushback::None));
        assert!(!may(create, FailureKind::Error, Pushback::None));
        assert!(!may(create, grpc(GrpcCode::ResourceExhausted), Pushback::None));
        assert!(may(create, grpc(GrpcCode::ResourceExhausted), Pushback::After(Duration::from_millis(5))));
        for path in ["/orders.v1.Orders/GetOrder", "/stock.v1.Stock/Reserve", "/stock.v1.Stock/Count"] {
            assert!(may(path, grpc(GrpcCode::DeadlineExceeded), Pushback::None), "{path}");
            assert!(may(path, FailureKind::Timeout, Pushback::None), "{path}");
        }
        // A connection refused: the call never left; a reset: it may have been processed.
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let refused_io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let may_err = |e: &(dyn std::error::Error + 'static)| {
            let f = AttemptFailure::new(FailureKind::Error, Pushback::None).with_error(e);
            RetryRequests::<_, Response<()>>::may_retry(&p, &call(create), &f)
        };
        assert!(may_err(&refused_io));
        assert!(!may_err(&reset));
        #[derive(Debug)]
        struct Connect(std::io::Error);
        impl fmt::Display for Connect {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connect error")
            }
        }
        impl std::error::Error for Connect {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert!(may_err(&Connect(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))), "found in the chain");
        assert!(!may_err(&Connect(std::io::Error::from(std::io::ErrorKind::TimedOut))));
        assert!(!may("/orders.v1.Orders/GetOrders", FailureKind::Timeout, Pushback::None), "exact match");
        assert!(!may("/stock.v1.StockX/Count", FailureKind::Timeout, Pushback::None), "service match");
        for bad in
            ["", "GetOrder", "/orders.v1.Orders", "/orders.v1.Orders/", "//GetOrder", "/a/b/c", "/a/Get*", "/a/b c"]
        {
            let e = GrpcRequests::new().idempotent(bad).unwrap_err();
            assert_eq!(e.value(), bad);
            assert!(e.to_string().contains("cannot be marked idempotent"), "{e}");
        }
        let post = Request::post("/").body(()).unwrap();
        let h = HttpRequests::new().idempotent("post").unwrap();
        assert!(RetryRequests::<_, Response<()>>::clone_request(&h, &post).is_some());
        assert!(RetryRequests::<_, Response<()>>::clone_request(&HttpRequests::new(), &post).is_none());
        assert!(HttpRequests::new().idempotent("PO ST").is_err());
    }
}
