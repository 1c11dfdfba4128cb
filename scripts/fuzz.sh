#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time and reports, per target:
# executions, wall time, coverage gained, crashes. Exits non-zero if any target crashed
# (or the build failed).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
#
# Environment:
#   FUZZ_TARGETS="a b"       only these targets (default: every target in fuzz/Cargo.toml)
#   FUZZ_KEEP_CORPUS=1       keep the grown corpus in fuzz/work/<target>/ (default: a temp
#                            dir, deleted at exit; the committed seeds in fuzz/corpus/ are
#                            only read, never written)
#   DATAPLANE_FUZZ_IGNORE=k  switch off named invariant checks of known, reported bugs
#                            (see fuzz/src/lib.rs `ignored`), e.g. `iov`
#
# One fuzzing process at a time (-jobs/-workers not used), each bounded by
# -max_total_time and a hard `timeout`; on exit or interruption the running fuzzer is
# killed, so nothing is left behind. Crash inputs are kept in fuzz/artifacts/<target>/.
#
# Toolchain: cargo-fuzz builds with nightly-only rustc flags (-Zsanitizer=address, the
# sanitizer-coverage -Z/-C llvm-args) and libfuzzer-sys uses `cfg(fuzzing)` features.
# Only the stable toolchain is assumed, so RUSTC_BOOTSTRAP=1 is exported below: it makes
# the stable rustc/cargo accept those unstable flags. The sanitizer runtimes ship with
# the stable x86_64-unknown-linux-gnu std, so nothing else has to be downloaded.
set -euo pipefail

SECS="${1:-60}"
case "$SECS" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
export RUSTC_BOOTSTRAP=1 # see the header: lets stable rustc take cargo-fuzz's -Z flags
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"

if ! command -v cargo >/dev/null; then
    echo "fuzz.sh: cargo not found; install the stable Rust toolchain first" >&2
    exit 2
fi
# libfuzzer-sys compiles libFuzzer (C++) in its build script.
if ! command -v c++ >/dev/null && ! command -v clang++ >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "fuzz.sh: installing g++ (needed to build libFuzzer)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
    else
        echo "fuzz.sh: a C++ compiler (g++ or clang++) is needed to build libFuzzer" >&2
        exit 2
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/dataplane-fuzz.XXXXXX")"
PID=""
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$FUZZ"
TARGETS="${FUZZ_TARGETS:-$(cargo fuzz list)}"
echo "fuzz.sh: building targets: $(echo $TARGETS)"
cargo fuzz build >/dev/null 2>"$WORK/build.log" || {
    cat "$WORK/build.log" >&2
    echo "fuzz.sh: build failed" >&2
    exit 1
}
HOST="$(rustc -vV | sed -n 's/^host: //p')"
BIN_DIR="$FUZZ/target/$HOST/release"

# Pulls "<key>: <number>" out of a libFuzzer status line.
field() { sed -n "s/.*[[:space:]]$1: \([0-9]*\).*/\1/p" <<<"$2"; }

SUMMARY=()
FAILED=0
for t in $TARGETS; do
    if [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ]; then
        corpus="$FUZZ/work/$t"
    else
        corpus="$WORK/corpus-$t"
    fi
    mkdir -p "$corpus" "$FUZZ/artifacts/$t"
    seeds="$FUZZ/corpus/$t"
    mkdir -p "$seeds"
    log="$WORK/$t.log"
    before=$(ls "$FUZZ/artifacts/$t" | wc -l)
    echo "fuzz.sh: $t for ${SECS}s ..."
    start=$(date +%s)
    # First corpus dir is written (new units), the seed dir only read.
    timeout --kill-after=10 $((SECS + 120)) "$BIN_DIR/$t" \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$FUZZ/artifacts/$t/" "$corpus" "$seeds" >"$log" 2>&1 &
    PID=$!
    rc=0
    wait "$PID" || rc=$?
    PID=""
    secs=$(($(date +%s) - start))

    inited=$(grep -m1 'INITED' "$log" || true)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log")
    [ -z "$runs" ] && runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\)/\1/p' "$log")
    [ -z "$runs" ] && runs=$(sed -n 's/^#\([0-9]*\).*/\1/p' <<<"$last")
    cov0=$(field cov "$inited"); cov1=$(field cov "$last")
    ft1=$(field ft "$last")
    corp0=$(sed -n 's/.*corp: \([0-9]*\)\/.*/\1/p' <<<"$inited")
    corp1=$(sed -n 's/.*corp: \([0-9]*\)\/.*/\1/p' <<<"$last")
    after=$(ls "$FUZZ/artifacts/$t" | wc -l)
    crashes=$((after - before))
    status=ok
    if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        status="CRASH (exit $rc)"
        FAILED=1
        echo "---- $t: failure output ----"
        grep -E -A15 'panicked at|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)' "$log" | head -40 || true
        grep -E 'Test unit written to|Base64:' "$log" || true
        echo "     reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t <artifact>"
        echo "     minimise:  cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz tmin $t <artifact>"
    fi
    execs_per_s=$(( ${runs:-0} / (secs > 0 ? secs : 1) ))
    line=$(printf '%-14s %10s execs %5ss %7s/s  cov %5s -> %-5s (+%s)  ft %-6s corpus %s -> %s  crashes %s  %s' \
        "$t" "${runs:-?}" "$secs" "$execs_per_s" "${cov0:-?}" "${cov1:-?}" \
        "$(( ${cov1:-0} - ${cov0:-0} ))" "${ft1:-?}" "${corp0:-?}" "${corp1:-?}" "$crashes" "$status")
    echo "$line"
    SUMMARY+=("$line")
done

echo
echo "==== fuzz summary (${SECS}s per target, 1 process) ===="
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
