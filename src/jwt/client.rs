//! The client-side layer: the current token onto outgoing requests to allowed
//! hosts.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::AUTHORIZATION;
use http::uri::{Authority, Scheme};
use http::{Request, Uri};
use metrics::Counter;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::allowlist::Allowlist;
use super::error::JwtError;
use super::token::BearerToken;
use crate::error::BoxError;

/// Swaps the caller's token for one meant for a downstream service (OAuth 2.0
/// token exchange, RFC 8693, or any scheme of your own), for
/// [`JwtClientLayer::exchange`].
///
/// Most easily made from an async closure with [`exchange_fn`]. The future
/// is stored in the client's response future as it is, without boxing; an
/// exchange that is slow or costly should cache its results (keyed by the
/// inbound token and the target).
pub trait TokenExchange {
    /// The exchange's future.
    type Future: Future<Output = Result<BearerToken, BoxError>>;

    /// A token for `target` in place of `token`, or `None` to send `token`
    /// itself.
    fn exchange(&self, token: &BearerToken, target: &Authority) -> Option<Self::Future>;
}

/// No exchange: the caller's token goes downstream as it came.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoExchange;

impl TokenExchange for NoExchange {
    type Future = std::future::Ready<Result<BearerToken, BoxError>>;

    #[inline]
    fn exchange(&self, _: &BearerToken, _: &Authority) -> Option<Self::Future> {
        None
    }
}

/// A [`TokenExchange`] made from a function: see [`exchange_fn`].
#[derive(Clone, Copy)]
pub struct ExchangeFn<F>(F);

impl<F> fmt::Debug for ExchangeFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExchangeFn")
    }
}

/// A [`TokenExchange`] that calls `f(inbound token, target authority)`.
///
/// ```
/// use tower_mesh::jwt::{exchange_fn, BearerToken};
///
/// let exchange = exchange_fn(|token: BearerToken, target: http::uri::Authority| async move {
///     // Ask the token service for a token with `aud` = target …
///     let _ = (token, target);
///     BearerToken::new("downstream.token.sig").map_err(Into::into)
/// });
/// # let _ = exchange;
/// ```
pub fn exchange_fn<F, Fut>(f: F) -> ExchangeFn<F>
where
    F: Fn(BearerToken, Authority) -> Fut,
    Fut: Future<Output = Result<BearerToken, BoxError>>,
{
    ExchangeFn(f)
}

impl<F, Fut> TokenExchange for ExchangeFn<F>
where
    F: Fn(BearerToken, Authority) -> Fut,
    Fut: Future<Output = Result<BearerToken, BoxError>>,
{
    type Future = Fut;

    fn exchange(&self, token: &BearerToken, target: &Authority) -> Option<Fut> {
        Some((self.0)(token.clone(), target.clone()))
    }
}

/// Client-side layer: puts the [current](BearerToken::current) token on
/// outgoing requests as `Authorization: Bearer …` (for gRPC, the
/// `authorization` metadata, which is the same header) — **only** when the
/// request's target is in the [`Allowlist`], over `https` (plain `http` only
/// to the entries written `http://…`).
///
/// - The target is the request URI's authority (a hyper-util client's
///   requests have one), else the layer's [`origin`](JwtClientLayer::origin)
///   — set it for a tonic `Channel`, whose requests carry only a path at this
///   point. No target known: no token.
/// - A request that already has an `Authorization` header is left as it is.
/// - The header is marked sensitive: HTTP/2 never indexes it and `Debug` of
///   the headers hides it.
/// - With an [`exchange`](JwtClientLayer::exchange) hook, the token sent is
///   the one the hook returns for that target; if the hook fails the call
///   fails with [`JwtError::Exchange`] and nothing is sent.
///
/// ```
/// use http::Request;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_mesh::jwt::{Allowlist, BearerToken, JwtClientLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = ServiceBuilder::new()
///     .layer(JwtClientLayer::new(Allowlist::new(["*.mesh.local"]).unwrap()))
///     .service(service_fn(|req: Request<()>| async move {
///         Ok::<_, std::convert::Infallible>(req.headers().get("authorization").cloned())
///     }));
///
/// let token = BearerToken::new("header.claims.signature").unwrap();
/// let to = |uri: &str| Request::get(uri).body(()).unwrap();
/// let (inside, outside) = token
///     .scope(async {
///         let inside = client.clone().oneshot(to("https://orders.mesh.local/x")).await.unwrap();
///         let outside = client.clone().oneshot(to("https://example.com/x")).await.unwrap();
///         (inside, outside)
///     })
///     .await;
/// assert_eq!(inside.unwrap(), "Bearer header.claims.signature");
/// assert!(outside.is_none());
/// # }
/// ```
#[derive(Clone)]
pub struct JwtClientLayer<X = NoExchange> {
    shared: Arc<ClientShared>,
    exchange: X,
}

