#!/usr/bin/env bash
# Four-node cluster test (root): each node in its own network namespace, joined by veth pairs
# to a bridge in a fifth namespace; full-mesh lossless messaging between all nodes.
#
#   scripts/test-cluster.sh [COUNT_PER_PEER]     (default 20000)
#
# Timeline (nodes send COUNT messages to every peer at 2,500 msg/s per peer):
#   t=0 s    n1..n4 start
#   t=2 s    kill -9 n4                 (a crash: no close frame, in-flight state lost)
#   t=3 s    n4 starts again            (new incarnation, same name and address)
#   t=5 s    n2's link goes down        (ip link set down: silence, no reset)
#   t=7 s    n2's link comes back up
#   then     wait until every node has sent everything and has it acknowledged
#
# Checks, per ordered pair sender -> receiver:
#   - both stayed up: delivered == sent, exactly once, in order, byte for byte;
#   - into the restarted n4: its new incarnation received a gap-free, duplicate-free run
#     that ends at the last message (everything after what the old incarnation took);
#   - from the crashed n4 incarnation: not counted (its unsent queue died with it);
#   - every survivor saw n4's restart as a remote reset.
# Prints one summary line: sent, delivered, lost (must be 0), duplicated (must be 0).
# Bounded in time; removes its namespaces and processes even when it fails.
set -euo pipefail

COUNT="${1:-20000}"
RATE=2500
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NS=dpcl
WORK="$(mktemp -d "${TMPDIR:-/tmp}/dataplane-cluster.XXXXXX")"
PIDS=()

if [ "$(id -u)" != 0 ]; then
    echo "test-cluster.sh: needs root (network namespaces)" >&2
    exit 2
fi
if ! command -v ip >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
fi

