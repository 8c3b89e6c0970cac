//! Response future of the server-side service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderName, Response};
use pin_project_lite::pin_project;

use super::context::ContextScope;

pin_project! {
    /// Response future of [`CorrelationIdService`](super::CorrelationIdService):
    /// the inner future, polled with the request's
    /// [`RequestContext`](super::RequestContext) current; sets the
    /// correlation id on the response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: ContextScope<F>,
        echo: Option<HeaderName>,
    }
}

impl<F> ResponseFuture<F> {
    #[inline]
    pub(crate) fn new(inner: ContextScope<F>, echo: Option<HeaderName>) -> Self {
        ResponseFuture { inner, echo }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut res = ready!(this.inner.as_mut().poll(cx));
        // Done with the scope: its context is ours to move into the response.
        let ctx = this.inner.take_context();
        if let (Ok(response), Some(header), Some(ctx)) = (&mut res, this.echo.take(), ctx) {
            response.headers_mut().insert(header, ctx.correlation_id.into_header_value());
        }
        Poll::Ready(res)
    }
}
