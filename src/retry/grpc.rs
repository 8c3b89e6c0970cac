//! [`GrpcRequests`]: which gRPC calls the retry layer may send again.

use std::sync::Arc;

use http::{Request, Response};

use super::request::{copy_request, pushback_from_headers};
use super::{AttemptFailure, InvalidIdempotent, Pushback, ReplayBody, RetryRequests};
use crate::classify::{FailureKind, GrpcCode};

/// Retries gRPC calls (`http::Request`s to a tonic `Channel`) as gRPC's retry
/// design (gRFC A6) says is safe:
///
/// * a method marked [idempotent](GrpcRequests::idempotent) is retried after
///   any failure the classifier reports (`UNAVAILABLE`, `DEADLINE_EXCEEDED`,
///   `INTERNAL`, `UNKNOWN`, errors, per-attempt timeouts, …);
/// * any other method only when the server did not process the call:
///   `UNAVAILABLE`, `RESOURCE_EXHAUSTED` with server pushback
///   (`grpc-retry-pushback-ms`), a connection refused or a local rate
///   limiter's rejection ([`AttemptFailure::not_sent`]). Never after `DEADLINE_EXCEEDED`,
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

#[cfg(test)]
mod tests {
    use std::fmt;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::retry::HttpRequests;

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
