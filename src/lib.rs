//! Service-mesh resilience inside the process, as composable tower layers.
//!
//! The crate documentation is the README (included below when all the layer
//! features are enabled, so that its example compiles).
#![cfg_attr(
    all(feature = "circuit-breaker", feature = "bulkhead", feature = "retry", feature = "timeout"),
    doc = include_str!("../README.md")
)]
#![deny(missing_docs)]
#![warn(unreachable_pub, rust_2018_idioms, missing_debug_implementations)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Modules that are always present link to the layers they work with; with
// only some features on, those layers do not exist. The all-features docs
// (docs.rs, CI) keep every link checked.
#![cfg_attr(not(feature = "full"), allow(rustdoc::broken_intra_doc_links))]

pub mod builder;
pub mod classify;
pub mod config;
pub mod deadline;
pub mod error;
mod layer_errors;

#[cfg(feature = "adaptive-concurrency")]
pub mod adaptive_concurrency;
#[cfg(feature = "bulkhead")]
pub mod bulkhead;
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker;
#[cfg(feature = "hedge")]
pub mod hedge;
#[cfg(any(feature = "discovery", feature = "jwt", feature = "stack", feature = "rate-limit"))]
mod redact;
#[cfg(feature = "retry")]
pub mod retry;
#[cfg(any(feature = "bulkhead", feature = "circuit-breaker"))]
mod stripe;
#[cfg(feature = "timeout")]
pub mod timeout;

#[cfg(feature = "correlation-id")]
pub mod correlation;
#[cfg(feature = "jwt")]
pub mod jwt;
#[cfg(feature = "soap")]
pub mod soap;

#[cfg(feature = "discovery")]
pub mod discovery;

#[cfg(feature = "publish")]
pub mod publish;

#[cfg(feature = "rate-limit")]
pub mod rate_limit;

#[cfg(feature = "chaos")]
pub mod chaos;
#[cfg(feature = "coalesce")]
pub mod coalesce;
#[cfg(feature = "fallback")]
pub mod fallback;
#[cfg(any(feature = "fallback", feature = "coalesce"))]
mod request_key;

#[cfg(feature = "stack")]
pub mod health;
#[cfg(feature = "stack")]
pub mod service_error;
#[cfg(feature = "stack")]
pub mod stack;

pub use builder::ServiceBuilderExt;
pub use error::BoxError;
