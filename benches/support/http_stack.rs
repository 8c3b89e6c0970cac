//! The README's HTTP client stack (total timeout, retry, circuit breaker,
//! bulkhead, attempt timeout) and its nearest equivalent built from tower and
//! tower-resilience, over the same no-op HTTP service, for the `layers`
//! bench's allocation count. Included with
//! `#[path = "support/http_stack.rs"] mod http_stack;`.

use std::convert::Infallible;
use std::future::Ready;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::{BoxError, Service, ServiceBuilder};

/// The request of the HTTP subjects.
pub type Req = Request<String>;

/// Always ready, answers `200` with an empty body at once.
#[derive(Clone, Copy, Debug)]
pub struct NoopHttp;

impl Service<Req> for NoopHttp {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, _req: Req) -> Self::Future {
        std::future::ready(Ok(Response::new(String::new())))
    }
}

/// The README's first example, over [`NoopHttp`].
#[cfg(all(feature = "circuit-breaker", feature = "bulkhead", feature = "retry", feature = "timeout"))]
pub fn mesh() -> impl Service<Req, Response = Response<String>, Error = BoxError> + Clone {
    use tower_mesh::circuit_breaker::CircuitBreakerLayer;
    use tower_mesh::classify::{HttpClassifier, IgnoreRejections};
    use tower_mesh::retry::{HttpRequests, RetryConfig, RetryLayer};
    use tower_mesh::ServiceBuilderExt;

    let classifier = IgnoreRejections(HttpClassifier::new());
    let retry = RetryLayer::from_config(&RetryConfig::standard())
        .expect("standard retry")
        .with_classifier(classifier)
        .with_requests(HttpRequests::new());
    let breaker = CircuitBreakerLayer::builder().name("orders").classifier(classifier).build().expect("breaker");
    ServiceBuilder::new()
        .mesh_timeout(Duration::from_secs(2))
        .mesh_retry(retry)
        .circuit_breaker(breaker)
        .bulkhead(50)
        .mesh_attempt_timeout(Duration::from_millis(500))
        .service(NoopHttp)
}

/// tower's retry policy doing what the README's retry does on the success
/// path: a copy of the request kept for a retry of an idempotent method;
/// 5xx and errors retried twice.
#[derive(Clone, Copy, Debug)]
struct TowerRetry {
    retries: u32,
}

impl<E> tower::retry::Policy<Req, Response<String>, E> for TowerRetry {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Response<String>, E>) -> Option<Self::Future> {
        let failed = result.as_ref().map_or(true, |res| res.status().is_server_error());
        if !failed || self.retries >= 2 {
            return None;
        }
        self.retries += 1;
        Some(tokio::time::sleep(Duration::from_secs(1)))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        if !req.method().is_idempotent() {
            return None;
        }
        Some(tower_peer::copy_request(req))
    }
}

#[path = "tower_peer.rs"]
mod tower_peer;
use tower_peer::breaker_error;

/// The same stack from tower (timeouts, `Retry`, `ConcurrencyLimit`) and
/// tower-resilience (the circuit breaker, count window of 100).
pub fn tower() -> impl Service<Req, Response = Response<String>, Error = BoxError> + Clone {
    use tower_resilience::circuitbreaker::{CircuitBreakerLayer, SlidingWindowType};
    let breaker = CircuitBreakerLayer::builder()
        .sliding_window_type(SlidingWindowType::CountBased)
        .sliding_window_size(100)
        .build()
        .expect("tower-resilience breaker");
    ServiceBuilder::new()
        .timeout(Duration::from_secs(2))
        .layer(tower::retry::RetryLayer::new(TowerRetry { retries: 0 }))
        .map_err(breaker_error)
        .layer(breaker)
        .concurrency_limit(50)
        .timeout(Duration::from_millis(500))
        .service(NoopHttp)
}
