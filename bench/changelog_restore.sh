#!/usr/bin/env bash
# The restore of one partition's keyed state from its changelog topic
# (docs/scaling.md): a count per key over a one-partition Kafka topic with
# KEYS (100,000) distinct keys, on librdkafka's mock cluster. One driver
# counts them all and stops gracefully (its state is in the changelog);
# a second driver, with an empty checkpoint.dir, is assigned the partition
# and restores it. Prints the read (changelog to the high watermark) and the
# load into the job's state, as the second driver logs them.
#
#   bench/changelog_restore.sh [KEYS]
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-100000}
work=$(mktemp -d /tmp/ember-changelog-bench.XXXXXX)
pid= mock=
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null || true; [ -n "$mock" ] && kill $mock 2>/dev/null || true; rm -rf "$work"' EXIT

wait_log() { # file pattern seconds
    local deadline=$((SECONDS + $3))
    until grep -q -- "$2" "$1" 2>/dev/null; do
        (( SECONDS < deadline )) || { echo "timed out waiting for '$2' in $1" >&2; tail -5 "$1" >&2; return 1; }
        sleep 0.2
    done
}

mkfifo "$work/mock-in"
tools/kafka-mock --topic in:1 --topic bench-restore-changelog:1 <"$work/mock-in" >"$work/mock-out" &
mock=$!
exec 3>"$work/mock-in" # the mock serves while this stays open
wait_log "$work/mock-out" BOOTSTRAP= 30
bs=$(sed -n 's/^BOOTSTRAP=//p' "$work/mock-out")

seq 1 "$keys" | awk '{ printf "key-%07d\t%d\n", $1, $1 }' >"$work/input"
kcat -b "$bs" -P -t in -p 0 -K '\t' -l "$work/input"

mkdir -p "$work/jobs"
cat >"$work/jobs/restore.lua" <<EOF
local ember = require "ember"
local job = ember.job { name = "restore", batch_interval = "1s" }
job:kafka { brokers = "$bs", topic = "in", group = "bench", start = "earliest", format = "record", changelog = true,
            ["kafka.fetch.wait.max.ms"] = 10, ["kafka.session.timeout.ms"] = 3000,
            ["kafka.heartbeat.interval.ms"] = 500 }
   :map(function(r) return r.key, 1 end)
   :map_with_state { name = "counts", fn = function(k, one, state)
       state:set((state:get() or 0) + one)
   end }
   :count()
   :print()
return job
EOF

./ember run --conf checkpoint.dir="$work/cp1" --conf ui.port=0 --log-level debug "$work/jobs" \
    >/dev/null 2>"$work/log1" &
pid=$!
deadline=$((SECONDS + 300))
until [ "$(awk '/\[restore\] batch [0-9]+: [0-9]+ records/ { sub(/.*: /, ""); n += $1 } END { print n + 0 }' "$work/log1")" -ge "$keys" ]; do
    (( SECONDS < deadline )) || { echo "the first driver did not count $keys records" >&2; exit 1; }
    sleep 0.5
done
kill -TERM $pid; wait $pid 2>/dev/null || true
pid=

./ember run --conf checkpoint.dir="$work/cp2" --conf ui.port=0 --log-level debug "$work/jobs" \
    >/dev/null 2>"$work/log2" &
pid=$!
wait_log "$work/log2" "loaded in" 120
read_line=$(grep -o "partition 0 restored from bench-restore-changelog in [0-9]* ms ([0-9]* bytes" "$work/log2" | tail -1)
load_line=$(grep -o "partition 0: .* loaded in [0-9]* ms" "$work/log2" | tail -1)
echo "changelog restore of one partition with $keys keys (librdkafka $(pkg-config --modversion rdkafka) mock cluster):"
echo "  read to the high watermark: ${read_line#partition 0 restored from bench-restore-changelog in })"
echo "  load into the job's state:  ${load_line#partition 0: }"
kill -TERM $pid; wait $pid 2>/dev/null || true
pid=
