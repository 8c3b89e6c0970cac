//! cargo-fuzz entry point: the body is `tower_mesh_fuzz::stack_config::run`
//! (`fuzz/src/stack_config.rs`), which `tests/fuzz_corpus.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tower_mesh_fuzz::stack_config::run(data));
