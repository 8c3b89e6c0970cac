//! The client stack: every configured layer, in the recommended order.

use std::fmt;
use std::marker::PhantomData;

use tower_layer::Layer;

use super::config::ClientConfig;
use super::error::StackError;
use super::observe::{Observe, ObserveLayer, Side};
use crate::bulkhead::BulkheadLayer;
use crate::circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer};
use crate::classify::{GrpcClassifier, HttpClassifier, IgnoreRejections};
use crate::retry::{GrpcRequests, HttpRequests, RetryLayer};
use crate::timeout::TimeoutLayer;

use super::optional::{Opt, Optional};

/// A layer that leaves the service as it is (stands for a layer whose Cargo
/// feature is off).
#[derive(Debug)]
pub struct Passthrough<C>(PhantomData<fn() -> C>);

impl<C> Clone for Passthrough<C> {
    fn clone(&self) -> Self {
        Passthrough(PhantomData)
    }
}

impl<S, C> Layer<S> for Passthrough<C> {
    type Service = S;
    fn layer(&self, inner: S) -> S {
        inner
    }
}

#[cfg(feature = "discovery")]
pub(super) type DiscoveryL<C> = crate::discovery::DiscoveryLayer<C>;
#[cfg(not(feature = "discovery"))]
pub(super) type DiscoveryL<C> = Passthrough<C>;
#[cfg(feature = "correlation-id")]
type CorrelationL = crate::correlation::CorrelationIdClientLayer;
#[cfg(not(feature = "correlation-id"))]
type CorrelationL = Passthrough<()>;
#[cfg(feature = "rate-limit")]
type RateLimitL = crate::rate_limit::RateLimitLayer<crate::rate_limit::ConfiguredLimiter>;
#[cfg(not(feature = "rate-limit"))]
type RateLimitL = Passthrough<()>;
#[cfg(feature = "jwt")]
type JwtL = crate::jwt::JwtClientLayer;
#[cfg(not(feature = "jwt"))]
type JwtL = Passthrough<()>;

#[cfg(feature = "hedge")]
type HedgeL<C, P> = crate::hedge::HedgeLayer<IgnoreRejections<C>, P>;
#[cfg(not(feature = "hedge"))]
type HedgeL<C, P> = Passthrough<(C, P)>;
/// What each attempt of a [`ClientService`] goes through, from the outside
/// in: hedge → rate limit → circuit breaker → bulkhead → attempt timeout →
/// discovery → `S` (a hedge is an attempt too), each layer present only
/// when configured (and its Cargo feature on).
pub type AttemptService<S, C = HttpClassifier, P = HttpRequests> = Opt<
    HedgeL<C, P>,
    Opt<
        RateLimitL,
        Opt<CircuitBreakerLayer<IgnoreRejections<C>>, Opt<BulkheadLayer, Opt<TimeoutLayer, Opt<DiscoveryL<C>, S>>>>,
    >,
>;

/// The total timeout and the retry around the attempts.
pub(super) type Retried<S, C, P> = Opt<TimeoutLayer, Opt<RetryLayer<IgnoreRejections<C>, P>, AttemptService<S, C, P>>>;

/// The service a [`ClientStack`] makes around `S`: from the outside in,
/// metrics → correlation id → token forwarding → total timeout → retry →
/// the [`AttemptService`] (hedge → rate limit → circuit breaker → bulkhead
/// → attempt timeout → discovery) → `S`, each layer present only when
/// configured (and its Cargo feature on). A
/// [`BufferedHttpStack`](super::BufferedHttpStack) adds the fallback and
/// coalescing under the token forwarding
/// ([`BufferedHttpService`](super::BufferedHttpService)).
pub type ClientService<S, C = HttpClassifier, P = HttpRequests> = Outer<Retried<S, C, P>, C>;

/// The layers above the resilience ones: metrics, correlation id, token.
pub(super) type Outer<S, C> = Observe<Opt<CorrelationL, Opt<JwtL, S>>, C>;

