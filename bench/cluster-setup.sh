# Sourced by the cluster benchmarks: etcd on 127.0.0.1:23790 and start_cluster NAME RF,
# three one-shard nodes (cores 0, 1, 0) and a coordinator; stop_cluster stops them and
# removes their stores. Set `work` before sourcing; EXTRA_TOML is appended to each node's
# [cluster] section.
cargo build --release -q -p hotshard-bench -p hotshard-node
B=target/release
rm -rf "$work" && mkdir -p "$work"
etcd_port=23790
etcd --name b --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls http://127.0.0.1:23791 \
    --initial-advertise-peer-urls http://127.0.0.1:23791 --initial-cluster b=http://127.0.0.1:23791 \
    > "$work/etcd.log" 2>&1 &
etcd_pid=$!
pids=()
stop_cluster() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
    rm -rf "$work"/n*/data
}
trap 'stop_cluster; kill $etcd_pid 2>/dev/null || true; wait 2>/dev/null || true' EXIT
sleep 1

# start_cluster NAME RF: three nodes and a coordinator; returns once a PUT is acknowledged.
start_cluster() {
    local name=$1 rf=$2 cores=(0 1 0)
    for i in 0 1 2; do
        mkdir -p "$work/n$i"
        cat > "$work/n$i/node.toml" <<TOML
[node]
data_dir = "$work/n$i/data"
data_bytes = 2147483648
cores = [${cores[$i]}]
base_port = $((7900 + 10 * i))
admin_port = $((7905 + 10 * i))
resp_port = $((7906 + 10 * i))
[cluster]
etcd = ["http://127.0.0.1:$etcd_port"]
name = "$name"
${EXTRA_TOML:-}
TOML
        "$B/hotshard" serve --config "$work/n$i/node.toml" > "$work/n$i/node.log" 2>&1 &
        pids+=($!)
    done
    "$B/hotshard" coordinator --etcd "http://127.0.0.1:$etcd_port" --cluster "$name" \
        --expect-nodes 3 --replication "$rf" > "$work/coordinator-$name.log" 2>&1 &
    pids+=($!)
    # Every node has the cluster's map (each polls etcd on its own; one without it yet
    # answers Busy, which the generator would count as errors).
    for _ in $(seq 300); do
        local ready=0
        for i in 0 1 2; do
            "$B/hotshard" map --addr "127.0.0.1:$((7900 + 10 * i))" 2>/dev/null | grep -q "^epoch [1-9]" \
                && ready=$((ready + 1))
        done
        [ $ready = 3 ] && "$B/hotshard" put probe v --addr 127.0.0.1:7900 >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "cluster $name did not form" >&2
    exit 1
}

