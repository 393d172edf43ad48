#!/usr/bin/env bash
# bench/backpressure.sh — how fast the PID rate estimator converges.
#
# A generator offers 50,000 records/s to a job that busy-waits per record
# (batch 500 ms, block 100 ms, streaming.backpressure.enabled):
#   load step: 10 us a record (the job keeps up), then, 5 s in, 100 us a
#              record (about 10,000/s: input five times what it sustains);
#              the batches cut before the step are still queued, so the
#              estimator holds minRate until their delay has drained;
#   start:     100 us a record from the start, initialRate 2000.
# "Converged" is the first rate logged after the step (or the start) that
# opens a run of 5 consecutive rates within 20% of the sustainable rate,
# the sustainable rate being records / processing time of the batches
# from 3 s after the step on. Prints the time to it and how the rates
# behave afterwards. Self-contained; about 42 s.
set -euo pipefail
cd "$(dirname "$0")/.."
EMBER=$PWD/ember
work=$(mktemp -d /tmp/ember-bench-backpressure.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

now() { date -u +%H:%M:%S.%N | awk -F: '{ printf "%.3f\n", $1 * 3600 + $2 * 60 + $3 }'; }

job() { # dir cost-before cost-after
    mkdir -p "$1/jobs"
    cat > "$1/jobs/bp.lua" <<LUA
local ember = require "ember"
local socket = require "socket"
local gettime = socket.gettime
local flag, cost, next_check = "$1/step", $2, 0
local function stepped()
    local f = io.open(flag)
    if f then f:close() end
    return f ~= nil
end
local job = ember.job { name = "bp", batch_interval = "500ms" }
job:generator { kind = "sequence", rate = 50000 }
   :foreach_record(function(n)
       local now = gettime()
       if now >= next_check then
           cost = stepped() and $3 or $2
           next_check = now + 0.05
       end
       local t = now + cost
       while gettime() < t do end
   end)
return job
LUA
}

# analyse <log> <t_step>: the figures, from the debug log.
analyse() {
    awk -v step="$2" '
        function ts(line,   a) { split(substr(line, 12, 12), a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
        /backpressure: rate/ {
            t = ts($0); if (t < step - 43200) t += 86400
            match($0, /rate [0-9]+/); r = substr($0, RSTART + 5, RLENGTH - 5) + 0
            if (t < step) { pre += r; npre++ } else { n++; rt[n] = t - step; rate[n] = r }
        }
        /\] batch [0-9]+: [0-9]+ records/ {
            t = ts($0); if (t < step - 43200) t += 86400
            match($0, /: [0-9]+ records/); c = substr($0, RSTART + 2, RLENGTH - 10) + 0
            match($0, /processing [0-9]+ ms/); p = substr($0, RSTART + 11, RLENGTH - 14) + 0
            if (t >= step + 3) { recs += c; ms += p }
        }
        END {
            s = ms > 0 ? recs / ms * 1000 : 0
            conv = 0
            for (i = 1; i + 4 <= n && !conv; i++) {
                ok = 1
                for (k = i; k < i + 5; k++) if (rate[k] < 0.8 * s || rate[k] > 1.2 * s) ok = 0
                if (ok) conv = i
            }
            if (npre) printf "  rate before: %.0f records/s (mean of %d)\n", pre / npre, npre
            printf "  sustainable after: %.0f records/s (%d records in %d ms of processing)\n", s, recs, ms
            if (!conv) {
                printf "  did not converge within the run (%d rates after)\n", n
                printf "  rates:"; for (k = 1; k <= n; k++) printf " %d", rate[k]; printf "\n"
                exit
            }
            within = 0
            for (k = conv; k <= n; k++) if (rate[k] >= 0.8 * s && rate[k] <= 1.2 * s) within++
            printf "  converged %.1f s after, at the %d. rate logged; afterwards %d of %d rates within 20%%\n", rt[conv], conv, within, n - conv + 1
            printf "  rates:"; for (k = 1; k <= n; k++) printf " %d", rate[k]; printf "\n"
        }' "$1"
}

start() { # dir [--conf ...]; sets pid
    local dir=$1; shift
    : > "$dir/log"
    "$EMBER" run --conf checkpoint.dir="$dir/cp" --conf streaming.blockInterval=100ms \
        --conf streaming.backpressure.enabled=true "$@" --log-level debug "$dir/jobs" \
        >"$dir/stdout" 2>"$dir/log" &
    pid=$!
    pids+=($pid)
}

echo "== backpressure: PID convergence, generator at 50,000 records/s, batch 500 ms"
echo "load step: 10 us -> 100 us per record, 5 s after start (initialRate 10000)"
dir="$work/step"
job "$dir" 0.00001 0.0001
start "$dir" --conf streaming.backpressure.initialRate=10000
sleep 5
t_step=$(now)
touch "$dir/step"
sleep 25
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
analyse "$dir/log" "$t_step"

echo "start: 100 us per record from the start, initialRate 2000"
dir="$work/start"
job "$dir" 0.0001 0.0001
t_start=$(now)
start "$dir" --conf streaming.backpressure.initialRate=2000
sleep 10
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
analyse "$dir/log" "$t_start"
[ -z "${BENCH_KEEP:-}" ] || cp -r "$work" "$BENCH_KEEP"
