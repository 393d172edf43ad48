#!/usr/bin/env bash
# make docker-test: the offline compose setup, for real.
#
# Installs Debian's docker.io, docker-compose and debootstrap where missing,
# starts a dockerd of its own when none answers (its own data root, kept
# between runs as the image cache, its own socket and pidfile; stopped at the
# end), makes the base image and builds the offline images, brings the setup
# up with a copy of jobs/ mounted, and checks with clients run in the
# containers (redis-cli, amqp-consume, kcat) that records flow through every
# broker job, that a job dropped into the folder starts after
# `kill -s HUP ember`, that `stop` drains (exit 0, nothing lost from a Redis
# stream fed just before), and that ember comes back after its process is
# killed, with its checkpoints. Ends with "N passed, N failed"; exits 0 only
# when nothing failed.
#
# Environment: EMBER_COMPOSE (the compose command; default `docker compose`
# where that works, else `docker-compose`), EMBER_DOCKER_KEEP=1 (leave the
# setup running), EMBER_DOCKER_ROOT (own dockerd's data root, default
# /var/lib/ember-docker-test).
set -uo pipefail   # (so no `... | grep -q` below: grep would stop reading, and the writer fail)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1

passed=0 failed=0
started=$(date +%s)
own_dockerd= work= bg_pids=()