/// The layers of one downstream service, built from its [`ClientConfig`] —
/// a [`Layer`] that wraps a hyper-util client or a tonic `Channel` in the
/// recommended order (see the [module docs](super) for why this order).
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mesh::stack::{ClientConfig, Preset};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let stack = ClientConfig::preset(Preset::Testing).named("orders").http_stack().unwrap();
/// let breaker = stack.breaker().unwrap();
/// let svc = ServiceBuilder::new().layer(stack).service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
/// });
/// let res = svc.oneshot(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(res.body(), "ok");
/// assert_eq!(breaker.name(), "orders");
/// # });
/// ```
///
/// `A` holds the layers of a [`BufferedHttpStack`](super::BufferedHttpStack)
/// (fallback, coalescing); `()` in the others.
pub struct ClientStack<C = HttpClassifier, P = HttpRequests, A = ()> {
    name: String,
    observe: ObserveLayer<C>,
    correlation: Option<CorrelationL>,
    jwt: Option<JwtL>,
    pub(super) answers: A,
    total: Option<TimeoutLayer>,
    retry: Option<RetryLayer<IgnoreRejections<C>, P>>,
    hedge: Option<HedgeL<C, P>>,
    rate_limit: Option<RateLimitL>,
    breaker: Option<CircuitBreakerLayer<IgnoreRejections<C>>>,
    bulkhead: Option<BulkheadLayer>,
    attempt: Option<TimeoutLayer>,
    discovery: Option<DiscoveryL<C>>,
    #[cfg(feature = "discovery")]
    registry: Option<crate::discovery::Registry>,
}

impl<C: Clone, P: Clone, A: Clone> Clone for ClientStack<C, P, A>
where
    DiscoveryL<C>: Clone,
{
    fn clone(&self) -> Self {
        ClientStack {
            name: self.name.clone(),
            observe: self.observe.clone(),
            correlation: self.correlation.clone(),
            jwt: self.jwt.clone(),
            answers: self.answers.clone(),
            total: self.total.clone(),
            retry: self.retry.clone(),
            hedge: self.hedge.clone(),
            rate_limit: self.rate_limit.clone(),
            breaker: self.breaker.clone(),
            bulkhead: self.bulkhead.clone(),
            attempt: self.attempt.clone(),
            discovery: self.discovery.clone(),
            #[cfg(feature = "discovery")]
            registry: self.registry.clone(),
        }
    }
}

impl<C, P, A: fmt::Debug> fmt::Debug for ClientStack<C, P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStack")
            .field("service", &self.name)
            .field("correlation", &self.correlation.is_some())
            .field("forward_token", &self.jwt.is_some())
            .field("answers", &self.answers)
            .field("total_timeout", &self.total.is_some())
            .field("retry", &self.retry.is_some())
            .field("hedge", &self.hedge.is_some())
            .field("rate_limit", &self.rate_limit.is_some())
            .field("circuit_breaker", &self.breaker.is_some())
            .field("bulkhead", &self.bulkhead.is_some())
            .field("attempt_timeout", &self.attempt.is_some())
            .field("discovery", &self.discovery.is_some())
            .finish()
    }
}

fn opt<L: Layer<S>, S>(layer: &Option<L>, inner: S) -> Opt<L, S> {
    Optional::layer(layer.as_ref(), inner)
}

impl<S, C: Clone, P: Clone> Layer<S> for ClientStack<C, P>
where
    DiscoveryL<C>: Layer<S>,
{
    type Service = ClientService<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        self.outer(self.retried(inner))
    }
}

impl<C: Clone, P: Clone, A> ClientStack<C, P, A> {
    /// The total timeout, the retry and the attempt layers around `inner`.
    pub(super) fn retried<S>(&self, inner: S) -> Retried<S, C, P>
    where
        DiscoveryL<C>: Layer<S>,
    {
        let s = opt(&self.discovery, inner);
        let s = opt(&self.attempt, s);
        let s = opt(&self.bulkhead, s);
        let s = opt(&self.breaker, s);
        let s = opt(&self.rate_limit, s);
        let s = opt(&self.hedge, s);
        let s = opt(&self.retry, s);
        opt(&self.total, s)
    }

    /// The token, correlation and metrics layers around `inner`.
    pub(super) fn outer<S>(&self, inner: S) -> Outer<S, C> {
        let s = opt(&self.jwt, inner);
        let s = opt(&self.correlation, s);
        self.observe.layer(s)
    }
}

impl<C, P, A> ClientStack<C, P, A> {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hedge layer (its delay and budget), when the stack has one.
    #[cfg(feature = "hedge")]
    pub fn hedge(&self) -> Option<&HedgeL<C, P>> {
        self.hedge.as_ref()
    }

    /// The circuit breaker's handle (for health reports and manual
    /// transitions), when the stack has one.
    pub fn breaker(&self) -> Option<CircuitBreakerHandle> {
        self.breaker.as_ref().map(CircuitBreakerLayer::handle)
    }

