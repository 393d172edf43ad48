#!/usr/bin/env bash
# bench/wal.sh — what the write-ahead log costs.
#
# A socket source reads N lines of 100 bytes from a local sender (luajit +
# luasocket) as fast as it can, into a job whose foreach_batch does
# nothing; once with the log off, then on with each fsync policy
# (always, batch, interval). Prints records/s from ember's connection to
# the batch that completes the last record (the better of two runs), and
# the slowdown against "off". Self-contained: a temp folder, removed at
# the end; about 20 s.
#
#   bench/wal.sh            WAL_BENCH_RECORDS=5000000 by default
set -euo pipefail
cd "$(dirname "$0")/.."
EMBER=$PWD/ember
N=${WAL_BENCH_RECORDS:-5000000}
work=$(mktemp -d /tmp/ember-bench-wal.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Seconds since midnight of a log line's timestamp (…THH:MM:SS.mmmZ).
stamp() { sed -E 's/^[0-9-]+T([0-9]+):([0-9]+):([0-9.]+)Z.*/\1 \2 \3/' | awk '{ printf "%.3f\n", $1 * 3600 + $2 * 60 + $3 }'; }

# run <label> [--conf k=v ...]: prints "records/s" of one run.
run() {
    local label=$1; shift
    local dir="$work/$label"
    mkdir -p "$dir/jobs"
    luajit bench/sender.lua "$dir/port" "$N" 100 &
    pids+=($!)
    local deadline=$((SECONDS + 10))
    until [ -s "$dir/port" ]; do (( SECONDS < deadline )) || { echo "sender did not start" >&2; exit 1; }; sleep 0.02; done
    cat > "$dir/jobs/walbench.lua" <<LUA
local ember = require "ember"
local job = ember.job { name = "walbench", batch_interval = "100ms" }
job:socket { host = "127.0.0.1", port = $(cat "$dir/port") }
   :foreach_batch(function(records) end)
return job
LUA
    : > "$dir/log"
    "$EMBER" run --conf checkpoint.dir="$dir/cp" --conf streaming.blockInterval=50ms \
        --conf streaming.batchInterval=100ms "$@" --log-level debug "$dir/jobs" 2>"$dir/log" &
    local pid=$!
    pids+=($pid)
    deadline=$((SECONDS + 40))
    until awk -v n="$N" '/\] batch [0-9]+: [0-9]+ records/ { match($0, /: [0-9]+ records/); s += substr($0, RSTART + 2, RLENGTH - 10) } END { exit !(s >= n) }' "$dir/log"; do
        (( SECONDS < deadline )) || { echo "$label: not all $N records within 40 s" >&2; tail -5 "$dir/log" >&2; exit 1; }
        sleep 0.1
    done
    kill -TERM "$pid"; wait "$pid" || true
    local t0 t1
    t0=$(grep -m1 ': connected' "$dir/log" | stamp)
    t1=$(awk -v n="$N" '/\] batch [0-9]+: [0-9]+ records/ { match($0, /: [0-9]+ records/); s += substr($0, RSTART + 2, RLENGTH - 10); if (s >= n) { print; exit } }' "$dir/log" | stamp)
    awk -v a="$t0" -v b="$t1" -v n="$N" 'BEGIN { d = b - a; if (d < 0) d += 86400; printf "%.0f\n", n / d }'
}

# best <label> [--conf ...]: the better of two runs.
best() {
    local label=$1; shift
    local a b
    a=$(run "$label-1" "$@")
    b=$(run "$label-2" "$@")
    echo $(( a > b ? a : b ))
}

echo "== write-ahead log: socket -> foreach_batch, $N lines of 100 bytes, block 50 ms, batch 100 ms"
off=$(best off)
printf "%-28s %10s records/s\n" "wal off" "$off"
for policy in always batch interval; do
    r=$(best "$policy" --conf streaming.receiver.writeAheadLog.enable=true \
                      --conf streaming.receiver.writeAheadLog.fsync="$policy")
    awk -v p="$policy" -v r="$r" -v o="$off" 'BEGIN {
        printf "%-28s %10d records/s  %.2fx slower than off (%+.0f%%)\n", "wal on, fsync=" p, r, o / r, (r / o - 1) * 100 }'
done
# The figures above depend on the disk: how long one synchronous write takes here.
dd if=/dev/zero of="$work/dsync" bs=4k count=500 oflag=dsync 2>&1 | tail -1 |
    awk '{ for (i = 1; i <= NF; i++) if ($i == "s,") t = $(i - 1); printf "%-28s %10.3f ms per synced 4 KiB write (dd oflag=dsync)\n", "this disk", t * 1000 / 500 }'
