#!/usr/bin/env bash
# The main job end to end on a scratch root: start refreshd, install the sample snap
# (examples/hello), run it, and show status, list and the change that installed it.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v mksquashfs >/dev/null || {
  [ "$(id -u)" = 0 ] && { apt-get update -qq && apt-get install -y -qq squashfs-tools >/dev/null; } ||
    { echo "install squashfs-tools first" >&2; exit 1; }
}
cargo build --workspace --bins --quiet
bin=target/debug
root=$(mktemp -d /tmp/refreshd-demo.XXXXXX)
chmod 755 "$root"
log="$root.log"

cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  # The daemon unmounts nothing on exit (mounts outlive it by design); the demo's root goes.
  grep -F " $root/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount 2>/dev/null || true
  rm -rf "$root" "$log" "$root.snap"
}
trap cleanup EXIT

echo "== building the sample snap"
mksquashfs examples/hello "$root.snap" -noappend -comp xz -no-progress -all-root -quiet >/dev/null
echo "== starting refreshd --root $root (log: $log)"
"$bin/refreshd" --root "$root" 2>"$log" &
pid=$!
ctl() { echo "\$ refreshctl $*"; "$bin/refreshctl" --root "$root" "$@"; echo; }
ctl status          # GETs retry briefly while the daemon comes up
ctl install "$root.snap"
ctl list
echo "\$ $root/snap/bin/hello"; "$root/snap/bin/hello"; "$root/snap/bin/hello"; echo
ctl changes --all
ctl tasks 1
ctl remove hello
ctl list
