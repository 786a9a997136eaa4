#!/usr/bin/env bash
# Issue 16's sequence, as a new user ran it, on a one-shard node (core 0, 2 GiB, no cache)
# for each DMA pool size given (default: the smallest the config accepts, 32 MiB, and the
# default, 128 MiB):
#   1. 1 MiB PUTs (500 keys, 4 connections x 2, stream) from the generator on core 1, while
#      the CLI writes 300 small keys twice each (v1, then v2);
#   2. kill -9, restart: every acknowledged small key reads its last acknowledged value;
#   3. a mixed 1 MiB load (get=60,put=40, 12 x 2) with more CLI puts of other keys;
#   4. kill -9, restart: every acknowledged key still reads its last acknowledged value;
#   5. the idle node answers a small PUT with Ok.
# Fails (exit 1) on a lost or wrong key, a load that does not end within 30 s of its
# duration, or an idle node that refuses a PUT. Prints each load's figures (errors apart)
# and the engine's Busy count.
#
#   bench/loss-under-pressure.sh [POOL_MIB...]      D1=25s D2=30s by default
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/node-setup.sh

d1=${D1:-25s}
d2=${D2:-30s}
pools=("$@")
[ ${#pools[@]} -gt 0 ] || pools=(32 128)
failed=0
node=
trap '[ -n "$node" ] && kill -9 $node 2>/dev/null; remove_node_data' EXIT

declare -A acked

# cli_put KEY VALUE: a put with the CLI; an acknowledged one goes into the ledger.
cli_put() {
    if "$BIN/hotshard" put "$1" "$2" --addr "127.0.0.1:$port" >/dev/null 2>&1; then
        acked[$1]=$2
    fi
}

# check_ledger WHEN: every acknowledged key reads its last acknowledged value.
check_ledger() {
    local lost=0 wrong=0 got
    for k in "${!acked[@]}"; do
        got=$("$BIN/hotshard" get "$k" --addr "127.0.0.1:$port" 2>&1) || got="<$got>"
        if [ "$got" != "${acked[$k]}" ]; then
            if [[ "$got" == "<"* ]]; then lost=$((lost + 1)); else wrong=$((wrong + 1)); fi
            echo "  $1: $k read '$got', acknowledged '${acked[$k]}'"
        fi
    done
    echo "  $1: ${#acked[@]} acknowledged keys checked, $lost lost, $wrong with an older value"
    [ $((lost + wrong)) -eq 0 ] || failed=1
}

# load SECONDS_ARG OUT ARGS...: the generator on core 1; fails the run if it overruns.
load() {
    local dur=$1 out=$2
    shift 2
    local limit=$(( ${dur%s} + 30 ))
    local start=$SECONDS
    if ! timeout "$limit" taskset -c 1 "$B" run --target "hotshard://127.0.0.1:$port" "$@" \
        --duration "$dur" --cores 1 --allow-errors --quiet > "$out" 2>&1; then
        echo "  load did not end within ${limit}s (or failed): $(tail -n 2 "$out")"
        failed=1
    fi
    echo "  load of $dur ended after $((SECONDS - start)) s"
    sed -n '1,3p' "$out" | sed 's/^/    /'
    grep -E "error" "$out" | sed 's/^/    /' || true
}

# kill_and_restart: SIGKILL, then the node again on the same store.
kill_and_restart() {
    kill -9 "$node"
    wait "$node" 2>/dev/null || true
    run_node
}

store_busy() {
    "$BIN/hotshard" stats --addr "127.0.0.1:$port" | awk '/^hotshard_store_busy_total/ {s += $2} END {print s + 0}'
}

for pool in "${pools[@]}"; do
    echo "== pool_mib = $pool"
    node_profile "loss-pool$pool" 7710 7711 0
    printf '[queue]\npool_mib = %s\n' "$pool" >> "$work/node.toml"
    acked=()
    start_node
    load "$d1" "$work/load1.txt" --mix put --keys 500 --value-size 1048576 \
        --connections 4 --pipeline 2 --stream &
    loader=$!
    for i in $(seq 300); do
        cli_put "b$i" "v1-$i"
        cli_put "b$i" "v2-$i"
    done
    wait $loader || failed=1
    kill_and_restart
    check_ledger "after the first kill"
    load "$d2" "$work/load2.txt" --mix get=60,put=40 --keys 500 --value-size 1048576 \
        --connections 12 --pipeline 2 --stream &
    loader=$!
    for i in $(seq 300); do
        cli_put "c$i" "w-$i"
    done
    wait $loader || failed=1
    echo "  engine Busy answers before the second kill: $(store_busy)"
    kill_and_restart
    check_ledger "after the second kill"
    if "$BIN/hotshard" put idle-check ok --addr "127.0.0.1:$port" >/dev/null; then
        echo "  the idle node took a small PUT"
    else
        echo "  the idle node refused a small PUT"
        failed=1
    fi
    kill "$node"
    wait "$node" 2>/dev/null || true
    node=
    remove_node_data
done
[ $failed -eq 0 ] && echo "PASS: nothing acknowledged was lost" || echo "FAIL"
exit $failed