cleanup() {
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    for n in br n1 n2 n3 n4; do
        ip netns del "$NS-$n" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "test-cluster.sh: building the node"
(cd "$ROOT" && cargo build --release -q -p dataplane --example cluster_node)
NODE="$ROOT/target/release/examples/cluster_node"

# Namespaces: a bridge and four nodes, 10.77.0.{1..4}/24.
for n in br n1 n2 n3 n4; do
    ip netns del "$NS-$n" 2>/dev/null || true
    ip netns add "$NS-$n"
    ip -n "$NS-$n" link set lo up
done
ip -n "$NS-br" link add br0 type bridge
ip -n "$NS-br" link set br0 up
for i in 1 2 3 4; do
    ip link add "v$i" netns "$NS-n$i" type veth peer name "b$i" netns "$NS-br"
    ip -n "$NS-n$i" addr add "10.77.0.$i/24" dev "v$i"
    ip -n "$NS-n$i" link set "v$i" up
    ip -n "$NS-br" link set "b$i" master br0
    ip -n "$NS-br" link set "b$i" up
done
ip netns exec "$NS-n1" ping -c 1 -W 2 10.77.0.4 >/dev/null || {
    echo "test-cluster.sh: namespaces cannot reach each other" >&2
    exit 1
}

start_node() {
    local i=$1 peers=()
    for j in 1 2 3 4; do
        [ "$j" = "$i" ] || peers+=(--peer "n$j=10.77.0.$j:7000")
    done
    # `ip netns exec` execs the node, so $! is the node itself (kill -9 hits it); the node
    # bounds its own life with --max-seconds.
    ip netns exec "$NS-n$i" "$NODE" --name "n$i" --max-seconds 150 \
        --listen "10.77.0.$i:7000" "${peers[@]}" --count "$COUNT" --rate "$RATE" \
        --status-dir "$WORK" --stop "$WORK/stop" 2>>"$WORK/n$i.log" >/dev/null &
    PIDS[$i]=$!
}

for i in 1 2 3 4; do start_node "$i"; done
sleep 2
echo "test-cluster.sh: kill -9 n4"
kill -9 "${PIDS[4]}"
wait "${PIDS[4]}" 2>/dev/null || true
sleep 1
echo "test-cluster.sh: restart n4"
start_node 4
sleep 2
echo "test-cluster.sh: n2 link down"
ip -n "$NS-n2" link set v2 down
sleep 2
echo "test-cluster.sh: n2 link up"
ip -n "$NS-n2" link set v2 up

# Wait (bounded) until every live node has sent and had acknowledged everything.
deadline=$(( $(date +%s) + 90 ))
while :; do
    done_nodes=$( (grep -l "^done 1" "$WORK"/*.status 2>/dev/null || true) | wc -l)
    # The crashed n4 incarnation never finishes: 4 live nodes must be done.
    [ "$done_nodes" -ge 4 ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "test-cluster.sh: nodes did not finish in time" >&2
        tail -n 20 "$WORK"/*.status "$WORK"/*.log >&2 || true
        exit 1
    fi
    sleep 0.5
done
sleep 1 # let the last status files catch up with the last deliveries
touch "$WORK/stop"
for i in 1 2 3 4; do wait "${PIDS[$i]}" 2>/dev/null || true; done
PIDS=()

python3 - "$WORK" "$COUNT" <<'EOF'
import glob, os, sys
work, count = sys.argv[1], int(sys.argv[2])
nodes = {}
for path in glob.glob(os.path.join(work, "*.status")):
    st = {}
    for line in open(path):
        k, _, v = line.strip().partition(" ")
        st[k] = v
    st["_final"] = st.get("stopped") == "1"
    nodes.setdefault(st["name"], []).append(st)
live = {}   # name -> final incarnation's status
crashed = []
for name, sts in nodes.items():
    for st in sts:
        (live.__setitem__(name, st) if st["_final"] else crashed.append(st))
restarted = {st["name"] for st in crashed}
errors = []
if sorted(live) != ["n1", "n2", "n3", "n4"]:
    errors.append(f"live nodes {sorted(live)}")
if [st["name"] for st in crashed] != ["n4"]:
    errors.append(f"crashed incarnations {[st['name'] for st in crashed]}")
sent_total = delivered_total = lost = dup = 0
for a, sa in sorted(live.items()):
    inc = sa["incarnation"]
    for b, sb in sorted(live.items()):
        if a == b:
            continue
        sent = int(sa.get(f"sent.{b}", 0))
        if sent != count:
            errors.append(f"{a} sent {sent} of {count} to {b}")
        rx = sb.get(f"rx.{a}.{inc}")
        first, nxt, delivered, dups, gaps, corrupt = map(int, (rx or "0 0 0 0 0 0").split())
        if b in restarted and a not in restarted:
            # Into the new incarnation of a crashed node: a clean run up to the end.
            expect = sent - first
        else:
            expect = sent
            if first != 0:
                errors.append(f"{a}->{b}: first message {first}, not 0")
        pair_lost = (sent - nxt) + gaps
        lost += pair_lost
        dup += dups
        sent_total += expect
        delivered_total += delivered
        if pair_lost or dups or corrupt or delivered != expect:
            errors.append(f"{a}->{b}: sent {sent} expected {expect} delivered {delivered} "
                          f"first {first} next {nxt} dups {dups} gaps {gaps} corrupt {corrupt}")
for name, st in sorted(live.items()):
    if name not in restarted and int(st.get("remote_resets", 0)) < 1:
        errors.append(f"{name} did not see the restart of {sorted(restarted)} as a remote reset")
resets = sum(int(st.get("remote_resets", 0)) for st in live.values())
reconnects = sum(int(st.get("reconnects", 0)) for st in live.values())
timeouts = sum(int(st.get("peer_timeouts", 0)) for st in live.values())
print(f"cluster: nodes=4 kills=1 link_flaps=1 sent={sent_total} delivered={delivered_total} "
      f"lost={lost} duplicated={dup} remote_resets={resets} reconnects={reconnects} "
      f"peer_timeouts={timeouts}")
for e in errors:
    print("  FAIL:", e)
sys.exit(1 if errors or lost or dup else 0)
EOF
