#!/usr/bin/env bash
# The cost of the per-job budgets on the throughput pipeline (bench/pipeline.lua,
# as in bench/run): records/s of
#   with:    ./ember — LuaJIT built with LUAJIT_ENABLE_CHECKHOOK, the default
#            memory cap and batch deadline
#   without: the same sources linked with Debian's shared LuaJIT (no hook
#            checks in compiled loops), run with streaming.job.memory=0 and
#            streaming.job.batchTimeout=0
# ROUNDS runs of each, alternating, on one worker; prints the median of each
# and the difference. BENCH_RECORDS records per run (default 10 000 000).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
N=${BENCH_RECORDS:-10000000}
make --no-print-directory ember >/dev/null
make --no-print-directory OBJDIR=build/shared LUAJIT=shared build/shared/ember.bin >/dev/null
work=$(mktemp -d /tmp/ember-budgets.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# One run: prints records/s of busy worker time.
one() { # binary, extra conf...
    local bin=$1; shift
    local d
    d=$(mktemp -d "$work/run.XXXX")
    mkdir -p "$d/jobs"
    cp bench/pipeline.lua "$d/jobs/"
    BENCH_RECORDS=$N "$bin" run --conf streaming.concurrentJobs=1 --conf checkpoint.dir="$d/cp" \
        --log-level debug "$@" "$d/jobs" 2>"$d/log" &
    local pid=$!
    pids+=($pid)
    local deadline=$((SECONDS + 300))
    until grep -q "source exhausted" "$d/log"; do
        (( SECONDS < deadline )) || { echo "timed out" >&2; return 1; }
        sleep 0.1
    done
    sleep 1.5
    kill -TERM $pid; wait $pid || true
    awk '/batch [0-9]+: [0-9]+ records/ {
            match($0, /: [0-9]+ records/); n = substr($0, RSTART + 2, RLENGTH - 10) + 0
            match($0, /processing [0-9]+ ms/); p = substr($0, RSTART + 11, RLENGTH - 14) + 0
            recs += n; ms += p }
         END { printf "%.0f\n", (ms > 0 ? recs / (ms / 1000) : 0) }' "$d/log"
}

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }

with=() without=()
for ((i = 1; i <= ROUNDS; i++)); do
    if (( i % 2 )); then
        with+=("$(one ./ember)")
        without+=("$(one build/shared/ember.bin --conf streaming.job.memory=0 --conf streaming.job.batchTimeout=0)")
    else
        without+=("$(one build/shared/ember.bin --conf streaming.job.memory=0 --conf streaming.job.batchTimeout=0)")
        with+=("$(one ./ember)")
    fi
    echo "round $i: with ${with[-1]} records/s, without ${without[-1]} records/s"
done
w=$(printf '%s\n' "${with[@]}" | median)
wo=$(printf '%s\n' "${without[@]}" | median)
echo "budgets on (check-hook LuaJIT, caps): median $w records/s"
echo "budgets off (Debian's shared LuaJIT): median $wo records/s"
awk -v w="$w" -v wo="$wo" 'BEGIN { printf "cost of the budgets: %.1f%%\n", (wo - w) * 100 / wo }'
