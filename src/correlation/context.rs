//! The request context and its task-local scope.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName};
use pin_project_lite::pin_project;

use super::error::ContextError;
use super::id::CorrelationId;
use super::trace::{TraceParent, TraceState};

/// The default header of the correlation id.
pub const X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
/// The other header a server accepts an incoming id from by default.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The W3C `traceparent` header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C `tracestate` header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The ids of the request being handled: its correlation id and, when it is
/// traced, its W3C trace context.
///
/// [`CorrelationIdLayer`](super::CorrelationIdLayer) builds one per incoming
/// request, puts it in the request's extensions and makes it
/// [current](RequestContext::current) while the inner service handles the
/// request; [`CorrelationIdClientLayer`](super::CorrelationIdClientLayer)
/// copies the current one onto outgoing requests. Code that sends something
/// other than HTTP (a message to a broker, a SOAP envelope) reads it the
/// same way:
///
/// ```
/// use tower_mesh::correlation::{CorrelationId, RequestContext, TraceParent};
///
/// fn publish(headers: &mut Vec<(String, String)>) {
///     if let Some(ctx) = RequestContext::current() {
///         // Same correlation id and trace; a new parent id for this hop.
///         let next = ctx.outbound();
///         headers.push(("x-correlation-id".into(), next.correlation_id.to_string()));
///         if let Some(tp) = next.traceparent {
///             headers.push(("traceparent".into(), tp.to_string()));
///         }
///     }
/// }
///
/// let ctx = RequestContext::new(CorrelationId::parse("order-42").unwrap())
///     .with_traceparent(TraceParent::generate(true));
/// let mut headers = Vec::new();
/// ctx.sync_scope(|| publish(&mut headers));
/// assert_eq!(headers[0], ("x-correlation-id".to_string(), "order-42".to_string()));
/// assert!(RequestContext::current().is_none(), "only inside the scope");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestContext {
    /// The correlation id.
    pub correlation_id: CorrelationId,
    /// The trace context of this service's handling of the request: the
    /// trace id it belongs to and, as parent id, the id of this hop's span.
    pub traceparent: Option<TraceParent>,
    /// Vendor trace state, passed on unchanged.
    pub tracestate: Option<TraceState>,
}

// The context current on this thread. `ContextScope` moves its context in
// around every poll of the future it wraps (and back out after), so it
// follows the task exactly as a tokio task-local would, without a clone.
thread_local! {
    static CURRENT: Cell<Option<Arc<RequestContext>>> = const { Cell::new(None) };
}

/// Puts the previous context back when dropped (also on unwind), handing the
/// scoped one back to its owner.
struct Restore<'a> {
    prev: Option<Arc<RequestContext>>,
    owner: &'a mut Option<Arc<RequestContext>>,
}

impl Drop for Restore<'_> {
    #[inline]
    fn drop(&mut self) {
        let prev = self.prev.take();
        *self.owner = CURRENT.with(|c| c.replace(prev));
    }
}

#[inline]
fn enter(slot: &mut Option<Arc<RequestContext>>) -> Restore<'_> {
    let prev = CURRENT.with(|c| c.replace(slot.take()));
    Restore { prev, owner: slot }
}

/// Run `f` with a view of the current context (without cloning it).
#[inline]
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&RequestContext>) -> R) -> R {
    let mut slot = None;
    // Take it out for the call and put it back after (also on unwind).
    let restore = Restore { prev: CURRENT.with(Cell::take), owner: &mut slot };
    let r = f(restore.prev.as_deref());
    drop(restore);
    r
}

pin_project! {
    /// A future polled with a [`RequestContext`] current: see
    /// [`RequestContext::scope`].
    pub struct ContextScope<F> {
        #[pin]
        inner: F,
        // Behind a pointer: it moves into the thread-local and back around
        // every poll, so what moves is 8 bytes, not the context.
        ctx: Option<Arc<RequestContext>>,
    }
}

impl<F> ContextScope<F> {
    /// The context this scope makes current (`None` only after the
    /// correlation layer took it back to answer the request).
    pub fn context(&self) -> Option<&RequestContext> {
        self.ctx.as_deref()
    }

    /// Call `f` with `ctx` current and scope the future it returns with it.
    #[inline]
    pub(crate) fn call(ctx: RequestContext, f: impl FnOnce() -> F) -> Self {
        let mut ctx = Some(Arc::new(ctx));
        let inner = {
            let _restore = enter(&mut ctx);
            f()
        };
        ContextScope { inner, ctx }
    }

