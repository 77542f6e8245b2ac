#!/usr/bin/env bash
# Measures the release agent the kernel spawns for every emptied cgroup: builds the no_std +
# no_main binary and its std twin (same logic, ordinary `fn main`) with the `agent` size profile
# and prints their sizes and exec times (median of N fork+exec+wait of `AGENT /unrelated/path`,
# next to /bin/true). A measurement, not a pass/fail test; only the 50 KB budget is judged.
#
#   release-agent/measure.sh [--check]     N=1000 by default (env N=...)
#
# As root it also times the real kernel path (kill of the last process -> marker removed) with
# the no_std binary as the freezer hierarchy's release_agent; --check additionally runs the
# crate's tests against the no_std binary.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
check=false
[ "${1:-}" = --check ] && check=true

target=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}

echo "== cargo build -p refresh-release-agent --profile agent --bins"
cargo build -q -p refresh-release-agent --profile agent --bins
cargo build -q -p refresh-release-agent --release --example exec-bench
nostd=$target/agent/refresh-release-agent
std=$target/agent/refresh-release-agent-std
bench=$target/release/examples/exec-bench

size() { stat -c %s "$1"; }
kb() { awk -v b="$1" 'BEGIN { printf "%.1f KB", b / 1024 }'; }
needed() { readelf -d "$1" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | paste -sd, -; }
s_nostd=$(size "$nostd")
s_std=$(size "$std")
echo
echo "== sizes (profile agent: opt-level z, lto, codegen-units 1, panic abort, strip)"
printf '  no_std: %8d bytes (%s)  needs %s  %s\n' "$s_nostd" "$(kb "$s_nostd")" "$(needed "$nostd")" "$nostd"
printf '  std:    %8d bytes (%s)  needs %s  %s\n' "$s_std" "$(kb "$s_std")" "$(needed "$std")" "$std"
awk -v a="$s_std" -v b="$s_nostd" 'BEGIN { printf "  std / no_std: %.1f×\n", a / b }'
limit=$((50 * 1024))
if [ "$s_nostd" -lt "$limit" ]; then
  echo "  no_std binary meets the < 50 KB budget: yes ($s_nostd < $limit bytes)"
else
  echo "  no_std binary meets the < 50 KB budget: NO ($s_nostd >= $limit bytes)"
fi

echo
echo "== exec time, argument not ours (parse, exit)"
"$bench" "$N" /unrelated/path /bin/true "$nostd" "$std"
echo
echo "== exec time, a refreshd group of the default daemon with no marker (open, fstat, unlinkat)"
"$bench" "$N" /refreshd/snap.measure-absent /bin/true "$nostd" "$std"

if [ "$(id -u)" = 0 ]; then
  echo
  # The test installs the agent only where the hierarchy has none or has that binary already;
  # a build of this crate someone else installed (refreshd's daemon or these tests) is used as
  # it is rather than overwritten.
  freezer=$(awk '{ i = 7; while ($i != "-") i++ }
    $(i + 1) == "cgroup" && $4 == "/" && $(i + 3) ~ /(^|,)freezer(,|$)/ { print $5; exit }' \
    /proc/self/mountinfo)
  installed=$(cat "$freezer/release_agent" 2>/dev/null || true)
  kernel_agent=$nostd
  if [ -n "$installed" ] && [ "$installed" != "$nostd" ] &&
    [ "$(basename "$installed")" = refresh-release-agent ] && [ -x "$installed" ]; then
    kernel_agent=$installed
  fi
  echo "== kernel: last process killed -> marker removed, release_agent = $kernel_agent"
  REFRESH_RELEASE_AGENT_BIN="$kernel_agent" cargo test -q -p refresh-release-agent --test kernel \
    -- --nocapture 2>&1 | grep -E 'marker removed|SKIP|panicked|test result' || true
  if $check; then
    echo
    echo "== cargo test against the no_std binary"
    REFRESH_RELEASE_AGENT_BIN="$nostd" cargo test -q -p refresh-release-agent 2>&1 |
      grep -E 'SKIP|panicked|test result|FAILED'
  fi
fi
