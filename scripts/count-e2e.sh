#!/usr/bin/env bash
# Instructions per request of the end-to-end subjects (benches/e2e.rs), counted
# with callgrind: unlike wall time, a count does not drift between runs or
# with what else the machine is doing.
#
# Each figure is (count of N2 requests - count of N1 requests) / (N2 - N1), so
# start-up, connection set-up and warm-up cancel out. It is the user-space
# work of client and server together (both run in the bench's process), not
# the kernel's.
#
#   scripts/count-e2e.sh            # every subject, and the stacks without each layer
#   scripts/count-e2e.sh subjects   # bare / our stack / tower equivalent only
#
# Needs valgrind (apt-get install valgrind). Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null 2>&1 || { echo "count-e2e: needs valgrind (apt-get install valgrind)" >&2; exit 1; }

echo "== building the e2e bench" >&2
bin=$(cargo bench --all-features --bench e2e --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "count-e2e: could not find the e2e bench binary" >&2; exit 1; }

N1=${N1:-500}
N2=${N2:-1500}

# instructions <side> <subject> <n> [layers off]
instructions() {
  E2E_COUNT="$1:$2:$3" E2E_OFF="${4:-}" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

# per_request <side> <subject> [layers off]
per_request() {
  local a b
  a=$(instructions "$1" "$2" "$N1" "${3:-}")
  b=$(instructions "$1" "$2" "$N2" "${3:-}")
  echo $(((b - a) / (N2 - N1)))
}

declare -A base
printf '%-8s %-38s %14s %10s\n' side subject instructions "vs bare"
for side in client server; do
  for subject in bare stack tower; do
    n=$(per_request "$side" "$subject")
    if [ "$subject" = bare ]; then base[$side]=$n; fi
    if [ "$subject" = stack ]; then base[${side}_stack]=$n; fi
    printf '%-8s %-38s %14d %+10d\n' "$side" "$subject" "$n" $((n - base[$side]))
  done
done
if [ "${1:-}" = subjects ]; then exit 0; fi

echo
printf '%-8s %-38s %14s %10s\n' side "stack without" instructions "layer adds"
client_layers="correlation retry breaker bulkhead attempt-timeout total-timeout metrics"
server_layers="correlation shedding timeout metrics"
for side in client server; do
  if [ "$side" = client ]; then layers=$client_layers; else layers=$server_layers; fi
  for layer in $layers; do
    n=$(per_request "$side" stack "$layer")
    printf '%-8s %-38s %14d %+10d\n' "$side" "$layer" "$n" $((base[${side}_stack] - n))
  done
  all=$(echo "$layers" | tr ' ' ',')
  n=$(per_request "$side" stack "$all")
  printf '%-8s %-38s %14d %+10d\n' "$side" "every layer (the wrappers remain)" "$n" $((n - base[$side]))
done
