//! Why an incoming correlation id, `traceparent` or `tracestate` was refused.
//!
//! The layers never fail a request over these: an invalid value is replaced
//! (a fresh id, a fresh trace) or dropped (`tracestate`), counted, and logged
//! without its content. The types are public for code that reads the values
//! itself, e.g. from message headers.

use std::error::Error;
use std::fmt;

/// A correlation id that does not meet the rules of
/// [`CorrelationId`](super::CorrelationId): 1 to 128 bytes of visible ASCII
/// (`!` to `~`), none of them a separator the layer forbids.
///
/// The error holds positions only, never the refused bytes, so it can be
/// logged safely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidCorrelationId {
    /// The id is empty.
    Empty,
    /// The id is longer than [`CorrelationId::MAX_LEN`](super::CorrelationId::MAX_LEN).
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A byte that is not visible ASCII (a control character such as CR or
    /// LF, a space, DEL, or a non-ASCII byte).
    InvalidByte {
        /// Offset of the first such byte.
        index: usize,
    },
    /// A separator the layer was told to forbid
    /// ([`CorrelationIdLayer::forbid`](super::CorrelationIdLayer::forbid)).
    ForbiddenByte {
        /// Offset of the first such byte.
        index: usize,
    },
}

impl InvalidCorrelationId {
    /// A short, fixed name for the reason (`"empty"`, `"too_long"`,
    /// `"invalid_byte"`, `"forbidden_byte"`), for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidCorrelationId::Empty => "empty",
            InvalidCorrelationId::TooLong { .. } => "too_long",
            InvalidCorrelationId::InvalidByte { .. } => "invalid_byte",
            InvalidCorrelationId::ForbiddenByte { .. } => "forbidden_byte",
        }
    }
}

impl fmt::Display for InvalidCorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidCorrelationId::Empty => f.write_str("correlation id is empty"),
            InvalidCorrelationId::TooLong { len } => {
                write!(f, "correlation id is {len} bytes long (at most {})", super::CorrelationId::MAX_LEN)
            }
            InvalidCorrelationId::InvalidByte { index } => {
                write!(f, "correlation id has a byte that is not visible ASCII at offset {index}")
            }
            InvalidCorrelationId::ForbiddenByte { index } => {
                write!(f, "correlation id has a forbidden separator at offset {index}")
            }
        }
    }
}

impl Error for InvalidCorrelationId {}

/// A `traceparent` value that W3C Trace Context says to ignore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidTraceParent {
    /// Shorter than 55 bytes, or (version `00`) not exactly 55 bytes.
    Length {
        /// Its length in bytes.
        len: usize,
    },
    /// Version `ff`, which the specification forbids.
    Version,
    /// A field is not lowercase hexadecimal (`0-9a-f`).
    Hex {
        /// Offset of the first offending byte.
        index: usize,
    },
    /// A `-` is missing between fields (or after the flags of a longer,
    /// future-version value).
    Delimiter {
        /// Offset where the `-` was expected.
        index: usize,
    },
    /// The trace id is all zeros.
    ZeroTraceId,
    /// The parent id is all zeros.
    ZeroParentId,
}

impl InvalidTraceParent {
    /// A short, fixed name for the reason, for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidTraceParent::Length { .. } => "length",
            InvalidTraceParent::Version => "version",
            InvalidTraceParent::Hex { .. } => "hex",
            InvalidTraceParent::Delimiter { .. } => "delimiter",
            InvalidTraceParent::ZeroTraceId => "zero_trace_id",
            InvalidTraceParent::ZeroParentId => "zero_parent_id",
        }
    }
}

