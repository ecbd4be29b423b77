#!/usr/bin/env bash
# Run a sweep benchmark as K parallel shards (see benchmarks/sharding.py), then merge them:
#
#   bash benchmarks/run_sharded.sh 4 benchmarks/bench_inverse.py --images 20
#   bash benchmarks/run_sharded.sh 8 benchmarks/bench_guidance_tradeoff.py --device cuda
#
# Shard files and logs: $SHARD_DIR (default outputs/shards/<benchmark>); rerunning continues the
# shards' unfinished jobs. The merged result goes to the benchmark's default --out, or $MERGE_OUT.
# $PYTHON (default python), $SHARD_TIMEOUT (seconds per shard; default none). Exit status 1 when
# a shard failed or timed out; the finished runs of every shard are merged all the same.
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: $0 K BENCHMARK.py [benchmark args...]" >&2; exit 2; }
k=$1; bench=$2; shift 2
dir=${SHARD_DIR:-outputs/shards/$(basename "$bench" .py)}
py=${PYTHON:-python}
mkdir -p "$dir"
pids=()
for ((i = 0; i < k; i++)); do
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} timeout "${SHARD_TIMEOUT:-0}" \
        "$py" "$bench" "$@" --shard "$i/$k" --out "$dir/shard$i.json" >"$dir/shard$i.log" 2>&1 &
    pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { echo "shard $i/$k failed or timed out: see $dir/shard$i.log" >&2; status=1; }
done
shopt -s nullglob
files=("$dir"/shard*.json)
[ ${#files[@]} -gt 0 ] || { echo "no shard wrote results" >&2; exit 1; }
"$py" "$bench" --merge "${files[@]}" ${MERGE_OUT:+--out "$MERGE_OUT"} || status=1
exit $status
