//! Errors of the publishers.

use std::fmt;
use std::sync::Arc;

use crate::classify::{Classify, FailureKind, GrpcCode, Outcome};
use crate::error::{BoxError, MeshError};

/// An event that cannot be built or parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidEvent {
    /// A required attribute is missing or empty.
    Missing(&'static str),
    /// An attribute value is not acceptable.
    Invalid {
        /// The attribute (`"extension"` for extension attributes).
        attribute: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `data` could not be serialised.
    Data(String),
    /// A structured-mode message that is not a CloudEvents 1.0 JSON event.
    Malformed(&'static str),
}

impl fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidEvent::Missing(a) => write!(f, "invalid event: `{a}` is required"),
            InvalidEvent::Invalid { attribute, reason } => write!(f, "invalid event: `{attribute}` {reason}"),
            InvalidEvent::Data(e) => write!(f, "invalid event: data cannot be serialised: {e}"),
            InvalidEvent::Malformed(what) => write!(f, "malformed CloudEvents JSON: {what}"),
        }
    }
}

impl std::error::Error for InvalidEvent {}

/// Why a publish failed.
///
/// [`is_transient`](PublishError::is_transient) says whether sending again
/// may succeed: [`PublishClassifier`] uses it so that the retry layer retries
/// and the circuit breaker counts only broker trouble, not a bad event or an
/// unroutable message.
#[derive(Debug)]
#[non_exhaustive]
pub enum PublishError {
    /// The event cannot be sent as it is (never retried).
    InvalidEvent(InvalidEvent),
    /// The broker cannot be reached: the last connection attempt failed.
    /// Raised at once, without queueing, while the publisher is reconnecting
    /// after a failed attempt (transient).
    Unavailable {
        /// Broker name (`rabbitmq`, `nats`, ...).
        broker: &'static str,
        /// The last connection error.
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The connection broke while the message was unconfirmed and it could
    /// not be re-sent within [`max_resends`](super::PublisherConfig::max_resends)
    /// (transient; the broker may have stored it: a retry re-sends it with the
    /// same id).
    ConnectionLost {
        /// Broker name.
        broker: &'static str,
        /// How many times the message was sent.
        attempts: u32,
    },
    /// The broker refused the message (negative acknowledgement, e.g. a full
    /// queue with `reject-publish`; transient).
    Nacked {
        /// Broker name.
        broker: &'static str,
        /// The broker's reason, when it gives one.
        reason: Option<String>,
    },
    /// The message could not be routed to any queue or stream (RabbitMQ
    /// `mandatory` return, JetStream "no responders"); not transient — the
    /// topology is missing.
    Unroutable {
        /// Broker name.
        broker: &'static str,
        /// The broker's reply code (AMQP 312 `NO_ROUTE`), when it gives one.
        code: Option<u16>,
        /// The broker's reply text.
        reason: String,
    },
    /// The broker answered with an error for this message (not transient).
    Rejected {
        /// Broker name.
        broker: &'static str,
        /// The broker's error.
        reason: String,
    },
    /// No confirmation arrived in time on a connection that still looks open
    /// (transient).
    ConfirmTimeout {
        /// Broker name.
        broker: &'static str,
    },
    /// `call` without `poll_ready` and no in-flight capacity left.
    Overloaded {
        /// Broker name.
        broker: &'static str,
    },
    /// The publisher was shut down (its background task ended).
    Closed,
    /// The publisher's configuration is invalid.
    Config(crate::config::ConfigError),
    /// A publisher was built outside a Tokio runtime.
    NoRuntime,
    /// Any other client error (transient unless the client says otherwise).
    Client {
        /// Broker name.
        broker: &'static str,
        /// The client's error.
        source: BoxError,
    },
}

impl PublishError {
    /// `true` when sending again may succeed (connection trouble, nack,
    /// timeout); `false` for a bad event, an unroutable or rejected message or
    /// a closed publisher.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PublishError::Unavailable { .. }
                | PublishError::ConnectionLost { .. }
                | PublishError::Nacked { .. }
                | PublishError::ConfirmTimeout { .. }
                | PublishError::Overloaded { .. }
                | PublishError::Client { .. }
        )
    }

    /// The broker the error comes from, if any.
    pub fn broker(&self) -> Option<&'static str> {
        match self {
            PublishError::Unavailable { broker, .. }
            | PublishError::ConnectionLost { broker, .. }
            | PublishError::Nacked { broker, .. }
            | PublishError::Unroutable { broker, .. }
            | PublishError::Rejected { broker, .. }
            | PublishError::ConfirmTimeout { broker }
            | PublishError::Overloaded { broker }
            | PublishError::Client { broker, .. } => Some(broker),
            PublishError::InvalidEvent(_)
            | PublishError::Closed
            | PublishError::Config(_)
            | PublishError::NoRuntime => None,
        }
    }

    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PublishError::InvalidEvent(_) => "invalid_event",
            PublishError::Unavailable { .. } => "unavailable",
            PublishError::ConnectionLost { .. } => "connection_lost",
            PublishError::Nacked { .. } => "nacked",
            PublishError::Unroutable { .. } => "unroutable",
            PublishError::Rejected { .. } => "rejected",
            PublishError::ConfirmTimeout { .. } => "confirm_timeout",
            PublishError::Overloaded { .. } => "overloaded",
            PublishError::Closed => "closed",
            PublishError::Config(_) => "config",
            PublishError::NoRuntime => "no_runtime",
            PublishError::Client { .. } => "client",
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::InvalidEvent(e) => e.fmt(f),
            PublishError::Unavailable { broker, source } => write!(f, "{broker} is unavailable: {source}"),
            PublishError::ConnectionLost { broker, attempts } => {
                write!(f, "connection to {broker} lost before the message was confirmed ({attempts} sends)")
            }
            PublishError::Nacked { broker, reason: Some(r) } => write!(f, "{broker} refused the message: {r}"),
            PublishError::Nacked { broker, reason: None } => write!(f, "{broker} refused the message (nack)"),
            PublishError::Unroutable { broker, code, reason } => match code {
                Some(c) => write!(f, "{broker} could not route the message: {c} {reason}"),
                None => write!(f, "{broker} could not route the message: {reason}"),
            },
            PublishError::Rejected { broker, reason } => write!(f, "{broker} rejected the message: {reason}"),
            PublishError::ConfirmTimeout { broker } => write!(f, "{broker} did not confirm the message in time"),
            PublishError::Overloaded { broker } => write!(f, "{broker} publisher has no in-flight capacity left"),
            PublishError::Closed => f.write_str("the publisher is closed"),
            PublishError::Config(e) => e.fmt(f),
            PublishError::NoRuntime => f.write_str("a publisher must be built inside a Tokio runtime"),
            PublishError::Client { broker, source } => write!(f, "{broker} client error: {source}"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::InvalidEvent(e) => Some(e),
            PublishError::Unavailable { source, .. } => Some(&**source),
            PublishError::Client { source, .. } => Some(&**source),
            PublishError::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<InvalidEvent> for PublishError {
    fn from(e: InvalidEvent) -> Self {
        PublishError::InvalidEvent(e)
    }
}

impl MeshError for PublishError {
    /// Transient broker trouble is `503`, anything else `502` (the broker,
    /// an upstream, failed the request); a bad event `500`.
    fn http_status(&self) -> http::StatusCode {
        match self {
            PublishError::InvalidEvent(_)
            | PublishError::Closed
            | PublishError::Config(_)
            | PublishError::NoRuntime => http::StatusCode::INTERNAL_SERVER_ERROR,
            e if e.is_transient() => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }

    fn grpc_code(&self) -> GrpcCode {
        match self {
            PublishError::InvalidEvent(_)
            | PublishError::Closed
            | PublishError::Config(_)
            | PublishError::NoRuntime => GrpcCode::Internal,
            PublishError::Unroutable { .. } => GrpcCode::FailedPrecondition,
            e if e.is_transient() => GrpcCode::Unavailable,
            _ => GrpcCode::Internal,
        }
    }
}

/// Classifier for a publisher stack: a [`PublishError`] anywhere in the error's
/// source chain is a failure only when it is [transient](PublishError::is_transient)
/// (a bad or unroutable event is [`Outcome::Ignored`]: neither retried nor
/// counted by a circuit breaker); any other error (a timeout, a full
/// bulkhead) is a failure.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublishClassifier;

impl PublishClassifier {
    fn classify_error(err: &(dyn std::error::Error + 'static)) -> Outcome {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(p) = e.downcast_ref::<PublishError>() {
                return if p.is_transient() {
                    Outcome::Failure(FailureKind::Custom(p.kind()))
                } else {
                    Outcome::Ignored
                };
            }
            cur = e.source();
        }
        Outcome::Failure(FailureKind::Error)
    }
}

impl<Res> Classify<Res, BoxError> for PublishClassifier {
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => Self::classify_error(&**e),
        }
    }
}

