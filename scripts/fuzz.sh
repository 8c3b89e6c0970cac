#!/usr/bin/env bash
# Run every cargo-fuzz target of fuzz/ for a bounded time each.
#
#   scripts/fuzz.sh                  # every target, 60 s each
#   scripts/fuzz.sh 300              # every target, 300 s each
#   FUZZ_SECONDS=30 scripts/fuzz.sh  # the same, from the environment
#   scripts/fuzz.sh 120 retry_after stack_config   # some targets only
#
# libFuzzer needs a nightly toolchain and cargo-fuzz
# (`rustup toolchain install nightly && cargo install cargo-fuzz`); without
# them the script says it skipped and exits 0. The stable part of the fuzzing
# (every target's body on the committed corpus and on bounded proptest
# inputs) is `cargo test --all-features --test fuzz_corpus`.
#
# Each target starts from the committed corpus fuzz/corpus/<target>/ (read
# only) and writes the inputs it finds to fuzz/target/corpus/<target>/
# (ignored by git). A failing input is written to fuzz/artifacts/<target>/;
# the script then stops with its path: replay it with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# fix the defect, and add the input to fuzz/corpus/<target>/ so that
# tests/fuzz_corpus.rs replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-${FUZZ_SECONDS:-60}}
[ $# -gt 0 ] && shift
case $seconds in
  '' | *[!0-9]*) echo "fuzz: the time per target must be a number of seconds, not '$seconds'" >&2; exit 2 ;;
esac

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: skipped: no nightly toolchain (rustup toolchain install nightly); the stable replay is cargo test --all-features --test fuzz_corpus"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: skipped: no cargo-fuzz (cargo install cargo-fuzz); the stable replay is cargo test --all-features --test fuzz_corpus"
  exit 0
fi

# The crate's own target directory is not shared with the fuzz build (other
# flags, another lock file).
unset CARGO_TARGET_DIR

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "fuzz/target/corpus/$target"
  # -j1: one job; -timeout: an input taking longer than 10 s is a finding.
  cargo +nightly fuzz run --fuzz-dir fuzz -j1 "$target" "fuzz/target/corpus/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 || {
    echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  }
done
echo "fuzz: ${#targets[@]} target(s), ${seconds}s each, no failure"
