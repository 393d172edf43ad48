#!/usr/bin/env bash
# bench/air_quality.sh — the air-quality filter workload, default settings:
# 10M JSON readings of 48 bytes (bench/air_quality_gen.lua, the same bytes
# every run), the job of bench/air_quality.lua (drop pm25 < 0, add a level):
#
#   file -> filter -> discard       (each batch's count checked)
#   file -> filter -> file          (save_as_text_files; lines counted)
#   socket -> filter -> discard     (bench/aq_sender.lua serves the file)
#   file (format = "json") -> filter -> discard
#   file (format = "bytes") -> filter -> discard   (the same scan on views)
#
#   AQ_RECORDS=2000000 bench/air_quality.sh
#   AQ_ONLY="file-discard socket" bench/air_quality.sh   # some runs only
#   AQ_CONF="--conf memory.max=64m" bench/air_quality.sh  # extra --conf flags
#
# Each run prints records/s from ember's start to the moment the last
# record was counted (start-up and the last batch boundary included), the
# worker time the batches took, and the peak RSS /usr/bin/time -v reports.
# A count that does not match the generator's is an error (exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${AQ_RECORDS:-10000000}
ONLY=${AQ_ONLY:-file-discard file-file socket file-json file-bytes}
CONF=${AQ_CONF:-}
EMBER=$PWD/ember
work=$(mktemp -d /tmp/ember-bench-aq.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/in" "$work/jobs"
luajit bench/air_quality_gen.lua "$N" > "$work/in/readings.jsonl" 2> "$work/expected"
kept=$(awk '$1 == "kept" {print $2}' "$work/expected")
cp bench/air_quality.lua "$work/jobs/"
echo "input: $N lines of $(head -1 "$work/in/readings.jsonl" | wc -c) bytes, $kept kept by the filter"

now() { date +%s.%N; }
# Sum of the records of the batches so far (input side, from the debug log).
batched() { [ -f "$work/ember.log" ] || { echo 0; return; }; awk '/batch [0-9]+: [0-9]+ records/ { match($0, /: [0-9]+ records/); s += substr($0, RSTART + 2, RLENGTH - 10) } END { print s + 0 }' "$work/ember.log"; }
busy() { awk '/batch [0-9]+: [0-9]+ records/ { match($0, /processing [0-9]+ ms/); s += substr($0, RSTART + 11, RLENGTH - 14) } END { printf "%.2f", s / 1000 }' "$work/ember.log"; }
counted() { awk '$1 == "count" { s += $2 } END { print s + 0 }' "$work/stdout"; }

# run <label> <output: discard|file> [env...]: one ember run until every
# input record went through a batch.
run() {
    local label=$1 output=$2; shift 2
    rm -rf "$work/out" "$work/cp" "$work/ember.log" "$work/stdout"; mkdir -p "$work/out"
    local t0; t0=$(now)
    env AQ_DIR="$work/in" AQ_OUT="$work/out" AQ_OUTPUT="$output" "$@" \
        /usr/bin/time -v -o "$work/time.txt" "$EMBER" run --conf checkpoint.dir="$work/cp" \
        $CONF --log-level debug "$work/jobs" > "$work/stdout" 2> "$work/ember.log" &
    local tpid=$!; pids+=($tpid)
    local deadline=$((SECONDS + 300))
    until [ "$(batched)" -ge "$N" ]; do
        (( SECONDS < deadline )) || { echo "$label: timed out; $(batched) of $N records" >&2; tail -5 "$work/ember.log" >&2; exit 1; }
        kill -0 $tpid 2>/dev/null || { echo "$label: ember exited" >&2; tail -5 "$work/ember.log" >&2; exit 1; }
        sleep 0.02
    done
    local t1; t1=$(now)
    kill -TERM "$(pgrep -P $tpid)" 2>/dev/null || true
    wait $tpid || true
    local got
    if [ "$output" = file ]; then
        got=$(cat "$work"/out/aq-* | wc -l)
    else
        got=$(counted)
    fi
    local peak; peak=$(awk -F': ' '/Maximum resident/ {print $2}' "$work/time.txt")
    local warns; warns=$(grep -c 'memory.max reached' "$work/ember.log" || true)
    awk -v n="$N" -v t0="$t0" -v t1="$t1" -v busy="$(busy)" -v peak="$peak" -v label="$label" \
        -v got="$got" -v kept="$kept" -v warns="$warns" 'BEGIN {
        printf "%-32s %8.0f records/s  (%.2f s wall, %s s in batches)  peak RSS %.1f MiB  out %d/%d%s\n",
            label, n / (t1 - t0), t1 - t0, busy, peak / 1024, got, kept,
            (warns > 0 ? "  (" warns " memory.max warnings)" : "") }'
    if [ "$got" != "$kept" ]; then
        echo "$label: $got records out, expected $kept" >&2
        exit 1
    fi
    if [ "$output" = file ]; then  # the first kept reading, exactly as the job writes it
        local want
        want=$(awk -F'"pm25":' '{ split($2, a, ","); p = a[1] + 0
                   if (p < 0) next
                   lv = p < 12 ? "good" : (p < 35.5 ? "moderate" : "unhealthy")
                   print substr($0, 1, length($0) - 1) ",\"level\":\"" lv "\"}"; exit }' "$work/in/readings.jsonl")
        grep -qxF "$want" "$work"/out/aq-* || { echo "$label: first reading not found as $want" >&2; exit 1; }
    fi
}

for what in $ONLY; do
    case $what in
    file-discard) run "file -> filter -> discard" discard AQ_SOURCE=file ;;
    file-file)    run "file -> filter -> file" file AQ_SOURCE=file ;;
    file-json)    run "file (json) -> filter -> discard" discard AQ_SOURCE=file AQ_FORMAT=json ;;
    file-bytes)   run "file (bytes) -> filter -> discard" discard AQ_SOURCE=file AQ_FORMAT=bytes ;;
    socket)
        rm -f "$work/port"
        luajit bench/aq_sender.lua "$work/port" "$work/in/readings.jsonl" &
        pids+=($!)
        until [ -s "$work/port" ]; do sleep 0.02; done
        run "socket -> filter -> discard" discard AQ_SOURCE=socket AQ_PORT="$(cat "$work/port")"
        ;;
    *) echo "unknown run '$what'" >&2; exit 2 ;;
    esac
done
