#!/usr/bin/env bash
# Reload latency and loss: three jobs on sequence generators; one is changed
# (its map tags records "v2") and SIGHUP sent. Prints the milliseconds from
# SIGHUP to the new version's first completed batch, and the records of the
# changed job that were lost or duplicated across the swap.
set -euo pipefail
dir=$1
EMBER=$(pwd)/ember
mkdir -p "$dir/jobs" "$dir/out"
job() { # name tag
cat > "$dir/jobs/$1.lua" <<LUA
local ember = require "ember"
local job = ember.job { name = "$1", batch_interval = "200ms" }
job:generator { kind = "sequence", rate = 5000 }
  :map(function(n) return "$2" .. n end)
  :save_as_text_files("$dir/out/$1/part")
return job
LUA
}
job steady_a v1:; job steady_b v1:; job changing v1:
$EMBER run --conf streaming.blockInterval=50ms --conf checkpoint.dir="$dir/cp" "$dir/jobs" 2>"$dir/log" &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true' EXIT
deadline=$((SECONDS + 10))
until grep -q "running 3 jobs" "$dir/log"; do (( SECONDS < deadline )) || exit 1; sleep 0.05; done
sleep 2
job changing v2:
kill -HUP $pid
deadline=$((SECONDS + 10))
until grep -q "first batch of the new version done" "$dir/log"; do (( SECONDS < deadline )) || exit 1; sleep 0.05; done
sleep 1
kill -TERM $pid; wait $pid || true
grep -o "first batch of the new version done [0-9]* ms after the reload" "$dir/log" | sed 's/^/reload: /'
cat "$dir"/out/changing/part-* | sed 's/^v[12]://' | sort -n | awk '
    NR == 1 { first = $1 } { seen[$1]++; if ($1 > max) max = $1 }
    END { lost = 0; dup = 0
          for (i = first; i <= max; i++) { if (!(i in seen)) lost++; else if (seen[i] > 1) dup += seen[i] - 1 }
          printf "changed job: records %d..%d, lost %d, duplicated %d\n", first, max, lost, dup }'
printf "records tagged by the new version: %s\n" "$(cat "$dir"/out/changing/part-* | grep -c '^v2:')"
