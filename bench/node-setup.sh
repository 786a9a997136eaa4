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

# run_node [BIN_DIR]: the node ($BIN unless given) on core 0 on the store in $work/data (its
# pid in $node); returns once the node gives a real answer, not just a TCP connect.
run_node() {
    local bin=${1:-$BIN}
    taskset -c 0 "$bin/hotshard" serve --config "$work/node.toml" > "$work/node.log" 2>&1 &
    node=$!
    for _ in $(seq 300); do
        "$bin/hotshard" map --addr "127.0.0.1:$port" >/dev/null 2>&1 && break
        sleep 0.1
    done
}

# start_node: run_node on a fresh store.
start_node() {
    rm -rf "$work/data"
    run_node
}

# build_old REV: builds the node and the harness at commit REV into target/ab-old/release
# (through a temporary worktree), for the A/B scripts; kept for the next run on the same REV.
build_old() {
    # Already built for this commit (target/ab-old/REV names it): reuse it.
    local want
    want=$(git rev-parse "$1")
    if [ -x target/ab-old/release/hotshard ] && [ "$(cat target/ab-old/REV 2>/dev/null)" = "$want" ]; then
        return
    fi
    rm -f target/ab-old/REV
    git worktree remove --force target/ab-src 2>/dev/null || true
    git worktree add -q --detach target/ab-src "$1"
    (cd target/ab-src && CARGO_TARGET_DIR=../ab-old cargo build --release -q -p hotshard-bench -p hotshard-node)
    git worktree remove --force target/ab-src
    echo "$want" > target/ab-old/REV
}

# fio_randread: fio randread 4 KiB QD 32 on the node's data file, core 0, for $d; prints IOPS.
fio_randread() {
    fio --name=anchor --filename="$work/data/data.img" --rw=randread --bs=4096 --iodepth=32 \
        --ioengine=io_uring --direct=1 --runtime="${d%s}" --time_based --cpus_allowed=0 \
        --size=2G --output-format=terse --terse-version=3 | awk -F';' '{print $8}'
}

# remove_node_data: deletes the run's preallocated files (2 GiB each) once the node is gone;
# results and logs stay in $work. Every script calls it from its EXIT trap.
remove_node_data() {
    rm -rf "$work/data" "$work/engine.img" "$work"/*.trace
}
