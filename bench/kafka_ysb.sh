#!/usr/bin/env bash
# bench/kafka_ysb.sh — the Yahoo streaming benchmark's events through Kafka,
# default settings: 3M events (bench/ysb/gen.lua) in 32 partitions,
# zstd-compressed, on librdkafka's mock cluster (tools/kafka-mock); the job
# keeps the views, maps each ad to its campaign and counts views per
# campaign per batch, once per format in YSB_FORMATS:
#
#   json   format = "json": each event decoded into a table
#   json-fields  the same with fields = { "event_type", "ad_id" }: only
#          those two decoded, the other five stepped over
#   bytes  format = "bytes": the same test and ad id read on a view of the
#          event's bytes (no table; one string per view, its ad id)
#
# and then bench/ysb/consumer.c, a naive single-threaded C consumer
# (librdkafka's defaults, memmem, no JSON parser) doing the same on the
# same topic: the baseline "at librdkafka's speed" is measured against, on
# whatever machine this runs. Every count of views is checked against the
# generator's.
#
#   YSB_EVENTS=1000000 bench/kafka_ysb.sh
#   YSB_FORMATS=bytes bench/kafka_ysb.sh
#   YSB_CONF="--conf memory.max=64m" bench/kafka_ysb.sh
#
# Prints events per CPU-second of the ember process (all its threads,
# utime + stime from /proc, from the partitions' assignment to the last
# event counted), events/s wall clock over the same span, and the peak RSS
# /usr/bin/time -v reports; for the C consumer, its whole run's CPU time
# (/usr/bin/time) and the wall time from its start; and ember's ratio to it.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${YSB_EVENTS:-3000000}
PARTS=32
CONF=${YSB_CONF:-}
FORMATS=${YSB_FORMATS:-json json-fields bytes}
work=$(mktemp -d /tmp/ember-bench-ysb.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    cp "$work/ember.log" /tmp/ember-bench-ysb.log 2>/dev/null || true   # for a look afterwards
    rm -rf "$work"
}
trap cleanup EXIT
[ -x tools/kafka-mock ] && [ -x ./ember ] || make --no-print-directory all >/dev/null
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_for() { # file pattern seconds
    local deadline=$((SECONDS + $3))
    until grep -q -- "$2" "$1" 2>/dev/null; do
        (( SECONDS < deadline )) || { echo "timed out waiting for '$2' in $1" >&2; exit 1; }
        sleep 0.02
    done
}

mkfifo "$work/mock.in"
sleep 100000 > "$work/mock.in" &
pids+=($!)
tools/kafka-mock --topic "ysb:$PARTS" < "$work/mock.in" > "$work/mock.out" 2> "$work/mock.log" &
pids+=($!)
wait_for "$work/mock.out" BOOTSTRAP= 10
B=$(sed -n 's/^BOOTSTRAP=//p' "$work/mock.out")

mkdir -p "$work/jobs"
luajit bench/ysb/gen.lua campaigns "$work/jobs/campaigns.lua"
luajit bench/ysb/gen.lua events "$N" 60000 "$work/events.jsonl" "$work/expected"
views=$(awk '$1 == "views" {print $2}' "$work/expected")
kcat -b "$B" -P -t ysb -z zstd -X linger.ms=20 -X batch.num.messages=10000 \
    -X sticky.partitioning.linger.ms=0 -l "$work/events.jsonl"
echo "topic ysb: $N events of $(head -1 "$work/events.jsonl" | wc -c) bytes, zstd, $PARTS partitions; $views views"

# job <format>: the job's source, keep-the-views and campaign lookup.
job() {
    if [ "$1" = bytes ]; then
        cat <<EOF
job:kafka { brokers = "$B", topic = "ysb", group = "ysb-bytes", start = "earliest", format = "bytes" }
   :map(function(v)
       if not v:find('"event_type":"view"', 1, true) then return nil end
       local at = v:find('"ad_id":"', 1, true)
       return campaigns[v:sub(at + 9, at + 44)], 1
   end)
EOF
    else
        local fields=""
        [ "$1" = json-fields ] && fields=', fields = { "event_type", "ad_id" }'
        cat <<EOF
job:kafka { brokers = "$B", topic = "ysb", group = "ysb-$1", start = "earliest", format = "json"$fields }
   :filter(function(e) return e.event_type == "view" end)
   :map(function(e) return campaigns[e.ad_id], 1 end)
EOF
    fi
}
counted() { awk '$1 == "views" { s += $2 } END { print s + 0 }' "$work/stdout"; }