    /// The bulkhead layer (its permits are shared by every service it made).
    pub fn bulkhead(&self) -> Option<&BulkheadLayer> {
        self.bulkhead.as_ref()
    }

    /// The discovery registry of the static endpoints, when configured: set
    /// other endpoints on it at run time, or hand it to a health report.
    #[cfg(feature = "discovery")]
    pub fn registry(&self) -> Option<&crate::discovery::Registry> {
        self.registry.as_ref()
    }
}

impl ClientConfig {
    /// The stack for an HTTP client (hyper-util, reqwest-like `Service`s):
    /// failures by status (5xx, 429, 408) and errors; retries only of
    /// idempotent requests (GET, HEAD, OPTIONS, TRACE, PUT, DELETE, and the
    /// methods named in `retry.idempotent`) with a replayable body. Any other
    /// request — a `POST` — is sent once, whatever the failure: a `503`, an
    /// error, a per-attempt timeout.
    pub fn http_stack(&self) -> Result<ClientStack<HttpClassifier, HttpRequests>, StackError> {
        self.stack_with(HttpClassifier::new(), self.http_requests()?)
    }

    /// The HTTP request policy: idempotent methods and those named in
    /// `retry.idempotent`.
    pub(super) fn http_requests(&self) -> Result<HttpRequests, StackError> {
        let mut requests = HttpRequests::new();
        for name in self.retry.iter().flat_map(|r| &r.idempotent) {
            requests = requests
                .idempotent(name)
                .map_err(|e| StackError::Section { service: self.name.clone(), source: Box::new(e) })?;
        }
        Ok(requests)
    }

    /// The stack for a gRPC client (a tonic `Channel`): failures by
    /// `grpc-status` (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, … in headers; add
    /// [`ClassifyEosLayer`](crate::classify::ClassifyEosLayer) under it for
    /// trailers). Retries as gRPC's retry design (gRFC A6) says is safe
    /// ([`GrpcRequests`]): a call is retried only when the server did not
    /// process it — `UNAVAILABLE`, `RESOURCE_EXHAUSTED` with
    /// `grpc-retry-pushback-ms`, a connection refused — never after
    /// `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN`, another transport error
    /// or a per-attempt timeout, unless its method is named in
    /// `retry.idempotent` (full paths, `/orders.v1.Orders/GetOrder`, or
    /// `/orders.v1.Orders/*`); those are retried after any failure. The request body must be replayable
    /// (buffer tonic's body first, as `examples/tonic_client.rs` does),
    /// otherwise it is sent once.
    pub fn grpc_stack(&self) -> Result<ClientStack<GrpcClassifier, GrpcRequests>, StackError> {
        let mut requests = GrpcRequests::new();
        for path in self.retry.iter().flat_map(|r| &r.idempotent) {
            requests = requests
                .idempotent(path)
                .map_err(|e| StackError::Section { service: self.name.clone(), source: Box::new(e) })?;
        }
        self.stack_with(GrpcClassifier::new(), requests)
    }

    /// The stack with any classifier and retry request policy. The
    /// fallback and coalescing layers keep or share responses, so they need
    /// a buffered body: a configuration with either is a
    /// [`StackError::NeedsBufferedBody`] here (build it with
    /// [`buffered_http_stack`](Self::buffered_http_stack)).
    pub fn stack_with<C: Clone, P: Clone>(&self, classifier: C, requests: P) -> Result<ClientStack<C, P>, StackError> {
        #[cfg(feature = "fallback")]
        if self.fallback.is_some() {
            return Err(StackError::NeedsBufferedBody { service: self.name.clone(), layer: "fallback" });
        }
        #[cfg(feature = "coalesce")]
        if self.coalesce.is_some() {
            return Err(StackError::NeedsBufferedBody { service: self.name.clone(), layer: "coalesce" });
        }
        self.build(classifier, requests, ())
    }

