#!/usr/bin/env bash
# Issue 34's gateway cost: S3 PUT and GET through the gateway inside `hotshard serve` against
# the native client storing the same bytes on the same node, same run, rounds interleaved.
# One shard on core 0 (the gateway's threads are not pinned), the generators on core 1:
# `hotshard-bench s3` (SigV4, keep-alive HTTP/1.1, one request in flight per connection) and
# `hotshard-bench run` (native, one in flight per connection; a 64 MiB object against 1 MiB
# values with four in flight per connection, as the gateway writes and reads 4 chunks of
# 1 MiB at once). Prints MB/s, p50 and p99 per round and the medians' ratios.
# Usage: bench/s3-vs-native.sh [DURATION] [ROUNDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-5s}
rounds=${2:-3}
conns=${3:-8}
source bench/node-setup.sh
node_profile s3native 7890 7899 256
s3port=9190
cat >> "$work/node.toml" <<TOML
[s3]
listen = "127.0.0.1:$s3port"
access_key = "BENCHKEY"
secret_key = "BENCHSECRET"
chunk_kib = 1024
threads = 1
TOML
export HOTSHARD_S3_ACCESS_KEY=BENCHKEY HOTSHARD_S3_SECRET_KEY=BENCHSECRET
trap 'kill $node 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
start_node
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$s3port) 2>/dev/null && break; sleep 0.1; done

# s3 OP SIZE KEYS [--prepare]: prints "MB/s p50_us p99_us".
s3() {
    taskset -c 1 "$B" s3 --endpoint "http://127.0.0.1:$s3port" --op "$1" --size "$2" --keys "$3" \
        --connections "$conns" --duration "$d" "${@:4}" | awk '{print $8, $11, $14}'
}
# native MIX SIZE KEYS PIPELINE: prints "MB/s p50_us p99_us".
native() {
    local extra=()
    [ "$1" = get ] && extra=(--preload)
    taskset -c 1 "$B" run --target "hotshard://127.0.0.1:7890" --mix "$1" --value-size "$2" \
        --keys "$3" --connections "$conns" --pipeline "$4" --stream --duration "$d" --quiet "${extra[@]}" \
        | awk -v s="$2" '$1 ~ /^hotshard:/ {printf "%.1f %s %s\n", $2 * s / 1e6, $4, $5}'
}

declare -A res
sizes=(4096 1048576 67108864)
keys_of() { case $1 in 4096) echo 2000;; 1048576) echo 200;; *) echo 4;; esac; }
for size in "${sizes[@]}"; do
    s3 put "$size" "$(keys_of "$size")" --prepare > /dev/null   # the bucket and every key, for GET
done
for r in $(seq "$rounds"); do
    for size in "${sizes[@]}"; do
        k=$(keys_of "$size")
        nsize=$size; pipe=1
        [ "$size" -gt 1048576 ] && { nsize=1048576; pipe=4; }
        for op in put get; do
            res[s3-$op-$size-$r]=$(s3 "$op" "$size" "$k")
            res[native-$op-$size-$r]=$(native "$op" "$nsize" "$(keys_of "$nsize")" "$pipe")
            echo "round $r $op $size B: gateway ${res[s3-$op-$size-$r]} / native ${res[native-$op-$size-$r]}   (MB/s p50 p99 us)"
        done
    done
done
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
for size in "${sizes[@]}"; do
    for op in put get; do
        g=$(for r in $(seq "$rounds"); do echo "${res[s3-$op-$size-$r]}" | awk '{print $1}'; done | median)
        n=$(for r in $(seq "$rounds"); do echo "${res[native-$op-$size-$r]}" | awk '{print $1}'; done | median)
        awk -v g="$g" -v n="$n" -v o="$op" -v s="$size" \
            'BEGIN {printf "%s %s B: gateway %.1f MB/s, native %.1f MB/s, gateway / native %.2f\n", o, s, g, n, g / n}'
    done
done
