#!/usr/bin/env bash
# bench/ysb/run.sh — the Yahoo Streaming Benchmark: jobs/ysb.lua (built-in
# operators: table join, event-time windows, to_redis) against
# bench/ysb/handwritten.lua (an upvalue table, window keys by hand,
# per-batch HINCRBY) in the same run, on librdkafka's mock cluster
# (tools/kafka-mock) and a real redis-server.
#
#   YSB_EVENTS=3000000 YSB_RATE="500000 50000" YSB_SECONDS=30 bench/ysb/run.sh
#   YSB_PHASES=paced YSB_RATE=100000 YSB_BATCH=200ms bench/ysb/run.sh
#
# 1. Backlog: YSB_EVENTS events (bench/ysb/gen.lua, event times over 60 s)
#    in YSB_PARTS partitions, zstd; each job reads them all. Prints events
#    per CPU-second of the ember process (all threads, utime + stime from
#    /proc, from the assignment to the batch that held the last event),
#    events/s over the same span, peak RSS (/usr/bin/time -v) and whether
#    every (campaign, window) count in Redis equals what was sent
#    (bench/ysb/check.lua).
# 2. Paced, for each rate in YSB_RATE (default 500,000 and 50,000): the
#    generator writes that many events/s for YSB_SECONDS, each
#    stamped with the wall clock, through kcat while the job runs (batch
#    interval YSB_BATCH); the rate reached, exactness, and the latency
#    time_updated - window end (p50, p99) over the windows wholly inside the
#    run. Generator, broker, Redis and ember share the machine.
# Both jobs get kafka.fetch.wait.max.ms = 10, as the specs' clients of the
# mock cluster do (librdkafka's default is 500 ms).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${YSB_EVENTS:-2000000}
PARTS=${YSB_PARTS:-16}
RATES=${YSB_RATE:-500000 50000}   # paced runs, one per rate
SECS=${YSB_SECONDS:-30}
BATCH=${YSB_BATCH:-100ms}
PHASES=${YSB_PHASES:-backlog paced}     # either or both
work=$(mktemp -d /tmp/ember-bench-ysb.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do   # ember runs under /usr/bin/time: its child first
        for c in $(pgrep -P "$p" 2>/dev/null); do kill -9 "$c" 2>/dev/null || true; done
        kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
    done
    cp "$work"/ember-*.log /tmp/ 2>/dev/null || true   # for a look afterwards
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
# records the job's batches took in so far (its debug batch lines)
taken() { awk '/ batch [0-9]+: [0-9]+ records/ { match($0, /: [0-9]+ records/);
                 s += substr($0, RSTART + 2, RLENGTH - 10) } END { print s + 0 }' "$1"; }

# Kafka: the backlog topic and one paced topic per job and rate.
mkfifo "$work/mock.in"
sleep 100000 > "$work/mock.in" &
pids+=($!)
topics=(--topic "ad-events:$PARTS")
for r in $RATES; do
    topics+=(--topic "paced-ysb-$r:$PARTS" --topic "paced-ysb_handwritten-$r:$PARTS")
done
tools/kafka-mock "${topics[@]}" < "$work/mock.in" > "$work/mock.out" 2> "$work/mock.log" &
pids+=($!)
wait_for "$work/mock.out" BOOTSTRAP= 10
B=$(sed -n 's/^BOOTSTRAP=//p' "$work/mock.out")

# Redis on a free port.
for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 30000))
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$work" --logfile "$work/redis.log" > /dev/null 2>&1 &
    rpid=$!
    pids+=($rpid)
    for _ in $(seq 100); do    # up to 10 s on a loaded machine
        redis-cli -p "$port" PING >/dev/null 2>&1 && break 2
        kill -0 $rpid 2>/dev/null || break
        sleep 0.1
    done
    kill -9 $rpid 2>/dev/null || true
    rpid=
done
[ -n "$rpid" ] || { echo "redis-server did not start" >&2; exit 1; }
cli="redis-cli -p $port"
luajit bench/ysb/gen.lua setup > "$work/setup.redis"
reset_redis() { $cli FLUSHALL >/dev/null; $cli < "$work/setup.redis" >/dev/null; }

if [[ " $PHASES " == *" backlog "* ]]; then
luajit bench/ysb/gen.lua events "$N" 60000 "$work/events.jsonl" "$work/expected.txt"
views=$(awk '$1 == "views" {print $2}' "$work/expected.txt")
kcat -b "$B" -P -t ad-events -z zstd -X linger.ms=20 -X batch.num.messages=10000 \
    -X sticky.partitioning.linger.ms=0 -l "$work/events.jsonl"
echo "ad-events: $N events of $(head -1 "$work/events.jsonl" | wc -c) bytes, zstd, $PARTS partitions; $views views in $(( $(wc -l < "$work/expected.txt") - 2 )) (campaign, 10 s window)s"
rm -f "$work/events.jsonl"
fi

