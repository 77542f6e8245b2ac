#!/usr/bin/env bash
# Model check of the runctl protocol: docs/runctl.pml, described in docs/runctl-protocol.md.
#
# Verifies the model with spin in every configuration (tracking backend v1 / v2 / v1-poll, and
# the systemd world's scopes; refresh-pending-behavior allow / block): safety (assertions, the
# invariant monitor and the LTL claim `safe`), no stuck process (invalid end states), and the
# LTL claim `live`. Then verifies each deliberately broken variant and requires spin to find
# the error it plants, so a passing run proves the checks are not vacuous. Prints one line per
# run; exits non-zero if any real configuration fails or is incomplete, or if any mutation
# goes unnoticed.
#
# Usage: scripts/model-check.sh [-j JOBS] [-k] [-x]
#   -j JOBS  runs at a time (default: the number of CPUs)
#   -k       keep the work directory (pan.c, pan.out and trails of every run)
#   -x       extended: also `ltl safe` in every configuration, `ltl live` for v1-poll
#            (under weak fairness), and the systemd world with three launchers (5.2 GB);
#            about five times the time
set -euo pipefail
cd "$(dirname "$0")/.."
model=${RUNCTL_MODEL:-$PWD/docs/runctl.pml}   # RUNCTL_MODEL: check another copy

jobs=$(nproc 2>/dev/null || echo 2)
keep=0
full=0
while getopts "j:kx" opt; do
  case $opt in
    j) jobs=$OPTARG ;;
    k) keep=1 ;;
    x) full=1 ;;
    *) echo "usage: $0 [-j JOBS] [-k] [-x]" >&2; exit 2 ;;
  esac
done

need_pkgs=()
command -v spin >/dev/null || need_pkgs+=(spin)
command -v gcc >/dev/null || need_pkgs+=(gcc)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq "${need_pkgs[@]}" >/dev/null 2>&1; then
      apt-get update -qq
      apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
    fi
  else
    echo "model-check: missing ${need_pkgs[*]}: run as root, or: apt-get install ${need_pkgs[*]}" >&2
    exit 2
  fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/runctl-model.XXXXXX")
if [ "$keep" = 1 ]; then
  trap 'echo "work directory kept: $work"' EXIT
else
  trap 'rm -rf "$work"' EXIT
fi

# One run: NAME EXPECT SPIN_DEFINES CC_FLAGS PAN_FLAGS
#   EXPECT is `pass`, or `fail:TEXT` where TEXT must appear in pan's first error line.
runs=()
add() { runs+=("$1|$2|$3|$4|$5"); }

depth=-m100000
fast="-O2"      # real runs: millions of states
quick="-O0"     # mutations: spin stops at the first error, so compile time dominates
for track in v1 v2 poll; do
  case $track in
    v1) tdef="" ;;
    v2) tdef="-DTRACK_V2" ;;
    poll) tdef="-DTRACK_POLL" ;;
  esac
  for mode in allow block; do
    mdef=""
    [ "$mode" = block ] && mdef="-DBLOCK"
    cfg="$track-$mode"
    # assertions, the invariant monitor, invalid end states (stuck processes)
    add "$cfg safety+end-states" pass "$tdef $mdef" "$fast -DSAFETY -DNOCLAIM" "$depth"
    if [ "$track" != poll ]; then
      # the daemon finishes and every launch ends, with no fairness assumption
      add "$cfg ltl live" pass "$tdef $mdef" "$fast" "-a -N live $depth"
    elif [ "$full" = 1 ]; then
      # polling makes progress only if the timer and the apps get to run: weak fairness
      add "$cfg ltl live (fair)" pass "$tdef $mdef" "$fast -DNFAIR=3" "-a -f -N live $depth"
    fi
    if [ "$cfg" = v1-allow ] || [ "$full" = 1 ]; then
      # the invariant as an LTL claim (the monitor checks the same in the runs above)
      add "$cfg ltl safe" pass "$tdef $mdef" "$fast -DSAFETY" "-N safe $depth"
    fi
  done
done

# Users' data (DATA): each launch makes its user's data after the join, under the user's lock.
add "v1-allow data safety" pass "-DDATA" "$fast -DSAFETY -DNOCLAIM" "$depth"
add "v2-allow data safety" pass "-DDATA -DTRACK_V2" "$fast -DSAFETY -DNOCLAIM" "$depth"
if [ "$full" = 1 ]; then
  add "v1-block data safety" pass "-DDATA -DBLOCK" "$fast -DSAFETY -DNOCLAIM" "$depth"
  add "v1-allow data ltl live" pass "-DDATA" "$fast" "-a -N live $depth"
