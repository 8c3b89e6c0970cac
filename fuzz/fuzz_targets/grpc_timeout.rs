//! cargo-fuzz entry point: the body is `tower_mesh_fuzz::grpc_timeout::run`
//! (`fuzz/src/grpc_timeout.rs`), which `tests/fuzz_corpus.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tower_mesh_fuzz::grpc_timeout::run(data));
