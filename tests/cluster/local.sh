#!/usr/bin/env bash
# A local cluster test bed: N hosts in network namespaces on one bridge (the host itself
# at 10.77.0.1, so that a client here reaches every node), etcd and a coordinator on the
# host, one hotshard node per namespace (one shard each). Needs root, etcd (Debian's
# etcd-server) and a release build (built here if missing).
#
#   tests/cluster/local.sh up N       start etcd, a coordinator and N nodes; print addresses
#   tests/cluster/local.sh status     hotshard cluster status
#   tests/cluster/local.sh kill I     kill -9 node I          start I   start it again
#   tests/cluster/local.sh stop-net I cut host I off           start-net I   reconnect it
#   tests/cluster/local.sh add        one more host and node (it joins; chains move onto it)
#   tests/cluster/local.sh wipe I     stop node I, empty its data directory, start it again
#                                     (a replaced disk: it comes back as a new node)
#   tests/cluster/local.sh drain I    hotshard cluster drain on node I's id   undrain I
#   tests/cluster/local.sh down       stop everything it started, remove the namespaces
#
# Data and logs live in $HOTSHARD_BED (default target/cluster-bed). Replication factor
# $REPLICATION (default 3, at most N), lease TTL $LEASE_TTL s (default 3), nodes gone for
# $DOWN_OUT s (default 600) are rebuilt elsewhere.
set -euo pipefail
cd "$(dirname "$0")/../.."
bed=${HOTSHARD_BED:-$PWD/target/cluster-bed}
bin=${BIN:-$PWD/target/release/hotshard}
subnet=10.77.0
etcd_url=http://$subnet.1:2379
lease=${LEASE_TTL:-3}

need_root() { [ "$(id -u)" = 0 ] || { echo "local.sh needs root (network namespaces)" >&2; exit 1; }; }
ns() { echo "hs-n$1"; }
node_ip() { echo "$subnet.$((10 + $1))"; }
pidfile() { echo "$bed/$1.pid"; }
alive() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }

stop_pid() {
    local f
    f=$(pidfile "$1")
    if alive "$1"; then kill "-${2:-TERM}" "$(cat "$f")" 2>/dev/null || true; fi
    for _ in $(seq 50); do alive "$1" || break; sleep 0.1; done
    rm -f "$f"
}

start_node() {
    local i=$1 ip
    ip=$(node_ip "$i")
    mkdir -p "$bed/node$i/data"
    cat > "$bed/node$i/node.toml" <<TOML
[node]
data_dir = "$bed/node$i/data"
data_bytes = 268435456
listen = "$ip"
base_port = 7400
admin_port = 7480
resp_port = 6400
cores = [$(( (i - 1) % $(nproc) ))]
[queue]
pool_mib = 64
wait_after_idle_polls = 1
[net]
yield_when_idle = true
[store]
segment_mib = 16
cache_mib = 16
[auth]
# A bed on a private bridge, its clients without the secret: open on purpose.
insecure = true
[cluster]
etcd = ["$etcd_url"]
name = "bed"
lease_ttl_secs = $lease
TOML
    ip netns exec "$(ns "$i")" "$bin" serve --config "$bed/node$i/node.toml" > "$bed/node$i/log" 2>&1 &
    echo $! > "$(pidfile "node$i")"
}

add_host() {
    local i=$1
    ip netns add "$(ns "$i")"
    ip link add "hs-v$i" type veth peer name eth0 netns "$(ns "$i")"
    ip link set "hs-v$i" master hs-br0 up
    ip -n "$(ns "$i")" addr add "$(node_ip "$i")/24" dev eth0
    ip -n "$(ns "$i")" link set eth0 up
    ip -n "$(ns "$i")" link set lo up
}

cmd=${1:-}
case "$cmd" in
up)
    need_root
    n=${2:?usage: local.sh up N}
    [ -x "$bin" ] || cargo build --release -q -p hotshard-node
    command -v etcd >/dev/null || { echo "etcd is not installed: apt-get install etcd-server" >&2; exit 1; }
    mkdir -p "$bed"
    echo "$n" > "$bed/nodes"
    ip link add hs-br0 type bridge 2>/dev/null || true
    ip addr add "$subnet.1/24" dev hs-br0 2>/dev/null || true
    ip link set hs-br0 up
    for i in $(seq "$n"); do add_host "$i"; done
    etcd --name bed --data-dir "$bed/etcd" --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
        --listen-peer-urls "http://$subnet.1:2380" --initial-advertise-peer-urls "http://$subnet.1:2380" \
        --initial-cluster "bed=http://$subnet.1:2380" > "$bed/etcd.log" 2>&1 &
    echo $! > "$(pidfile etcd)"
    for _ in $(seq 100); do "$bin" cluster status --etcd "$etcd_url" --cluster bed >/dev/null 2>&1 && break; sleep 0.1; done
    rf=${REPLICATION:-3}; [ "$rf" -le "$n" ] || rf=$n
    "$bin" coordinator --etcd "$etcd_url" --cluster bed --expect-nodes "$n" --replication "$rf" \
        --lease-ttl "$lease" --down-out "${DOWN_OUT:-600}" > "$bed/coordinator.log" 2>&1 &
    echo $! > "$(pidfile coordinator)"
    for i in $(seq "$n"); do start_node "$i"; done
    for _ in $(seq 300); do
        "$bin" cluster status --etcd "$etcd_url" --cluster bed --replication "$rf" 2>/dev/null | grep -q "^map: epoch" && break
        sleep 0.1
    done
    "$bin" cluster status --etcd "$etcd_url" --cluster bed --replication "$rf"
    echo "etcd $etcd_url; data and logs in $bed"
    for i in $(seq "$n"); do echo "node $i: $(node_ip "$i"):7400 (metrics :7480)"; done
    ;;
status)
    "$bin" cluster status --etcd "$etcd_url" --cluster bed --replication "${REPLICATION:-3}" "${@:2}"
    ;;
kill) need_root; stop_pid "node${2:?}" KILL ;;
start) need_root; alive "node${2:?}" || start_node "$2" ;;
add)
    need_root
    n=$(( $(cat "$bed/nodes") + 1 ))
    add_host "$n"
    echo "$n" > "$bed/nodes"
    start_node "$n"
    echo "node $n: $(node_ip "$n"):7400 (metrics :7480)"
    ;;
wipe)
    need_root
    stop_pid "node${2:?}" KILL
    rm -rf "$bed/node$2/data"
    start_node "$2"
    ;;
drain | undrain)
    id=$(cat "$bed/node${2:?}/data/node.id")
    "$bin" cluster "$cmd" "$id" --etcd "$etcd_url" --cluster bed
    ;;
stop-net) need_root; ip link set "hs-v${2:?}" down ;;
start-net) need_root; ip link set "hs-v${2:?}" up ;;
down)
    need_root
    n=$(cat "$bed/nodes" 2>/dev/null || echo 0)
    for i in $(seq "$n"); do stop_pid "node$i"; done
    stop_pid coordinator
    stop_pid etcd
    for i in $(seq "$n"); do ip netns del "$(ns "$i")" 2>/dev/null || true; ip link del "hs-v$i" 2>/dev/null || true; done
    ip link del hs-br0 2>/dev/null || true
    rm -rf "$bed"
    ;;
*)
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
