//! A timeout that also covers the response body (see
//! [`TimeoutLayer::cover_body`](super::TimeoutLayer::cover_body)).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::error::TimeoutKind;
use super::future::ResponseFuture;
use super::layer::{Reporter, TimeoutLayer};
use super::service::Timeout;
use crate::classify::{EosEvent, EosSlot};
use crate::deadline::DeadlineCarrier;
use crate::error::BoxError;

/// A [`TimeoutLayer`] whose deadline covers the response body as well as
/// the head (from [`TimeoutLayer::cover_body`]): the service answers
/// `http::Response<TimeoutBody<B>>`.
#[derive(Clone, Debug)]
pub struct BodyTimeoutLayer {
    inner: TimeoutLayer,
}

impl BodyTimeoutLayer {
    pub(crate) fn new(inner: TimeoutLayer) -> Self {
        BodyTimeoutLayer { inner }
    }

    /// The timeout layer applied to the head.
    pub fn timeout(&self) -> &TimeoutLayer {
        &self.inner
    }
}

impl<S> Layer<S> for BodyTimeoutLayer {
    type Service = BodyTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyTimeout { inner: self.inner.layer(inner) }
    }
}

/// Service made by [`BodyTimeoutLayer`]: a [`Timeout`] whose responses'
/// bodies are [`TimeoutBody`]s bound by the same deadline.
#[derive(Clone, Debug)]
pub struct BodyTimeout<S> {
    inner: Timeout<S>,
}

impl<S> BodyTimeout<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// The inner service, consuming the timeout.
    pub fn into_inner(self) -> S {
        self.inner.into_inner()
    }
}

impl<S, Req, B> Service<Req> for BodyTimeout<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    Req: DeadlineCarrier,
{
    type Response = Response<TimeoutBody<B>>;
    type Error = BoxError;
    type Future = BodyTimeoutFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        BodyTimeoutFuture { inner: self.inner.call(req) }
    }
}

pin_project! {
    /// Response future of [`BodyTimeout`]: the head as [`Timeout`]'s
    /// [`ResponseFuture`] times it, then the body wrapped in a [`TimeoutBody`]
    /// with the same deadline.
    pub struct BodyTimeoutFuture<F> {
        #[pin]
        inner: ResponseFuture<F>,
    }
}

impl<F> fmt::Debug for BodyTimeoutFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyTimeoutFuture").field("inner", &self.inner).finish()
    }
}

impl<F, B, E> Future for BodyTimeoutFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<TimeoutBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.project().inner;
        let res = ready!(inner.as_mut().poll(cx))?;
        let (deadline, kind, after, reporter) = inner.as_ref().get_ref().body_timer();
        let (mut parts, body) = res.into_parts();
        // Report the body's end, error or timeout to whoever watches it (a
        // circuit breaker above): through the slot already there (a
        // `ClassifyEosLayer` below), or a new one.
        let slot = match parts.extensions.get::<EosSlot>() {
            Some(slot) => slot.clone(),
            None => {
                let slot = EosSlot::default();
                parts.extensions.insert(slot.clone());
                slot
            }
        };
        let body =
            TimeoutBody { inner: body, sleep: None, deadline, kind, after, reporter, slot: Some(slot), done: false };
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

pin_project! {
    /// A response body bound by its call's deadline: if the deadline passes
    /// while the body waits for its next frame, the body yields an
    /// [`Elapsed`](super::Elapsed) error (kind and timeout as for the head)
    /// and then ends.
    ///
    /// It reports how the body ended — trailers, error, timeout
    /// ([`EosEvent::Timeout`]) — to the response's [`EosSlot`], so a
    /// circuit breaker above whose classifier watches the body
    /// ([`HttpClassifier`](crate::classify::HttpClassifier),
    /// [`GrpcClassifier`](crate::classify::GrpcClassifier)) records a body
    /// that times out as a failure. The timer is made only when the body
    /// first waits.
    pub struct TimeoutBody<B> {
        #[pin]
        inner: B,
        sleep: Option<Pin<Box<Sleep>>>,
        deadline: Instant,
        kind: TimeoutKind,
        after: Duration,
        reporter: Reporter,
        slot: Option<EosSlot>,
        done: bool,
    }
}

impl<B> TimeoutBody<B> {
    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: fmt::Debug> fmt::Debug for TimeoutBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutBody")
            .field("inner", &self.inner)
            .field("timeout", &self.reporter)
            .field("kind", &self.kind)
            .field("after", &self.after)
            .field("timed_out", &self.done)
            .finish_non_exhaustive()
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        // The body first, as for the head: a frame ready at the deadline wins.
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            let event = match &frame {
                Some(Ok(f)) => f.trailers_ref().map(|t| EosEvent::End(Some(t))),
                Some(Err(_)) => Some(EosEvent::Error),
                None => Some(EosEvent::End(None)),
            };
            if let Some(event) = event {
                if let Some(slot) = this.slot.take() {
                    slot.fire(event);
                }
            }
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = *this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        *this.done = true;
        if let Some(slot) = this.slot.take() {
            slot.fire(EosEvent::Timeout);
        }
        Poll::Ready(Some(Err(this.reporter.elapsed(*this.kind, *this.after).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}