# start_job NAME SCRIPT TOPIC BATCH DELAY: ember with that one job; sets epid, tpid.
start_job() {
    rm -rf "$work/jobs" "$work/cp"; mkdir -p "$work/jobs"
    cp "$2" "$work/jobs/$1.lua"
    EMBER_KAFKA_BROKERS="$B" EMBER_YSB_REDIS="redis://127.0.0.1:$port" EMBER_YSB_TOPIC="$3" \
    EMBER_YSB_GROUP="$1-$3" EMBER_YSB_BATCH="$4" EMBER_YSB_DELAY="$5" EMBER_YSB_LATENESS=1h \
    EMBER_YSB_FETCH_WAIT_MS=10 \
        /usr/bin/time -v -o "$work/time-$1.txt" ./ember run --conf checkpoint.dir="$work/cp" \
        --conf streaming.blockInterval=50ms --log-level debug "$work/jobs" > /dev/null 2> "$work/ember-$1.log" &
    tpid=$!; pids+=($tpid)
    wait_for "$work/ember-$1.log" "assigned $3" 60
    epid=$(pgrep -P $tpid)
}
stop_job() { kill -TERM "$epid" 2>/dev/null || true; wait "$tpid" || true; }
peak_mib() { awk -F': ' '/Maximum resident/ {printf "%.1f", $2 / 1024}' "$work/time-$1.txt"; }
wait_taken() { # name count seconds
    local deadline=$((SECONDS + $3))
    until [ "$(taken "$work/ember-$1.log")" -ge "$2" ]; do
        (( SECONDS < deadline )) || { echo "$1: timed out, $(taken "$work/ember-$1.log") of $2 events" >&2; return 1; }
        kill -0 "$epid" 2>/dev/null || { echo "$1: ember exited" >&2; tail -5 "$work/ember-$1.log" >&2; return 1; }
        sleep 0.05
    done
}

for job in ysb:jobs/ysb.lua ysb_handwritten:bench/ysb/handwritten.lua; do
    [[ " $PHASES " == *" backlog "* ]] || break
    name=${job%%:*}; script=${job#*:}
    reset_redis
    # the backlog's event times span 60 s and partitions are read unevenly:
    # a watermark delay of the whole span keeps every record on time
    start_job "$name" "$script" ad-events 1s 60s
    c0=$(cpu_ticks "$epid"); t0=$(date +%s.%N)
    if wait_taken "$name" "$N" 600; then
        t1=$(date +%s.%N); c1=$(cpu_ticks "$epid")
        stop_job
        exact=$(luajit bench/ysb/check.lua "$work/expected.txt" "$cli" | head -1) || true
        awk -v n="$N" -v t0="$t0" -v t1="$t1" -v c="$((c1 - c0))" -v hz="$hz" \
            -v peak="$(peak_mib "$name")" -v name="$name" -v exact="$exact" 'BEGIN {
            cpu = c / hz; wall = t1 - t0
            printf "ysb backlog, %s: %.0f events per CPU-s, %.0f events/s (%.2f s, CPU %.2f s), peak RSS %s MiB, %s\n",
                name, n / cpu, n / wall, wall, cpu, peak, exact }'
    else
        stop_job
    fi
done

for RATE in $RATES; do
for job in ysb:jobs/ysb.lua ysb_handwritten:bench/ysb/handwritten.lua; do
    [[ " $PHASES " == *" paced "* ]] || break
    name=${job%%:*}; script=${job#*:}
    reset_redis
    start_job "$name" "$script" "paced-$name-$RATE" "$BATCH" 0
    sleep 1 # the first batches: the table loaded, the pool connected
    from=$(date +%s%3N)
    c0=$(cpu_ticks "$epid")
    luajit bench/ysb/gen.lua paced "$RATE" "$SECS" "$work/expected-paced.txt" 2> "$work/gen.txt" |
        kcat -b "$B" -P -t "paced-$name-$RATE" -z ${YSB_CODEC:-lz4} -X linger.ms=5 -X batch.num.messages=10000 \
            -X queue.buffering.max.messages=1000000 -X sticky.partitioning.linger.ms=0
    to=$(date +%s%3N)
    sent=$(awk '$1 == "events" {print $2}' "$work/expected-paced.txt")
    # a job that falls behind gets as long again as the run to catch up
    if wait_taken "$name" "$sent" "$((SECS + 30))"; then
        c1=$(cpu_ticks "$epid")
        stop_job
        out=$(luajit bench/ysb/check.lua "$work/expected-paced.txt" "$cli" "$from" "$to") || true
        echo "ysb paced, $name, batch interval $BATCH: asked $RATE events/s, $(cat "$work/gen.txt"); $(awk -v c="$((c1 - c0))" -v hz="$hz" -v n="$sent" 'BEGIN { printf "%.0f events per CPU-s", n / (c / hz) }'), peak RSS $(peak_mib "$name") MiB; $(echo "$out" | tr '\n' ';' | sed 's/;$//; s/;/; /')"
    else
        got=$(taken "$work/ember-$name.log")
        stop_job
        echo "ysb paced, $name, batch interval $BATCH: asked $RATE events/s, $(cat "$work/gen.txt"); NOT KEPT UP: the job took in $got of them by $((SECS + 30)) s after the generator stopped"
    fi
done
done
