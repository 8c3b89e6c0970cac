//! The fuzz targets of `fuzz/` on the stable toolchain, bounded.
//!
//! Each target's body is one function, `run(data)` in `fuzz/src/<target>.rs`:
//! the cargo-fuzz target calls it under libFuzzer (`scripts/fuzz.sh`,
//! nightly), and this test compiles the same files and calls it
//! - on every file of the committed corpus `fuzz/corpus/<target>/`
//!   (hand-made inputs and tricky cases, plus what fuzzing found worth
//!   keeping);
//! - on proptest inputs: arbitrary bytes after each flag byte, and corpus
//!   files with a few random byte edits (a small, seeded stand-in for
//!   libFuzzer's mutations).
//!
//! A failed property panics inside `run`, so a case fails with the target's
//! own assertion message; proptest then shrinks it. Turn a failure into a
//! file of `fuzz/corpus/<target>/` so it is replayed from then on.

use std::path::PathBuf;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

#[path = "../fuzz/src/correlation_id.rs"]
mod correlation_id;
#[path = "../fuzz/src/grpc_timeout.rs"]
mod grpc_timeout;
#[path = "../fuzz/src/jwt_token.rs"]
mod jwt_token;
#[path = "../fuzz/src/retry_after.rs"]
mod retry_after;
#[path = "../fuzz/src/soap_envelope.rs"]
mod soap_envelope;
#[path = "../fuzz/src/stack_config.rs"]
mod stack_config;
#[path = "../fuzz/src/wsdl.rs"]
mod wsdl;

/// A target's body.
type Body = fn(&[u8]);

/// Every target: its name (its corpus directory) and its body.
const TARGETS: &[(&str, Body)] = &[
    ("correlation_id", correlation_id::run),
    ("grpc_timeout", grpc_timeout::run),
    ("jwt_token", jwt_token::run),
    ("retry_after", retry_after::run),
    ("soap_envelope", soap_envelope::run),
    ("stack_config", stack_config::run),
    ("wsdl", wsdl::run),
];

/// The corpus of `target`, by file name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("a corpus file"))).collect()
}

fn body(target: &str) -> Body {
    TARGETS.iter().find(|(name, _)| *name == target).expect("a target").1
}

/// Replay every corpus file of `target`.
fn replay(target: &str) {
    let files = corpus(target);
    assert!(files.len() >= 4, "{target}: a corpus of at least a few inputs");
    for (path, data) in files {
        // Shown (with the panic) when an input fails.
        eprintln!("{target}: {}", path.display());
        body(target)(&data);
    }
}

#[test]
fn every_target_has_a_corpus_and_a_cargo_fuzz_entry() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (target, _) in TARGETS {
        assert!(root.join("fuzz_targets").join(format!("{target}.rs")).is_file(), "{target}: no entry point");
        assert!(manifest.contains(&format!("name = \"{target}\"")), "{target}: not a [[bin]] of fuzz/Cargo.toml");
        assert!(!corpus(target).is_empty(), "{target}: no corpus");
    }
    let entries = std::fs::read_dir(root.join("fuzz_targets")).expect("fuzz/fuzz_targets").count();
    assert_eq!(entries, TARGETS.len(), "a target of fuzz/fuzz_targets is not replayed here");
}

#[test]
fn replay_correlation_id() {
    replay("correlation_id");
}

#[test]
fn replay_grpc_timeout() {
    replay("grpc_timeout");
}

#[test]
fn replay_jwt_token() {
    replay("jwt_token");
}

#[test]
fn replay_retry_after() {
    replay("retry_after");
}

#[test]
fn replay_soap_envelope() {
    replay("soap_envelope");
}

#[test]
fn replay_stack_config() {
    replay("stack_config");
}

#[test]
fn replay_wsdl() {
    replay("wsdl");
}

/// A byte edit: replace, insert or delete at a position.
#[derive(Clone, Debug)]
enum Edit {
    Replace(Index, u8),
    Insert(Index, u8),
    Delete(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<Index>().prop_map(Edit::Delete),
    ]
}

/// A corpus file of `target` with up to 6 edits (the flag byte included).
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let files: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, data)| data).collect();
    (any::<Index>(), prop::collection::vec(edit(), 1..=6)).prop_map(move |(file, edits)| {
        let mut data = file.get(&files).clone();
        for e in edits {
            match e {
                Edit::Replace(i, b) if !data.is_empty() => {
                    let at = i.index(data.len());
                    data[at] = b;
                }
                Edit::Insert(i, b) => {
                    let at = i.index(data.len() + 1);
                    data.insert(at, b);
                }
                Edit::Delete(i) if !data.is_empty() => {
                    data.remove(i.index(data.len()));
                }
                _ => {}
            }
        }
        data
    })
}

/// A flag byte, then arbitrary bytes (or text: most targets read UTF-8).
fn arbitrary() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (any::<u8>(), "\\PC{0,128}").prop_map(|(flags, s)| {
            let mut data = vec![flags];
            data.extend_from_slice(s.as_bytes());
            data
        }),
    ]
}

/// Few cases: this runs in every `cargo test`; `scripts/fuzz.sh` is the
/// long run.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // tests/fuzz_corpus.proptest-regressions
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    }
}

macro_rules! fuzz_test {
    ($($target:ident: $cases:expr),* $(,)?) => {$(
        mod $target {
            use super::*;

            proptest! {
                #![proptest_config(config($cases))]

                #[test]
                fn arbitrary_bytes(data in arbitrary()) {
                    super::super::$target::run(&data);
                }

                #[test]
                fn mutated_corpus(data in mutated(stringify!($target))) {
                    super::super::$target::run(&data);
                }
            }
        }
    )*};
}

mod proptests {
    use super::*;

    fuzz_test! {
        correlation_id: 256,
        grpc_timeout: 512,
        jwt_token: 256,
        retry_after: 512,
        soap_envelope: 256,
        stack_config: 256,
        wsdl: 256,
    }
}
