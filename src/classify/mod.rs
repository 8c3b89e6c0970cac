//! Failure classification shared by every layer.
//!
//! One mechanism decides what a call's result means: [`Outcome::Success`],
//! [`Outcome::Failure`] (with a [`FailureKind`]), [`Outcome::Ignored`] (counted
//! nowhere), or [`Outcome::Deferred`] when the answer is only known at the end
//! of a streaming body (gRPC trailers). The circuit breaker, the retry layer and
//! the metrics all take a [`Classify`] implementation, so a response that trips
//! the breaker is also the one that is retried and counted as a failure.
//!
//! Ready-made classifiers:
//!
//! | classifier | for | failure when |
//! |---|---|---|
//! | [`ResultClassifier`] | any `Result` | `Err` |
//! | [`HttpClassifier`] | `http::Response<B>` | 5xx, 429, 408 (configurable) or `Err`; with a watched body ([`EosSlot`]), a body error or timeout |
//! | [`GrpcClassifier`] | gRPC over `http::Response<B>` | `grpc-status` in a failure set, in headers or (with [`ClassifyEosLayer`]) trailers |
//! | [`TowerHttpClassifier`] | any tower-http [`ClassifyResponse`](tower_http::classify::ClassifyResponse) | its failure class |
//! | [`FnClassifier`] | anything | a closure says so |
//!
//! Slow calls are classified by duration with [`SlowCallThreshold`]; a call
//! whose future is dropped before it completes is [`Outcome::Cancelled`], and a
//! [`CancelPolicy`] says how the consumer counts it (default: not at all).
//!
//! # Example
//!
//! ```
//! use tower_mesh::classify::{Classify, HttpClassifier, Outcome, FailureKind};
//! use http::{Response, StatusCode};
//!
//! let classifier = HttpClassifier::new();
//! let ok = Response::new(());
//! let busy = Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).body(()).unwrap();
//! let missing = Response::builder().status(StatusCode::NOT_FOUND).body(()).unwrap();
//!
//! assert_eq!(Classify::<_, ()>::classify(&classifier, Ok(&ok)), Outcome::Success);
//! assert_eq!(
//!     Classify::<_, ()>::classify(&classifier, Ok(&busy)),
//!     Outcome::Failure(FailureKind::HttpStatus(StatusCode::SERVICE_UNAVAILABLE))
//! );
//! // A 404 is the caller's problem, not the dependency's: not a failure.
//! assert_eq!(Classify::<_, ()>::classify(&classifier, Ok(&missing)), Outcome::Success);
//! ```

mod eos;
mod grpc;
mod http;
mod tower_http_compat;

use std::fmt;
use std::time::Duration;

use crate::error::BoxError;

pub use self::eos::{ClassifyEos, ClassifyEosLayer, EosBody, EosEvent, EosSlot, OutcomeRecorder};
#[cfg(all(test, feature = "stack"))]
pub(crate) use self::grpc::code_from_i32;
#[cfg(feature = "stack")]
pub(crate) use self::grpc::grpc_status;
pub use self::grpc::{GrpcClassifier, GrpcCodeSet};
pub use self::http::{HttpClassifier, StatusSet};
pub use self::tower_http_compat::TowerHttpClassifier;
pub use tower_http::classify::GrpcCode;

/// What a call's result means to the resilience layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The dependency did its job.
    Success,
    /// The dependency failed; counts towards breaker thresholds and may be retried.
    Failure(FailureKind),
    /// Neither success nor failure: not recorded anywhere (e.g. a client error the
    /// user chose to ignore).
    Ignored,
    /// The caller dropped the call before it completed. Never returned by a
    /// classifier; consumers map it with a [`CancelPolicy`].
    Cancelled,
    /// The result is only known at the end of the response stream. The consumer
    /// calls [`Classify::defer`] to be told later; if that is not possible it
    /// treats the call as a success.
    Deferred,
}

