//! A layer that is in the stack or not, decided at run time from the
//! configuration.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::BoxError;

/// `L` applied when configured, or the service unchanged.
pub type Opt<L, S> = Optional<<L as Layer<S>>::Service, S>;

/// The service with a configured layer ([`On`](Optional::On)) or without it
/// ([`Off`](Optional::Off)). Unlike `tower::util::Either`, the two may fail
/// with different error types: both become a [`BoxError`], as the layers'
/// own errors are.
#[derive(Clone, Debug)]
pub enum Optional<A, B> {
    /// The layer is configured: its service.
    On(A),
    /// The layer is not configured: the inner service itself.
    Off(B),
}

impl<A, B> Optional<A, B> {
    /// `layer` around `inner` when it is `Some`, else `inner`.
    pub fn layer<L>(layer: Option<&L>, inner: B) -> Self
    where
        L: Layer<B, Service = A>,
    {
        match layer {
            Some(l) => Optional::On(l.layer(inner)),
            None => Optional::Off(inner),
        }
    }
}

impl<A, B, Req> Service<Req> for Optional<A, B>
where
    A: Service<Req>,
    A::Error: Into<BoxError>,
    B: Service<Req, Response = A::Response>,
    B::Error: Into<BoxError>,
{
    type Response = A::Response;
    type Error = BoxError;
    type Future = OptionalFuture<A::Future, B::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Optional::On(a) => a.poll_ready(cx).map_err(Into::into),
            Optional::Off(b) => b.poll_ready(cx).map_err(Into::into),
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self {
            Optional::On(a) => OptionalFuture { state: State::On { fut: a.call(req) } },
            Optional::Off(b) => OptionalFuture { state: State::Off { fut: b.call(req) } },
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<A, B> {
        On { #[pin] fut: A },
        Off { #[pin] fut: B },
    }
}

pin_project! {
    /// Response future of [`Optional`].
    pub struct OptionalFuture<A, B> {
        #[pin]
        state: State<A, B>,
    }
}

impl<A, B> fmt::Debug for OptionalFuture<A, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.state {
            State::On { .. } => "OptionalFuture::On",
            State::Off { .. } => "OptionalFuture::Off",
        })
    }
}

impl<A, B, T, EA, EB> Future for OptionalFuture<A, B>
where
    A: Future<Output = Result<T, EA>>,
    B: Future<Output = Result<T, EB>>,
    EA: Into<BoxError>,
    EB: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::On { fut } => fut.poll(cx).map_err(Into::into),
            StateProj::Off { fut } => fut.poll(cx).map_err(Into::into),
        }
    }
}