    /// Take the context back (between polls it is always here).
    #[inline]
    pub(crate) fn take_context(self: Pin<&mut Self>) -> Option<RequestContext> {
        // Nobody else holds it between polls (`current` hands out copies).
        self.project().ctx.take().map(|c| Arc::try_unwrap(c).unwrap_or_else(|c| (*c).clone()))
    }
}

impl<F> fmt::Debug for ContextScope<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextScope").field("ctx", &self.ctx).finish_non_exhaustive()
    }
}

impl<F: Future> Future for ContextScope<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _restore = enter(this.ctx);
        this.inner.poll(cx)
    }
}

impl RequestContext {
    /// A context with `correlation_id` and no trace context.
    pub fn new(correlation_id: CorrelationId) -> Self {
        RequestContext { correlation_id, traceparent: None, tracestate: None }
    }

    /// A fresh context: a new [`CorrelationId::generate`] and a new sampled
    /// trace.
    pub fn generate() -> Self {
        RequestContext::new(CorrelationId::generate()).with_traceparent(TraceParent::generate(true))
    }

    /// Build a context from values read from somewhere other than an HTTP
    /// request (e.g. an incoming message's headers). All must be valid.
    pub fn from_parts(
        correlation_id: &str,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> Result<Self, ContextError> {
        let correlation_id = CorrelationId::parse(correlation_id)?;
        let traceparent = traceparent.map(TraceParent::parse).transpose()?;
        let tracestate = match traceparent {
            Some(_) => tracestate.map(TraceState::parse).transpose()?.filter(|t| !t.is_empty()),
            // Trace Context: no trace state without a trace parent.
            None => None,
        };
        Ok(RequestContext { correlation_id, traceparent, tracestate })
    }

    /// The same, with `traceparent`.
    pub fn with_traceparent(mut self, traceparent: TraceParent) -> Self {
        self.traceparent = Some(traceparent);
        self
    }

    /// The same, with `tracestate`.
    pub fn with_tracestate(mut self, tracestate: TraceState) -> Self {
        self.tracestate = Some(tracestate);
        self
    }

    /// The context of the request being handled on this task, if any: the
    /// one of the innermost [`scope`](RequestContext::scope) or
    /// [`sync_scope`](RequestContext::sync_scope) being run.
    ///
    /// A task spawned from inside a scope does not inherit it: pass it on
    /// with `RequestContext::current().map(|c| c.scope(fut))`.
    pub fn current() -> Option<RequestContext> {
        with_current(|c| c.cloned())
    }

    /// Poll `fut` with `self` as the current context.
    pub fn scope<F: Future>(self, fut: F) -> ContextScope<F> {
        ContextScope { inner: fut, ctx: Some(Arc::new(self)) }
    }

    /// Run `f` with `self` as the current context.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        let mut slot = Some(Arc::new(self));
        let _restore = enter(&mut slot);
        f()
    }

    /// The context for a call this service makes: the same correlation id and
    /// trace state, and the same trace with a new parent id
    /// ([`TraceParent::child`]).
    pub fn outbound(&self) -> RequestContext {
        RequestContext {
            correlation_id: self.correlation_id.clone(),
            traceparent: self.traceparent.as_ref().map(TraceParent::child),
            tracestate: self.tracestate.clone(),
        }
    }

    /// Write the context for a call this service makes into `headers`:
    /// the correlation id under `x-correlation-id`, and `traceparent` (a new
    /// parent id, see [`outbound`](RequestContext::outbound)) and `tracestate`
    /// when present. Existing values are replaced.
    pub fn inject(&self, headers: &mut HeaderMap) {
        self.inject_as(&X_CORRELATION_ID, headers)
    }