impl Outcome {
    /// `true` for [`Outcome::Failure`].
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failure(_))
    }

    /// `true` for [`Outcome::Success`].
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// A short, stable label for metrics (`success`, `failure`, `ignored`,
    /// `cancelled`, `deferred`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Ignored => "ignored",
            Outcome::Cancelled => "cancelled",
            Outcome::Deferred => "deferred",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Failure(kind) => write!(f, "failure ({kind})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Why a call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The inner service returned an error.
    Error,
    /// An HTTP response with a failure status.
    HttpStatus(::http::StatusCode),
    /// A gRPC status that is in the failure set.
    Grpc(GrpcCode),
    /// The call timed out.
    Timeout,
    /// A user-defined failure class.
    Custom(&'static str),
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Error => f.write_str("error"),
            FailureKind::HttpStatus(s) => write!(f, "HTTP {}", s.as_u16()),
            FailureKind::Grpc(c) => write!(f, "gRPC {c:?}"),
            FailureKind::Timeout => f.write_str("timeout"),
            FailureKind::Custom(s) => f.write_str(s),
        }
    }
}

/// Decides the [`Outcome`] of a call that returned `Result<Res, E>`.
///
/// Implementations are cheap to clone and called once per call (per attempt
/// for retries), so they must not allocate.
pub trait Classify<Res, E> {
    /// Classify a completed call.
    fn classify(&self, result: Result<&Res, &E>) -> Outcome;

    /// Arrange for `recorder` to be told the outcome when the response stream
    /// ends. Called only after [`classify`](Classify::classify) returned
    /// [`Outcome::Deferred`]. Returns the recorder back when the response cannot
    /// be watched (the default), in which case the caller records a success.
    fn defer(&self, response: &mut Res, recorder: OutcomeRecorder) -> Result<(), OutcomeRecorder> {
        let _ = response;
        Err(recorder)
    }
}

impl<Res, E, C: Classify<Res, E> + ?Sized> Classify<Res, E> for &C {
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        (**self).classify(result)
    }
    fn defer(&self, response: &mut Res, recorder: OutcomeRecorder) -> Result<(), OutcomeRecorder> {
        (**self).defer(response, recorder)
    }
}

impl<Res, E, C: Classify<Res, E> + ?Sized> Classify<Res, E> for std::sync::Arc<C> {
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        (**self).classify(result)
    }
    fn defer(&self, response: &mut Res, recorder: OutcomeRecorder) -> Result<(), OutcomeRecorder> {
        (**self).defer(response, recorder)
    }
}

/// `Ok` is a success, `Err` a [`FailureKind::Error`]. The default classifier.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResultClassifier;

impl<Res, E> Classify<Res, E> for ResultClassifier {
    #[inline]
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure(FailureKind::Error),
        }
    }
}

/// A classifier from a closure.
///
/// ```
/// use tower_mesh::classify::{classify_fn, Classify, FailureKind, Outcome};
///
/// // Negative numbers are failures, zero is ignored.
/// let c = classify_fn(|r: Result<&i32, &()>| match r {
///     Ok(0) => Outcome::Ignored,
///     Ok(n) if *n < 0 => Outcome::Failure(FailureKind::Custom("negative")),
///     Ok(_) => Outcome::Success,
///     Err(_) => Outcome::Failure(FailureKind::Error),
/// });
/// assert_eq!(c.classify(Ok(&-1)), Outcome::Failure(FailureKind::Custom("negative")));
/// ```
#[derive(Clone, Copy)]
pub struct FnClassifier<F>(F);

impl<F> fmt::Debug for FnClassifier<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnClassifier").finish_non_exhaustive()
    }
}

/// Build a [`FnClassifier`] from a closure.
pub fn classify_fn<F>(f: F) -> FnClassifier<F> {
    FnClassifier(f)
}

impl<Res, E, F> Classify<Res, E> for FnClassifier<F>
where
    F: Fn(Result<&Res, &E>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        (self.0)(result)
    }
}

/// Calls at least this long are *slow*.
///
/// Slowness is orthogonal to success: a slow success and a slow failure both
/// count towards a circuit breaker's slow-call rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowCallThreshold(pub Duration);

impl SlowCallThreshold {
    /// Whether a call that took `elapsed` is slow.
    #[inline]
    pub fn is_slow(&self, elapsed: Duration) -> bool {
        elapsed >= self.0
    }
}

