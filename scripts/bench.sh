#!/usr/bin/env bash
# The benchmark suite, on a fresh machine: installs its tools from Debian's packages, builds the
# release binaries, measures refreshd against baselines measured in the same run, and writes a
# report (markdown and JSON). Measures and reports; never fails on a time.
#
#   bash scripts/bench.sh            # everything; updates docs/performance.md and .json
#   bash scripts/bench.sh --quick    # a smoke run: few repetitions, small data; docs untouched
#   bash scripts/bench.sh --only 1,2 # some sections (numbers as in docs/performance.md)
#   bash scripts/bench.sh --smoke    # --quick on the debug build: checks that every section
#                                    # runs (the test command does this); figures meaningless
#
# As root (loop mounts, cgroups, a setuid launcher, dropping caches). The report is written to
# target/bench/report.{md,json}; a full run also puts it in docs/performance.md (between the
# report markers) and docs/performance.json.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)

if [ "$(id -u)" != 0 ]; then
  echo "bench.sh: run as root (loop mounts, cgroups, a setuid launcher, dropping caches)" >&2
  exit 2
fi

publish=true
profile=release
args=()
for a in "$@"; do
  case $a in
  --smoke)
    profile=debug
    publish=false
    args+=(--quick)
    continue
    ;;
  --quick | --only | --only=*) publish=false ;;
  esac
  args+=("$a")
done

need_pkgs=()
need() { command -v "$1" >/dev/null || need_pkgs+=("$2"); }
need hyperfine hyperfine
need rsync rsync
need curl curl
need nginx nginx
need mksquashfs squashfs-tools
need mkfs.xfs xfsprogs
need mkfs.btrfs btrfs-progs
need mkfs.ext4 e2fsprogs
need strace strace
need perf linux-perf
need gcc gcc
need setpriv util-linux
need useradd passwd
# Section 10's systemd world: systemd booted as PID 1 by the tests' harness, refreshd installed
# in it by `make install`, a user logged in over the system bus.
need make make
need systemd-run systemd
need dbus-daemon dbus-daemon
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -n "$(ls /usr/lib/*/libc.a 2>/dev/null)" ] || need_pkgs+=(libc6-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "== installing ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

target=${CARGO_TARGET_DIR:-$PWD/target}
if [ $profile = release ]; then
  echo "== cargo build --release (and the release agent's size profile)"
  cargo build --release --workspace --bins --quiet
else
  echo "== cargo build (debug: a smoke run)"
  cargo build --workspace --bins --quiet
fi
cargo build -p refresh-release-agent --profile agent --bins --quiet
t_built=$(date +%s)
echo "   built in $((t_built - t0)) s"

out=$target/bench
[ $profile = release ] || out=$target/bench-smoke
status=0
"$target/$profile/refreshd-bench" --out "$out" ${args[@]+"${args[@]}"} || status=$?

if $publish && [ -s "$out/report.md" ]; then
  # The report replaces what stands between the markers; the prose around it is kept.
  python3 - "$out/report.md" docs/performance.md <<'PY'
import sys
report, doc = sys.argv[1], sys.argv[2]
begin, end = "<!-- report:begin -->", "<!-- report:end -->"
text = open(doc).read()
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(doc, "w").write(head + begin + "\n" + open(report).read().rstrip() + "\n" + end + tail)
PY
  cp "$out/report.json" docs/performance.json
  echo "== docs/performance.md and docs/performance.json updated"
fi
t1=$(date +%s)
echo "== bench.sh took $((t1 - t0)) s (build $((t_built - t0)) s, measurements $((t1 - t_built)) s)"
exit $status
