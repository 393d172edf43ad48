#!/usr/bin/env bash
# Keyed state's commit and restore, end to end in the driver: a million keys
# of state, 10,000 changed per batch. Prints the commit time (the state's
# delta, the fsynced checkpoint, apply) and the state bytes written per
# commit once the state is full, the snapshot slices written after the acks,
# the restore time after kill -9, and RSS per key.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d /tmp/ember-state-bench.XXXXXX)}
mkdir -p "$work/jobs"
cp bench/state_commit.lua "$work/jobs/"
pid=
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null || true; rm -rf "$work"' EXIT

wait_log() { # file pattern seconds
    local deadline=$((SECONDS + $3))
    until grep -q -- "$2" "$1" 2>/dev/null; do
        (( SECONDS < deadline )) || { echo "timed out waiting for '$2'" >&2; return 1; }
        sleep 0.1
    done
}

./ember run --conf checkpoint.dir="$work/cp" --log-level debug "$work/jobs" 2>"$work/log" &
pid=$!
wait_log "$work/log" "source exhausted" 120
sleep 6 # 30 batches of 10,000 changed keys on a full state
rss=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status)
kill -9 $pid; wait $pid 2>/dev/null || true
# Batches once the state is full: ~10,000 records each.
awk '/\[state_commit\] batch [0-9]+: / && /commit [0-9]+ ms/ {
        match($0, /: [0-9]+ records/); n = substr($0, RSTART + 2, RLENGTH - 10) + 0
        match($0, /commit [0-9]+ ms/); c = substr($0, RSTART + 7, RLENGTH - 10) + 0
        match($0, /\([0-9]+ bytes/); w = substr($0, RSTART + 1, RLENGTH - 7) + 0
        if (full && n > 0) print c, w, n
        if (n > 0 && n < 20000) full = 1 }' "$work/log" > "$work/commits"
k=$(wc -l < "$work/commits")
if [ "$k" -gt 0 ]; then
    p50=$(sort -n "$work/commits" | awk -v k="$k" 'NR == int((k + 1) / 2) {print $1}')
    max=$(sort -n "$work/commits" | tail -1 | cut -d' ' -f1)
    per=$(awk '{w += $2; n += $3} END {printf "%.0f", w / n}' "$work/commits")
    p99=$(sort -n "$work/commits" | awk -v k="$k" 'NR == int((k * 99 + 99) / 100) {print $1}')
    echo "commit with 1,000,000 keys, ~10,000 changed per batch: p50 $p50 ms, p99 $p99 ms, max $max ms over $k batches; $per bytes of state written per changed record"
    # the snapshot slices, written after each batch's acks (outside the commit)
    grep -o "state snapshot slice after batch [0-9]*: [0-9]* bytes in [0-9]* ms" "$work/log" |
        awk '{print $(NF-1), $(NF-4)}' | sort -n > "$work/slices" || true
    m=$(wc -l < "$work/slices")
    if [ "$m" -gt 0 ]; then
        awk -v m="$m" '{ b += $2 } NR == int((m + 1) / 2) { p50 = $1 } END {
            printf "snapshot slices after the acks: p50 %d ms, max %d ms over %d batches, %.0f bytes each on average\n", p50, $1, m, b / m }' "$work/slices"
    fi
else
    echo "no batches on a full state"
fi
echo "RSS with 1,000,000 keys of state: $rss kB ($(( rss * 1024 / 1000000 )) bytes per key, all of the process)"

./ember run --conf checkpoint.dir="$work/cp" --log-level debug "$work/jobs" 2>"$work/log2" &
pid=$!
wait_log "$work/log2" "state restored up to batch" 60
grep -o "state restored up to batch [0-9]* in [0-9]* ms ([0-9]* bytes)" "$work/log2" | sed 's/^/restore after kill -9: /'
kill -9 $pid; wait $pid 2>/dev/null || true
