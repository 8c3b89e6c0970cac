//! End-of-stream classification: a response body wrapper that tells interested
//! layers the call's outcome when the trailers arrive (as gRPC reports status).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::Outcome;

/// A one-shot sink for a call's [`Outcome`], handed to [`Classify::defer`].
///
/// If it is dropped without [`record`](OutcomeRecorder::record) being called
/// (the response body was dropped before its end), it records
/// [`Outcome::Cancelled`], so a deferred call always reports exactly once and
/// whatever it holds (a half-open probe slot, say) is released.
///
/// [`Classify::defer`]: super::Classify::defer
pub struct OutcomeRecorder {
    f: Option<Box<dyn FnOnce(Outcome) + Send>>,
}

impl OutcomeRecorder {
    /// A recorder that calls `f` once with the outcome.
    pub fn new(f: impl FnOnce(Outcome) + Send + 'static) -> Self {
        OutcomeRecorder { f: Some(Box::new(f)) }
    }

    /// Record the outcome.
    pub fn record(mut self, outcome: Outcome) {
        if let Some(f) = self.f.take() {
            f(outcome)
        }
    }
}

impl Drop for OutcomeRecorder {
    fn drop(&mut self) {
        if let Some(f) = self.f.take() {
            f(Outcome::Cancelled)
        }
    }
}

impl fmt::Debug for OutcomeRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutcomeRecorder").field("pending", &self.f.is_some()).finish()
    }
}

/// How a watched response stream ended.
#[derive(Clone, Copy, Debug)]
pub enum EosEvent<'a> {
    /// The stream ended; with its trailers if it had any.
    End(Option<&'a HeaderMap>),
    /// The body returned an error.
    Error,
    /// The body did not end before its deadline (a
    /// [`TimeoutLayer`](crate::timeout::TimeoutLayer) covering the body,
    /// feature `timeout`).
    Timeout,
}

type Watcher = Box<dyn FnOnce(EosEvent<'_>) + Send>;

/// Placed in the response extensions by [`ClassifyEosLayer`]; classifiers
/// register watchers on it in [`Classify::defer`](super::Classify::defer).
///
/// Watchers run once, when the body ends, fails or times out (whichever
/// body wrapper sharing the slot sees it first reports it). If the body is
/// dropped first, the watchers are dropped unrun (their [`OutcomeRecorder`]s
/// then record [`Outcome::Cancelled`]).
#[derive(Clone, Default)]
pub struct EosSlot(Arc<Mutex<Vec<Watcher>>>);

impl fmt::Debug for EosSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EosSlot").finish_non_exhaustive()
    }
}

impl EosSlot {
    /// Register `f` to run when the stream ends.
    pub fn watch(&self, f: impl FnOnce(EosEvent<'_>) + Send + 'static) {
        // A poisoned lock only means a watcher panicked; the list is still sound.
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        list.push(Box::new(f));
    }

    /// Run the watchers (once: later calls find none).
    pub(crate) fn fire(&self, event: EosEvent<'_>) {
        let watchers = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        // The lock is released before the watchers run.
        for w in watchers {
            w(event);
        }
    }
}

pin_project! {
    /// A response body that reports its end (trailers, or error) to an [`EosSlot`].
    pub struct EosBody<B> {
        #[pin]
        inner: B,
        slot: Option<EosSlot>,
    }
}

impl<B> EosBody<B> {
    /// Wrap `inner`, reporting to `slot`.
    pub fn new(inner: B, slot: EosSlot) -> Self {
        EosBody { inner, slot: Some(slot) }
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: fmt::Debug> fmt::Debug for EosBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EosBody").field("inner", &self.inner).finish()
    }
}

impl<B: Body> Body for EosBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref() {
                    if let Some(slot) = this.slot.take() {
                        slot.fire(EosEvent::End(Some(trailers)));
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(slot) = this.slot.take() {
                    slot.fire(EosEvent::Error);
                }
            }
            None => {
                if let Some(slot) = this.slot.take() {
                    slot.fire(EosEvent::End(None));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps response bodies in [`EosBody`] and puts an [`EosSlot`] in the
/// response extensions, so that layers *above* it can classify streaming
/// responses (gRPC trailers) at end of stream.
///
/// Place it directly around the transport (hyper client, tonic `Channel`),
/// below the circuit breaker and retry layers. It allocates one small shared
/// slot per response, which is why it is opt-in: unary gRPC errors arrive as
/// trailers-only responses and are classified without it. With it, an
/// [`HttpClassifier`](super::HttpClassifier) also decides a successful
/// response at the end of its body (a body error is then a failure), and a
/// body timeout above (a [`TimeoutLayer`](crate::timeout::TimeoutLayer)
/// covering the body) reports through its slot.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClassifyEosLayer;

impl ClassifyEosLayer {
    /// A new layer.
    pub fn new() -> Self {
        ClassifyEosLayer
    }
}

impl<S> Layer<S> for ClassifyEosLayer {
    type Service = ClassifyEos<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClassifyEos { inner }
    }
}

/// The service made by [`ClassifyEosLayer`].
#[derive(Clone, Debug)]
pub struct ClassifyEos<S> {
    inner: S,
}

impl<S, Req, B> Service<Req> for ClassifyEos<S>
where
    S: Service<Req, Response = Response<B>>,
{
    type Response = Response<EosBody<B>>;
    type Error = S::Error;
    type Future = ClassifyEosFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ClassifyEosFuture { inner: self.inner.call(req) }
    }
}

pin_project! {
    /// Response future of [`ClassifyEos`].
    #[derive(Debug)]
    pub struct ClassifyEosFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for ClassifyEosFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<EosBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = ready!(self.project().inner.poll(cx))?;
        let slot = EosSlot::default();
        let (mut parts, body) = res.into_parts();
        parts.extensions.insert(slot.clone());
        Poll::Ready(Ok(Response::from_parts(parts, EosBody::new(body, slot))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn dropped_recorder_reports_cancelled() {
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        drop(OutcomeRecorder::new(move |o| *s.lock().unwrap() = Some(o)));
        assert_eq!(*seen.lock().unwrap(), Some(Outcome::Cancelled));
    }

    #[test]
    fn recorder_reports_once() {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let r = OutcomeRecorder::new(move |_| {
            n2.fetch_add(1, Ordering::SeqCst);
        });
        r.record(Outcome::Success);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn slot_fires_each_watcher_once() {
        let slot = EosSlot::default();
        let n = Arc::new(AtomicUsize::new(0));
        for _ in 0..2 {
            let n = n.clone();
            slot.watch(move |ev| {
                assert!(matches!(ev, EosEvent::End(None)));
                n.fetch_add(1, Ordering::SeqCst);
            });
        }
        slot.fire(EosEvent::End(None));
        slot.fire(EosEvent::End(None));
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }
}
