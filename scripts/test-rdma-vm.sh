#!/usr/bin/env bash
# Runs the RDMA stack on real verbs: boots Debian's kernel under QEMU (TCG) with this host's
# root filesystem (virtme-ng), creates Soft-RoCE `rxe0` on a veth inside the guest, and runs
#   1. ibv_devices, the RDMA integration tests (each name and result printed) and the
#      `large_messages` example of stack-rdma,
#   2. `rdma resource` to check that no QP / MR / CQ / PD / SRQ outlives the tests,
#   3. perftest ib_send_bw (64 KiB) and ib_send_lat (64 B) on rxe0, ib_send_lat_framed (the
#      same tool moving the 108-byte frame of a 64 B message on a shared receive queue, as
#      we do: what the transport alone charges for our frame), and
#      `dataplane-bench --backend rdma` with the same sizes (unless --no-bench), then the same
#      rows with the two ends in two processes, as perftest runs them (`dataplane-bench
#      server` / `client --system dataplane-rdma`: the two-host mode, on one host).
#
# Usage (as root): scripts/test-rdma-vm.sh [--bench-json FILE] [--no-bench] [--no-install]
#   --bench-json FILE  write the benchmark JSON (rows dataplane-rdma, ib_send_bw, ib_send_lat,
#                      ib_send_lat_framed)
#   --no-bench         tests only
#   --no-install       do not apt-get / pip install (everything already present)
# Environment: BENCH_SIZES (default 64,64K), BENCH_SECS (default 3), BENCH_ROUNDS (default 5:
# each row measured that many times, interleaved with perftest, median reported; one boot's
# speed drifts by half between its start and its end), VM_TIMEOUT (default 1500),
# BENCH_WORKLOADS (default stream,pingpong), TESTS_FILTER (extended regex on test names, default
# all; '^$' runs none, for benchmark-only boots),
# BENCH_VARIANTS: space-separated NAME:VAR=VALUE[,VAR=VALUE...]; each runs dataplane-rdma
# again in the same boot with those variables (e.g. "per-qp:DATAPLANE_RDMA_SHARED_RQ=0
# no-write:DATAPLANE_RDMA_WRITE_CHUNKS=0") into FILE-NAME.json beside --bench-json FILE.
#
# Exits non-zero if the VM does not come up, the device is missing, or any test fails.
# Bounded in time (VM_TIMEOUT seconds, default 1500); leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

BENCH_JSON=""
BENCH=1
INSTALL=1
while [ $# -gt 0 ]; do
    case "$1" in
        --bench-json) BENCH_JSON=$(realpath -m "$2"); shift 2 ;;
        --no-bench) BENCH=0; shift ;;
        --no-install) INSTALL=0; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
VM_TIMEOUT=${VM_TIMEOUT:-1500}
BENCH_SECS=${BENCH_SECS:-3}
BENCH_ROUNDS=${BENCH_ROUNDS:-5}
BENCH_SIZES=${BENCH_SIZES:-64,64K}
BENCH_VARIANTS=${BENCH_VARIANTS:-}
BENCH_WORKLOADS=${BENCH_WORKLOADS:-stream,pingpong}
TESTS_FILTER=${TESTS_FILTER:-.}

say() { echo "=== $*"; }

if [ "$INSTALL" = 1 ]; then
    say "installing packages"
    export DEBIAN_FRONTEND=noninteractive
    pkgs="qemu-system-x86 linux-image-amd64 rdma-core ibverbs-providers ibverbs-utils perftest iproute2 busybox-static cmake"
    missing=""
    for p in $pkgs; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null
    fi
    command -v vng >/dev/null 2>&1 || pip install -q virtme-ng
fi
command -v vng >/dev/null || { echo "virtme-ng (vng) not found: pip install virtme-ng" >&2; exit 1; }
KERNEL=$(ls /boot/vmlinuz-6.1* 2>/dev/null | sort -V | tail -n1 || true)
[ -n "$KERNEL" ] || { echo "no /boot/vmlinuz-6.1*: apt-get install linux-image-amd64" >&2; exit 1; }

say "building the RDMA test binaries (release)"
TESTS=$(cargo test --release -p dataplane-stack-rdma --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])
')
[ -n "$TESTS" ] || { echo "no RDMA test binary built" >&2; exit 1; }
echo "$TESTS"
cargo build --release -p dataplane-stack-rdma --example large_messages
EXAMPLE_BIN="$ROOT/target/release/examples/large_messages"
BENCH_BIN=""
if [ "$BENCH" = 1 ]; then
    cargo build --release -p dataplane-bench
    BENCH_BIN="$ROOT/target/release/dataplane-bench"
fi

