#!/usr/bin/env bash
# Tests of the DPDK backend on real DPDK with real packets. Run as root on Debian 12:
#
#   scripts/test-dpdk.sh            # every test
#   scripts/test-dpdk.sh interop    # only the named ones: smoke interop interop_ipv6
#                                   # memif memif_multiqueue memif_ipv6 memif_jumbo bench
#                                   # bench_two_processes
#
# Installs what it needs (libdpdk-dev pkg-config clang libclang-dev iproute2 iputils-ping
# ethtool jq),
# reserves hugepages if it can (else the EAL runs with --no-huge), runs each test bounded in
# time, prints its name and PASS/FAIL, and removes everything it created (network namespaces,
# veth links, memif sockets, hugepage files) on exit, even after a failure. Exits non-zero if
# any test failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TERM_COLOR=never
TEST_TIMEOUT=${TEST_TIMEOUT:-300}
NS_DPDK=dp-dpdk
NS_PEER=dp-peer
VETH_DPDK=dpveth0
VETH_PEER=dpveth1
DPDK_IP=10.77.0.2
PEER_IP=10.77.0.1
DPDK_IP6=fd77::2
PEER_IP6=fd77::1
RUN_DIR=$(mktemp -d /tmp/dataplane-dpdk.XXXXXX)
HUGE_BEFORE=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
HUGE_SET=0
PIDS=()

log() { echo "[test-dpdk] $*"; }

cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    ip netns del "$NS_DPDK" 2>/dev/null
    ip netns del "$NS_PEER" 2>/dev/null
    ip link del "$VETH_DPDK" 2>/dev/null
    rm -rf "$RUN_DIR"
    # Hugepage files a crashed EAL may have left (the tests run --in-memory, so normally none).
    rm -f /dev/hugepages/dataplane* /dev/hugepages/rtemap_* 2>/dev/null
    if [ "$HUGE_SET" = 1 ]; then
        echo "$HUGE_BEFORE" > /proc/sys/vm/nr_hugepages 2>/dev/null
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$(id -u)" != 0 ]; then
    echo "test-dpdk.sh must run as root (DPDK's EAL, network namespaces, hugepages)" >&2
    exit 2
fi

# ---- packages -------------------------------------------------------------------------------
need=()
for p in libdpdk-dev pkg-config clang libclang-dev iproute2 iputils-ping ethtool jq; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || { echo "cannot install ${need[*]}" >&2; exit 2; }
fi
pkg-config --atleast-version=22.11 libdpdk || { echo "libdpdk >= 22.11 missing" >&2; exit 2; }

# ---- hugepages ------------------------------------------------------------------------------
unset DPDK_HUGE
if [ "${DPDK_NO_HUGE:-0}" != 1 ]; then
    if [ "$HUGE_BEFORE" -lt 512 ] && echo 512 > /proc/sys/vm/nr_hugepages 2>/dev/null; then
        HUGE_SET=1
    fi
    mkdir -p /dev/hugepages
    mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null
    free_pages=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
    if [ "${free_pages:-0}" -ge 384 ] && mountpoint -q /dev/hugepages; then
        export DPDK_HUGE=1
        log "hugepages: $free_pages free 2 MiB pages, EAL uses them"
    else
        log "WARNING: could not reserve hugepages ($free_pages free): EAL runs with --no-huge"
    fi
else
    log "DPDK_NO_HUGE=1: EAL runs with --no-huge"
fi

# ---- build (one release build, shared with the rest of CI) ----------------------------------
log "building"
cargo test --release -p dataplane-stack-dpdk --no-run -q 2>&1 | grep -v '^\s*$' || true

cargo build --release -p dataplane-bench -q || exit 1

# ---- helpers --------------------------------------------------------------------------------
FAILED=()
PASSED=()
run() {
    local name=$1
    shift
    echo
    echo "=== TEST $name"
    local t0=$(date +%s)
    # Functions run in a child bash so that `timeout` can bound (and kill) them.
    timeout --kill-after=15 "$TEST_TIMEOUT" bash -c "$*"
    local rc=$?
    local dt=$(( $(date +%s) - t0 ))
    if [ $rc = 0 ]; then
        echo "=== PASS $name (${dt}s)"
        PASSED+=("$name")
    else
        [ $rc = 124 ] && echo "timed out after ${TEST_TIMEOUT}s"
        echo "=== FAIL $name (rc $rc, ${dt}s)"
        FAILED+=("$name")
    fi
}

