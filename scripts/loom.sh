#!/usr/bin/env bash
# Model-check the lock-free parts with loom: every interleaving of the
# threads in their `loom_*` tests, up to LOOM_MAX_PREEMPTIONS preemptions per
# thread. Under `--cfg loom` the bulkhead pool's atomics, `Arc` and `Notify`
# are loom's (src/bulkhead/sync.rs), and so is the word of the circuit
# breaker's lock-free success path (src/circuit_breaker/closer.rs), and the
# buckets and window end of the hedge's latency histogram
# (src/hedge/latencies.rs). Its own
# target dir: `--cfg loom` rebuilds every crate. Bounded: about a minute of
# checking on 2 cores once built.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTFLAGS="--cfg loom"
export CARGO_TARGET_DIR="${LOOM_TARGET_DIR:-target/loom}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"

timeout 900 cargo test --release --lib --no-default-features --features bulkhead,circuit-breaker,hedge loom
