#!/usr/bin/env bash
# What a lookup per record costs: a generator of 100-byte records over 1000
# keys, each record joined with the key's campaign, three ways:
#
#   table       job:table from a Redis hash + :join(table)  (in process)
#   lookup      :lookup_redis { command = "HGET", ttl = "10s" }  (batched, cached)
#   per-record  a map calling ember.redis(url):call("HGET", ...) for each record
#
#   bench/lookup_bench.sh                       # 1,000,000 records (per-record: 100,000)
#   BENCH_RECORDS=200000 bench/lookup_bench.sh
#
# Prints, per way, the ember process's CPU time (utime + stime from /proc)
# per record and the HGETs Redis ran (INFO commandstats). Starts its own
# redis-server on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_RECORDS:-1000000}
work=$(mktemp -d /tmp/ember-lookup-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

port=$(luajit -e 'local s = require("socket").bind("127.0.0.1", 0); local _, p = s:getsockname(); s:close(); print(p)')
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --save '' --appendonly no \
    --protected-mode no --logfile "$work/redis.log" &
pids+=($!)
cli() { redis-cli -h 127.0.0.1 -p "$port" "$@"; }
until cli ping >/dev/null 2>&1; do sleep 0.05; done
url="redis://127.0.0.1:$port"

args=()
for i in $(seq 0 999); do args+=("$(printf 'key-%04d' "$i")" "campaign-$((i % 100))"); done
cli HSET ad_campaign "${args[@]}" >/dev/null

# run <name> <records> <the job's join step>
run() {
    local name=$1 n=$2 step=$3
    mkdir -p "$work/$name"
    cat > "$work/$name/bench_$name.lua" <<JOB
local ember = require "ember"
local job = ember.job { name = "bench_$name", batch_interval = "1s" }
local url = "$url"
local ads = job:table { from = { redis = url, hash = "ad_campaign" }, refresh = "10s" }
local matched = 0
local joined = job:generator { kind = "text", size = 100, keys = 1000, rate = 0, count = $n,
                               max_rate = 3000000 }
  :map(function(line) return line:sub(1, 8), line end)
joined = $step
joined:foreach_batch(function(records)
    for i = 1, #records do
        if records[i][2][2] then matched = matched + 1 end
    end
    if #records > 0 then ember.log("info", "matched " .. matched) end
end)
return job
JOB
    cli CONFIG RESETSTAT >/dev/null
    ./ember run --conf streaming.concurrentJobs=1 --conf checkpoint.dir="$work/cp-$name" \
        --log-level info "$work/$name" 2>"$work/$name.log" &
    local pid=$!
    pids+=($pid)
    local deadline=$((SECONDS + 600))
    until grep -q "matched $n\$" "$work/$name.log" 2>/dev/null; do
        (( SECONDS < deadline )) || { echo "$name: timed out" >&2; tail -5 "$work/$name.log" >&2; return 1; }
        sleep 0.2
    done
    local ticks
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    kill -TERM $pid; wait $pid || true
    local hz; hz=$(getconf CLK_TCK)
    local hget; hget=$(cli INFO commandstats | awk -F'[=,:]' '/^cmdstat_hget:/ {print $3}')
    awk -v name="$name" -v n="$n" -v t="$ticks" -v hz="$hz" -v h="${hget:-0}" 'BEGIN {
        printf "%-11s %8d records  %6.2f s CPU  %7.2f us/record  %8d HGETs (%.4f per record)\n",
               name, n, t / hz, t / hz * 1e6 / n, h, h / n }'
}

run table "$N" 'joined:join(ads)'
run lookup "$N" 'joined:lookup_redis { url = url, command = "HGET", ttl = "10s", key = function(k) return "ad_campaign", k end }'
run per-record $((N / 10)) 'joined:map(function(k, v) local r = ember.redis(url) return k, { v, r:call("HGET", "ad_campaign", k) } end)'
