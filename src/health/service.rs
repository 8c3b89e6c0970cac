//! The readiness and liveness endpoints.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower_service::Service;

use super::Health;

/// The liveness answer.
const ALIVE: &[u8] = br#"{"status":"up"}"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    Readiness,
    Liveness,
}

/// An HTTP endpoint answering with the health of the process, from
/// [`Health::readiness`] or [`Health::liveness`].
///
/// A `tower::Service` for any request body: ready at once, never failing
/// (`Infallible`), answering `GET` and `HEAD` with `content-type:
/// application/json` and `cache-control: no-store`, any other method with
/// `405`. Mount it with axum's `Router::route_service`, or as the fallback of
/// a hyper server.
///
/// - readiness: `200` with the [`HealthReport`](super::HealthReport) as JSON,
///   or `503` with it when the report is `down`;
/// - liveness: always `200` with `{"status":"up"}`.
#[derive(Clone, Debug)]
pub struct HealthService {
    health: Health,
    probe: Probe,
}

impl HealthService {
    pub(crate) fn new(health: Health, probe: Probe) -> Self {
        HealthService { health, probe }
    }

    fn respond(&self, method: &Method) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            let mut res = Response::new(Full::default());
            *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            res.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        let (status, body) = match self.probe {
            Probe::Liveness => (StatusCode::OK, Bytes::from_static(ALIVE)),
            Probe::Readiness => {
                let report = self.health.report();
                let status = if report.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                match serde_json::to_vec(&report) {
                    Ok(json) => (status, Bytes::from(json)),
                    Err(e) => {
                        tracing::error!(error = %e, "could not serialize the health report");
                        (StatusCode::INTERNAL_SERVER_ERROR, Bytes::from_static(br#"{"status":"down"}"#))
                    }
                }
            }
        };
        let mut res = Response::new(Full::new(body));
        *res.status_mut() = status;
        res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        res.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }
}

impl<B> Service<Request<B>> for HealthService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(req.method())))
    }
}
