//! What the benches' stacks built from tower and tower-resilience share:
//! the request copy a tower retry policy keeps, and the breaker's error as a
//! `BoxError`. Included with `#[path = "support/tower_peer.rs"] mod tower_peer;`.

use http::Request;
use tower::BoxError;

/// A full copy of `req` (method, URI, version, headers, extensions, body),
/// as a tower retry policy keeps it for a retry.
pub fn copy_request<B: Clone>(req: &Request<B>) -> Request<B> {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

/// tower-resilience's breaker error as the `BoxError` the layers above take.
pub fn breaker_error(e: tower_resilience::circuitbreaker::CircuitBreakerError<BoxError>) -> BoxError {
    match e {
        tower_resilience::circuitbreaker::CircuitBreakerError::Inner(e) => e,
        open => Box::new(open),
    }
}
