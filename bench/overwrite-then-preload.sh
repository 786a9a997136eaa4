#!/usr/bin/env bash
# Reproduces RELIABILITY.md's by-hand check of the write stall: durable overwrites streamed
# at full speed through a one-shard 2 GiB node (core 0) for DURATION, then a preload of
# every key and a read pass. Before writes waited for GC, the preload was refused with
# NoSpace. Usage: bench/overwrite-then-preload.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-20s}
cargo build --release -q -p hotshard-bench -p hotshard-node
B=target/release/hotshard-bench
work=target/bench/overwrite
rm -rf "$work" && mkdir -p "$work"
cat > "$work/node.toml" <<TOML
[node]
data_dir = "$work/data"
data_bytes = 2147483648
cores = [0]
base_port = 7820
admin_port = 7891
[store]
cache_mib = 0
TOML
taskset -c 0 target/release/hotshard serve --config "$work/node.toml" > "$work/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null; wait 2>/dev/null' EXIT
for i in $(seq 300); do target/release/hotshard map --addr 127.0.0.1:7820 >/dev/null 2>&1 && break; sleep 0.1; done
echo "### durable PUT 4 KiB over 200K keys, 4 x 8 in flight, $d"
$B run --target hotshard://127.0.0.1:7820 --mix put --keys 200000 --pipeline 8 --stream --duration "$d" --quiet
echo "### preload every key, then GET for 3 s"
$B run --target hotshard://127.0.0.1:7820 --mix get --keys 200000 --pipeline 8 --stream --preload --duration 3s --quiet
curl -s 127.0.0.1:7891/metrics | grep -E "^hotshard_(write_stalls|no_space|gc_freed)"