# A veth pair across two namespaces: the DPDK end has no address (DPDK's smoltcp owns
# $DPDK_IP); the peer end is a normal kernel interface with $PEER_IP. Offloads are off on both
# ends: af_packet would otherwise see TSO super-frames and partial checksums from veth.
setup_veth() {
    ip netns del "$NS_DPDK" 2>/dev/null
    ip netns del "$NS_PEER" 2>/dev/null
    ip netns add "$NS_DPDK" && ip netns add "$NS_PEER" || return 1
    ip link add "$VETH_DPDK" type veth peer name "$VETH_PEER" || return 1
    ip link set "$VETH_DPDK" netns "$NS_DPDK" && ip link set "$VETH_PEER" netns "$NS_PEER" || return 1
    ip netns exec "$NS_DPDK" sysctl -qw "net.ipv6.conf.$VETH_DPDK.disable_ipv6=1"
    ip netns exec "$NS_PEER" sysctl -qw "net.ipv6.conf.$VETH_PEER.disable_ipv6=1"
    ip netns exec "$NS_DPDK" ethtool -K "$VETH_DPDK" tx off rx off tso off gso off gro off >/dev/null 2>&1
    ip netns exec "$NS_PEER" ethtool -K "$VETH_PEER" tx off rx off tso off gso off gro off >/dev/null 2>&1
    ip netns exec "$NS_DPDK" ip link set lo up
    ip netns exec "$NS_PEER" ip link set lo up
    ip netns exec "$NS_DPDK" ip link set "$VETH_DPDK" up
    ip netns exec "$NS_PEER" ip addr add "$PEER_IP/24" dev "$VETH_PEER"
    ip netns exec "$NS_PEER" ip link set "$VETH_PEER" up
}

test_smoke() {
    cargo test --release -q -p dataplane-stack-dpdk --test smoke -- --ignored --test-threads=1 --nocapture
}

test_interop() {
    setup_veth || return 1
    ip netns exec "$NS_DPDK" env DPDK_IFACE="$VETH_DPDK" DPDK_IP="$DPDK_IP" \
        PEER_NETNS="$NS_PEER" PEER_IFACE="$VETH_PEER" PEER_IP="$PEER_IP" \
        cargo test --release -q -p dataplane-stack-dpdk --test interop -- --ignored --nocapture
}

# The same veth pair with IPv6 on the peer end (the DPDK end stays without a kernel address:
# smoltcp owns $DPDK_IP6); nodad so the address is usable at once.
test_interop_ipv6() {
    setup_veth || return 1
    ip netns exec "$NS_PEER" sysctl -qw "net.ipv6.conf.$VETH_PEER.disable_ipv6=0" || return 1
    ip netns exec "$NS_PEER" ip -6 addr add "$PEER_IP6/64" dev "$VETH_PEER" nodad || return 1
    ip netns exec "$NS_DPDK" env DPDK_IFACE="$VETH_DPDK" DPDK_IP="$DPDK_IP" DPDK_IP6="$DPDK_IP6" \
        PEER_NETNS="$NS_PEER" PEER_IFACE="$VETH_PEER" PEER_IP="$PEER_IP" PEER_IP6="$PEER_IP6" \
        cargo test --release -q -p dataplane-stack-dpdk --test interop_ipv6 -- --ignored --nocapture
}

test_memif() {
    cargo test --release -q -p dataplane-stack-dpdk --test memif -- --ignored --nocapture
}

test_memif_multiqueue() {
    cargo test --release -q -p dataplane-stack-dpdk --test memif_multiqueue -- --ignored --nocapture
}

test_memif_ipv6() {
    cargo test --release -q -p dataplane-stack-dpdk --test memif_ipv6 -- --ignored --nocapture
}

test_memif_jumbo() {
    cargo test --release -q -p dataplane-stack-dpdk --test memif_jumbo -- --ignored --nocapture
}

# `dataplane-bench --backend dpdk`: dataplane-dpdk stream rows (memif port pair) beside the
# dataplane-posix rows of the same run, three rounds each, interleaved (median reported: the
# polling workers' rows swing with whatever else the 2 cores run); every DPDK row must carry
# numbers, not an error.

test_bench() {
    local json=$CARGO_TARGET_DIR/bench-dpdk.json
    "$CARGO_TARGET_DIR/release/dataplane-bench" --backend dpdk --quick --rounds 3 \
        --systems dataplane-dpdk,dataplane-posix --workloads stream,pingpong \
        --json "$json" || return 1
    jq -e '[.results[] | select(.system == "dataplane-dpdk" and .workload == "stream")]
           | length >= 5 and all(.msgs_per_sec != null and .msgs_per_sec > 0)' "$json" >/dev/null \
        || { echo "dataplane-dpdk stream rows missing or empty in $json"; return 1; }
    jq -e '[.results[] | select(.system == "dataplane-posix" and .workload == "stream")]
           | length >= 5' "$json" >/dev/null || { echo "no POSIX rows beside them"; return 1; }
    jq -r '.results[] | select(.workload == "stream" and .size_bytes == 64)
           | "\(.system) stream 64 B: \(.msgs_per_sec | floor) msg/s"' "$json"
}

# The same rows with each end in its own process (`dataplane-bench server` and `client`, the
# two-host mode on one host): memif between two DPDK processes, as the target names it, and
# the POSIX pair as two processes on loopback, one after the other.

