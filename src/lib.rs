//! Crate docs are written in README.md and included here.
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(unreachable_pub, rust_2018_idioms, missing_debug_implementations)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod classify;
pub mod config;
pub mod deadline;
pub mod error;

#[cfg(feature = "bulkhead")]
pub mod bulkhead;
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker;
#[cfg(feature = "retry")]
pub mod retry;
#[cfg(feature = "timeout")]
pub mod timeout;

pub use error::BoxError;
