# Sourced by the bench scripts (from the repository root): builds the binaries and runs a
# one-shard node on core 0 with a 2 GiB store, the generator's core (1) left free.

# node_profile NAME PORT ADMIN_PORT CACHE_MIB: builds, sets B, work, port and admin, writes
# $work/node.toml (the work directory starts empty).
# BIN=DIR takes the binaries from DIR instead of building them (an older build, say).
node_profile() {
    if [ -z "${BIN:-}" ]; then
        cargo build --release -q -p hotshard-bench -p hotshard-node
        BIN=target/release
    fi
    B=$BIN/hotshard-bench
    work=target/bench/$1
    port=$2
    admin=$3
    rm -rf "$work" && mkdir -p "$work"
    cat > "$work/node.toml" <<TOML
[node]
data_dir = "$work/data"
data_bytes = 2147483648
cores = [0]
base_port = $2
admin_port = $3
[store]
cache_mib = $4
TOML
}

# start_node: a fresh store, the node on core 0 (its pid in $node); returns once the node
# gives a real answer, not just a TCP connect.
start_node() {
    rm -rf "$work/data"
    taskset -c 0 $BIN/hotshard serve --config "$work/node.toml" > "$work/node.log" 2>&1 &
    node=$!
    for _ in $(seq 300); do
        $BIN/hotshard map --addr "127.0.0.1:$port" >/dev/null 2>&1 && break
        sleep 0.1
    done
}

# remove_node_data: deletes the run's preallocated files (2 GiB each) once the node is gone;
# results and logs stay in $work. Every script calls it from its EXIT trap.
remove_node_data() {
    rm -rf "$work/data" "$work/engine.img" "$work"/*.trace
}
