//! The response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::state::{Rec, Shared};
use crate::classify::{Classify, Outcome, OutcomeRecorder};
use crate::BoxError;

/// An admitted call's bookkeeping: records exactly once — when the call
/// completes, when the deferred outcome arrives, or (as cancelled) when dropped.
/// A half-open probe's slot is released by that record.
#[derive(Debug)]
pub(crate) struct Recording {
    shared: Arc<Shared>,
    /// When the call started, if calls are timed.
    start: Option<Instant>,
    epoch: u32,
    done: bool,
}

impl Recording {
    #[inline]
    pub(crate) fn new(shared: Arc<Shared>, epoch: u32) -> Self {
        let start = if shared.settings.measure { Some(Instant::now()) } else { None };
        Recording { shared, start, epoch, done: false }
    }

    #[inline]
    fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let rec = match self.shared.settings.cancel_policy.apply(outcome) {
            Outcome::Success => Rec::Success,
            Outcome::Failure(_) => Rec::Failure,
            Outcome::Ignored | Outcome::Cancelled | Outcome::Deferred => Rec::Ignored,
        };
        let now = if self.shared.settings.needs_now { Some(Instant::now()) } else { None };
        let elapsed = match (self.start, now) {
            (Some(start), Some(now)) => Some(now.saturating_duration_since(start)),
            _ => None,
        };
        self.shared.record(rec, elapsed, now, self.epoch);
    }
}

impl Drop for Recording {
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
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker): either
    /// the inner call, recorded when it completes (or as cancelled if dropped),
    /// or a [`CircuitOpen`](super::CircuitOpen) rejection.
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        recording: Option<Recording>,
        classifier: C,
    }
}

impl<F, C> ResponseFuture<F, C> {
    /// Ask the breaker behind `shared` to admit a call: if it does, make the
    /// call with `call` and record its outcome; if not, the future yields the
    /// [`CircuitOpen`](super::CircuitOpen) rejection and `call` is never made.
    #[inline]
    pub(crate) fn admit(shared: &Arc<Shared>, call: impl FnOnce() -> F, classifier: C) -> Self {
        match shared.acquire() {
            Ok(epoch) => {
                let recording = Recording::new(shared.clone(), epoch);
                ResponseFuture { kind: Kind::Called { fut: call() }, recording: Some(recording), classifier }
            }
            Err(err) => {
                ResponseFuture { kind: Kind::Rejected { err: Some(Box::new(err)) }, recording: None, classifier }
            }
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Rejected { err } => Poll::Ready(Err(err.take().expect("ResponseFuture polled after completion"))),
            KindProj::Called { fut } => {
                let mut result = ready!(fut.poll(cx));
                // Finish the recording in place (moving it out costs more than
                // the record itself on the fast path); only a deferred outcome
                // takes it, into the body's recorder.
                if let Some(rec) = this.recording.as_mut() {
                    match this.classifier.classify(result.as_ref()) {
                        Outcome::Deferred => match result.as_mut() {
                            Ok(res) => {
                                let mut rec = this.recording.take().expect("recording present");
                                let recorder = OutcomeRecorder::new(move |o| rec.finish(o));
                                if let Err(recorder) = this.classifier.defer(res, recorder) {
                                    recorder.record(Outcome::Success);
                                }
                            }
                            Err(_) => rec.finish(Outcome::Failure(crate::classify::FailureKind::Error)),
                        },
                        o => rec.finish(o),
                    }
                }
                Poll::Ready(result.map_err(Into::into))
            }
        }
    }
}
