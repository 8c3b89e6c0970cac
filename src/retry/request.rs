use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use http_body_util::{Empty, Full};

use crate::classify::FailureKind;
use crate::deadline::Deadline;

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
/// * [`GrpcRequests`](super::GrpcRequests): gRPC calls; a method not marked idempotent is retried
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
    /// (the request is already replayable); [`GrpcRequests`](super::GrpcRequests) says yes only
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
    /// could not be opened, as hyper-util and tonic report it) or a rate
    /// limiter's rejection of this process.
    pub fn not_sent(&self) -> bool {
        if local_pushback(self.error).is_some() {
            return true;
        }
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

/// A rejection by a rate limiter of this process, below the retry layer (a
/// [`RateLimited`](crate::rate_limit::RateLimited) in the error's chain):
/// how long until its permit. The request never left, so it is retried as
/// after a server's `Retry-After`: not before that wait, and not at all when
/// the wait is longer than `max_pushback` or ends after the deadline.
pub(crate) fn local_pushback(error: Option<&(dyn std::error::Error + 'static)>) -> Option<Duration> {
    #[cfg(feature = "rate-limit")]
    return crate::rate_limit::headers::find(error?).map(|e| e.retry_after());
    #[cfg(not(feature = "rate-limit"))]
    {
        let _ = error;
        None
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
/// A copy has the request's method, URI, version, headers, body and
/// extensions — but not a [`Deadline`] that is its only extension: the
/// retry layer attaches the call's deadline to each retry itself, and
/// leaving it out spares every call a copy of the extension map.
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
    pub(super) value: String,
    pub(super) reason: &'static str,
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

pub(super) fn copy_request<B: ReplayBody>(req: &Request<B>, max_body: usize) -> Option<Request<B>> {
    let body = req.body().replay(max_body)?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    // A deadline alone is left out (copying it would copy the extension
    // map): the retry layer gives each retry the call's deadline again.
    let extensions = req.extensions();
    if !(extensions.len() == 1 && extensions.get::<Deadline>().is_some()) {
        *copy.extensions_mut() = extensions.clone();
    }
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
        // A deadline beside other extensions is copied with them; alone, it
        // is left to the retry layer (no extension map is copied).
        let deadline = Deadline::at(tokio::time::Instant::now());
        req.extensions_mut().insert(deadline);
        let copy = RetryRequests::<_, Response<()>>::clone_request(&p, &req).expect("replayable");
        assert_eq!((copy.extensions().get::<u8>(), copy.extensions().get()), (Some(&7), Some(&deadline)));
        let mut lone = Request::get("/").body(()).unwrap();
        lone.extensions_mut().insert(deadline);
        let copy = RetryRequests::<_, Response<()>>::clone_request(&p, &lone).expect("replayable");
        assert!(copy.extensions().is_empty());
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
}