fi
# A user stops their launcher for good while it holds the snap's lock (STOP): every other
# launch still ends (the refresh may wait, as for a running app: -E, the daemon is stuck).
add "v1-allow stopped launcher safety" pass "-DSTOP" "$fast -DSAFETY -DNOCLAIM" "-E $depth"
add "v1-allow stopped launcher ltl others" pass "-DSTOP" "$fast" "-a -N others -E $depth"
add "v2-allow stopped launcher ltl others" pass "-DSTOP -DTRACK_V2" "$fast" "-a -N others -E $depth"

# The systemd world (SYSTEMD; two launchers): a launch is moved into a scope by a systemd
# manager, asynchronously (or by none: a fake says "done"), checks with the kernel, and is
# recorded in RUNCTL/units before it unlocks; the daemon reads the recorded units' cgroups.
add "systemd-allow safety+end-states" pass "-DSYSTEMD" "$fast -DSAFETY -DNOCLAIM" "$depth"
add "systemd-allow ltl live" pass "-DSYSTEMD" "$fast" "-a -N live $depth"
add "systemd-allow ltl safe" pass "-DSYSTEMD" "$fast -DSAFETY" "-N safe $depth"
add "systemd-block safety+end-states" pass "-DSYSTEMD -DBLOCK" "$fast -DSAFETY -DNOCLAIM" "$depth"
if [ "$full" = 1 ]; then
  add "systemd-block ltl live" pass "-DSYSTEMD -DBLOCK" "$fast" "-a -N live $depth"
  add "systemd-allow 3 launchers safety" pass "-DSYSTEMD -DNL=3" "$fast -DSAFETY -DNOCLAIM -DCOLLAPSE" "-w28 $depth"
fi

# Mutations: each breaks one rule of the protocol; spin must find the consequence.
m="$quick -DSAFETY -DNOCLAIM"
add "mutation no-lock" "fail:assertion violated" "-DBUGGY_NO_LOCK" "$m" "$depth"
add "mutation no-lock, claim alone" "fail:in_cs&&(cg!=0)" "-DBUGGY_NO_LOCK -DCLAIM_ONLY" "$quick -DSAFETY" "-N safe $depth"
add "mutation join-after-unlock" "fail:assertion violated" "-DBUGGY_JOIN_AFTER_UNLOCK" "$m" "$depth"
# (-E: this one also loses wake-ups; ask for the safety violation it causes)
add "mutation unlocked-check" "fail:assertion violated" "-DBUGGY_UNLOCKED_CHECK" "$m" "-E $depth"
add "mutation early-rev" "fail:myrev==cur" "-DBUGGY_EARLY_REV" "$m" "$depth"
add "mutation no-recheck" "fail:invalid end state" "-DBUGGY_NO_RECHECK" "$m" "$depth"
add "mutation no-arm" "fail:invalid end state" "-DBUGGY_NO_ARM" "$m" "$depth"
add "mutation arm-after-read" "fail:invalid end state" "-DBUGGY_ARM_AFTER_READ" "$m" "$depth"
add "mutation no-reenter" "fail:assertion violated" "-DBUGGY_NO_REENTER" "$m" "$depth"
add "mutation no-arm, ltl live" "fail:acceptance cycle" "-DBUGGY_NO_ARM" "$quick" "-a -N live $depth"
add "mutation shared-daemon" "fail:assertion violated" "-DBUGGY_SHARED_DAEMON" "$m" "$depth"
add "mutation exclusive-launch, ltl others" "fail:acceptance cycle" "-DSTOP -DBUGGY_EXCLUSIVE_LAUNCH" "$quick" "-a -N others -E $depth"
add "mutation data-before-join" "fail:udata" "-DDATA -DBUGGY_DATA_BEFORE_JOIN" "$m" "$depth"
add "mutation no-data-lock" "fail:apprev" "-DDATA -DBUGGY_NO_DATA_LOCK" "$m" "$depth"
add "mutation unlock-before-move" "fail:assertion violated" "-DSYSTEMD -DBUGGY_UNLOCK_BEFORE_MOVE" "$m" "$depth"
add "mutation record-after-unlock" "fail:assertion violated" "-DSYSTEMD -DBUGGY_RECORD_AFTER_UNLOCK" "$m" "$depth"
# (the app runs outside every recorded unit: `untracked`, which only the monitor sees)
add "mutation trust-job-result" "fail:untracked!=0" "-DSYSTEMD -DBUGGY_TRUST_JOB_RESULT" "$m" "$depth"
add "mutation trust-job-result, claim alone" "fail:(untracked!=0)" "-DSYSTEMD -DBUGGY_TRUST_JOB_RESULT -DCLAIM_ONLY" "$quick -DSAFETY" "-N safe $depth"
add "mutation fallback-on-deadline" "fail:untracked!=0" "-DSYSTEMD -DBUGGY_FALLBACK_ON_DEADLINE" "$m" "$depth"

