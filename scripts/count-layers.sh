#!/usr/bin/env bash
# Instructions per call of the `layers` bench's subjects (benches/layers.rs),
# counted with callgrind: unlike wall time, a count does not drift between
# runs or with what else the machine is doing.
#
# Each figure is (count of N2 calls - count of N1 calls) / (N2 - N1), so
# start-up and warm-up cancel out; "overhead" subtracts the bare call's.
#
#   scripts/count-layers.sh                       # the guard-rail subjects
#   scripts/count-layers.sh mesh_timeout tower_timeout
#
# Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null 2>&1 || { echo "count-layers: needs valgrind (apt-get install valgrind)" >&2; exit 1; }

# LAYERS_BIN: an already built bench binary (skips the build).
bin=${LAYERS_BIN:-}
if [ -z "$bin" ]; then
  echo "== building the layers bench" >&2
  bin=$(cargo bench --all-features --bench layers --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n 1)
fi
[ -x "$bin" ] || { echo "count-layers: could not find the layers bench binary" >&2; exit 1; }

N1=${N1:-2000}
N2=${N2:-12000}

# instructions <subject> <n>
instructions() {
  LAYERS_COUNT="$1:$2" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

per_call() {
  local a b
  a=$(instructions "$1" "$N1")
  b=$(instructions "$1" "$N2")
  echo $(((b - a) / (N2 - N1)))
}

if [ $# -gt 0 ]; then
  subjects="$*"
else
  subjects="tower_timeout mesh_timeout tower_retry mesh_retry tower_concurrency_limit mesh_breaker_count mesh_breaker_time mesh_bulkhead mesh_adaptive"
fi
bare=$(per_call bare)
printf '%-28s %14s %10s\n' subject instructions overhead
printf '%-28s %14d %10d\n' bare "$bare" 0
for s in $subjects; do
  n=$(per_call "$s")
  printf '%-28s %14d %10d\n' "$s" "$n" $((n - bare))
done
