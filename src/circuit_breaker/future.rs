//! The response future, and what it holds of its breaker.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::state::{Rec, Shared, Ticket};
use crate::classify::{Classify, Outcome, OutcomeRecorder};
use crate::stripe;
use crate::BoxError;

mod sealed {
    /// What a response future holds of its breaker: the state it records in
    /// and the classifier.
    pub trait Holder {
        type Classifier;
        fn shared(&self) -> &std::sync::Arc<super::Shared>;
        fn classifier(&self) -> &Self::Classifier;
    }
}
use sealed::Holder;

/// One breaker's state and classifier, in several copies (one per stripe,
/// each on a cache line of its own): a call takes a reference to its
/// thread's copy, so calls on different threads do not all count on one
/// reference count.
pub(crate) struct Stripes<C> {
    stripes: Box<[Arc<Stripe<C>>]>,
}

#[repr(align(128))]
struct Stripe<C> {
    shared: Arc<Shared>,
    // Behind a pointer: a classifier can be large (an HTTP one is 256 bytes).
    classifier: Arc<C>,
}

impl<C: fmt::Debug> fmt::Debug for Stripes<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stripes")
            .field("breaker", &self.shared().name)
            .field("classifier", self.classifier())
            .field("stripes", &self.stripes.len())
            .finish()
    }
}

impl<C> Stripes<C> {
    pub(crate) fn new(shared: Arc<Shared>, classifier: C) -> Self {
        let classifier = Arc::new(classifier);
        let stripes = (0..stripe::count(usize::MAX))
            .map(|_| Arc::new(Stripe { shared: shared.clone(), classifier: classifier.clone() }))
            .collect();
        Stripes { stripes }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.stripes[0].shared
    }

    pub(crate) fn classifier(&self) -> &C {
        &self.stripes[0].classifier
    }

    /// A reference for a call on this thread.
    #[inline]
    pub(crate) fn get(&self) -> BreakerRef<C> {
        BreakerRef(self.stripes[stripe::mine(self.stripes.len())].clone())
    }
}

/// What a [`CircuitBreaker`](super::CircuitBreaker)'s response future holds of
/// the breaker: a reference to its state and classifier. It appears only in
/// the future's type.
///
/// ```
/// use std::future::Ready;
/// use tower::{service_fn, Layer, Service};
/// use tower_mesh::circuit_breaker::{BreakerRef, CircuitBreakerLayer, ResponseFuture};
/// use tower_mesh::classify::ResultClassifier;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut svc = CircuitBreakerLayer::builder()
///     .build()
///     .unwrap()
///     .layer(service_fn(|n: u32| std::future::ready(Ok::<_, std::convert::Infallible>(n))));
/// let fut: ResponseFuture<Ready<Result<u32, std::convert::Infallible>>, BreakerRef<ResultClassifier>> = svc.call(7);
/// assert_eq!(fut.await.unwrap(), 7);
/// # }
/// ```
pub struct BreakerRef<C>(Arc<Stripe<C>>);

impl<C> fmt::Debug for BreakerRef<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BreakerRef").field(&self.0.shared.name).finish()
    }
}

impl<C> Holder for BreakerRef<C> {
    type Classifier = C;
    #[inline]
    fn shared(&self) -> &Arc<Shared> {
        &self.0.shared
    }
    #[inline]
    fn classifier(&self) -> &C {
        &self.0.classifier
    }
}

/// What a [`KeyedCircuitBreaker`](super::KeyedCircuitBreaker)'s response
/// future holds: its key's breaker state and the classifier. It appears only
/// in the future's type.
///
/// ```
/// use std::future::Ready;
/// use tower::{service_fn, Layer, Service};
/// use tower_mesh::circuit_breaker::{CircuitBreakerLayer, KeyedRef, ResponseFuture};
/// use tower_mesh::classify::ResultClassifier;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut svc = CircuitBreakerLayer::builder()
///     .key(|n: &u32| *n % 2)
///     .build()
///     .unwrap()
///     .layer(service_fn(|n: u32| std::future::ready(Ok::<_, std::convert::Infallible>(n))));
/// let fut: ResponseFuture<Ready<Result<u32, std::convert::Infallible>>, KeyedRef<ResultClassifier>> = svc.call(7);
/// assert_eq!(fut.await.unwrap(), 7);
/// # }
/// ```
pub struct KeyedRef<C> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) classifier: C,
}

impl<C> fmt::Debug for KeyedRef<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyedRef").field(&self.shared.name).finish()
    }
}

impl<C> Holder for KeyedRef<C> {
    type Classifier = C;
    #[inline]
    fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
    #[inline]
    fn classifier(&self) -> &C {
        &self.classifier
    }
}

/// An admitted call's bookkeeping: records exactly once — when the call
/// completes, when the deferred outcome arrives, or (as cancelled) when
/// dropped. A half-open probe's slot is released by that record.
#[derive(Debug)]
pub(crate) struct Recording {
    /// When the call started, if calls are timed.
    start: Option<Instant>,
    ticket: Ticket,
    /// Admitted and not yet recorded.
    pending: bool,
}

