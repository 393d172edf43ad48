#!/usr/bin/env bash
# bench/recovery.sh — time from a restart to the first normal batch when the
# write-ahead log holds N pending batches.
#
# For each N: ember reads N batches' worth of lines (N x 1000 lines of 20
# bytes, max_rate 10,000/s, batch 100 ms, block 50 ms) into a job whose
# batch interval is an hour, so every record stays in the write-ahead log;
# then kill -9. Restarted with a 100 ms job, the log is replayed:
#   throttled:   max_rate 10,000/s, so at most 1,000 records (one pending
#                batch) per 100 ms batch — the no-firehose rule;
#   unthrottled: no rate, the whole log in one batch.
# Prints the time from the process start to the log being read, and to
# the first normal batch done. Self-contained; about 25 s.
set -euo pipefail
cd "$(dirname "$0")/.."
EMBER=$PWD/ember
RATE=10000
PER_BATCH=1000 # RATE x 100 ms
WAIT_S=${RECOVERY_WAIT_S:-120} # deadlines of the waits: generous, the machine may be busy
work=$(mktemp -d /tmp/ember-bench-recovery.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Seconds since midnight (UTC) of a log line's timestamp, or of now.
stamp() { sed -E 's/^[0-9-]+T([0-9]+):([0-9]+):([0-9.]+)Z.*/\1 \2 \3/' | awk '{ printf "%.3f\n", $1 * 3600 + $2 * 60 + $3 }'; }
now() { date -u +%H:%M:%S.%N | awk -F: '{ printf "%.3f\n", $1 * 3600 + $2 * 60 + $3 }'; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { d = b - a; if (d < 0) d += 86400; printf "%d", d * 1000 }'; }

job() { # file interval port max_rate [job options]
    cat > "$1" <<LUA
local ember = require "ember"
local job = ember.job { name = "rec", batch_interval = $2 ${5:-} }
job:socket { host = "127.0.0.1", port = $3 $4 }
   :foreach_batch(function(records) end)
return job
LUA
}

wal_bytes() { find "$1" -name '*.wal' -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'; }

# replay <dir> <label> <max_rate option>: restarts on the log and reports.
replay() {
    local dir=$1 label=$2 opt=$3
    job "$dir/jobs/rec.lua" '"100ms"' "$(cat "$dir/port")" "$opt"
    local t0
    t0=$(now)
    : > "$dir/$label.log"
    "$EMBER" run --conf checkpoint.dir="$dir/cp" --conf streaming.blockInterval=50ms \
        --conf streaming.receiver.writeAheadLog.enable=true --log-level debug "$dir/jobs" 2>"$dir/$label.log" &
    local pid=$!
    pids+=($pid)
    local deadline=$((SECONDS + WAIT_S))
    until grep -q '\] batch [0-9]*: 0 records' "$dir/$label.log"; do
        (( SECONDS < deadline )) || { echo "$label: no normal batch within $WAIT_S s" >&2; tail -5 "$dir/$label.log" >&2; exit 1; }
        sleep 0.05
    done
    kill -TERM "$pid"; wait "$pid" || true
    local t_read t_first n batches
    t_read=$(grep -m1 'recovered [0-9]* records' "$dir/$label.log" | stamp)
    t_first=$(grep -m1 '\] batch [0-9]*: 0 records' "$dir/$label.log" | stamp)
    n=$(grep -m1 -o 'recovered [0-9]* records in [0-9]* blocks' "$dir/$label.log")
    batches=$(awk '/\] batch [0-9]+: 0 records/ { exit } /\] batch [0-9]+: [0-9]+ records/ { b++ } END { print b + 0 }' "$dir/$label.log")
    printf "  %-12s %s: log read %5d ms after start; first normal batch done %6d ms after start (%d replay batches)\n" \
        "$label" "$n" "$(ms "$t0" "$t_read")" "$(ms "$t0" "$t_first")" "$batches"
}

echo "== recovery: restart -> first normal batch, write-ahead log of N pending batches ($PER_BATCH records of 20 bytes each)"
for N in 10 100; do
    dir="$work/n$N"
    mkdir -p "$dir/jobs"
    records=$((N * PER_BATCH))
    luajit bench/sender.lua "$dir/port" "$records" 20 &
    pids+=($!)
    deadline=$((SECONDS + 10))
    until [ -s "$dir/port" ]; do (( SECONDS < deadline )) || { echo "sender did not start" >&2; exit 1; }; sleep 0.02; done
    # an hour-long batch that never catches up: the log only grows
    job "$dir/jobs/rec.lua" 3600 "$(cat "$dir/port")" ", max_rate = $RATE" ", catch_up = false"
    "$EMBER" run --conf checkpoint.dir="$dir/cp" --conf streaming.blockInterval=50ms \
        --conf streaming.receiver.writeAheadLog.enable=true "$dir/jobs" 2>"$dir/fill.log" &
    pid=$!
    pids+=($pid)
    # Every record is in the log once the segments hold its frame (44 + 19 bytes).
    want=$((records * 63))
    # The fill is paced at $RATE: the deadline is what it needs, plenty more
    # on a loaded machine (a figure of this bench is the recovery, not this).
    deadline=$((SECONDS + WAIT_S + records / RATE))
    until [ "$(wal_bytes "$dir/cp")" -ge "$want" ]; do
        (( SECONDS < deadline )) || { echo "N=$N: the log holds $(wal_bytes "$dir/cp") of $want bytes after $((WAIT_S + records / RATE)) s" >&2; exit 1; }
        sleep 0.05
    done
    kill -9 "$pid"; wait "$pid" 2>/dev/null || true
    cp -a "$dir/cp" "$dir/cp.saved"
    echo "N = $N pending batches ($(find "$dir/cp" -name '*.wal' | wc -l) segments, $(wal_bytes "$dir/cp") bytes):"
    replay "$dir" throttled ", max_rate = $RATE"
    rm -rf "$dir/cp"; mv "$dir/cp.saved" "$dir/cp"
    replay "$dir" unthrottled ""
done
