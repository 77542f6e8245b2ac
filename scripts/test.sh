#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, then checks formatting,
# lints, builds, and runs every test (unit and integration, as root on the real kernel).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v mksquashfs >/dev/null || need_pkgs+=(squashfs-tools)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v setpriv >/dev/null || need_pkgs+=(util-linux)
command -v useradd >/dev/null || need_pkgs+=(passwd)
command -v spin >/dev/null || need_pkgs+=(spin)
command -v gcc >/dev/null || need_pkgs+=(gcc)
# libFuzzer (the fuzz targets' check below, and scripts/fuzz.sh) is C++.
command -v g++ >/dev/null || need_pkgs+=(g++)
command -v nginx >/dev/null || need_pkgs+=(nginx)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v mkfs.xfs >/dev/null || need_pkgs+=(xfsprogs)
command -v mkfs.btrfs >/dev/null || need_pkgs+=(btrfs-progs)
command -v mkfs.ext4 >/dev/null || need_pkgs+=(e2fsprogs)
command -v setfacl >/dev/null || need_pkgs+=(acl)
command -v setfattr >/dev/null || need_pkgs+=(attr)
command -v make >/dev/null || need_pkgs+=(make)
command -v man >/dev/null || need_pkgs+=(man-db)
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
command -v dbus-daemon >/dev/null || need_pkgs+=(dbus-daemon)
command -v faketime >/dev/null || need_pkgs+=(faketime)
/usr/bin/python3 -c "import gi" 2>/dev/null || need_pkgs+=(python3-gi)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "missing ${need_pkgs[*]}: install them (as root) or run this script as root" >&2
  fi
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

# Machine-wide sysctls that a test (or a systemd one boots) could change: read, never written,
# here and when the script ends, however it ends; a change fails the run. Their values now may
# be leftovers of earlier runs: only a change during this one counts.
host_sysctls=(fs.file-max fs.nr_open net.unix.max_dgram_qlen fs.inotify.max_user_instances
  fs.inotify.max_user_watches kernel.pid_max)
read_sysctls() {
  local name
  for name in "${host_sysctls[@]}"; do
    echo "$(tr -s ' \t' ' ' <"/proc/sys/${name//.//}" 2>/dev/null || echo '(unreadable)')"
  done
}
mapfile -t sysctls_before < <(read_sysctls)
sysctls_checked=
# One line per value changed since the start; fails if any did.
check_sysctls() {
  local now i changed=0
  sysctls_checked=1
  mapfile -t now < <(read_sysctls)
  for i in "${!host_sysctls[@]}"; do
    if [ "${now[$i]}" != "${sysctls_before[$i]}" ]; then
      echo "test.sh: the host's ${host_sysctls[$i]} changed during the run, from ${sysctls_before[$i]} to ${now[$i]}: the run must leave the host's sysctls as they were" >&2
      changed=1
    fi
  done
  return $changed
}
trap 'rc=$?; rm -f "${skips:-}"; [ -n "$sysctls_checked" ] || check_sysctls || rc=1; exit $rc' EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== build"
cargo build --workspace --bins --quiet
# The fuzz targets are a crate of their own (outside the workspace): checked here, long before
# the fuzzers run, so that an API change they use is caught at once.
echo "== fuzz targets compile"
cargo check --manifest-path fuzz/Cargo.toml --bins --quiet
echo "== model check of the runctl protocol (spin)"
bash scripts/model-check.sh

started=$(date +%s)
skips=$(mktemp)
logs=target/test-logs
mkdir -p "$logs"
echo "== tests"
REFRESHD_TEST_SKIPS="$skips" cargo nextest run --workspace --no-fail-fast "$@" 2>&1 | tee "$logs/nextest.log"
n=$(sort -u "$skips" | wc -l)
echo "== skipped: $n"
sort -u "$skips" | sed 's/^/   /'

# The long outputs go to files; what each stage came to is said, and its log's end on failure.
stage() {
  local name=$1 log=$2
  shift 2
  echo "== $name (log: $log)"
  if "$@" >"$log" 2>&1; then
    tail -n 1 "$log" | sed 's/^/   /'
  else
    tail -n 40 "$log" >&2
    echo "test.sh: $name failed; the whole log is $log" >&2
    exit 1
  fi
}
stage "benchmarks, smoke run (every section runs; debug-build figures mean nothing)" \
  "$logs/bench-smoke.log" bash scripts/bench.sh --smoke
stage "fuzzing (${FUZZ_SECONDS:-60} s per target)" "$logs/fuzz.log" bash scripts/fuzz.sh

summary=$(grep -E '^ *Summary ' "$logs/nextest.log" | tail -n 1 | sed 's/^ *//')
echo "== summary"
echo "   tests: ${summary:-no summary line (see $logs/nextest.log)}"
echo "   skipped for lack of something on this machine: $n"
echo "   benchmarks (smoke) and fuzzers: ok"
check_sysctls || exit 1
echo "   the host's sysctls: as they were (${host_sysctls[*]})"
echo "   took $(( ($(date +%s) - started) / 60 )) min $(( ($(date +%s) - started) % 60 )) s after the build"
