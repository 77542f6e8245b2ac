#!/usr/bin/env bash
# The main job end to end on a scratch root: make a signed directory store (its keys kept
# apart), pack the sample snap (examples/hello) and publish it, pin the store's root where
# refreshd looks for it and start refreshd on that store, install the snap, run it, publish a new
# version and refresh while one of its apps runs (the refresh waits for the app to exit, then
# completes at once, data carried over), and remove it.
#
# With --systemd, the same inside a throwaway systemd world instead (systemd as PID 1 of
# namespaces of its own, a cgroup2 hierarchy, logind; see tests/src/systemd.rs), with refreshd
# installed there by `make install` and run by its units: a user logs in and starts the app from
# their session, the demo shows the app's cgroup (a scope of the user's own manager) next to
# the refresh that waits for it. Nothing of that world stays on the host (driver:
# tests/src/bin/systemd-demo.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

systemd=
case "${1:-}" in
  "") ;;
  --systemd) systemd=1 ;;
  *) echo "usage: $0 [--systemd]" >&2; exit 2 ;;
esac

command -v mksquashfs >/dev/null || {
  [ "$(id -u)" = 0 ] && { apt-get update -qq && apt-get install -y -qq squashfs-tools >/dev/null; } ||
    { echo "install squashfs-tools first" >&2; exit 1; }
}
target=${CARGO_TARGET_DIR:-target}
bin=$target/debug
echo "== building refreshd, refreshctl, confine-hook and the release agent (debug) into $target"
echo "   the first build takes a few minutes on 2 cores (SQLite's C sources among them); later ones, seconds"
cargo build --workspace --bins --quiet
if [ -n "$systemd" ]; then
  exec "$bin/systemd-demo"
fi
root=$(mktemp -d /tmp/refreshd-demo.XXXXXX)
chmod 755 "$root"
# Kept after the demo, to read what the daemon did.
log="$root.log"

cleanup() {
  # SIGTERM: an orderly stop, which removes the root's unused cgroups and its agent entry.
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
  rm -rf "$root" "$root.snap" "$root.2.snap" "$root.store" "$root.keys"
  echo "== done; the daemon's log is kept in $log"
}
trap cleanup EXIT

# confine-hook is installed the way a package would: setuid root inside the root.
install -D -m 4755 -o root -g root "$bin/confine-hook" "$root/usr/lib/refreshd/confine-hook"
install -d -m 700 "$root/root"

echo "== the scratch root is $root: the snaps, their data and the daemon's state live under it"
ctl() { echo "\$ refreshctl $*"; "$bin/refreshctl" --root "$root" "$@"; echo; }
echo "== the store's operator makes a signed store; its keys go to a directory of their own, never inside it"
store="$root.store"
keys="$root.keys"
ctl store init --store "$store" --keys "$keys"
echo "== packing the sample snap (examples/hello) into a .snap file and publishing it, signed"
ctl pack examples/hello -o "$root.snap"
ctl publish --store "$store" --keys "$keys" "$root.snap"

echo "== the machine's admin pins the store's root where refreshd looks for it"
echo "\$ install -D -m 644 $store/tuf/1.root.json $root/etc/refreshd/store-root.json"
install -D -m 644 "$store/tuf/1.root.json" "$root/etc/refreshd/store-root.json"
echo
echo "== starting refreshd --root $root --store $store (log: $log): everything it reads from the store is verified from that root"
"$bin/refreshd" --root "$root" --store "$store" 2>"$log" &
pid=$!
echo "-- what the daemon says of itself (GETs retry briefly while it comes up)"
ctl status
echo "-- installing hello from the store: download, verify, mount, data, launchers"
ctl install hello
ctl list
echo "-- running it through its launcher (twice: its data persists between runs)"
echo "\$ $root/snap/bin/hello"; "$root/snap/bin/hello"; "$root/snap/bin/hello"; echo

echo "== version 1.1 is published while the app runs: the refresh waits for the app, never kills it"
src=$(mktemp -d)
cp -a examples/hello/. "$src/"
sed -i "s/^version: .*/version: '1.1'/" "$src/meta/snap.yaml"
ctl pack "$src" -o "$root.2.snap"
ctl publish --store "$store" --keys "$keys" "$root.2.snap"
rm -rf "$src"
"$root/snap/bin/hello.nap" 3 &
nap=$!
sleep 0.5
echo "-- the refresh is asked for while hello.nap runs; it downloads and pre-copies, then waits"
echo "\$ refreshctl refresh hello --no-wait"
change=$("$bin/refreshctl" --root "$root" refresh hello --no-wait)
echo "$change"
sleep 0.5
echo "-- its tasks: wait-for-apps names the running app (pid, user, command line)"
ctl tasks "$change"
echo "-- following it: it completes the moment the app exits"
ctl watch "$change"
wait "$nap"
echo "\$ $root/snap/bin/hello   # revision 2, with revision 1's data copied"; "$root/snap/bin/hello"; echo
ctl list
echo "-- every change made, and removing the snap (its payload, data and launchers)"
ctl changes --all
ctl remove hello
ctl list