# two_process_rows SYSTEM ADDR JSON SERVER_ENV CLIENT_ENV: the server in the background until
# the client has measured; both bounded in time.
two_process_rows() {
    local system=$1 addr=$2 json=$3 senv=$4 cenv=$5
    local bin=$CARGO_TARGET_DIR/release/dataplane-bench log=$RUN_DIR/server-$system.log
    env $senv "$bin" server --system "$system" --addr "$addr" --workers 1 --max-secs 120 \
        > "$log" 2>&1 &
    local spid=$!
    trap "kill $spid 2>/dev/null" EXIT
    for _ in $(seq 1 300); do grep -q serving "$log" && break; sleep 0.1; done
    env $cenv timeout 120 "$bin" client --system "$system" --addr "$addr" \
        --workloads stream,pingpong --sizes 64 --duration 1 --rounds 3 --json "$json" \
        | grep -E "^$system " || { cat "$log"; return 1; }
    kill $spid 2>/dev/null
    wait $spid 2>/dev/null
    return 0
}

test_bench_two_processes() {
    local sock=$RUN_DIR/bench-2p.memif bsize=9216
    local link="DATAPLANE_DPDK_PORT=net_memif0 DATAPLANE_DPDK_MTU=9000 DATAPLANE_DPDK_SKIP_TCP_CHECKSUM=1"
    two_process_rows dataplane-dpdk 10.98.0.1:7979 "$RUN_DIR/dpdk-2p.json" \
        "$link DATAPLANE_DPDK_IP=10.98.0.1 DATAPLANE_DPDK_VDEV=net_memif0,role=server,id=0,bsize=$bsize,socket=$sock" \
        "$link DATAPLANE_DPDK_IP=10.98.0.2 DATAPLANE_DPDK_VDEV=net_memif0,role=client,id=0,bsize=$bsize,socket=$sock,zero-copy=yes" \
        || return 1
    two_process_rows dataplane-posix 127.0.0.1:7980 "$RUN_DIR/posix-2p.json" "" "" || return 1
    local dpdk posix
    dpdk=$(jq -e '[.results[] | select(.workload == "stream" and .size_bytes == 64)][0].msgs_per_sec' \
        "$RUN_DIR/dpdk-2p.json") || { echo "no dataplane-dpdk two-process stream row"; return 1; }
    posix=$(jq -e '[.results[] | select(.workload == "stream" and .size_bytes == 64)][0].msgs_per_sec' \
        "$RUN_DIR/posix-2p.json") || { echo "no dataplane-posix two-process stream row"; return 1; }
    jq -e '[.results[] | select(.workload == "pingpong")][0].p50_us > 0' "$RUN_DIR/dpdk-2p.json" \
        >/dev/null || { echo "no dataplane-dpdk two-process ping-pong row"; return 1; }
    awk -v d="$dpdk" -v p="$posix" 'BEGIN { printf "64 B stream, two processes each: memif %.2f M msg/s, loopback %.2f M msg/s: %.2fx (target 1.5x)\n", d / 1e6, p / 1e6, d / p }'
}

export NS_DPDK NS_PEER VETH_DPDK VETH_PEER DPDK_IP PEER_IP DPDK_IP6 PEER_IP6 RUN_DIR
export CARGO_TARGET_DIR
export -f setup_veth test_smoke test_interop test_interop_ipv6 test_memif test_memif_multiqueue test_memif_ipv6 test_memif_jumbo \
    test_bench two_process_rows test_bench_two_processes

ALL=(smoke interop interop_ipv6 memif memif_multiqueue memif_ipv6 memif_jumbo bench bench_two_processes)
SELECTED=("$@")
[ ${#SELECTED[@]} = 0 ] && SELECTED=("${ALL[@]}")
for t in "${SELECTED[@]}"; do
    case "$t" in
        smoke) run smoke_net_null_net_ring test_smoke ;;
        interop) run interop_af_packet_vs_posix test_interop ;;
        interop_ipv6) run interop_ipv6_dual_stack_vs_posix test_interop_ipv6 ;;
        memif) run memif_two_processes_link_down_up test_memif ;;
        memif_multiqueue) run memif_two_queues_two_workers_each test_memif_multiqueue ;;
        memif_ipv6) run memif_ipv6_two_processes_two_queues test_memif_ipv6 ;;
        memif_jumbo) run memif_jumbo_frames_tcp_checksums_off test_memif_jumbo ;;
        bench) run bench_dpdk_beside_posix test_bench ;;
        bench_two_processes) run bench_two_processes_memif_and_loopback test_bench_two_processes ;;
        *) echo "unknown test $t (have: ${ALL[*]})"; FAILED+=("$t") ;;
    esac
done

echo
echo "=== DPDK tests: ${#PASSED[@]} passed (${PASSED[*]:-}), ${#FAILED[@]} failed (${FAILED[*]:-})"
[ ${#FAILED[@]} = 0 ]