impl fmt::Display for InvalidTraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidTraceParent::Length { len } => write!(f, "traceparent has an invalid length ({len} bytes)"),
            InvalidTraceParent::Version => f.write_str("traceparent has the forbidden version ff"),
            InvalidTraceParent::Hex { index } => {
                write!(f, "traceparent has a byte that is not lowercase hex at offset {index}")
            }
            InvalidTraceParent::Delimiter { index } => write!(f, "traceparent lacks a '-' at offset {index}"),
            InvalidTraceParent::ZeroTraceId => f.write_str("traceparent has an all-zero trace id"),
            InvalidTraceParent::ZeroParentId => f.write_str("traceparent has an all-zero parent id"),
        }
    }
}

impl Error for InvalidTraceParent {}

/// A `tracestate` value that W3C Trace Context says not to propagate.
///
/// Member numbers count the non-empty list members from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidTraceState {
    /// More than [`TraceState::MAX_MEMBERS`](super::TraceState::MAX_MEMBERS) list members.
    TooManyMembers,
    /// A list member has no `=`.
    MissingEquals {
        /// The member's number.
        member: usize,
    },
    /// A key does not follow the key grammar (lowercase letters, digits,
    /// `_ - * /`, an optional `tenant@system` form, at most 256 bytes).
    InvalidKey {
        /// The member's number.
        member: usize,
    },
    /// A value is empty, longer than 256 bytes, ends with a space or has a
    /// byte outside printable ASCII or a `,` or `=`.
    InvalidValue {
        /// The member's number.
        member: usize,
    },
    /// The same key appears twice.
    DuplicateKey {
        /// The number of the second member with that key.
        member: usize,
    },
}

impl InvalidTraceState {
    /// A short, fixed name for the reason, for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidTraceState::TooManyMembers => "too_many_members",
            InvalidTraceState::MissingEquals { .. } => "missing_equals",
            InvalidTraceState::InvalidKey { .. } => "invalid_key",
            InvalidTraceState::InvalidValue { .. } => "invalid_value",
            InvalidTraceState::DuplicateKey { .. } => "duplicate_key",
        }
    }
}

impl fmt::Display for InvalidTraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidTraceState::TooManyMembers => {
                write!(f, "tracestate has more than {} list members", super::TraceState::MAX_MEMBERS)
            }
            InvalidTraceState::MissingEquals { member } => write!(f, "tracestate member {member} has no '='"),
            InvalidTraceState::InvalidKey { member } => write!(f, "tracestate member {member} has an invalid key"),
            InvalidTraceState::InvalidValue { member } => {
                write!(f, "tracestate member {member} has an invalid value")
            }
            InvalidTraceState::DuplicateKey { member } => {
                write!(f, "tracestate member {member} repeats an earlier key")
            }
        }
    }
}

impl Error for InvalidTraceState {}

/// A request context that could not be built from its parts: which part was
/// wrong is the variant, why is its [`source`](Error::source).
///
/// Returned by [`RequestContext::from_parts`](super::RequestContext::from_parts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContextError {
    /// The correlation id is invalid.
    CorrelationId(InvalidCorrelationId),
    /// The `traceparent` is invalid.
    TraceParent(InvalidTraceParent),
    /// The `tracestate` is invalid.
    TraceState(InvalidTraceState),
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContextError::CorrelationId(_) => "invalid correlation id",
            ContextError::TraceParent(_) => "invalid traceparent",
            ContextError::TraceState(_) => "invalid tracestate",
        })
    }
}

impl Error for ContextError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            ContextError::CorrelationId(e) => Some(e),
            ContextError::TraceParent(e) => Some(e),
            ContextError::TraceState(e) => Some(e),
        }
    }
}

impl From<InvalidCorrelationId> for ContextError {
    fn from(e: InvalidCorrelationId) -> Self {
        ContextError::CorrelationId(e)
    }
}

impl From<InvalidTraceParent> for ContextError {
    fn from(e: InvalidTraceParent) -> Self {
        ContextError::TraceParent(e)
    }
}

impl From<InvalidTraceState> for ContextError {
    fn from(e: InvalidTraceState) -> Self {
        ContextError::TraceState(e)
    }
}
