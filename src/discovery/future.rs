//! Response future of the discovery service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::balance::Table;
use super::error::DiscoveryError;
use crate::classify::{Classify, Outcome};
use crate::BoxError;

/// An in-flight call to one endpoint: counted in its load until it ends, and
/// its outcome (success / failure) fed to outlier detection. Dropping it (the
/// call was cancelled) only releases the in-flight count.
#[derive(Debug)]
pub(crate) struct Guard {
    table: Arc<Table>,
    index: usize,
    started: Instant,
    done: bool,
}

impl Guard {
    pub(crate) fn new(table: Arc<Table>, index: usize, started: Instant) -> Self {
        table.start(index);
        Guard { table, index, started, done: false }
    }

    fn finish(&mut self, failed: Option<bool>) {
        if !std::mem::replace(&mut self.done, true) {
            self.table.finish(self.index, self.started, failed);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.finish(None);
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Called { #[pin] fut: F, guard: Guard },
        Failed { err: Option<DiscoveryError> },
    }
}

pin_project! {
    /// Response future of [`Discovery`](super::Discovery): the call to the
    /// chosen endpoint, or the [`DiscoveryError`] that kept it from being made.
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        classifier: C,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(fut: F, guard: Guard, classifier: C) -> Self {
        ResponseFuture { kind: Kind::Called { fut, guard }, classifier }
    }

    pub(crate) fn failed(err: DiscoveryError, classifier: C) -> Self {
        ResponseFuture { kind: Kind::Failed { err: Some(err) }, classifier }
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
            KindProj::Failed { err } => {
                Poll::Ready(Err(err.take().expect("ResponseFuture polled after completion").into()))
            }
            KindProj::Called { fut, guard } => {
                let result = ready!(fut.poll(cx));
                let failed = match this.classifier.classify(result.as_ref()) {
                    Outcome::Failure(_) => Some(true),
                    // A deferred (end-of-stream) outcome counts as a success for
                    // ejection: the headers arrived.
                    Outcome::Success | Outcome::Deferred => Some(false),
                    Outcome::Ignored | Outcome::Cancelled => None,
                };
                guard.finish(failed);
                Poll::Ready(result.map_err(Into::into))
            }
        }
    }
}