    /// Every layer, with `answers` (the fallback and coalescing of a
    /// buffered stack, or `()`).
    pub(super) fn build<C: Clone, P: Clone, A>(
        &self,
        classifier: C,
        requests: P,
        answers: A,
    ) -> Result<ClientStack<C, P, A>, StackError> {
        let invalid = |source| StackError::Invalid { service: self.name.clone(), source };
        self.validate().map_err(invalid)?;
        let timeouts = self.timeout.layers().map_err(invalid)?;
        let hedge = self.hedge_layer(&classifier, &requests)?;
        let retry = match &self.retry {
            Some(r) => Some(
                RetryLayer::from_config(r)
                    .map_err(invalid)?
                    .with_classifier(IgnoreRejections(classifier.clone()))
                    .with_requests(requests),
            ),
            None => None,
        };
        let breaker = match &self.circuit_breaker {
            Some(b) => Some(
                CircuitBreakerLayer::from_config(b)
                    .map_err(invalid)?
                    .with_classifier(IgnoreRejections(classifier.clone())),
            ),
            None => None,
        };
        let bulkhead = match &self.bulkhead {
            Some(b) => Some(BulkheadLayer::builder().name(&self.name).config(b).build().map_err(invalid)?),
            None => None,
        };
        #[cfg(feature = "rate-limit")]
        let rate_limit = match &self.rate_limit {
            Some(r) => Some(r.layer(&self.name).map_err(invalid)?),
            None => None,
        };
        #[cfg(not(feature = "rate-limit"))]
        let rate_limit = None;
        #[cfg(feature = "correlation-id")]
        let correlation =
            self.correlation.then(|| crate::correlation::CorrelationIdClientLayer::new().name(&self.name));
        #[cfg(not(feature = "correlation-id"))]
        let correlation = None;
        let jwt = self.jwt_layer()?;
        #[cfg(feature = "discovery")]
        let (discovery, registry) = self.discovery_layer(&classifier)?;
        #[cfg(not(feature = "discovery"))]
        let discovery = None;
        Ok(ClientStack {
            name: self.name.clone(),
            observe: ObserveLayer::with_options(
                self.name.as_str(),
                Side::Client,
                self.metrics,
                self.log_calls,
                classifier,
            ),
            correlation,
            jwt,
            answers,
            total: timeouts.total.map(|t| t.name(&self.name)),
            retry,
            hedge,
            rate_limit,
            breaker,
            bulkhead,
            attempt: timeouts.attempt.map(|t| t.name(&self.name)),
            discovery,
            #[cfg(feature = "discovery")]
            registry,
        })
    }

    /// The hedge layer, when `hedge` is configured: the retry's classifier
    /// and request policy (only requests safe to send twice are hedged).
    #[allow(clippy::unnecessary_wraps)]
    fn hedge_layer<C: Clone, P: Clone>(
        &self,
        classifier: &C,
        requests: &P,
    ) -> Result<Option<HedgeL<C, P>>, StackError> {
        #[cfg(feature = "hedge")]
        if let Some(h) = &self.hedge {
            let layer = h
                .builder(&self.name)
                .classifier(IgnoreRejections(classifier.clone()))
                .requests(requests.clone())
                .build()
                .map_err(|source| StackError::Invalid { service: self.name.clone(), source })?;
            return Ok(Some(layer));
        }
        let _ = (classifier, requests);
        Ok(None)
    }

    /// The token-forwarding layer, when `forward_token_to` names any host.
    fn jwt_layer(&self) -> Result<Option<JwtL>, StackError> {
        #[cfg(feature = "jwt")]
        if !self.forward_token_to.is_empty() {
            let allow = crate::jwt::Allowlist::new(self.forward_token_to.iter().map(String::as_str))
                .map_err(|e| StackError::Section { service: self.name.clone(), source: Box::new(e) })?;
            return Ok(Some(crate::jwt::JwtClientLayer::new(allow).name(&self.name)));
        }
        Ok(None)
    }

    /// The discovery layer and the registry it reads, when `endpoints` lists
    /// any.
    #[cfg(feature = "discovery")]
    #[allow(clippy::type_complexity)]
    fn discovery_layer<C: Clone>(
        &self,
        classifier: &C,
    ) -> Result<(Option<DiscoveryL<C>>, Option<crate::discovery::Registry>), StackError> {
        if self.endpoints.is_empty() {
            return Ok((None, None));
        }
        let registry = crate::discovery::Registry::new();
        registry
            .set_static(&self.name, &self.endpoints)
            .map_err(|e| StackError::Section { service: self.name.clone(), source: Box::new(e) })?;
        let layer = crate::discovery::DiscoveryLayer::builder(registry.clone())
            .name(&self.name)
            .service(&self.name)
            .classifier(classifier.clone())
            .build()
            .map_err(|source| StackError::Invalid { service: self.name.clone(), source })?;
        Ok((Some(layer), Some(registry)))
    }
}
