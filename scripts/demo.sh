#!/usr/bin/env bash
# The main job end to end on a scratch root: start refreshd, install the sample snap
# (examples/hello), run it, refresh it while one of its apps runs (the refresh waits for the
# app to exit, then completes at once, data carried over), and remove it.
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
  # This root's (empty) cgroups, found through its release-agent registry entry.
  for e in /run/refreshd/agent/*; do
    [ "$(readlink "$e" 2>/dev/null)" = "$root/run/refreshd/runctl" ] || continue
    for d in /sys/fs/cgroup/freezer/refreshd."${e##*/}" /sys/fs/cgroup/unified/refreshd."${e##*/}"; do
      [ -d "$d" ] || continue
      rmdir "$d"/snap.* "$d" 2>/dev/null || true
    done
  done
  find /run/refreshd/agent -maxdepth 1 -lname "$root/*" -delete 2>/dev/null || true
  rm -rf "$root" "$log" "$root.snap"
}
trap cleanup EXIT

# confine-hook is installed the way a package would: setuid root inside the root.
install -D -m 4755 -o root -g root "$bin/confine-hook" "$root/usr/lib/refreshd/confine-hook"
install -d -m 700 "$root/root"

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

echo "== a refresh while the app runs: it waits for the app, never kills it"
"$root/snap/bin/hello.nap" 3 &
nap=$!
sleep 0.5
echo "\$ refreshctl install $root.snap --no-wait"
"$bin/refreshctl" --root "$root" install "$root.snap" --no-wait
sleep 0.5
ctl tasks 2
ctl watch 2
wait "$nap"
echo "\$ $root/snap/bin/hello   # x2, with x1's data copied"; "$root/snap/bin/hello"; echo
ctl list
ctl remove hello
ctl list