/// How a consumer counts a call whose future was dropped before completion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CancelPolicy {
    /// Not counted at all (the default): the caller gave up, the dependency did
    /// not fail.
    #[default]
    Ignore,
    /// Counted as a failure.
    Failure,
    /// Counted as a success.
    Success,
}

impl CancelPolicy {
    /// Map [`Outcome::Cancelled`] under this policy; other outcomes pass through.
    #[inline]
    pub fn apply(self, outcome: Outcome) -> Outcome {
        match (outcome, self) {
            (Outcome::Cancelled, CancelPolicy::Ignore) => Outcome::Ignored,
            (Outcome::Cancelled, CancelPolicy::Failure) => Outcome::Failure(FailureKind::Error),
            (Outcome::Cancelled, CancelPolicy::Success) => Outcome::Success,
            (other, _) => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_classifier() {
        let c = ResultClassifier;
        assert_eq!(Classify::<u8, ()>::classify(&c, Ok(&1)), Outcome::Success);
        assert_eq!(Classify::<u8, ()>::classify(&c, Err(&())), Outcome::Failure(FailureKind::Error));
    }

    #[test]
    fn cancel_policy_maps_only_cancelled() {
        assert_eq!(CancelPolicy::Ignore.apply(Outcome::Cancelled), Outcome::Ignored);
        assert!(CancelPolicy::Failure.apply(Outcome::Cancelled).is_failure());
        assert_eq!(CancelPolicy::Success.apply(Outcome::Cancelled), Outcome::Success);
        assert_eq!(CancelPolicy::Failure.apply(Outcome::Success), Outcome::Success);
    }

    #[test]
    fn slow_threshold_is_inclusive() {
        let t = SlowCallThreshold(Duration::from_millis(100));
        assert!(t.is_slow(Duration::from_millis(100)));
        assert!(!t.is_slow(Duration::from_millis(99)));
    }

    #[test]
    fn display() {
        assert_eq!(
            Outcome::Failure(FailureKind::HttpStatus(::http::StatusCode::BAD_GATEWAY)).to_string(),
            "failure (HTTP 502)"
        );
        assert_eq!(Outcome::Ignored.to_string(), "ignored");
    }
}

/// A classifier that leaves the stack's own rejections — an error whose
/// [`MeshError::kind`](crate::error::MeshError::kind) is
/// [`Rejected`](crate::error::MeshErrorKind::Rejected), such as an open
/// breaker's `CircuitOpen` or a full bulkhead's `BulkheadFull` — out of the
/// count ([`Outcome::Ignored`]) and asks `C` about everything else.
///
/// Give it to a retry layer above a breaker (retrying a rejection at once
/// only adds load; the caller gets it fast). A circuit breaker needs no
/// wrapping: it leaves these rejections out of its count by default (see
/// `count_rejections` in the circuit breaker's builder, feature
/// `circuit-breaker`). The configured stack (module `stack`, feature
/// `stack`) wraps the classifiers of both.
///
/// ```
/// use tower_mesh::classify::{Classify, HttpClassifier, IgnoreRejections, Outcome};
/// use tower_mesh::BoxError;
///
/// let c = IgnoreRejections(HttpClassifier::new());
/// let other: BoxError = "connection reset".into();
/// assert!(matches!(Classify::<http::Response<()>, BoxError>::classify(&c, Err(&other)), Outcome::Failure(_)));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct IgnoreRejections<C>(pub C);

/// Whether a tower-mesh error in `e`'s source chain is a
/// [rejection](crate::error::MeshErrorKind::Rejected).
pub(crate) fn is_rejection(e: &BoxError) -> bool {
    crate::error::mesh_errors(&**e).any(|m| m.kind() == crate::error::MeshErrorKind::Rejected)
}

impl<Res, C: Classify<Res, BoxError>> Classify<Res, BoxError> for IgnoreRejections<C> {
    #[inline]
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        match result {
            Err(e) if is_rejection(e) => Outcome::Ignored,
            other => self.0.classify(other),
        }
    }

    fn defer(&self, response: &mut Res, recorder: OutcomeRecorder) -> Result<(), OutcomeRecorder> {
        self.0.defer(response, recorder)
    }
}
