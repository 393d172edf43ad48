#!/usr/bin/env bash
# Kafka throughput, against librdkafka's mock cluster (tools/kafka-mock):
#
#   0. Kafka -> foreach_batch doing nothing: the source's own cost
#   1. Kafka (format = "json") -> filter -> map -> to_redis (HSET), 200-byte
#      JSON records: issue 3's figure
#   2. Redis stream -> to_kafka, the same records
#   3. as 1, decoding with map(cjson.decode) instead: for comparison
#
#   bench/kafka_bench.sh                       # 1000000 records
#   BENCH_RECORDS=200000 bench/kafka_bench.sh
#   BENCH_ONLY=1 bench/kafka_bench.sh          # only that one (0 to 3)
#   BENCH_REPEAT=5 BENCH_ONLY=1 bench/kafka_bench.sh   # runs of 1 (default 3; the median counts)
#
# Starts its own kafka-mock and redis-server on free loopback ports. The
# mock keeps only about 5 MiB per partition, so the topic gets one partition
# per 16000 records (and the sink's topic four times as many: the producer's
# sticky partitioner fills them unevenly). Prints wall-clock records/s and records per CPU-second
# of the ember process (utime + stime from /proc: the "per core" figure, all
# of ember's threads counted; the mock, redis-server and kcat run on the
# same machine and are not), and ember's RSS sampled while it works. The
# Kafka -> ... pipelines also print their steady state (see measure).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_RECORDS:-1000000}
ONLY=${BENCH_ONLY:-}
REPEAT=${BENCH_REPEAT:-3}   # runs of pipeline 1
CONF=${BENCH_CONF:-"--conf streaming.batchInterval=200ms --conf memory.max=64m"}   # ember's --conf flags
PARTS=$(( (N + 15999) / 16000 ))
work=$(mktemp -d /tmp/ember-kafka-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    for f in "$work"/*.log; do cp "$f" "/tmp/ember-kafka-bench-$(basename "$f")" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

[ -x tools/kafka-mock ] && [ -x ./ember ] || make --no-print-directory all >/dev/null
hz=$(getconf CLK_TCK)
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_for() { # file pattern seconds
    local deadline=$((SECONDS + $3))
    until grep -q -- "$2" "$1" 2>/dev/null; do
        (( SECONDS < deadline )) || { echo "timed out waiting for '$2' in $1" >&2; exit 1; }
        sleep 0.02
    done
}

# --- servers -------------------------------------------------------------
mkfifo "$work/mock.in"
sleep 100000 > "$work/mock.in" &   # holds the mock's stdin open; it exits when this ends
pids+=($!)
tools/kafka-mock --topic "bench:$PARTS" --topic "sunk:$((PARTS * 4))" < "$work/mock.in" \
    > "$work/mock.out" 2> "$work/mock.log" &
pids+=($!)
wait_for "$work/mock.out" BOOTSTRAP= 10
B=$(sed -n 's/^BOOTSTRAP=//p' "$work/mock.out")

port=$(luajit -e 'local s = require("socket").bind("127.0.0.1", 0); local _, p = s:getsockname(); s:close(); print(p)')
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --save '' --appendonly no \
    --protected-mode no --logfile "$work/redis.log" &
pids+=($!)
cli() { redis-cli -h 127.0.0.1 -p "$port" "$@"; }
until cli ping >/dev/null 2>&1; do sleep 0.05; done

# The records: 200-byte JSON readings, one per line.
luajit - "$N" > "$work/records.txt" <<'EOF'
local n = tonumber(arg[1])
local out, m = {}, 0
for i = 1, n do
    local v = string.format('{"device":"sensor-%03d","pm25":%.1f,"co2":%d,"temperature":%.1f,'
                            .. '"ts":%d,"site":"north-campus","pad":"', i % 500, (i % 997) / 10,
                            400 + i % 900, 15 + (i % 150) / 10, 1700000000000 + i)
    m = m + 1
    out[m] = v .. string.rep("x", 198 - #v) .. '"}'
    if m == 10000 then io.write(table.concat(out, "\n"), "\n"); out, m = {}, 0 end
end
if m > 0 then io.write(table.concat(out, "\n", 1, m), "\n") end
EOF

# Runs ember on $work/jobs until the shell condition $1 holds; prints the
# figures as $2, once ember logged $3. With $4, a command printing how many
# records are done so far, it also prints the steady state: CPU and time
# from the moment a fifth of the records were done to the end, so start-up
# (group join, JIT compilation, the heap growing to its working size: about
# 50k page faults for 1M records) is left out, as a long-running job has it.
measure() {
    local done_cond=$1 label=$2 progress=${4:-}
    ./ember run --conf checkpoint.dir="$work/cp" \
        $CONF --log-level debug "$work/jobs" 2> "$work/ember.log" &
    local pid=$!; pids+=($pid)
    wait_for "$work/ember.log" "$3" 30
    local c0 t0 peak=0 rss deadline=$((SECONDS + 600)) cm="" tm="" nm=0 d
    c0=$(cpu_ticks $pid); t0=$(date +%s.%N)
    until eval "$done_cond"; do
        (( SECONDS < deadline )) || { echo "timed out; see /tmp/ember-kafka-bench-ember.log" >&2; exit 1; }
        rss=$(rss_kb $pid); (( rss > peak )) && peak=$rss
        if [ -n "$progress" ] && [ -z "$cm" ]; then
            d=$($progress)
            if (( d * 5 >= N )); then cm=$(cpu_ticks $pid); tm=$(date +%s.%N); nm=$d; fi
        fi
        sleep 0.05
    done
    local t1 c1; t1=$(date +%s.%N); c1=$(cpu_ticks $pid)
    rss=$(rss_kb $pid)
    kill -TERM $pid; wait $pid || true
    awk -v n="$N" -v t0="$t0" -v t1="$t1" -v c="$((c1 - c0))" -v hz="$hz" -v peak="$peak" \
        -v rss="$rss" -v label="$label" -v tm="$tm" -v cm="$(( ${cm:-0} ))" -v c1="$c1" \
        -v nm="$nm" 'BEGIN {
        wall = t1 - t0; cpu = c / hz
        printf "%s: %d records in %.2f s: %.0f records/s wall clock\n", label, n, wall, n / wall
        printf "  ember CPU %.2f s: %.0f records/s per core\n", cpu, n / cpu
        if (tm != "" && c1 > cm)
            printf "  steady state (the last %d records): %.0f records/s wall clock, %.0f records/s per core\n", \
                n - nm, (n - nm) / (t1 - tm), (n - nm) / ((c1 - cm) / hz)
        printf "  ember RSS: peak %.1f MiB while working, %.1f MiB at the end\n", peak / 1024, rss / 1024 }'
}

# Sum of the records of every batch so far.
batched() { awk '/batch [0-9]+: [0-9]+ records/ { match($0, /: [0-9]+ records/); s += substr($0, RSTART + 2, RLENGTH - 10) } END { print s + 0 }' "$work/ember.log"; }

kcat -b "$B" -P -t bench -X sticky.partitioning.linger.ms=0 -l "$work/records.txt"
echo "topic bench: $N records of $(head -1 "$work/records.txt" | wc -c) bytes in $PARTS partitions"
mkdir -p "$work/jobs"

# --- 0. The Kafka source alone: Kafka -> count --------------------------
if [ -z "$ONLY" ] || [ "$ONLY" = 0 ]; then
cat > "$work/jobs/count.lua" <<EOF
local ember = require "ember"
local job = ember.job { name = "count" }

job:kafka { brokers = "$B", topic = "bench", group = "count", start = "earliest",
            ["kafka.fetch.wait.max.ms"] = 10 }
   :foreach_batch(function(records) end)

return job
EOF
measure '[ "$(batched)" -ge "$N" ]' "kafka -> foreach_batch (the source alone)" "assigned bench" \
    batched
rm -f "$work/jobs/count.lua"
fi

# --- 1. Kafka -> Lua -> Redis -------------------------------------------
# The job of issue 3's figure: decode, filter the valid readings, clean
# them (pm25 to one decimal), store the last reading per device. $1 is the
# source's extra option, $2 the decoding step (empty with format = "json").
pipeline_job() {
cat > "$work/jobs/bench.lua" <<EOF
local ember = require "ember"
local cjson = require "cjson.safe"
local job = ember.job { name = "bench" }

job:kafka { brokers = "$B", topic = "bench", group = "bench-$3", start = "earliest",
            ["kafka.fetch.wait.max.ms"] = 10$1 }$2
   :filter(function(p) return p ~= nil and type(p.pm25) == "number" and p.pm25 >= 0 end)
   :map(function(p) p.pm25 = math.floor(p.pm25 * 10 + 0.5) / 10 return p end)
   :to_redis { url = "redis://127.0.0.1:$port",
               command = function(p) return "HSET", "last:" .. p.device, "pm25", p.pm25 end }

return job
EOF
}
if [ -z "$ONLY" ] || [ "$ONLY" = 1 ]; then
# Run REPEAT times (a new consumer group each, reading the topic again): on
# a shared 2-core machine one run varies by +-15%, so the median is the figure.
runs=() steady=()
for i in $(seq 1 "$REPEAT"); do
    pipeline_job ', format = "json"' '' "json$i"
    measure '[ "$(batched)" -ge "$N" ]' "kafka (format=json) -> filter/map -> to_redis, run $i" \
        "assigned bench" batched > "$work/measure.out"
    cat "$work/measure.out"
    runs+=("$(sed -n 's/^  ember CPU.*: \([0-9]*\) records\/s per core/\1/p' "$work/measure.out")")
    steady+=("$(sed -n 's/^  steady state.*, \([0-9]*\) records\/s per core/\1/p' "$work/measure.out")")
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
echo "  median of $REPEAT runs: $(median "${runs[@]}") records/s per core, steady state $(median "${steady[@]}")"
echo "  redis: $(cli --raw EVAL "return #redis.call('KEYS', 'last:*')" 0) devices written"
rm -f "$work/jobs/bench.lua"
fi

# --- 2. Redis stream -> Kafka --------------------------------------------
if [ -z "$ONLY" ] || [ "$ONLY" = 2 ]; then
awk '{ printf "*5\r\n$4\r\nXADD\r\n$8\r\nbench:in\r\n$1\r\n*\r\n$5\r\nvalue\r\n$%d\r\n%s\r\n", length($0), $0 }' \
    "$work/records.txt" | cli --pipe | tail -1
mkdir -p "$work/jobs"
cat > "$work/jobs/tokafka.lua" <<EOF
local ember = require "ember"
local job = ember.job { name = "tokafka" }

job:redis { url = "redis://127.0.0.1:$port", mode = "stream", key = "bench:in", count = 5000 }
   :to_kafka { brokers = "$B", topic = "sunk",
               key = function(v) return v:sub(12, 21) end }   -- the device: spreads evenly

return job
EOF
# done when the group read everything (lag 0) and acknowledged it (pending 0):
# an entry is XACKed only after its batch's Kafka delivery reports came back
drained='[ "$(cli XINFO GROUPS bench:in | awk '"'"'p {print; exit} /^lag$/ {p=1}'"'"')" = "0" ] &&
         [ "$(cli XPENDING bench:in ember-tokafka | head -1)" = "0" ]'
measure "$drained" "redis stream -> to_kafka" "connected"
echo "  topic sunk: $(kcat -b "$B" -C -t sunk -e -q -o beginning -f '\n' | wc -l) records"
fi

# --- 3. As 1, with map(cjson.decode) ------------------------------------
if [ -z "$ONLY" ] || [ "$ONLY" = 3 ]; then
cli EVAL "for _, k in ipairs(redis.call('KEYS', 'last:*')) do redis.call('DEL', k) end" 0 >/dev/null
pipeline_job '' '
   :map(cjson.decode)' cjson
measure '[ "$(batched)" -ge "$N" ]' "kafka -> map(cjson.decode) -> filter/map -> to_redis" \
    "assigned bench" batched
echo "  redis: $(cli --raw EVAL "return #redis.call('KEYS', 'last:*')" 0) devices written"
rm -f "$work/jobs/bench.lua"
fi
