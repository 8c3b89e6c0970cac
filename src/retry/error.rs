//! The error of a call whose retry the stack's own protection turned away.

use std::any::Any;
use std::fmt;

use crate::classify::FailureKind;
use crate::error::BoxError;

/// A retry was turned away by a layer of this process (an open circuit
/// breaker, a full bulkhead) after the call had already failed for real.
///
/// Returned, boxed, instead of the bare rejection when the retry layer's
/// errors are [`BoxError`]s (as in the configured stack): the rejection is
/// its [`source`](std::error::Error::source), so code that walks the chain
/// for [`CircuitOpen`](crate::circuit_breaker::CircuitOpen) still finds it
/// (and a server answers `503` / `UNAVAILABLE`), and the last real failure
/// of the call is kept: [`last_failure`](Self::last_failure) says what it
/// was, [`last_error`](Self::last_error) is the error itself when it was
/// one (a response, such as a `503` or a gRPC `UNAVAILABLE`, is released
/// before the backoff and only its kind is kept).
#[derive(Debug)]
pub struct RetryRejected {
    rejection: BoxError,
    last_failure: FailureKind,
    last_error: Option<BoxError>,
    attempts: u32,
}

impl RetryRejected {
    /// The rejection (also the [`source`](std::error::Error::source)).
    pub fn rejection(&self) -> &BoxError {
        &self.rejection
    }

    /// How the last attempt that reached the service failed.
    pub fn last_failure(&self) -> FailureKind {
        self.last_failure
    }

    /// The error of the last attempt that reached the service, when it
    /// ended in an error rather than a response.
    pub fn last_error(&self) -> Option<&BoxError> {
        self.last_error.as_ref()
    }

    /// Attempts that reached the service before the rejection.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for RetryRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "retry rejected after {} failed attempt(s), the last with ", self.attempts)?;
        match &self.last_error {
            Some(e) => write!(f, "{e}")?,
            None => write!(f, "{}", self.last_failure)?,
        }
        write!(f, ": {}", self.rejection)
    }
}

impl std::error::Error for RetryRejected {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.rejection)
    }
}

/// How the last attempt that reached the service failed, kept during a
/// backoff.
pub(crate) enum LastFailure<E> {
    /// It answered with a failure response (released; its kind kept).
    Response(FailureKind),
    /// It ended in an error.
    Error(FailureKind, E),
}

/// `err`, the result of a retry, as the call's error: a [`RetryRejected`]
/// carrying `last` when `E` is [`BoxError`] and `err` is the stack's own
/// rejection; `err` unchanged otherwise.
pub(crate) fn after_retry<E: 'static>(err: E, last: Option<LastFailure<E>>, attempts: u32) -> E {
    let Some(last) = last else { return err };
    let mut slot = Some(err);
    if let Some(boxed) = (&mut slot as &mut dyn Any).downcast_mut::<Option<BoxError>>() {
        if let Some(rejection) = boxed.take() {
            *boxed = Some(if crate::classify::is_rejection(&rejection) {
                let (last_failure, last_error) = match last {
                    LastFailure::Response(kind) => (kind, None),
                    LastFailure::Error(kind, e) => {
                        let mut e = Some(e);
                        let e = (&mut e as &mut dyn Any).downcast_mut::<Option<BoxError>>().and_then(Option::take);
                        (kind, e)
                    }
                };
                Box::new(RetryRejected { rejection, last_failure, last_error, attempts })
            } else {
                rejection
            });
        }
    }
    slot.expect("the error is put back")
}

/// `err` as a `dyn Error` when its type is one the retry layer can read: a
/// [`BoxError`] (the configured stack's), or an `std::io::Error`.
pub(crate) fn as_error<E: 'static>(err: &E) -> Option<&(dyn std::error::Error + 'static)> {
    let any = err as &dyn Any;
    if let Some(e) = any.downcast_ref::<BoxError>() {
        return Some(&**e);
    }
    any.downcast_ref::<std::io::Error>().map(|e| e as _)
}
