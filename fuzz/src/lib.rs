//! The bodies of the fuzz targets, one module per target.
//!
//! Each module's `run(data)` checks one input: the cargo-fuzz target of the
//! same name (`fuzz_targets/`) calls it under libFuzzer (nightly), and the
//! crate's `tests/fuzz_corpus.rs` compiles the same files (`#[path]`
//! modules) and calls it on the committed corpus (`corpus/<target>/`) and on
//! proptest inputs, on the stable toolchain. A failed property panics.

pub mod correlation_id;
pub mod grpc_timeout;
pub mod jwt_token;
pub mod retry_after;
pub mod soap_envelope;
pub mod stack_config;
pub mod wsdl;
