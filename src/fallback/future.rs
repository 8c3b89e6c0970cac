//! The fallback layer's response future.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_core::TryFuture;
use pin_project_lite::pin_project;

use super::layer::Shared;
use super::source::FallbackSource;
use super::{FallbackReason, MarkFallback, Trigger};
use crate::classify::{Classify, Outcome};
use crate::error::BoxError;

pin_project! {
    /// Response future of [`Fallback`](super::Fallback): the call, then, if
    /// it failed or was rejected, the fallback answer.
    pub struct ResponseFuture<F, Src, C, Req>
    where
        F: TryFuture,
        Src: FallbackSource<Req, F::Ok>,
    {
        #[pin]
        state: State<F, Src::Future, Src::Keep>,
        source: Src,
        classifier: C,
        trigger: Trigger,
        shared: Arc<Shared>,
        _request: PhantomData<fn(Req)>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, G, K> {
        Calling { #[pin] call: F, kept: Option<K> },
        Falling { #[pin] fallback: G, reason: FallbackReason },
    }
}

impl<F, Src, C, Req> ResponseFuture<F, Src, C, Req>
where
    F: TryFuture,
    Src: FallbackSource<Req, F::Ok>,
{
    pub(crate) fn new(
        call: F,
        kept: Src::Keep,
        source: Src,
        classifier: C,
        trigger: Trigger,
        shared: Arc<Shared>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { call, kept: Some(kept) },
            source,
            classifier,
            trigger,
            shared,
            _request: PhantomData,
        }
    }
}

impl<F, Src, C, Req> std::fmt::Debug for ResponseFuture<F, Src, C, Req>
where
    F: TryFuture,
    Src: FallbackSource<Req, F::Ok>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").field("trigger", &self.trigger).finish_non_exhaustive()
    }
}

impl<F, Src, C, Req> Future for ResponseFuture<F, Src, C, Req>
where
    F: TryFuture,
    F::Error: Into<BoxError>,
    F::Ok: MarkFallback,
    Src: FallbackSource<Req, F::Ok>,
    C: Classify<F::Ok, BoxError>,
{
    type Output = Result<F::Ok, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { call, kept } => {
                    let result = ready!(call.try_poll(cx)).map_err(Into::into);
                    let kept = kept.take().expect("ResponseFuture polled after completion");
                    let reason = match &result {
                        Err(e) => Some(FallbackReason::of_error(e)),
                        Ok(res) => match this.classifier.classify(Ok(res)) {
                            Outcome::Failure(_) => Some(FallbackReason::Failed),
                            Outcome::Success | Outcome::Deferred => {
                                this.source.success(kept, res);
                                return Poll::Ready(result);
                            }
                            Outcome::Ignored | Outcome::Cancelled => None,
                        },
                    };
                    let fallback = reason
                        .filter(|r| this.trigger.covers(*r))
                        .and_then(|r| Some((this.source.fallback(kept, r)?, r)));
                    match fallback {
                        Some((fallback, reason)) => this.state.set(State::Falling { fallback, reason }),
                        None => return Poll::Ready(result),
                    }
                }
                StateProj::Falling { fallback, reason } => {
                    let mut res = ready!(fallback.poll(cx))?;
                    res.mark(*reason, this.shared.header.as_ref());
                    this.shared.record(*reason);
                    return Poll::Ready(Ok(res));
                }
            }
        }
    }
}