impl<Res> Classify<Res, PublishError> for PublishClassifier {
    fn classify(&self, result: Result<&Res, &PublishError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => Self::classify_error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifier_separates_transient_errors() {
        let c = PublishClassifier;
        let lost: BoxError = Box::new(PublishError::ConnectionLost { broker: "nats", attempts: 2 });
        let unroutable: BoxError =
            Box::new(PublishError::Unroutable { broker: "rabbitmq", code: Some(312), reason: "NO_ROUTE".into() });
        let other: BoxError = "boom".into();
        assert!(Classify::<(), BoxError>::classify(&c, Err(&lost)).is_failure());
        assert_eq!(Classify::<(), BoxError>::classify(&c, Err(&unroutable)), Outcome::Ignored);
        assert!(Classify::<(), BoxError>::classify(&c, Err(&other)).is_failure());
        assert_eq!(Classify::<(), BoxError>::classify(&c, Ok(&())), Outcome::Success);
    }

    #[test]
    fn display_and_mapping() {
        let e = PublishError::Unroutable { broker: "rabbitmq", code: Some(312), reason: "NO_ROUTE".into() };
        assert_eq!(e.to_string(), "rabbitmq could not route the message: 312 NO_ROUTE");
        assert_eq!(e.http_status(), http::StatusCode::BAD_GATEWAY);
        let e = PublishError::Unavailable { broker: "nats", source: Arc::new(std::io::Error::other("refused")) };
        assert_eq!(e.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.grpc_code(), GrpcCode::Unavailable);
        assert!(std::error::Error::source(&e).is_some());
        let e: PublishError = InvalidEvent::Missing("id").into();
        assert!(!e.is_transient());
        assert_eq!(e.to_string(), "invalid event: `id` is required");
    }
}