impl<X> fmt::Debug for JwtClientLayer<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtClientLayer").field("shared", &self.shared).finish_non_exhaustive()
    }
}

impl JwtClientLayer {
    /// A layer that sends the current token to the hosts of `allowlist`.
    pub fn new(allowlist: Allowlist) -> Self {
        JwtClientLayer { shared: Arc::new(ClientShared::new(allowlist, None, "jwt".into())), exchange: NoExchange }
    }
}

impl<X> JwtClientLayer<X> {
    /// The target of requests whose URI has no authority: the scheme and
    /// authority of `uri` (for a tonic `Channel`, its endpoint's URI). Give
    /// the scheme: it decides whether the [`Allowlist`] allows the target
    /// (`https`, or `http` for an `http://` entry); without one no token is
    /// sent.
    pub fn origin(mut self, uri: Uri) -> Self {
        let parts = uri.into_parts();
        let origin = parts.authority.map(|a| (parts.scheme, a));
        self.shared = Arc::new(ClientShared::new(self.shared.allowlist.clone(), origin, self.shared.name.clone()));
        self
    }

    /// The name used in logs and as the `service` label of the metrics
    /// (default `"jwt"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        let name: String = name.into();
        self.shared =
            Arc::new(ClientShared::new(self.shared.allowlist.clone(), self.shared.origin.clone(), name.into()));
        self
    }

    /// Swap the token for one meant for the target before sending it.
    pub fn exchange<Y: TokenExchange>(self, exchange: Y) -> JwtClientLayer<Y> {
        JwtClientLayer { shared: self.shared, exchange }
    }
}

impl<S, X: Clone> Layer<S> for JwtClientLayer<X> {
    type Service = JwtClient<S, X>;

    fn layer(&self, inner: S) -> Self::Service {
        JwtClient { inner, shared: self.shared.clone(), exchange: self.exchange.clone() }
    }
}

struct ClientShared {
    allowlist: Allowlist,
    origin: Option<(Option<Scheme>, Authority)>,
    name: Arc<str>,
    attached: Counter,
    exchanged: Counter,
    exchange_failed: Counter,
    not_allowed: Counter,
    no_token: Counter,
    caller_set: Counter,
}

impl fmt::Debug for ClientShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtClient")
            .field("name", &self.name)
            .field("allowlist", &self.allowlist)
            .field("origin", &self.origin)
            .finish()
    }
}

impl ClientShared {
    fn new(allowlist: Allowlist, origin: Option<(Option<Scheme>, Authority)>, name: Arc<str>) -> Self {
        let counter = |outcome: &'static str| metrics::counter!("tower_mesh_jwt_outbound_total", "service" => name.to_string(), "outcome" => outcome);
        ClientShared {
            allowlist,
            origin,
            attached: counter("attached"),
            exchanged: counter("exchanged"),
            exchange_failed: counter("exchange_failed"),
            not_allowed: counter("not_allowed"),
            no_token: counter("no_token"),
            caller_set: counter("caller_set"),
            name,
        }
    }

    /// The request's target, if tokens may go there.
    #[inline]
    fn allowed_target<'a, B>(&'a self, req: &'a Request<B>) -> Result<&'a Authority, Option<&'a Authority>> {
        let (scheme, authority) = match req.uri().authority() {
            Some(a) => (req.uri().scheme(), a),
            None => match &self.origin {
                Some((s, a)) => (s.as_ref(), a),
                None => return Err(None),
            },
        };
        if self.allowlist.allows(authority, scheme) {
            Ok(authority)
        } else {
            Err(Some(authority))
        }
    }
}