impl Recording {
    const NONE: Recording = Recording { start: None, ticket: Ticket { period: 0, probe: false }, pending: false };

    #[inline]
    fn new(shared: &Shared, ticket: Ticket) -> Self {
        let start = if shared.settings.measure { Some(Instant::now()) } else { None };
        Recording { start, ticket, pending: true }
    }

    #[inline]
    fn finish(&mut self, shared: &Shared, outcome: Outcome) {
        if !std::mem::replace(&mut self.pending, false) {
            return;
        }
        let rec = match shared.settings.cancel_policy.apply(outcome) {
            Outcome::Success => Rec::Success,
            Outcome::Failure(_) => Rec::Failure,
            Outcome::Ignored | Outcome::Cancelled | Outcome::Deferred => Rec::Ignored,
        };
        let now = if shared.settings.measure { Some(Instant::now()) } else { None };
        let elapsed = match (self.start, now) {
            (Some(start), Some(now)) => Some(now.saturating_duration_since(start)),
            _ => None,
        };
        shared.record(rec, elapsed, now, self.ticket);
    }
}

/// A recording handed to a response body (a deferred outcome): it holds the
/// breaker's state itself, and records as cancelled if dropped unused.
struct Deferred {
    shared: Arc<Shared>,
    recording: Recording,
}

impl Deferred {
    fn finish(&mut self, outcome: Outcome) {
        self.recording.finish(&self.shared, outcome);
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Called { #[pin] fut: F },
        Rejected { err: Option<BoxError> },
    }
}

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker) (`H` is
    /// [`BreakerRef`]) and of [`KeyedCircuitBreaker`](super::KeyedCircuitBreaker)
    /// (`H` is [`KeyedRef`]): either the inner call, recorded when it
    /// completes (or as cancelled if dropped), or a
    /// [`CircuitOpen`](super::CircuitOpen) rejection.
    pub struct ResponseFuture<F, H>
    where
        H: Holder,
    {
        #[pin]
        kind: Kind<F>,
        recording: Recording,
        holder: H,
    }

    impl<F, H> PinnedDrop for ResponseFuture<F, H>
    where
        H: Holder,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.recording.finish(this.holder.shared(), Outcome::Cancelled);
        }
    }
}

impl<F: fmt::Debug, H: Holder + fmt::Debug> fmt::Debug for ResponseFuture<F, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("kind", &self.kind)
            .field("recording", &self.recording)
            .field("breaker", &self.holder)
            .finish()
    }
}

impl<F, H: Holder> ResponseFuture<F, H> {
    /// Ask the breaker `holder` refers to to admit a call: if it does, make
    /// the call with `call` and record its outcome; if not, the future yields
    /// the [`CircuitOpen`](super::CircuitOpen) rejection and `call` is never
    /// made.
    #[inline]
    pub(crate) fn admit(holder: H, call: impl FnOnce() -> F) -> Self {
        match holder.shared().acquire() {
            Ok(ticket) => {
                let recording = Recording::new(holder.shared(), ticket);
                ResponseFuture { kind: Kind::Called { fut: call() }, recording, holder }
            }
            Err(err) => {
                ResponseFuture { kind: Kind::Rejected { err: Some(Box::new(err)) }, recording: Recording::NONE, holder }
            }
        }
    }
}

impl<F, H, T, E> Future for ResponseFuture<F, H>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    H: Holder,
    H::Classifier: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Rejected { err } => Poll::Ready(Err(err.take().expect("ResponseFuture polled after completion"))),
            KindProj::Called { fut } => {
                let result = ready!(fut.poll(cx));
                if !this.recording.pending {
                    return Poll::Ready(result.map_err(Into::into));
                }
                let (shared, classifier) = (this.holder.shared(), this.holder.classifier());
                let outcome = classifier.classify(result.as_ref());
                let mut result = result.map_err(Into::into);
                match outcome {
                    // The stack's own rejections from below (a full bulkhead,
                    // another open breaker) are this process's load, not the
                    // dependency's failures: not counted unless asked.
                    Outcome::Failure(_)
                        if !shared.settings.count_rejections
                            && result.as_ref().is_err_and(crate::classify::is_rejection) =>
                    {
                        this.recording.finish(shared, Outcome::Ignored)
                    }
                    // The outcome comes with the response body: hand it
                    // a recording of its own.
                    Outcome::Deferred => match result.as_mut() {
                        Ok(res) => {
                            let recording = std::mem::replace(this.recording, Recording::NONE);
                            let mut deferred = Deferred { shared: shared.clone(), recording };
                            let recorder = OutcomeRecorder::new(move |o| deferred.finish(o));
                            if let Err(recorder) = classifier.defer(res, recorder) {
                                recorder.record(Outcome::Success);
                            }
                        }
                        Err(_) => this.recording.finish(shared, Outcome::Failure(crate::classify::FailureKind::Error)),
                    },
                    o => this.recording.finish(shared, o),
                }
                Poll::Ready(result)
            }
        }
    }
}
