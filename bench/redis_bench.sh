#!/usr/bin/env bash
# Redis stream -> Lua map (cjson.decode) -> to_redis (HSET), 200-byte JSON entries.
#
#   bench/redis_bench.sh              # 500000 entries
#   BENCH_RECORDS=100000 bench/redis_bench.sh
#
# Starts its own redis-server on a free port, fills a stream with
# `redis-cli --pipe`, runs ember on it and waits until the consumer group has
# no lag and nothing pending (every entry read, written and XACKed). Prints
# wall-clock records/s and records per CPU-second of the ember process (its
# utime + stime from /proc), which is the "per core" figure; redis-server runs
# on the same machine and is not counted. ember's log is left in
# /tmp/ember-redis-bench.log.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_RECORDS:-500000}
work=$(mktemp -d /tmp/ember-redis-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    cp "$work/ember.log" /tmp/ember-redis-bench.log 2>/dev/null || true # for a look afterwards
    rm -rf "$work"
}
trap cleanup EXIT

port=$(luajit -e 'local s = require("socket").bind("127.0.0.1", 0); local _, p = s:getsockname(); s:close(); print(p)')
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --save '' --appendonly no \
    --protected-mode no --logfile "$work/redis.log" &
pids+=($!)
cli() { redis-cli -h 127.0.0.1 -p "$port" "$@"; }
until cli ping >/dev/null 2>&1; do sleep 0.05; done

# The input: N entries of one field `value`, a 200-byte JSON reading.
luajit - "$N" > "$work/fill.resp" <<'EOF'
local n = tonumber(arg[1])
local out, m = {}, 0
for i = 1, n do
    local v = string.format('{"device":"sensor-%03d","pm25":%.1f,"co2":%d,"temperature":%.1f,'
                            .. '"ts":%d,"site":"north-campus","pad":"', i % 500, (i % 997) / 10,
                            400 + i % 900, 15 + (i % 150) / 10, 1700000000000 + i)
    v = v .. string.rep("x", 198 - #v) .. '"}'
    m = m + 1
    out[m] = "*5\r\n$4\r\nXADD\r\n$8\r\nbench:in\r\n$1\r\n*\r\n$5\r\nvalue\r\n$" .. #v .. "\r\n" .. v .. "\r\n"
    if m == 10000 then io.write(table.concat(out)); out, m = {}, 0 end
end
io.write(table.concat(out, "", 1, m))
EOF
cli --pipe < "$work/fill.resp" | tail -1
echo "stream: $(cli XLEN bench:in) entries of $(cli --raw XRANGE bench:in - + COUNT 1 | tail -1 | wc -c) bytes"

mkdir -p "$work/jobs"
cat > "$work/jobs/bench.lua" <<EOF
local ember = require "ember"
local cjson = require "cjson.safe"
local job = ember.job { name = "bench", batch_interval = "1s" }

job:redis { url = "redis://127.0.0.1:$port", mode = "stream", key = "bench:in", count = 5000 }
   :map(cjson.decode)
   :filter(function(p) return p ~= nil end)
   :to_redis { url = "redis://127.0.0.1:$port",
               command = function(p) return "HSET", "last:" .. p.device, "pm25", p.pm25 end }

return job
EOF

./ember run --conf checkpoint.dir="$work/cp" --log-level debug "$work/jobs" 2> "$work/ember.log" &
pid=$!; pids+=($pid)
until grep -q "connected" "$work/ember.log" 2>/dev/null; do sleep 0.01; done
start=$(date +%s.%N)
deadline=$((SECONDS + 300))
# done when the group has read everything (lag 0) and acknowledged it (pending 0)
until [ "$(cli XINFO GROUPS bench:in | awk 'p {print; exit} /^lag$/ {p=1}')" = "0" ] &&
      [ "$(cli XPENDING bench:in ember-bench | head -1)" = "0" ]; do
    (( SECONDS < deadline )) || { echo "timed out; see $work/ember.log" >&2; exit 1; }
    sleep 0.02
done
end=$(date +%s.%N)
read -r utime stime < <(awk '{print $14, $15}' "/proc/$pid/stat")
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
hz=$(getconf CLK_TCK)
kill -TERM $pid; wait $pid || true
awk -v n="$N" -v s="$start" -v e="$end" -v u="$utime" -v st="$stime" -v hz="$hz" -v rss="$rss" 'BEGIN {
    wall = e - s; cpu = (u + st) / hz
    printf "redis stream -> map -> to_redis: %d records in %.2f s: %.0f records/s wall clock\n", n, wall, n / wall
    printf "ember CPU: %.2f s (user %.2f, sys %.2f): %.0f records/s per core\n", cpu, u / hz, st / hz, n / cpu
    printf "ember RSS at the end: %.1f MiB\n", rss / 1024 }'
