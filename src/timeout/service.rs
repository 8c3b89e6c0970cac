//! The timeout service.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_service::Service;

use super::error::TimeoutKind;
use super::future::ResponseFuture;
use super::layer::{Reporter, Shared};
use crate::deadline::{Deadline, DeadlineCarrier};
use crate::error::BoxError;

/// Service made by [`TimeoutLayer`](super::TimeoutLayer).
///
/// On `call` it computes the call's deadline (its own, or an earlier one the
/// request carries or the task has current), attaches it to the request
/// ([`DeadlineCarrier`]), calls the inner service with the deadline current
/// ([`Deadline::current`]) and polls the inner future in that scope too; the
/// response future fails with [`Elapsed`](super::Elapsed) when the deadline
/// passes first. `poll_ready` is the inner service's (as in tower's `Timeout`,
/// waiting for readiness is not timed).
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    kind: TimeoutKind,
    duration: Duration,
    grpc_timeout: bool,
    shared: Arc<Shared>,
}

impl<S> Timeout<S> {
    pub(crate) fn new(
        inner: S,
        kind: TimeoutKind,
        duration: Duration,
        grpc_timeout: bool,
        shared: Arc<Shared>,
    ) -> Self {
        Timeout { inner, kind, duration, grpc_timeout, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the timeout.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: DeadlineCarrier,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: Req) -> Self::Future {
        let now = Instant::now();
        let own = Deadline::at(crate::deadline::instant_after(now, self.duration));
        let deadline = own.min(crate::deadline::of(&req));
        // When a deadline set further up expires first, report it as the total
        // timeout, so a retry layer knows not to try again.
        let (kind, after) = if deadline == own {
            (self.kind, self.duration)
        } else {
            (TimeoutKind::Total, deadline.instant().saturating_duration_since(now))
        };

        req.set_deadline(deadline);
        if self.grpc_timeout {
            req.set_grpc_timeout(after);
        }
        let inner = &mut self.inner;
        // `deadline` is already the earliest of ours, the request's and the current one.
        let response = deadline.sync_scope_exact(|| inner.call(req));
        ResponseFuture::new(deadline, response, kind, after, Reporter::new(&self.shared, kind))
    }
}
