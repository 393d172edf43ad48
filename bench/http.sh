#!/usr/bin/env bash
# The HTTP server's figures (issue 10):
#  1. the cost of serving: the make bench pipeline (generator -> map ->
#     filter -> reduce_by_key -> count, one worker) at a steady rate, with
#     ui.enabled = false, and with the server on, /metrics scraped every
#     second and the web UI's requests (jobs, receivers, statistics, readyz,
#     the job's batches) every 2 s. Three runs each, alternating. On this
#     shared machine the pipeline's throughput varies by more than 1% from
#     run to run, so the cost is measured where it is spent: the CPU time
#     of the HTTP thread (and of the clock thread, which builds the
#     snapshots) as a share of one core, beside the throughput medians; and
#     the RSS a small job's driver has with and without serving.
#  2. /metrics and /api/v1/jobs with 200 jobs: median, 95th percentile and
#     worst of 50 requests each (curl's time_total).
set -euo pipefail
cd "$(dirname "$0")/.."
EMBER=$PWD/ember
work=$(mktemp -d /tmp/ember-http-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

wait_log() {
    local deadline=$((SECONDS + $3))
    until grep -q -- "$2" "$1" 2>/dev/null; do
        (( SECONDS < deadline )) || { echo "timed out waiting for '$2' in $1" >&2; return 1; }
        sleep 0.05
    done
}
port_of() { grep -o 'http://127.0.0.1:[0-9]*' "$1" | head -1 | grep -o '[0-9]*$'; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# One run of the bench pipeline at a steady BENCH_RATE (below what one
# worker does, so memory is steady and the run lasts RECORDS / RATE s).
# Prints "busy_rate rss_kb http_cpu_ms clock_cpu_ms seconds".
pipeline() { # serve: 0 or 1
    local serve=$1 dir=$work/run.$RANDOM
    mkdir -p "$dir/jobs"
    cp bench/pipeline.lua "$dir/jobs/"
    BENCH_RATE=$RATE BENCH_RECORDS=$RECORDS $EMBER run --conf streaming.concurrentJobs=1 \
        --conf checkpoint.dir="$dir/cp" --conf ui.port=0 \
        --conf ui.enabled=$([ "$serve" = 1 ] && echo true || echo false) \
        --log-level debug "$dir/jobs" 2>"$dir/log" &
    local pid=$! scraper=
    pids+=($pid)
    wait_log "$dir/log" "running 1 jobs" 20
    if [ "$serve" = 1 ]; then
        wait_log "$dir/log" "HTTP API and web UI on" 20
        local port; port=$(port_of "$dir/log")
        ( n=0; while :; do
              curl -s -o /dev/null "http://127.0.0.1:$port/metrics"
              if (( n % 2 == 0 )); then # what the open web UI asks every 2 s
                  for p in /api/v1/jobs /api/v1/receivers /api/v1/statistics /readyz \
                           /api/v1/jobs/bench_pipeline/batches; do
                      curl -s -o /dev/null "http://127.0.0.1:$port$p"
                  done
              fi
              n=$((n + 1)); sleep 1
          done ) &
        scraper=$!
        pids+=($scraper)
    fi
    local t0=$SECONDS
    sleep $(( RECORDS / RATE * 3 / 4 )) # the steady state, before the source ends
    local rss; rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    local http=0 clock=0 tck; tck=$(getconf CLK_TCK)
    for t in /proc/$pid/task/*; do
        local name; name=$(cat "$t/comm")
        local ticks; ticks=$(awk '{ print $14 + $15 }' "$t/stat")
        [ "$name" = MHD-single ] && http=$(( ticks * 1000 / tck ))
        [ "$name" = clock ] && clock=$(( ticks * 1000 / tck ))
    done
    local secs=$(( SECONDS - t0 ))
    [ -n "$scraper" ] && kill "$scraper" 2>/dev/null
    wait_log "$dir/log" "source exhausted" 300
    sleep 1.5
    kill -TERM $pid; wait $pid || true
    awk -v rss="$rss" -v http="$http" -v clock="$clock" -v secs="$secs" '/batch [0-9]+: [0-9]+ records/ {
            match($0, /: [0-9]+ records/); n = substr($0, RSTART + 2, RLENGTH - 10) + 0
            match($0, /processing [0-9]+ ms/); p = substr($0, RSTART + 11, RLENGTH - 14) + 0
            recs += n; ms += p }
         END { printf "%.0f %d %d %d %d\n", (ms > 0 ? recs / (ms / 1000) : 0), rss, http, clock, secs }' \
        "$dir/log"
    rm -rf "$dir"
}

RATE=${BENCH_HTTP_RATE:-500000}
RECORDS=${BENCH_HTTP_RECORDS:-20000000}
echo "== cost of serving: bench pipeline at $RATE records/s for $((RECORDS / RATE)) s, ui off and on (a /metrics scrape every second, the web UI's requests every 2 s), 3 runs each"
: > "$work/off"; : > "$work/on"
for i in 1 2 3; do
    pipeline 0 >> "$work/off"
    pipeline 1 >> "$work/on"
done
med_col() { cut -d' ' -f"$1" "$2" | median; }
printf "ui off: busy-worker throughput %s records/s (runs: %s), RSS %s kB\n" "$(med_col 1 "$work/off")" \
    "$(cut -d' ' -f1 "$work/off" | tr '\n' ' ')" "$(med_col 2 "$work/off")"
printf "ui on : busy-worker throughput %s records/s (runs: %s), RSS %s kB\n" "$(med_col 1 "$work/on")" \
    "$(cut -d' ' -f1 "$work/on" | tr '\n' ' ')" "$(med_col 2 "$work/on")"
awk '{ h += $3; c += $4; s += $5 } END {
        printf "HTTP thread: %.0f ms CPU in %d s = %.3f%% of one core; clock thread (publishes the snapshots): %.3f%%\n",
               h, s, h / (s * 10), c / (s * 10) }' "$work/on"
echo "(the pipeline's RSS is mostly blocks in flight and varies by megabytes from run to run; the next figure isolates the server)"

# RSS with a small job, whose blocks are a few kB: the server's own memory.
small() { # serve: 0 or 1; prints the RSS after 30 s
    local serve=$1 dir=$work/small.$RANDOM
    mkdir -p "$dir/jobs"
    cat > "$dir/jobs/small.lua" <<'JOB'
local ember = require "ember"
local job = ember.job { name = "small", batch_interval = "1s" }
job:generator { kind = "text", size = 100, keys = 1000, rate = 1000 }:count():foreach_batch(function() end)
return job
JOB
    $EMBER run --conf checkpoint.dir="$dir/cp" --conf ui.port=0         --conf ui.enabled=$([ "$serve" = 1 ] && echo true || echo false) "$dir/jobs" 2>"$dir/log" &
    local pid=$! scraper=
    pids+=($pid)
    wait_log "$dir/log" "running 1 jobs" 20
    if [ "$serve" = 1 ]; then
        wait_log "$dir/log" "HTTP API and web UI on" 20
        local port; port=$(port_of "$dir/log")
        ( while :; do
              for p in /metrics /api/v1/jobs /api/v1/receivers /api/v1/statistics /readyz \
                       /api/v1/jobs/small/batches /; do
                  curl -s -o /dev/null "http://127.0.0.1:$port$p"
              done
              sleep 1
          done ) &
        scraper=$!
        pids+=($scraper)
    fi
    sleep 30
    awk '/^VmRSS/ {print $2}' "/proc/$pid/status"
    [ -n "$scraper" ] && kill "$scraper" 2>/dev/null
    kill -TERM $pid; wait $pid || true
    rm -rf "$dir"
}
off=$(small 0); on=$(small 1)
echo "a small job for 30 s: RSS $off kB with ui off, $on kB serving every endpoint and the page every second: $((on - off)) kB added"

echo "== 200 jobs: /metrics and /api/v1/jobs"
mkdir -p "$work/many/jobs"
for i in $(seq 1 200); do
    cat > "$work/many/jobs/job$i.lua" <<JOB
local ember = require "ember"
local job = ember.job { name = "job$i", batch_interval = "1s" }
job:generator { kind = "sequence", rate = 20 }:map(function(n) return n end):foreach_batch(function() end)
return job
JOB
done
$EMBER run --conf checkpoint.dir="$work/many/cp" --conf ui.port=0 --conf streaming.ui.retainedBatches=100 \
    "$work/many/jobs" 2>"$work/many/log" &
pid=$!; pids+=($pid)
wait_log "$work/many/log" "HTTP API and web UI on" 120
port=$(port_of "$work/many/log")
sleep 12 # ten batches retained per job
for p in /metrics /api/v1/jobs; do
    for i in $(seq 1 50); do
        curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$port$p"
        sleep 0.1
    done > "$work/times"
    size=$(curl -s "http://127.0.0.1:$port$p" | wc -c)
    printf "%-13s 200 jobs: median %.1f ms, 95th percentile %.1f ms, worst %.1f ms over 50 requests (%d bytes)\n" "$p" \
        "$(median < "$work/times" | awk '{ print $1 * 1000 }')" \
        "$(sort -n "$work/times" | awk '{ a[NR] = $1 } END { print a[int(NR * 0.95)] * 1000 }')" \
        "$(sort -n "$work/times" | tail -1 | awk '{ print $1 * 1000 }')" "$size"
done
echo "200 jobs: $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status") kB RSS"
kill -TERM $pid; wait $pid || true
