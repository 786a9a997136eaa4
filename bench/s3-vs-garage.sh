#!/usr/bin/env bash
# Issue 34's peer: hotshard's S3 gateway (inside `serve`, one shard on core 0) against Garage
# (single node, replication 1, data and metadata fsync on, as hotshard acknowledges only
# durable writes; also pinned to core 0) on the same file system, the same generator
# (`hotshard-bench s3` on core 1, SigV4, 8 keep-alive connections), rounds interleaved:
# PUT and GET of 4 KiB, 1 MiB and 64 MiB objects, and LIST of 1,000 keys from a bucket of
# LIST_OBJECTS objects. Garage is run, never linked (AGPL): `cargo install garage --locked`.
# Usage: bench/s3-vs-garage.sh [DURATION] [ROUNDS]   (env GARAGE: its binary; LIST_OBJECTS)
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-5s}
rounds=${2:-3}
garage=${GARAGE:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}
list_objects=${LIST_OBJECTS:-10000}
[ -x "$garage" ] || { echo "no garage binary (cargo install garage --locked)"; exit 1; }
source bench/node-setup.sh
node_profile s3garage 7870 7879 256
cat >> "$work/node.toml" <<TOML
[s3]
listen = "127.0.0.1:9180"
access_key = "BENCHKEY"
secret_key = "BENCHSECRET"
chunk_kib = 1024
TOML
g=$work/garage
mkdir -p "$g"
cat > "$g/garage.toml" <<TOML
metadata_dir = "$PWD/$g/meta"
data_dir = "$PWD/$g/data"
db_engine = "lmdb"
replication_factor = 1
metadata_fsync = true
data_fsync = true
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:3900"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:3903"
TOML
taskset -c 0 "$garage" -c "$g/garage.toml" server > "$g/garage.log" 2>&1 &
garage_pid=$!
trap 'kill $node $garage_pid 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data; rm -rf "$g/data" "$g/meta"' EXIT
start_node
G() { "$garage" -c "$g/garage.toml" "$@"; }
for _ in $(seq 100); do G status > /dev/null 2>&1 && break; sleep 0.2; done
id=$(G status 2>/dev/null | grep -oE '^[0-9a-f]{16}' | head -1)
G layout assign -z dc1 -c 10G "$id" > /dev/null
G layout apply --version 1 > /dev/null
keyinfo=$(G key create bench-key)
gkey=$(echo "$keyinfo" | awk '/Key ID/ {print $NF}')
gsecret=$(echo "$keyinfo" | awk '/Secret key/ {print $NF}')
G bucket create bench > /dev/null
G bucket allow --read --write --owner bench --key bench-key > /dev/null

# load NAME OP SIZE KEYS [--prepare]: prints "MB/s p50_us p99_us ops/s".
load() {
    local name=$1; shift
    if [ "$name" = hotshard ]; then
        HOTSHARD_S3_ACCESS_KEY=BENCHKEY HOTSHARD_S3_SECRET_KEY=BENCHSECRET taskset -c 1 "$B" s3 \
            --endpoint http://127.0.0.1:9180 --op "$1" --size "$2" --keys "$3" --duration "$d" "${@:4}"
    else
        HOTSHARD_S3_ACCESS_KEY=$gkey HOTSHARD_S3_SECRET_KEY=$gsecret taskset -c 1 "$B" s3 \
            --endpoint http://127.0.0.1:3900 --op "$1" --size "$2" --keys "$3" --duration "$d" "${@:4}"
    fi | awk '{print $8, $11, $14, $6}'
}
keys_of() { case $1 in 4096) echo 2000;; 1048576) echo 200;; *) echo 4;; esac; }
sizes=(4096 1048576 67108864)
for t in hotshard garage; do
    for size in "${sizes[@]}"; do load "$t" put "$size" "$(keys_of "$size")" --prepare > /dev/null; done
done
declare -A res
for r in $(seq "$rounds"); do
    for size in "${sizes[@]}"; do
        for op in put get; do
            for t in hotshard garage; do
                res[$t-$op-$size-$r]=$(load "$t" "$op" "$size" "$(keys_of "$size")")
            done
            echo "round $r $op $size B: hotshard ${res[hotshard-$op-$size-$r]} / garage ${res[garage-$op-$size-$r]}   (MB/s p50 p99 us, ops/s)"
        done
    done
done
# LIST: a bucket of $list_objects 1 KiB objects on each, then pages of 1,000 after random keys.
for t in hotshard garage; do load "$t" put 1024 "$list_objects" --prepare > /dev/null; done
for r in $(seq "$rounds"); do
    for t in hotshard garage; do res[$t-list-$r]=$(load "$t" list 0 "$list_objects"); done
    echo "round $r LIST 1000 of $list_objects: hotshard ${res[hotshard-list-$r]} / garage ${res[garage-list-$r]}"
done
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
col() { for r in $(seq "$rounds"); do echo "${res[$1-$r]}" | awk -v c="$2" '{print $c}'; done | median; }
for size in "${sizes[@]}"; do
    for op in put get; do
        awk -v h="$(col hotshard-$op-$size 1)" -v g="$(col garage-$op-$size 1)" \
            -v hp="$(col hotshard-$op-$size 2)" -v gp="$(col garage-$op-$size 2)" -v o="$op" -v s="$size" \
            'BEGIN {printf "%s %s B: hotshard %.1f MB/s (p50 %d us), garage %.1f MB/s (p50 %d us), hotshard / garage %.2f\n", o, s, h, hp, g, gp, h / g}'
    done
done
awk -v h="$(col hotshard-list 2)" -v g="$(col garage-list 2)" -v h9="$(col hotshard-list 3)" -v g9="$(col garage-list 3)" \
    'BEGIN {printf "LIST 1000: hotshard p50 %d us p99 %d us, garage p50 %d us p99 %d us\n", h, h9, g, g9}'
