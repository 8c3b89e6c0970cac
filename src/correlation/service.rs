//! The server-side service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::context::{ContextScope, TRACEPARENT, TRACESTATE};
use super::future::ResponseFuture;
use super::layer::Shared;

/// Service made by [`CorrelationIdLayer`](super::CorrelationIdLayer): see
/// there. `poll_ready` is the inner service's.
#[derive(Clone, Debug)]
pub struct CorrelationIdService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> CorrelationIdService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        CorrelationIdService { inner, shared }
    }

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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CorrelationIdService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        let incoming = shared.incoming(req.headers());
        let ctx = incoming.ctx;
        let headers = req.headers_mut();
        if !incoming.id_in_place {
            // What the services below read is the id in use, never a
            // refused one.
            headers.insert(shared.header.clone(), ctx.correlation_id.as_header_value().clone());
            if incoming.accept_seen {
                for h in shared.accept_headers() {
                    headers.remove(h);
                }
            }
        }
        if incoming.drop_trace_headers {
            headers.remove(TRACEPARENT);
            headers.remove(TRACESTATE);
        } else if incoming.drop_tracestate {
            headers.remove(TRACESTATE);
        }
        if shared.record_on_span() {
            record(&ctx);
        }
        req.extensions_mut().insert(ctx.clone());
        let header = shared.echo.then(|| shared.header.clone());
        let inner = &mut self.inner;
        ResponseFuture::new(ContextScope::call(ctx, || inner.call(req)), header)
    }
}

/// Record the ids on the current span (a no-op for fields it lacks).
#[inline]
fn record(ctx: &super::RequestContext) {
    // No subscriber was ever set: there is no span to record on (and looking
    // for the current one costs more than the rest of the layer's work).
    if !tracing::dispatcher::has_been_set() {
        return;
    }
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("correlation_id", tracing::field::display(&ctx.correlation_id));
    if let Some(tp) = &ctx.traceparent {
        span.record("trace_id", tracing::field::display(tp.trace_id()));
    }
}
