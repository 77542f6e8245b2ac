#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ and runs each for FUZZ_SECONDS (default 60) on a scratch
# copy of its committed corpus (docs/fuzzing.md). Prints `figures: fuzz: TARGET execs=N` per
# target and fails, naming the target and the crash input, if any target finds a crash.
#
#   bash scripts/fuzz.sh                       every target, FUZZ_SECONDS each
#   bash scripts/fuzz.sh --target snap_yaml    one target
#   bash scripts/fuzz.sh --merge               also add what the runs found that reaches new
#                                              code to fuzz/corpus/TARGET (for developers)
#
# Environment: FUZZ_SECONDS (per target), FUZZ_SANITIZER (address, the default, or none),
# FUZZ_JOBS (parallel libFuzzer workers per target, default 1).
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(snap_yaml store_index api_bodies release_agent_argv confine_hook_args dbus_message)
seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-1}
merge=0
only=()

usage() {
    echo "usage: bash scripts/fuzz.sh [--target NAME]... [--merge]" >&2
    echo "targets: ${targets[*]}" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --target)
            [ $# -ge 2 ] || usage
            only+=("$2")
            shift 2
            ;;
        --target=*)
            only+=("${1#--target=}")
            shift
            ;;
        --merge)
            merge=1
            shift
            ;;
        -h | --help) usage ;;
        *)
            echo "fuzz.sh: unknown argument $1" >&2
            usage
            ;;
    esac
done
if [ ${#only[@]} -gt 0 ]; then
    for t in "${only[@]}"; do
        case " ${targets[*]} " in
            *" $t "*) ;;
            *)
                echo "fuzz.sh: no fuzz target $t; the targets are: ${targets[*]}" >&2
                exit 2
                ;;
        esac
    done
    targets=("${only[@]}")
fi
case "$seconds" in
    '' | *[!0-9]*)
        echo "fuzz.sh: FUZZ_SECONDS must be a whole number of seconds, not '$seconds'" >&2
        exit 2
        ;;
esac

# cargo-fuzz passes nightly-only flags (-Zsanitizer, -Cpasses=sancov-module, ...); this lets
# the stable toolchain accept them (docs/fuzzing.md says why that is acceptable here).
export RUSTC_BOOTSTRAP=1
# libfuzzer-sys compiles libFuzzer (C++) from source.
if ! command -v g++ >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing g++ (libFuzzer is C++)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
    else
        echo "fuzz.sh: g++ is missing: libFuzzer is built from C++ source; install g++ (Debian: apt-get install g++)" >&2
        exit 1
    fi
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

cd fuzz
# One build for all targets: release with debug assertions and overflow checks (cargo-fuzz's
# default), instrumented for coverage, with AddressSanitizer unless FUZZ_SANITIZER=none.
build_start=$(date +%s)
cargo fuzz build --sanitizer "$sanitizer" $([ ${#only[@]} -eq 1 ] && echo "${targets[0]}")
echo "fuzz: built in $(($(date +%s) - build_start)) s"

scratch=$(mktemp -d /tmp/refreshd-fuzz-XXXXXX)
trap 'rm -rf "$scratch"' EXIT
# The release-agent target builds its scratch tree here, not in /run.
export REFRESHD_FUZZ_SCRATCH="$scratch"

failed=()
for t in "${targets[@]}"; do
    corpus="$scratch/$t/corpus"
    mkdir -p "$corpus" "artifacts/$t"
    # A copy: libFuzzer adds what it finds to its first corpus directory, and CI must leave
    # the committed corpus as it is.
    cp -a "corpus/$t/." "$corpus/"
    log="$scratch/$t/log"
    extra=()
    [ -f "dict/$t.dict" ] && extra+=("-dict=dict/$t.dict")
    [ "$jobs" -gt 1 ] && extra+=("-jobs=$jobs" "-workers=$jobs")
    echo "== fuzz: $t for $seconds s ($(ls "$corpus" | wc -l) seed inputs)"
    status=0
    cargo fuzz run --sanitizer "$sanitizer" "$t" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 ${extra[@]+"${extra[@]}"} >"$log" 2>&1 || status=$?
    if [ "$jobs" -gt 1 ]; then
        cat fuzz-*.log >>"$log" 2>/dev/null || true
        rm -f fuzz-*.log
    fi
    execs=$({ grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" || true; } | awk '{s += $2} END {print s + 0}')
    grep -E '^(INFO: seed corpus|#[0-9]+[[:space:]]+(INITED|DONE))|stat::' "$log" | sed 's/^/  /' || true
    echo "figures: fuzz: $t execs=$execs"
    if [ "$status" -ne 0 ]; then
        artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //')
        echo "fuzz: $t FAILED (exit $status); the crash input is ${artifact:-not written (see the log below)}" >&2
        echo "fuzz: reproduce with: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t ${artifact:-ARTIFACT}" >&2
        # The broken property (a panic's message) or the sanitizer's report, then libFuzzer's
        # summary; the stack traces stay in the log.
        grep -A3 -E "panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)" "$log" | head -20 >&2 || true
        grep -E '^(SUMMARY|MS:|Base64:)' "$log" >&2 || true
        failed+=("$t")
        continue
    fi
    if [ "$merge" -eq 1 ]; then
        before=$(ls "corpus/$t" | wc -l)
        # Adds to the committed corpus only the inputs that reach code it does not.
        cargo fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "$corpus" -- -merge=1 \
            >"$scratch/$t/merge.log" 2>&1 || {
            echo "fuzz: merging into the corpus of $t failed:" >&2
            tail -20 "$scratch/$t/merge.log" >&2
            failed+=("$t")
            continue
        }
        echo "fuzz: corpus of $t: $before -> $(ls "corpus/$t" | wc -l) inputs (review and commit fuzz/corpus/$t)"
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/TARGET/; see docs/fuzzing.md)" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} target(s), no crash"