/// Service made by [`JwtClientLayer`]. `poll_ready` is the inner service's.
/// Only a request that waits for a token exchange is called later, on the
/// inner service made ready for it (a clone takes its place), hence
/// `S: Clone`.
#[derive(Clone)]
pub struct JwtClient<S, X = NoExchange> {
    inner: S,
    shared: Arc<ClientShared>,
    exchange: X,
}

impl<S: fmt::Debug, X> fmt::Debug for JwtClient<S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtClient").field("inner", &self.inner).field("shared", &self.shared).finish_non_exhaustive()
    }
}

impl<S, X> JwtClient<S, X> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, X, B> Service<Request<B>> for JwtClient<S, X>
where
    S: Service<Request<B>> + Clone,
    S::Error: Into<BoxError>,
    X: TokenExchange,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ClientResponseFuture<S, X, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        if req.headers().contains_key(AUTHORIZATION) {
            shared.caller_set.increment(1);
            return ClientResponseFuture::called(self.inner.call(req));
        }
        let Some(token) = BearerToken::current() else {
            shared.no_token.increment(1);
            return ClientResponseFuture::called(self.inner.call(req));
        };
        let target = match shared.allowed_target(&req) {
            Ok(t) => t,
            Err(target) => {
                shared.not_allowed.increment(1);
                tracing::debug!(
                    service = %shared.name,
                    target = target.map(Authority::as_str).unwrap_or("(none)"),
                    "bearer token withheld: target not in the allowlist"
                );
                return ClientResponseFuture::called(self.inner.call(req));
            }
        };
        match self.exchange.exchange(&token, target) {
            None => {
                shared.attached.increment(1);
                req.headers_mut().insert(AUTHORIZATION, token.header_value());
                ClientResponseFuture::called(self.inner.call(req))
            }
            Some(exchange) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ClientResponseFuture {
                    state: ClientState::Exchanging { exchange, rest: Some((inner, req)), shared: self.shared.clone() },
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`JwtClient`]: the inner call, after the token
    /// exchange if there is one.
    pub struct ClientResponseFuture<S, X, B>
    where
        S: Service<Request<B>>,
        X: TokenExchange,
    {
        #[pin]
        state: ClientState<S, X, B>,
    }
}

pin_project! {
    #[project = ClientStateProj]
    enum ClientState<S, X, B>
    where
        S: Service<Request<B>>,
        X: TokenExchange,
    {
        Called { #[pin] fut: S::Future },
        Exchanging { #[pin] exchange: X::Future, rest: Option<(S, Request<B>)>, shared: Arc<ClientShared> },
    }
}

impl<S, X, B> ClientResponseFuture<S, X, B>
where
    S: Service<Request<B>>,
    X: TokenExchange,
{
    #[inline]
    fn called(fut: S::Future) -> Self {
        ClientResponseFuture { state: ClientState::Called { fut } }
    }
}

impl<S, X, B> fmt::Debug for ClientResponseFuture<S, X, B>
where
    S: Service<Request<B>>,
    X: TokenExchange,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            ClientState::Called { .. } => "called",
            ClientState::Exchanging { .. } => "exchanging",
        };
        f.debug_struct("ClientResponseFuture").field("state", &state).finish()
    }
}

impl<S, X, B> Future for ClientResponseFuture<S, X, B>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    X: TokenExchange,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                ClientStateProj::Called { fut } => return fut.poll(cx).map_err(Into::into),
                ClientStateProj::Exchanging { exchange, rest, shared } => {
                    let exchanged = ready!(exchange.poll(cx));
                    let (mut inner, mut req) = rest.take().expect("ClientResponseFuture polled after completion");
                    match exchanged {
                        Ok(token) => {
                            shared.exchanged.increment(1);
                            req.headers_mut().insert(AUTHORIZATION, token.header_value());
                            ClientState::Called { fut: inner.call(req) }
                        }
                        Err(e) => {
                            shared.exchange_failed.increment(1);
                            tracing::debug!(service = %shared.name, error = %e, "token exchange failed");
                            return Poll::Ready(Err(JwtError::Exchange(Arc::from(e)).into()));
                        }
                    }
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}