# Runs one check in its own directory (spin -a writes pan.c and friends into the current
# directory) and writes its verdict line to result; never fails itself.
run_one() {
  local i=$1 spec=$2
  local name expect defs ccflags panflags
  IFS='|' read -r name expect defs ccflags panflags <<<"$spec"
  local dir=$work/$i
  mkdir -p "$dir"
  cd "$dir"
  local t0=$SECONDS verdict detail
  # A copy in the run's directory: pan names its trail after the model, in the current
  # directory, and spin -t looks for it there.
  cp "$model" runctl.pml
  # shellcheck disable=SC2086
  if ! spin $defs -a runctl.pml >spin.log 2>&1; then
    echo "FAIL  $name: spin -a failed: $(tail -n 3 spin.log | tr '\n' ' ')" >result
    return 0
  fi
  # shellcheck disable=SC2086
  if ! gcc -w $ccflags -o pan pan.c >cc.log 2>&1; then
    echo "FAIL  $name: cannot compile pan: $(tail -n 3 cc.log | tr '\n' ' ')" >result
    return 0
  fi
  # shellcheck disable=SC2086
  ./pan $panflags >pan.out 2>&1 || true
  local secs=$((SECONDS - t0))
  local errors states depth_reached first_err incomplete=""
  errors=$(sed -n 's/.*errors: \([0-9][0-9]*\).*/\1/p' pan.out | tail -n 1)
  states=$(awk '/states, stored/ {print $1; exit}' pan.out)
  depth_reached=$(sed -n 's/.*depth reached \([0-9][0-9]*\).*/\1/p' pan.out | tail -n 1)
  first_err=$(grep -m 1 '^pan:1:' pan.out || true)
  grep -q 'max search depth too small' pan.out && incomplete="search depth too small"
  grep -qi 'out of memory' pan.out && incomplete="out of memory"
  grep -q 'too many processes' pan.out && incomplete="too many processes"
  if [ -z "$errors" ] || [ -z "$states" ]; then
    incomplete=${incomplete:-"no verification result"}
  fi
  detail="states ${states:-?}, depth ${depth_reached:-?}, errors ${errors:-?}, ${secs}s"
  case $expect in
    pass)
      if [ -n "$incomplete" ]; then
        verdict="FAIL  $name: incomplete ($incomplete): $detail"
      elif [ "$errors" != 0 ]; then
        verdict="FAIL  $name: ${first_err#pan:1: }: $detail"
        # the counterexample, for whoever has to fix it
        # shellcheck disable=SC2086
        spin $defs -t -p -g -l runctl.pml 2>&1 | tail -n 60 >trail.txt || true
      elif ! grep -q 'Full statespace search' pan.out; then
        verdict="FAIL  $name: not a full state-space search: $detail"
      else
        verdict="ok    $name: $detail"
      fi
      ;;
    fail:*)
      local want=${expect#fail:}
      if [ "${errors:-0}" -ge 1 ] && [[ $first_err == *"$want"* ]]; then
        verdict="ok    $name: found as required: ${first_err#pan:1: } ($detail)"
      elif [ "${errors:-0}" -ge 1 ]; then
        verdict="FAIL  $name: spin found another error than \"$want\": ${first_err#pan:1: } ($detail)"
      else
        verdict="FAIL  $name: spin did not find the planted bug (\"$want\") ($detail)"
      fi
      ;;
  esac
  echo "$verdict" >result
}

echo "== model check of ${model#"$PWD"/}: ${#runs[@]} runs, $jobs at a time ($(spin -V | head -n 1))"
start=$SECONDS
running=0
for i in "${!runs[@]}"; do
  run_one "$i" "${runs[$i]}" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

failed=0
for i in "${!runs[@]}"; do
  line=$(cat "$work/$i/result" 2>/dev/null || echo "FAIL  ${runs[$i]%%|*}: no result")
  echo "$line"
  if [[ $line == FAIL* ]]; then
    failed=$((failed + 1))
    if [ -s "$work/$i/trail.txt" ]; then
      sed 's/^/      /' "$work/$i/trail.txt"
    fi
  fi
done
echo "== $((${#runs[@]} - failed)) of ${#runs[@]} runs as required, $((SECONDS - start))s"
[ "$failed" = 0 ]
