#!/usr/bin/env bash
# Instructions per admitted call of the local rate limiters (benches/rate_limit.rs,
# RATE_LIMIT_COUNT mode), counted with callgrind: steadier than wall time on a
# busy machine.
#
# Each figure is (count of N2 calls - count of N1 calls) / (N2 - N1), so
# start-up cancels out. "adds" is a layer's count minus the bare no-op service
# driven the same way (the request and the driving cancel out): what the layer
# costs, compared with governor's check() alone.
#
#   scripts/count-rate-limit.sh
#
# Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null 2>&1 || { echo "count-rate-limit: needs valgrind (apt-get install valgrind)" >&2; exit 1; }

echo "== building the rate_limit bench" >&2
bin=$(cargo bench --all-features --bench rate_limit --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "count-rate-limit: could not find the rate_limit bench binary" >&2; exit 1; }

N1=${N1:-2000}
N2=${N2:-12000}

instructions() {
  RATE_LIMIT_COUNT="$1:$2" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

per_call() {
  local a b
  a=$(instructions "$1" "$N1")
  b=$(instructions "$1" "$N2")
  echo $(((b - a) / (N2 - N1)))
}

gov=$(per_call governor)
bare=$(per_call bare)
printf '%-12s %14s %10s %12s\n' subject instructions adds "vs governor"
printf '%-12s %14d %10s %12s\n' governor "$gov" - 1.00
printf '%-12s %14d %10s %12s\n' bare "$bare" - -
for subject in layer keyed tower resilience; do
  n=$(per_call "$subject")
  adds=$((n - bare))
  printf '%-12s %14d %10d %12s\n' "$subject" "$n" "$adds" "$(awk -v a="$adds" -v g="$gov" 'BEGIN { printf "%.2f", a / g }')"
done