# run_ember <format>: one ember run over the whole topic.
run_ember() {
    local format=$1
    rm -rf "$work/jobs/ysb.lua" "$work/cp" "$work/stdout"
    { echo 'local ember = require "ember"'
      echo "local campaigns = dofile(\"$work/jobs/campaigns.lua\")"
      echo 'local job = ember.job { name = "ysb" }'
      job "$format"
      cat <<'EOF'
   :reduce_by_key(function(a, b) return a + b end)
   :foreach_batch(function(counts)
       local n = 0
       for i = 1, #counts do n = n + counts[i][2] end
       io.write("views ", n, "\n")
       io.flush()
   end)

return job
EOF
    } > "$work/jobs/ysb.lua"
    /usr/bin/time -v -o "$work/time.txt" ./ember run --conf checkpoint.dir="$work/cp" $CONF \
        --log-level debug "$work/jobs" > "$work/stdout" 2> "$work/ember.log" &
    local tpid=$!; pids+=($tpid)
    wait_for "$work/ember.log" "assigned ysb" 60
    local pid; pid=$(pgrep -P $tpid)
    local c0 t0; c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
    local deadline=$((SECONDS + 600))
    until [ "$(counted)" -ge "$views" ]; do
        (( SECONDS < deadline )) || { echo "timed out: $(counted) of $views views" >&2; exit 1; }
        kill -0 "$pid" 2>/dev/null || { echo "ember exited" >&2; tail -5 "$work/ember.log" >&2; exit 1; }
        sleep 0.02
    done
    local t1 c1; t1=$(date +%s.%N); c1=$(cpu_ticks "$pid")
    kill -TERM "$pid"; wait $tpid || true
    local peak got; peak=$(awk -F': ' '/Maximum resident/ {print $2}' "$work/time.txt"); got=$(counted)
    awk -v n="$N" -v t0="$t0" -v t1="$t1" -v c="$((c1 - c0))" -v hz="$hz" -v peak="$peak" \
        -v got="$got" -v views="$views" -v format="$format" -v rates="$work/rates" 'BEGIN {
        cpu = c / hz; wall = t1 - t0
        printf "kafka (ysb, zstd, format = %s) -> filter views -> count per campaign: %.0f events per CPU-s, %.0f events/s wall (%.2f s, CPU %.2f s), peak RSS %.1f MiB, views %d/%d\n",
            format, n / cpu, n / wall, wall, cpu, peak / 1024, got, views
        print format, n / cpu >> rates }'
    [ "$got" = "$views" ] || { echo "counted $got views, expected $views" >&2; exit 1; }
}

: > "$work/rates"
for f in $FORMATS; do run_ember "$f"; done

cc -O2 -o "$work/consumer" bench/ysb/consumer.c -lrdkafka
t0=$(date +%s.%N)
/usr/bin/time -f "%U %S %M" -o "$work/ctime.txt" \
    timeout 600 "$work/consumer" "$B" ysb "$work/jobs/campaigns.lua" "$views" > "$work/cout"
t1=$(date +%s.%N)
got=$(awk '$1 == "views" {print $2}' "$work/cout")
read -r u s m < "$work/ctime.txt"
awk -v n="$N" -v t0="$t0" -v t1="$t1" -v u="$u" -v s="$s" -v m="$m" -v got="$got" \
    -v views="$views" -v rates="$work/rates" 'BEGIN {
    cpu = u + s; c = n / cpu
    printf "naive C consumer (librdkafka defaults, memmem), the same topic: %.0f events per CPU-s, %.0f events/s wall (%.2f s from its start, CPU %.2f s), peak RSS %.1f MiB, views %d/%d\n",
        c, n / (t1 - t0), t1 - t0, cpu, m / 1024, got, views
    while ((getline line < rates) > 0) {
        split(line, f, " ")
        printf "  ember, format = %s: %.2fx the C consumer per CPU-s\n", f[1], f[2] / c }
}'
[ "$got" = "$views" ] || { echo "the C consumer counted $got views, expected $views" >&2; exit 1; }