OUT=$(mktemp -d /tmp/rdma-vm.XXXXXX)
chmod 777 "$OUT"
GUEST="$OUT/guest.sh"
cat > "$GUEST" <<EOF
#!/bin/bash
# Runs inside the VM. Results go to $OUT (mounted read-write).
set -u
OUT=$OUT
echo booted > \$OUT/booted
fail=0
modprobe rdma_rxe || { echo "FATAL: modprobe rdma_rxe failed"; exit 1; }
ip link set lo up
ip link add veth0 type veth peer name veth1
ip addr add 10.77.0.1/24 dev veth0
ip link set veth0 up
ip link set veth1 up
rdma link add rxe0 type rxe netdev veth0 || { echo "FATAL: rdma link add failed"; exit 1; }
echo "--- ibv_devices"
ibv_devices
ibv_devices | grep -q rxe0 || { echo "FATAL: rxe0 missing"; exit 1; }
ulimit -l unlimited
export DATAPLANE_RDMA_REQUIRED=1 DATAPLANE_RDMA_ADDR=10.77.0.1 RUST_BACKTRACE=1
cd $ROOT
for bin in $(echo $TESTS); do
    for t in \$(\$bin --list 2>/dev/null | sed -n 's/: test\$//p' | grep -E '$TESTS_FILTER'); do
        start=\$SECONDS
        if timeout 600 \$bin --exact "\$t" --test-threads=1 --nocapture > \$OUT/test-\$t.log 2>&1; then
            r=PASS
        else
            r=FAIL; fail=1
            tail -n 40 \$OUT/test-\$t.log
        fi
        grep -E "^(credits|reconnect|srq|write|bad peer|poller)" \$OUT/test-\$t.log || true
        printf 'TEST %-60s %s (%d s)\n' "\$t" "\$r" "\$((SECONDS - start))"
    done
done
if echo example_large_messages | grep -qE '$TESTS_FILTER'; then
    start=\$SECONDS
    if timeout 300 $EXAMPLE_BIN --count 8 --size 2097152 > \$OUT/example-large_messages.log 2>&1; then
        r=PASS
    else
        r=FAIL
        fail=1
    fi
    cat \$OUT/example-large_messages.log
    printf 'TEST %-60s %s (%d s)\n' "example_large_messages" "\$r" "\$((SECONDS - start))"
fi
echo "--- rdma resource (after the tests: only kernel-owned entries may remain)"
rdma resource show
# User-space objects carry a pid; kernel-owned ones (GSI QP, ib_core CQ) do not.
leaks=0
for kind in qp cq mr pd srq; do
    n=\$(rdma resource show \$kind 2>/dev/null | grep -c ' pid ' || true)
    echo "user \$kind objects left: \$n"
    leaks=\$((leaks + n))
done
if [ "\$leaks" != 0 ]; then echo "FAIL: leaked RDMA resources"; fail=1; fi
echo \$fail > \$OUT/tests-status
EOF
if [ "$BENCH" = 1 ]; then
    cat >> "$GUEST" <<EOF
echo "--- perftest (ib_send_bw, ib_send_lat, ib_send_lat_framed) and dataplane-rdma on rxe0, same boot"
export DATAPLANE_RDMA_DEVICE=rxe0 DATAPLANE_RDMA_GID_INDEX=1 RUST_LOG=warn
timeout 900 $BENCH_BIN --backend rdma \
    --systems dataplane-rdma,ib_send_bw,ib_send_lat,ib_send_lat_framed \
    --workloads $BENCH_WORKLOADS --sizes $BENCH_SIZES --workers 1 --duration $BENCH_SECS \
    --rounds $BENCH_ROUNDS --json \$OUT/bench.json 2>&1 | tee \$OUT/bench.log
[ -s \$OUT/bench.json ] || { echo "FAIL: no benchmark JSON"; echo 1 > \$OUT/bench-status; }
for v in $BENCH_VARIANTS; do
    name=\${v%%:*}
    vars=\$(echo "\${v#*:}" | tr ',' ' ')
    echo "--- dataplane-rdma variant \$name (\$vars), same boot"
    env \$vars timeout 600 $BENCH_BIN --backend rdma --systems dataplane-rdma \
        --workloads $BENCH_WORKLOADS --sizes $BENCH_SIZES --workers 1 --duration $BENCH_SECS \
        --rounds $BENCH_ROUNDS --json \$OUT/bench-\$name.json 2>&1 | tee \$OUT/bench-\$name.log
done
echo "--- dataplane-rdma as two processes, as perftest runs (dataplane-bench server / client)"
$BENCH_BIN server --system dataplane-rdma --addr 10.77.0.1:7979 --workers 1 --max-secs 600 \
    > \$OUT/server-2p.log 2>&1 &
spid=\$!
for i in \$(seq 1 600); do grep -q serving \$OUT/server-2p.log && break; sleep 0.1; done
timeout 600 $BENCH_BIN client --system dataplane-rdma --addr 10.77.0.1:7979 \
    --workloads $BENCH_WORKLOADS --sizes $BENCH_SIZES --workers 1 --duration $BENCH_SECS \
    --rounds $BENCH_ROUNDS --json \$OUT/bench-2p.json 2>&1 | tee \$OUT/bench-2p.log
kill \$spid 2>/dev/null; wait \$spid 2>/dev/null
cat \$OUT/server-2p.log
EOF
fi
echo 'echo done > $OUT/done' >> "$GUEST"
chmod +x "$GUEST"

