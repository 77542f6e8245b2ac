#!/usr/bin/env bash
# The figures docs/reliability.md reports: runs the crash, fault, store-attack and hostile-user
# suites and the fuzzers, collects every `figures: AREA: key=N ...` line they print, and sums
# them per area and key. Usage:
#   bash scripts/figures.sh [--iterations N] [--fuzz-seconds S] [--no-fuzz]
# Defaults: the crash matrix's CI iterations and 60 s per fuzz target, as in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

iterations=""
fuzz_seconds=60
fuzz=1
while [ $# -gt 0 ]; do
  case "$1" in
    --iterations) iterations="$2"; shift 2 ;;
    --fuzz-seconds) fuzz_seconds="$2"; shift 2 ;;
    --no-fuzz) fuzz=0; shift ;;
    *) echo "figures.sh: unknown argument $1 (see the usage at the top of the script)" >&2; exit 2 ;;
  esac
done

log=$(mktemp)
# The suite's nextest profile kills a test after 5 minutes; a long crash matrix is meant to be long.
config=$(mktemp)
trap 'rm -f "$log" "$config"' EXIT
printf '%s\n' '[profile.default]' 'slow-timeout = { period = "300s" }' > "$config"
cargo build --workspace --bins --quiet
suites=()
for t in crash crash_matrix fs_faults kernel_faults store_attacks hostile hostile_api hostile_output payload; do
  [ -f "tests/tests/$t.rs" ] && suites+=(--test "$t")
done
# Every test's output is kept, passing or not, so the figures lines reach the log.
env ${iterations:+CRASH_MATRIX_ITERATIONS=$iterations} \
  cargo nextest run --config-file "$config" -p refreshd-tests "${suites[@]}" --no-fail-fast \
  --success-output immediate --failure-output immediate 2>&1 | tee "$log" |
  grep -E '^ *figures:|^ *(PASS|FAIL|SKIP) |Summary' || true
if [ "$fuzz" = 1 ]; then
  FUZZ_SECONDS="$fuzz_seconds" bash scripts/fuzz.sh 2>&1 | tee -a "$log" | grep -E '^ *figures:|crash' || true
fi

echo
echo "| area | figure | total |"
echo "|------|--------|-------|"
grep -E '^ *figures: ' "$log" | awk '
  {
    area = $2; sub(/:$/, "", area)
    for (i = 3; i <= NF; i++) {
      n = split($i, kv, "=")
      # A bare word names a part of the area (the fuzz target).
      if (n == 1) { area = area " " $i; continue }
      if (n != 2 || kv[2] !~ /^[0-9]+$/ || kv[1] == "seed") continue
      key = area SUBSEP kv[1]
      if (!(key in sum)) order[++count] = key
      sum[key] += kv[2]
    }
  }
  END {
    for (i = 1; i <= count; i++) {
      split(order[i], p, SUBSEP)
      printf "| %s | %s | %d |\n", p[1], p[2], sum[order[i]]
    }
  }'
if grep -qE '^ *FAIL' "$log"; then
  echo "figures.sh: some tests failed (see above); the figures are not a clean run" >&2
  exit 1
fi
