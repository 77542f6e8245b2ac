#!/usr/bin/env bash
# The long run of the crash matrix (docs/crash-matrix.md): every task boundary of every kind of
# change, plus ITERATIONS random cuts per kind (inside the data copies and the download, some
# with a second kill during the recovery). As root; needs squashfs-tools and nginx.
#
#   scripts/crash-matrix.sh [ITERATIONS] [SEED]
#
# ITERATIONS defaults to 500 per kind; SEED to one from the clock. The seed is printed first:
# run again with the same SEED (and ITERATIONS) to repeat every cut. Ends with the figures.
set -euo pipefail
cd "$(dirname "$0")/.."

iterations="${1:-500}"
seed="${2:-$(( $(date +%s%N) % 1000000000 ))}"
case "$iterations$seed" in
  *[!0-9]*) echo "usage: $0 [ITERATIONS] [SEED] (numbers)" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "the crash matrix runs refreshd as root (loop mounts, a setuid launcher): run it as root" >&2
  exit 2
fi
for p in mksquashfs:squashfs-tools nginx:nginx; do
  if ! command -v "${p%%:*}" >/dev/null && [ ! -x "/usr/sbin/${p%%:*}" ]; then
    echo "${p%%:*} is missing: apt-get install ${p#*:}" >&2
    exit 2
  fi
done
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

echo "== crash matrix: CRASH_MATRIX_ITERATIONS=$iterations CRASH_MATRIX_SEED=$seed"
cargo build --workspace --bins --quiet
log="$(mktemp /tmp/crash-matrix-XXXXXX.log)"
# The suite's nextest profile kills a test after 5 minutes; the long run is meant to be long.
config="$(mktemp /tmp/crash-matrix-XXXXXX.toml)"
trap 'rm -f "$config"' EXIT
printf '%s\n' '[profile.default]' 'slow-timeout = { period = "300s" }' \
  'failure-output = "immediate-final"' 'success-output = "immediate"' > "$config"
started=$(date +%s)
status=0
# Each kind is one test, and nextest runs them side by side; each test's output (every cut it
# made, and its figures) is printed as it ends. With --no-capture they would run one at a time.
CRASH_MATRIX_ITERATIONS="$iterations" CRASH_MATRIX_SEED="$seed" \
  cargo nextest run --config-file "$config" -p refreshd-tests --test crash_matrix \
  --no-fail-fast 2>&1 | tee "$log" || status=$?
elapsed=$(( $(date +%s) - started ))

echo
echo "== figures (seed $seed, $iterations random cuts per kind, ${elapsed}s; full log: $log)"
grep -ho 'figures: crash-matrix:.*' "$log" || true
grep -ho 'figures: crash-matrix:.*' "$log" | awk '
  { for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] != "kind" && kv[1] != "seed") t[kv[1]] += kv[2] } }
  END { printf "total: kills_injected=%d survived=%d boundaries=%d random_copy=%d random_download=%d double_kills=%d\n",
        t["kills_injected"], t["survived"], t["boundaries"], t["random_copy"], t["random_download"], t["double_kills"] }'
if [ "$status" != 0 ]; then
  echo "== FAILED: the lines starting 'crash-matrix FAILED' above say which cut, with the seed to repeat it" >&2
  grep -h 'crash-matrix FAILED' "$log" >&2 || true
fi
exit "$status"
