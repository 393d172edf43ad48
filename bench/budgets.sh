#!/usr/bin/env bash
# The cost of the per-job budgets on the throughput pipeline (bench/pipeline.lua,
# as in bench/run): records/s of
#   with:    ./ember — LuaJIT built with LUAJIT_ENABLE_CHECKHOOK, the default
#            memory cap and batch deadline
#   without: the same sources linked with Debian's shared LuaJIT (no hook
#            checks in compiled loops), run with streaming.job.memory=0 and
#            streaming.job.batchTimeout=0
# ROUNDS runs of each, alternating, on one worker; prints the median of each
# and the difference, in records per second of busy worker time (as bench/run)
# and in records per CPU second of the worker threads (less sensitive to other
# load on the machine). BENCH_RECORDS records per run (default 10 000 000).
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
    until grep -q "source exhausted" "$d/log" 2>/dev/null; do
        (( SECONDS < deadline )) || { echo "timed out" >&2; return 1; }
        sleep 0.1
    done
    sleep 1.5
    local cpu=0 t
    for t in /proc/$pid/task/*; do
        case "$(cat "$t/comm" 2>/dev/null)" in
            worker-*|spare-*) cpu=$(awk -v a="$cpu" '{ print a + ($14 + $15) / 100 }' "$t/stat") ;;
        esac
    done
    kill -TERM $pid; wait $pid || true
    awk -v cpu="$cpu" '/batch [0-9]+: [0-9]+ records/ {
            match($0, /: [0-9]+ records/); n = substr($0, RSTART + 2, RLENGTH - 10) + 0
            match($0, /processing [0-9]+ ms/); p = substr($0, RSTART + 11, RLENGTH - 14) + 0
            recs += n; ms += p }
         END { printf "%.0f %.0f\n", (ms > 0 ? recs / (ms / 1000) : 0), (cpu > 0 ? recs / cpu : 0) }' "$d/log"
}

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }

OFF=(--conf streaming.job.memory=0 --conf streaming.job.batchTimeout=0)
with=() without=() withc=() withoutc=()
for ((i = 1; i <= ROUNDS; i++)); do
    if (( i % 2 )); then
        read -r a ac < <(one ./ember)
        read -r b bc < <(one build/shared/ember.bin "${OFF[@]}")
    else
        read -r b bc < <(one build/shared/ember.bin "${OFF[@]}")
        read -r a ac < <(one ./ember)
    fi
    with+=("$a") withc+=("$ac") without+=("$b") withoutc+=("$bc")
    echo "round $i: with $a records/s ($ac per worker CPU s), without $b records/s ($bc per worker CPU s)"
done
w=$(printf '%s\n' "${with[@]}" | median); wc_=$(printf '%s\n' "${withc[@]}" | median)
wo=$(printf '%s\n' "${without[@]}" | median); woc=$(printf '%s\n' "${withoutc[@]}" | median)
echo "budgets on (check-hook LuaJIT, caps): median $w records/s, $wc_ per worker CPU second"
echo "budgets off (Debian's shared LuaJIT): median $wo records/s, $woc per worker CPU second"
awk -v w="$w" -v wo="$wo" -v c="$wc_" -v co="$woc" \
    'BEGIN { printf "cost of the budgets: %.1f%% (busy time), %.1f%% (worker CPU)\n", (wo - w) * 100 / wo, (co - c) * 100 / co }'