    /// [`inject`](RequestContext::inject) with the correlation id under
    /// `header`.
    pub fn inject_as(&self, header: &HeaderName, headers: &mut HeaderMap) {
        headers.insert(header.clone(), self.correlation_id.as_header_value().clone());
        match &self.traceparent {
            Some(tp) => {
                headers.insert(TRACEPARENT, tp.child().to_header_value());
                match &self.tracestate {
                    Some(ts) if !ts.is_empty() => {
                        headers.insert(TRACESTATE, ts.as_header_value().clone());
                    }
                    _ => {
                        headers.remove(TRACESTATE);
                    }
                }
            }
            None => {
                headers.remove(TRACEPARENT);
                headers.remove(TRACESTATE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(id: &str) -> RequestContext {
        RequestContext::new(CorrelationId::parse(id).unwrap())
    }

    #[tokio::test]
    async fn scopes_nest_and_restore() {
        assert_eq!(RequestContext::current(), None);
        let seen = ctx("outer")
            .scope(async {
                let outer = RequestContext::current();
                let inner = ctx("inner").scope(async { RequestContext::current() }).await;
                let after = RequestContext::current();
                (outer, inner, after)
            })
            .await;
        assert_eq!(seen.0.unwrap().correlation_id.as_str(), "outer");
        assert_eq!(seen.1.unwrap().correlation_id.as_str(), "inner");
        assert_eq!(seen.2.unwrap().correlation_id.as_str(), "outer");
        assert_eq!(ctx("sync").sync_scope(RequestContext::current).unwrap().correlation_id.as_str(), "sync");
        assert_eq!(RequestContext::current(), None);
    }

    #[tokio::test]
    async fn the_context_follows_the_task_not_the_thread() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let scoped = tokio::spawn(ctx("a").scope(async move {
            let before = RequestContext::current().map(|c| c.correlation_id);
            rx.await.unwrap();
            (before, RequestContext::current().map(|c| c.correlation_id))
        }));
        tokio::task::yield_now().await;
        let other = tokio::spawn(async { RequestContext::current() });
        assert_eq!(other.await.unwrap(), None);
        tx.send(()).unwrap();
        let (before, after) = scoped.await.unwrap();
        assert_eq!(before.unwrap().as_str(), "a");
        assert_eq!(after.unwrap().as_str(), "a");
    }

    #[test]
    fn a_panic_inside_a_scope_restores_the_previous_context() {
        let r = std::panic::catch_unwind(|| ctx("p").sync_scope(|| panic!("boom")));
        assert!(r.is_err());
        assert_eq!(RequestContext::current(), None);
        ctx("q").sync_scope(|| {
            let r = std::panic::catch_unwind(|| with_current(|_| panic!("boom")));
            assert!(r.is_err());
            assert_eq!(RequestContext::current().unwrap().correlation_id.as_str(), "q");
        });
    }

    #[test]
    fn dropping_a_scope_mid_flight_leaves_nothing_behind() {
        let mut fut = Box::pin(ctx("d").scope(std::future::pending::<()>()));
        let waker = futures_task_noop();
        assert!(fut.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        assert_eq!(fut.context().unwrap().correlation_id.as_str(), "d", "handed back after the poll");
        drop(fut);
        assert_eq!(RequestContext::current(), None);
    }

    fn futures_task_noop() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }

    #[test]
    fn from_parts_validates_each_part() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = RequestContext::from_parts("id-1", Some(tp), Some("a=1")).unwrap();
        assert_eq!(c.traceparent.unwrap().to_string(), tp);
        assert_eq!(c.tracestate.unwrap().as_str(), "a=1");
        let c = RequestContext::from_parts("id-1", None, Some("a=1")).unwrap();
        assert_eq!(c.tracestate, None, "no tracestate without a traceparent");
        let e = RequestContext::from_parts("id 1", None, None).unwrap_err();
        assert!(matches!(e, ContextError::CorrelationId(_)));
        assert!(std::error::Error::source(&e).is_some());
        assert!(matches!(RequestContext::from_parts("i", Some("x"), None), Err(ContextError::TraceParent(_))));
        assert!(matches!(RequestContext::from_parts("i", Some(tp), Some("A=1")), Err(ContextError::TraceState(_))));
    }

    #[test]
    fn inject_writes_the_next_hop() {
        let tp = TraceParent::generate(true);
        let c = ctx("inj").with_traceparent(tp).with_tracestate(TraceState::parse("k=v").unwrap());
        let mut h = HeaderMap::new();
        h.insert(TRACESTATE, "stale=1".parse().unwrap());
        c.inject(&mut h);
        assert_eq!(h[X_CORRELATION_ID], "inj");
        let sent = TraceParent::parse(h[TRACEPARENT].to_str().unwrap()).unwrap();
        assert_eq!(sent.trace_id(), tp.trace_id());
        assert_ne!(sent.parent_id(), tp.parent_id());
        assert_eq!(h[TRACESTATE], "k=v");
        ctx("bare").inject(&mut h);
        assert!(!h.contains_key(TRACEPARENT) && !h.contains_key(TRACESTATE));
    }
}
