//! The server stack: error mapping, metrics, correlation, load shedding,
//! request timeout.

use std::fmt;
use std::time::Duration;

use tower_layer::Layer;

use super::config::ServerConfig;
use super::error::StackError;
use super::observe::{Observe, ObserveLayer, Side};
use super::optional::{Opt, Optional};
use crate::bulkhead::BulkheadLayer;
use crate::classify::HttpClassifier;
use crate::error::{ServerError, ServerErrorLayer};
use crate::timeout::TimeoutLayer;

#[cfg(feature = "correlation-id")]
type CorrelationL = crate::correlation::CorrelationIdLayer;
#[cfg(not(feature = "correlation-id"))]
type CorrelationL = super::client::Passthrough<()>;

/// The service a [`ServerStack`] makes around a handler or router `S`: from
/// the outside in, metrics → correlation id → error mapping → rate limit →
/// load shedding → request timeout → `S`. It never fails (`Error` converts to
/// `Infallible`), as axum's `Router::layer` requires.
pub type ServerService<S> = ServerError<
    Observe<Opt<CorrelationL, ServerError<Opt<RateLimitL, Opt<BulkheadLayer, Opt<TimeoutLayer, S>>>>>, HttpClassifier>,
>;

#[cfg(feature = "rate-limit")]
type RateLimitL = crate::rate_limit::RateLimitLayer<crate::rate_limit::ConfiguredLimiter>;
#[cfg(not(feature = "rate-limit"))]
type RateLimitL = super::client::Passthrough<()>;

/// The server-side layers built from a [`ServerConfig`], for an axum
/// `Router::layer` or a hyper server's service:
///
/// - metrics `tower_mesh_server_requests_total` /
///   `tower_mesh_server_request_duration_seconds` by method and outcome
///   (a shed request is `rejected`, a timed-out one `timeout`);
/// - the correlation id and trace context read (or made), echoed, and
///   current while the handler runs — also on the error responses below;
/// - a rate limit (feature `rate-limit`): over it, `429` with `Retry-After`
///   and the `RateLimit-Policy` / `RateLimit` fields (gRPC:
///   `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`); a rejected
///   request takes no load-shedding permit;
/// - load shedding: beyond `max_concurrent_requests` in flight, `503` with
///   `Retry-After` at once (gRPC: `RESOURCE_EXHAUSTED`);
/// - a request timeout: `504` (gRPC: `DEADLINE_EXCEEDED`). The handler
///   finds the deadline in the request's extensions (or with
///   [`Deadline::current`](crate::deadline::Deadline::current)), and the
///   calls it makes through a [`ClientStack`](super::ClientStack) end by it.
///
/// Token validation needs keys, which do not belong in a configuration file:
/// add a `JwtPropagationLayer` (feature `jwt`) under this
/// stack (`.layer(jwt).layer(stack)` on an axum router, the last added is
/// the outermost).
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mesh::stack::{Preset, ServerConfig};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut cfg = ServerConfig::preset(Preset::Testing);
/// cfg.timeout = Some(Duration::from_millis(20));
/// let svc = ServiceBuilder::new().layer(cfg.stack().unwrap()).service_fn(|_req: http::Request<String>| async {
///     tokio::time::sleep(Duration::from_secs(1)).await;
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// });
/// let res = svc.oneshot(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(res.status(), http::StatusCode::GATEWAY_TIMEOUT);
/// # });
/// ```
#[derive(Clone)]
pub struct ServerStack {
    observe: ObserveLayer<HttpClassifier>,
    correlation: Option<CorrelationL>,
    rate_limit: Option<RateLimitL>,
    shed: Option<BulkheadLayer>,
    timeout: Option<TimeoutLayer>,
}

impl fmt::Debug for ServerStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerStack")
            .field("observe", &self.observe)
            .field("correlation", &self.correlation.is_some())
            .field("rate_limit", &self.rate_limit.is_some())
            .field("load_shedding", &self.shed.as_ref().map(BulkheadLayer::available_permits))
            .field("timeout", &self.timeout.is_some())
            .finish()
    }
}

impl<S> Layer<S> for ServerStack {
    type Service = ServerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let s = Optional::layer(self.timeout.as_ref(), inner);
        let s = Optional::layer(self.shed.as_ref(), s);
        let s = Optional::layer(self.rate_limit.as_ref(), s);
        let s = ServerErrorLayer::new().layer(s);
        let s = Optional::layer(self.correlation.as_ref(), s);
        ServerErrorLayer::new().layer(self.observe.layer(s))
    }
}

impl ServerStack {
    /// The load-shedding bulkhead, when configured (its permits are shared
    /// by every service it made: one pool for the whole router).
    pub fn load_shedding(&self) -> Option<&BulkheadLayer> {
        self.shed.as_ref()
    }
}

impl ServerConfig {
    /// [`stack`](Self::stack), with `peer-ip` rate limit keys read where
    /// `peer` says. For axum's `ConnectInfo`
    /// (`Router::into_make_service_with_connect_info::<SocketAddr>()`):
    /// `cfg.stack_with_peer(PeerAddr::of::<ConnectInfo<SocketAddr>>())`.
    #[cfg(feature = "rate-limit")]
    pub fn stack_with_peer(&self, peer: crate::rate_limit::PeerAddr) -> Result<ServerStack, StackError> {
        let mut stack = self.stack()?;
        if let Some(r) = &self.rate_limit {
            let layer = r
                .layer_with_peer(&self.name, peer)
                .map_err(|source| StackError::Invalid { service: self.name.clone(), source })?;
            stack.rate_limit = Some(layer);
        }
        Ok(stack)
    }

    /// Validate and build the server layers.
    pub fn stack(&self) -> Result<ServerStack, StackError> {
        self.validate().map_err(|source| StackError::Invalid { service: self.name.clone(), source })?;
        #[cfg(feature = "correlation-id")]
        let correlation = self.correlation.then(|| crate::correlation::CorrelationIdLayer::new().name(&self.name));
        #[cfg(not(feature = "correlation-id"))]
        let correlation: Option<CorrelationL> = None;
        Ok(ServerStack {
            observe: ObserveLayer::with_options(
                self.name.as_str(),
                Side::Server,
                self.metrics,
                self.log_calls,
                HttpClassifier::new(),
            ),
            correlation,
            #[cfg(feature = "rate-limit")]
            rate_limit: match &self.rate_limit {
                Some(r) => Some(
                    r.layer(&self.name).map_err(|source| StackError::Invalid { service: self.name.clone(), source })?,
                ),
                None => None,
            },
            #[cfg(not(feature = "rate-limit"))]
            rate_limit: None,
            shed: self
                .max_concurrent_requests
                .map(|n| {
                    BulkheadLayer::builder().name(&self.name).max_concurrent_calls(n).max_wait(Duration::ZERO).build()
                })
                .transpose()
                .map_err(|source| StackError::Invalid { service: self.name.clone(), source })?,
            // The deadline goes in the request, and is current while the
            // handler runs: the calls it makes through a client stack stop at it.
            timeout: self.timeout.map(|t| TimeoutLayer::new(t).name(&self.name)),
        })
    }
}