ok() { passed=$((passed + 1)); echo "ok    $1"; }
not_ok() { failed=$((failed + 1)); echo "FAIL  $1"; [ -z "${2:-}" ] || printf '%s\n' "$2" | tail -25 | sed 's/^/      /'; }
check() { # description, then a command: ok when it succeeds
    local what=$1 out; shift
    if out=$("$@" 2>&1); then ok "$what"; else not_ok "$what" "$out"; fi
}
# Polls a command every second until it succeeds or the deadline (seconds)
# passes; the last output goes to $waited.
waited=
wait_for() { # seconds, command...
    local deadline=$(($(date +%s) + $1)); shift
    while :; do
        if waited=$("$@" 2>&1); then return 0; fi
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 1
    done
}
expect() { # description, seconds, command...
    local what=$1 secs=$2; shift 2
    if wait_for "$secs" "$@"; then ok "$what"; else not_ok "$what (waited ${secs}s)" "$waited"; fi
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
note() { echo "      $*"; }

finish() {
    local rc=$1
    for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null; done
    if [ -n "${compose_ok:-}" ]; then
        if [ "$failed" -gt 0 ]; then
            echo "--- the end of each service's log"
            for s in ember redis rabbitmq kafka; do "${C[@]}" logs --no-color --tail 15 "$s" 2>&1; done
        fi
        if [ -z "${EMBER_DOCKER_KEEP:-}" ]; then
            "${C[@]}" down -v --remove-orphans >/dev/null 2>&1
        else
            echo "docker-test: left running (EMBER_DOCKER_KEEP): ${C[*]}"
        fi
    fi
    [ -z "$work" ] || rm -rf "$work"
    if [ -n "$own_dockerd" ] && [ -z "${EMBER_DOCKER_KEEP:-}" ]; then
        kill "$own_dockerd" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$own_dockerd" 2>/dev/null || break; sleep 1; done
    fi
    echo "docker-test: $(($(date +%s) - started)) s"
    echo "$passed passed, $failed failed"
    [ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]
    exit $?
}
fatal() { not_ok "$1" "${2:-}"; finish 1; }
trap 'finish 1' INT TERM

# --- Debian's docker.io, docker-compose, debootstrap where missing ---------
[ "$(id -u)" = 0 ] || fatal "docker-test runs as root (dockerd, debootstrap)"
. docker/need.sh
need docker:docker.io debootstrap:debootstrap || fatal "apt-get install docker.io debootstrap"
docker info >/dev/null 2>&1 || need dockerd:docker.io || fatal "apt-get install docker.io"
docker compose version >/dev/null 2>&1 || need docker-compose:docker-compose ||
    fatal "apt-get install docker-compose"

# --- a dockerd: the running one, else one of our own -----------------------
if ! docker info >/dev/null 2>&1; then
    data=${EMBER_DOCKER_ROOT:-/var/lib/ember-docker-test}
    run=/run/ember-docker-test
    export DOCKER_HOST=unix://$run/docker.sock
    if ! docker info >/dev/null 2>&1; then
        mkdir -p "$data" "$run"
        rm -f "$run/dockerd.pid"
        dockerd --data-root "$data" --exec-root "$run/exec" --pidfile "$run/dockerd.pid" \
            -H "$DOCKER_HOST" >"$run/dockerd.log" 2>&1 &
        own_dockerd=$!
        wait_for 120 docker info || fatal "dockerd answers on $DOCKER_HOST" "$(tail -20 "$run/dockerd.log")"
        echo "docker-test: started dockerd (pid $own_dockerd, data root $data)"
    else
        own_dockerd=$(cat "$run/dockerd.pid" 2>/dev/null)
        echo "docker-test: using the dockerd left on $DOCKER_HOST"
    fi
fi
echo "docker-test: dockerd $(docker version -f '{{.Server.Version}}' 2>/dev/null)"

if [ -n "${EMBER_COMPOSE:-}" ]; then
    read -r -a compose <<<"$EMBER_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(docker-compose)
fi
echo "docker-test: $("${compose[@]}" version 2>/dev/null | head -1)"
C=("${compose[@]}" -p embertest -f docker/docker-compose.yml -f docker/docker-compose.offline.yml)

# --- images ---------------------------------------------------------------
t=$(now)
docker/make-base.sh || fatal "make the base image (docker/make-base.sh)"
note "base image: $(since "$t") s"
t=$(now)
if out=$("${C[@]}" build 2>&1); then
    ok "the offline images build ($(since "$t") s)"
else
    fatal "the offline images build" "$out"
fi
size=$(docker image inspect -f '{{.Size}}' ember)
check "the ember image is under 150 MB ($((size / 1000000)) MB)" test "$size" -lt 150000000

# --- up -------------------------------------------------------------------
work=$(mktemp -d /tmp/ember-docker-test.XXXXXX)
mkdir "$work/jobs"
cp jobs/*.lua "$work/jobs/"
chmod 755 "$work" "$work/jobs" && chmod 644 "$work"/jobs/*
export EMBER_JOBS_DIR=$work/jobs EMBER_UI_HOST_PORT=0
"${C[@]}" down -v --remove-orphans >/dev/null 2>&1
compose_ok=1
t_up=$(now)
out=$("${C[@]}" up -d 2>&1) || fatal "compose up" "$out"

cid() { "${C[@]}" ps -q "$1"; }
ember_id=$(cid ember)
inspect() { docker inspect -f "$1" "$ember_id"; }
health() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(cid "$1")")" = healthy ]; }
logs() { docker logs "$@" "$ember_id" 2>&1; }
log_has() { logs | grep -- "$1" >/dev/null; }
x() { "${C[@]}" exec -T "$@"; }            # a command in a service's container
rcli() { x redis redis-cli "$@"; }
is() { [ "$("${@:2}")" = "$1" ]; }          # is VALUE command...: the command prints VALUE
# Fed as docker/README.md shows: from the ember container, with its environment.
feed() { x ember sh -c "$1"; }
reading() { printf '{"device":"%s","pm25":%s}' "$1" "$2"; }

expect "ember prints its first batch" 180 log_has 'Time: [0-9]* ms ('
note "up to the first batch: $(since "$t_up") s"
for s in redis rabbitmq kafka ember; do
    expect "$s is healthy" 180 health "$s"
done
not_root() { [ "$(x ember id -u)" != 0 ]; }
check "ember runs as a user other than root" not_root
loopback_only() { docker port "$ember_id" 4040/tcp | grep -x '127\.0\.0\.1:[0-9]*'; }
check "the UI port is published on 127.0.0.1 only" loopback_only
not_ember() { ! docker run --rm --entrypoint /opt/ember/bin/healthcheck ember; }
check "the health check fails where PID 1 is not ember" not_ember
# Once ember has the HTTP API, its /healthz answers through the published port.
if x ember ember --help | grep '^ *ui\.host[[:space:]]' >/dev/null; then
    healthz() {
        exec 3<>"/dev/tcp/$(docker port "$ember_id" 4040/tcp | sed 's/:/\//')" || return 1
        printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
        local status
        IFS= read -r -t 10 status <&3
        echo "$status"
        [[ $status == "HTTP/1."?" 200"* ]]
    }
    expect "GET /healthz through the published port answers 200" 60 healthz
fi
for j in air_quality device_report kafka_example rabbitmq_example redis_example sensor_pipeline; do
    expect "job $j started" 60 log_has "\[$j\] started from /jobs/$j.lua"
done
word_count_off() { log_has 'word_count.lua: not started' && ! logs | grep 'warn.*word_count'; }
check "word_count is off in the container, with no warning" word_count_off

# --- records through every broker job --------------------------------------
# Alert consumers first, each on its own queue bound to amq.topic:
# rabbitmq_example publishes alerts.pm25.<device>, sensor_pipeline pm25.<device>.
consume() { # routing key, count, file
    x rabbitmq timeout 600 amqp-consume --url=amqp://guest:guest@localhost -e amq.topic -r "$1" \
        -c "$2" -- sh -c 'cat; echo' >"$3" 2>"$3.err" &
    bg_pids+=($!)
}
bound() { x rabbitmq rabbitmqctl -q list_bindings source_name routing_key |
          grep "^amq\.topic[[:space:]]*$1\$" >/dev/null; }
both_bound() { bound 'alerts\.pm25\.#' && bound 'pm25\.#'; }
consume 'alerts.pm25.#' 2 "$work/rabbit_alerts"
consume 'pm25.#' 2 "$work/pipeline_alerts"
expect "alert consumers bound to amq.topic" 120 both_bound

for r in "r-1 140.5" "r-2 12.25" "r-3 101"; do
    set -- $r
    feed "redis-cli -u \"\$EMBER_REDIS_URL\" XADD readings '*' value '$(reading "$1" "$2")'" >/dev/null
done
last_r() { is 140.5 rcli HGET last:r-1 pm25 && is 12.25 rcli HGET last:r-2 pm25 && is 101 rcli HGET last:r-3 pm25; }
expect "redis_example: last:<device> holds each reading's PM2.5" 60 last_r
expect "redis_example: readings:count is 3" 30 is 3 rcli GET readings:count

queue_declared() { x rabbitmq rabbitmqctl -q list_queues name | grep -x ember.readings; }
expect "rabbitmq_example declared its queue" 60 queue_declared
for r in "q-1 150" "q-2 99.5" "q-3 230.75"; do
    set -- $r
    feed "echo '$(reading "$1" "$2")' | amqp-publish --url=\"\$EMBER_RABBITMQ_URL\" -r ember.readings -p"
done
has_alerts() { # file, then device:pm25 pairs: exactly these alerts
    local f=$1; shift
    [ "$(grep -c . "$f")" = $# ] || { cat "$f"; return 1; }
    for a in "$@"; do
        grep "\"device\":\"${a%%:*}\"" "$f" | grep "\"pm25\":${a#*:}[,}]" >/dev/null || { cat "$f"; return 1; }
    done
}
expect "rabbitmq_example: alerts for q-1 and q-3 only, on amq.topic" 60 \
    has_alerts "$work/rabbit_alerts" q-1:150 q-3:230.75

for r in "k-1 180.5" "k-2 42" "k-3 101.5"; do
    set -- $r
    feed "echo '$(reading "$1" "$2")' | kcat -b \"\$EMBER_KAFKA_BROKERS\" -P -t datapoints"
done
kafka_alerts() {
    x kafka sh -c 'kcat -b "$(hostname -i | cut -d" " -f1):9092" -C -t alerts -o beginning -e -q -f "%k %s\n"' \
        >"$work/kafka_alerts" 2>&1
    has_alerts "$work/kafka_alerts" k-1:180.5 k-3:101.5 && grep -q '^k-1 ' "$work/kafka_alerts" &&
        grep -q '^k-3 ' "$work/kafka_alerts"
}
expect "kafka_example: alerts keyed k-1 and k-3 on the topic alerts" 90 kafka_alerts
sensor_k() { is 180.5 rcli HGET sensor:k-1 pm25 && is 42 rcli HGET sensor:k-2 pm25 && is 101.5 rcli HGET sensor:k-3 pm25; }
expect "sensor_pipeline: sensor:<device> in Redis for k-1, k-2, k-3" 60 sensor_k
expect "sensor_pipeline: alerts pm25.k-1 and pm25.k-3 on amq.topic" 60 \
    has_alerts "$work/pipeline_alerts" k-1:180.5 k-3:101.5
no_error() { ! logs | grep -E '^[0-9TZ:.-]+ error '; }
check "no error in ember's log" no_error

# --- a job dropped into the mounted folder starts on SIGHUP ----------------
cat >"$work/jobs/hot.lua.tmp" <<'LUA'
-- Written by make docker-test: starts on SIGHUP.
local ember = require "ember"
local job = ember.job { name = "hot", batch_interval = "500ms" }
job:generator { kind = "sequence", rate = 20 }
  :to_redis { url = os.getenv("EMBER_REDIS_URL"),
              command = function(n) return "SET", "hot:last", n end }
return job
LUA
chmod 644 "$work/jobs/hot.lua.tmp" && mv "$work/jobs/hot.lua.tmp" "$work/jobs/hot.lua"
check "the new job does not run before SIGHUP" is 0 rcli EXISTS hot:last
"${C[@]}" kill -s HUP ember >/dev/null 2>&1
expect "after kill -s HUP, the new job started" 60 log_has '\[hot\] started from /jobs/hot.lua'
expect "the new job writes to Redis" 60 is 1 rcli EXISTS hot:last
check "ember kept running through the reload" is "true 0" inspect '{{.State.Running}} {{.RestartCount}}'

# --- stop drains ------------------------------------------------------------
# 60000 entries in one go (12 s of reading at the job's max_rate of 5000/s),
# then stop at once, while ember reads: whatever it read is processed and
# acknowledged before it exits; the rest stays in the stream for later.
M=60000
rcli EVAL "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', 'readings', '*', 'value',
    string.format('{\"device\":\"s-%d\",\"pm25\":%d}', i % 10, i)) end" 0 "$M" >/dev/null
t=$(now)
"${C[@]}" stop ember >/dev/null 2>&1
note "stop took $(since "$t") s"
check "stop: ember exited with 0" is 0 inspect '{{.State.ExitCode}}'
check "stop: the log says it stopped" log_has ' info  \[ember\] stopped$'
pending=$(rcli XPENDING readings ember-redis_example | head -1)
check "stop: no entry left delivered but unacknowledged (XPENDING: $pending)" test "$pending" = 0
count=$(rcli GET readings:count)
lag=$(rcli XINFO GROUPS readings | awk 'p { print; exit } $0 == "lag" { p = 1 }')
check "stop: processed ($((count - 3))) plus unread (${lag:-?}) is all $M" \
    test "$((count - 3 + ${lag:-0}))" = "$M"
check "stop: it came while ember was reading the stream (unread > 0)" test "${lag:-0}" -gt 0
"${C[@]}" start ember >/dev/null 2>&1
expect "after a start, every entry is counted once: readings:count = $((M + 3))" 120 \
    is $((M + 3)) rcli GET readings:count
expect "ember is healthy again" 120 health ember

# --- ember comes back after its process is killed, with its checkpoints -------
batches=$(x ember sed -n 's/^batches //p' /data/checkpoint/redis_example/checkpoint)
files=$(x ember sh -c 'ls /data/output/air_quality | wc -l')
restarts=$(inspect '{{.RestartCount}}')
killed_at=$(date +%s)
kill -KILL "$(inspect '{{.State.Pid}}')"
expect "after kill -9 of its process, the container restarts it" 120 \
    is "true $((restarts + 1))" inspect '{{.State.Running}} {{.RestartCount}}'
expect "the restarted ember is healthy" 120 health ember
resumed() {
    logs --since "$killed_at" |
        sed -n 's/.*\[redis_example\] checkpoint: last completed batch [0-9]* (\([0-9]*\) batches).*/\1/p' |
        awk -v min="$batches" '$1 >= min { ok = 1 } { print } END { exit !ok }'
}
expect "redis_example resumes from its checkpoint (at least ${batches:-?} batches)" 60 resumed
kept() { [ "$(x ember sh -c 'ls /data/output/air_quality | wc -l')" -ge "$files" ]; }
check "the output files written before the kill are kept ($files)" kept
feed "redis-cli -u \"\$EMBER_REDIS_URL\" XADD readings '*' value '$(reading r-9 77)'" >/dev/null
expect "records flow again after the restart: readings:count = $((M + 4))" 60 \
    is $((M + 4)) rcli GET readings:count

finish 0