say "booting $KERNEL under QEMU (TCG) with virtme-ng"
set +e
timeout --kill-after=30 "$VM_TIMEOUT" vng --disable-kvm --run "$KERNEL" --memory 2G --cpus 2 \
    --rwdir="$OUT" --exec "bash $GUEST" 2>&1 | tee "$OUT/vm.log"
vm_rc=${PIPESTATUS[0]}
set -e

status=0
if [ ! -e "$OUT/booted" ]; then
    echo "FAIL: the VM did not come up (vng exit $vm_rc); see $OUT/vm.log"
    exit 1
fi
if [ "$(cat "$OUT/tests-status" 2>/dev/null)" != 0 ]; then
    echo "FAIL: RDMA tests failed or did not run (logs in $OUT)"
    status=1
fi
if [ "$BENCH" = 1 ] && [ -e "$OUT/bench-status" ]; then
    echo "FAIL: benchmark did not produce JSON"
    status=1
fi
if [ ! -e "$OUT/done" ]; then
    echo "FAIL: the guest script did not finish (vng exit $vm_rc)"
    status=1
fi
if [ "$BENCH" = 1 ] && [ -s "$OUT/bench.json" ]; then
    # The rows the comparison needs must carry numbers.
    python3 - "$OUT/bench.json" "$BENCH_WORKLOADS" <<'PY' || status=1
import json, sys
rows = json.load(open(sys.argv[1]))["results"]
workloads = sys.argv[2].split(",")
need = [("dataplane-rdma", "stream", 65536, "gbit_per_sec"),
        ("dataplane-rdma", "pingpong", 64, "p50_us"),
        ("ib_send_bw", "stream", 65536, "gbit_per_sec"),
        ("ib_send_lat", "pingpong", 64, "p50_us")]
need = [n for n in need if n[1] in workloads]
bad = 0
for system, workload, size, field in need:
    r = [x for x in rows if (x["system"], x["workload"], x["size_bytes"]) == (system, workload, size)]
    v = r[0].get(field) if r else None
    print(f"{system:15} {workload:9} {size:6} {field:13} {v}")
    bad |= v is None
if bad:
    print("FAIL: benchmark rows without numbers")
    sys.exit(1)
# Where the 64 B round trip goes: what perftest pays for our frame (its size, the shared
# receive queue) against what the messenger adds on top of that.
p50 = {x["system"]: x.get("p50_us") for x in rows if (x["workload"], x["size_bytes"]) == ("pingpong", 64)}
ours, lat, framed = (p50.get(k) for k in ("dataplane-rdma", "ib_send_lat", "ib_send_lat_framed"))
if ours and lat and framed:
    print(f"64 B ping-pong p50: ib_send_lat {lat:.1f} us, ib_send_lat_framed {framed:.1f} us "
          f"({framed / lat:.2f}x: our frame on the transport alone), dataplane-rdma {ours:.1f} us "
          f"({ours / lat:.2f}x; {ours - framed:.1f} us of it the messenger's own work)")
PY
    # The two-process rows (server and client processes) must carry numbers too; their
    # ratios to the same boot's perftest rows are printed beside the in-process ones.
    python3 - "$OUT/bench-2p.json" "$BENCH_WORKLOADS" "$OUT/bench.json" <<'PY' || status=1
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["results"]
except (OSError, ValueError) as e:
    print(f"FAIL: no two-process benchmark JSON ({e})")
    sys.exit(1)
workloads = sys.argv[2].split(",")
perftest = json.load(open(sys.argv[3]))["results"]
need = [("stream", 65536, "gbit_per_sec", "ib_send_bw"), ("pingpong", 64, "p50_us", "ib_send_lat")]
bad = 0
for workload, size, field, base in need:
    if workload not in workloads:
        continue
    r = [x for x in rows if (x["workload"], x["size_bytes"]) == (workload, size)]
    v = r[0].get(field) if r else None
    b = [x.get(field) for x in perftest if (x["system"], x["workload"], x["size_bytes"]) == (base, workload, size)]
    ratio = f"{v / b[0]:.2f}x {base}" if v and b and b[0] else "no ratio"
    print(f"dataplane-rdma (two processes) {workload:9} {size:6} {field:13} {v} ({ratio})")
    bad |= v is None
if bad:
    print("FAIL: two-process benchmark rows without numbers")
    sys.exit(1)
PY
fi
if [ -n "$BENCH_JSON" ] && [ -s "$OUT/bench.json" ]; then
    cp "$OUT/bench.json" "$BENCH_JSON"
    echo "benchmark JSON: $BENCH_JSON"
    for v in $BENCH_VARIANTS; do
        name=${v%%:*}
        if [ -s "$OUT/bench-$name.json" ]; then
            dst="${BENCH_JSON%.json}-$name.json"
            cp "$OUT/bench-$name.json" "$dst"
            echo "variant $name benchmark JSON: $dst"
        fi
    done
    if [ -s "$OUT/bench-2p.json" ]; then
        cp "$OUT/bench-2p.json" "${BENCH_JSON%.json}-two-process.json"
        echo "two-process benchmark JSON: ${BENCH_JSON%.json}-two-process.json"
    fi
fi
echo "logs: $OUT"
[ $status = 0 ] && say "RDMA VM tests passed"
exit $status
