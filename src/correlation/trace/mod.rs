//! W3C Trace Context: the `traceparent` and `tracestate` headers.

mod parent;
mod state;
#[cfg(test)]
mod tests;

pub use parent::{SpanId, TraceId, TraceParent};
pub use state::TraceState;
