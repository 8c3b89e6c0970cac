//! The HTTP client stack with the layers that keep or share responses:
//! fallback and coalescing.

use std::fmt;
use std::marker::PhantomData;

use tower_layer::Layer;

use super::client::{ClientStack, Outer, Retried};
use super::config::ClientConfig;
use super::error::StackError;
use super::optional::{Opt, Optional};
use crate::classify::HttpClassifier;
use crate::retry::HttpRequests;

#[cfg(feature = "fallback")]
type FallbackL<B, ResB> = crate::fallback::ConfiguredFallbackLayer<B, ResB>;
#[cfg(not(feature = "fallback"))]
type FallbackL<B, ResB> = super::Passthrough<(B, ResB)>;
#[cfg(feature = "coalesce")]
type CoalesceL<B, ResB> =
    crate::coalesce::CoalesceLayer<crate::request_key::HttpKey, crate::coalesce::HttpKeyFn<B>, http::Response<ResB>>;
#[cfg(not(feature = "coalesce"))]
type CoalesceL<B, ResB> = super::Passthrough<(B, ResB)>;

/// The stack of [`ClientConfig::buffered_http_stack`]: the HTTP stack with
/// the configured fallback and coalescing, for a client of
/// `http::Request<B>` answering `http::Response<ResB>` with a buffered body.
pub type BufferedHttpStack<B, ResB> = ClientStack<HttpClassifier, HttpRequests, Answers<B, ResB>>;

/// The service a [`BufferedHttpStack`] makes around `S`: from the outside
/// in, metrics → correlation id → token forwarding → fallback → coalescing
/// → total timeout → retry → the
/// [`AttemptService`](super::AttemptService) (hedge → rate limit → circuit
/// breaker → bulkhead → attempt timeout → discovery) → `S`.
pub type BufferedHttpService<S, B, ResB> =
    Outer<Opt<FallbackL<B, ResB>, Opt<CoalesceL<B, ResB>, Retried<S, HttpClassifier, HttpRequests>>>, HttpClassifier>;

/// The fallback and coalescing layers of a [`BufferedHttpStack`].
pub struct Answers<B, ResB> {
    fallback: Option<FallbackL<B, ResB>>,
    coalesce: Option<CoalesceL<B, ResB>>,
    _types: PhantomData<fn(B) -> ResB>,
}

impl<B, ResB> Clone for Answers<B, ResB> {
    fn clone(&self) -> Self {
        Answers { fallback: self.fallback.clone(), coalesce: self.coalesce.clone(), _types: PhantomData }
    }
}

impl<B, ResB> fmt::Debug for Answers<B, ResB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answers")
            .field("fallback", &self.fallback.is_some())
            .field("coalesce", &self.coalesce.is_some())
            .finish()
    }
}

impl<S, B, ResB> Layer<S> for BufferedHttpStack<B, ResB>
where
    super::client::DiscoveryL<HttpClassifier>: Layer<S>,
{
    type Service = BufferedHttpService<S, B, ResB>;

    fn layer(&self, inner: S) -> Self::Service {
        let s = self.retried(inner);
        let s = Optional::layer(self.answers.coalesce.as_ref(), s);
        let s = Optional::layer(self.answers.fallback.as_ref(), s);
        self.outer(s)
    }
}

impl<B, ResB> BufferedHttpStack<B, ResB> {
    /// The fallback layer (its stale cache), when configured.
    #[cfg(feature = "fallback")]
    pub fn fallback(&self) -> Option<&FallbackL<B, ResB>> {
        self.answers.fallback.as_ref()
    }

    /// The coalescing layer (its calls in flight), when configured.
    #[cfg(feature = "coalesce")]
    pub fn coalesce(&self) -> Option<&CoalesceL<B, ResB>> {
        self.answers.coalesce.as_ref()
    }
}

impl ClientConfig {
    /// The stack of [`http_stack`](Self::http_stack) with the configured
    /// fallback (feature `fallback`) and coalescing (feature `coalesce`),
    /// for a client answering `http::Response<ResB>` with a buffered body:
    /// `ResB: Clone` (the stale cache keeps copies of answers, coalesced
    /// callers get copies of one) and `From<Bytes>` (the fixed fallback
    /// answer), e.g. `Full<Bytes>`. Collect a streaming body under the
    /// stack, with a size cap (`http_body_util::Limited`), to use it around
    /// a hyper-util client.
    pub fn buffered_http_stack<B, ResB>(&self) -> Result<BufferedHttpStack<B, ResB>, StackError> {
        let invalid = |source| StackError::Invalid { service: self.name.clone(), source };
        self.validate().map_err(invalid)?;
        #[cfg(feature = "fallback")]
        let fallback = match &self.fallback {
            Some(f) => Some(f.layer(&self.name).map_err(invalid)?),
            None => None,
        };
        #[cfg(not(feature = "fallback"))]
        let fallback = None;
        #[cfg(feature = "coalesce")]
        let coalesce = self.coalesce.as_ref().map(|c| c.http_layer(&self.name));
        #[cfg(not(feature = "coalesce"))]
        let coalesce = None;
        let answers = Answers { fallback, coalesce, _types: PhantomData };
        self.build(HttpClassifier::new(), self.http_requests()?, answers)
    }
}
