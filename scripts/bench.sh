#!/usr/bin/env bash
# `make bench`: what the runtime adds to a chat completion. Starts the mock OpenAI upstream and
# `agentry-runtime dev` (release builds, a fresh database and dev role), then runs the load
# generator (a) straight at the mock and (b) through `POST /v1/chat/completions` with auth,
# rate limits, budgets and metering on, at several concurrencies, in the same run. With two or
# more cores the runtime is pinned to CPU 0 and the mock and the load generator to CPU 1, and
# a local PostgreSQL and NATS are moved to CPU 1 for the run (their CPU affinity is put back
# on exit; BENCH_PIN_SERVICES=0 leaves them where they run): the runtime gets a core of its
# own, as a replica with a CPU request has, and the crowding is on the load's core, which
# only makes the added latency look worse (docs/benchmarks.md). Prints a table; raw JSON goes
# to target/bench/.
# At concurrency 1 it also measures what crossing between the cores costs on this machine
# (the load on the runtime's core, straight at the mock): the runtime's path crosses twice.
# Before each direct/runtime pair and the overload it waits until earlier usage rows are
# written and their events relayed, so that runs do not measure each other's background work.
# Loopback only; every run is a bounded request count, so the whole script ends by itself.
#
# It also measures the server's resident memory per idle `/ws/chat` socket (first, on the fresh
# process); then stops the runtime gracefully and checks that every answered request left its
# usage row (batched writer flushed on shutdown); last, restarts it with a small shedding cap
# and runs an overload: an open-loop run at 1.5x the best throughput measured above, reporting
# admitted latency, how many requests were shed (503) and how fast. After the closed-loop runs
# and after the overload it reads from /metrics how long usage records waited in memory.
#
# Knobs: BENCH_REQUESTS (default 5000 per run), BENCH_CONCURRENCY ("1 16 64"),
# BENCH_STREAM (1: also measure SSE time to first token), BENCH_STREAM_CONCURRENCY (the
# streamed runs' concurrencies, "1 16 64"), BENCH_WS_SOCKETS (10000; 0 skips),
# BENCH_AGENT_CONCURRENCY (16: one run with an `agent/<name>` model; 0 skips),
# BENCH_PG_OPTIONS (query options for the runtime's database URL, e.g. sslmode=disable),
# BENCH_NICE (-15: the nice value of the benchmark's processes; 0 leaves it),
# BENCH_PIN_SERVICES (1: the running PostgreSQL and NATS on the load's core; 0 leaves them),
# BENCH_AUTOGROUPS (1; 0 turns the kernel's autogroups off for the run, see below),
# BENCH_OVERLOAD_SECS (5; 0 skips), BENCH_OVERLOAD_RATE (req/s offered in the overload run;
# default 1.5x the best closed-loop throughput measured), BENCH_MAX_IN_FLIGHT (the runtime's
# shedding cap for the closed-loop runs, 1024), BENCH_OVERLOAD_MAX_IN_FLIGHT (the cap for the
# overload run, 16),
# BENCH_FRONT_THREAD (the runtime's --http-front-thread, true or false; default false),
# BENCH_PACE_US (the open loop's shortest time between two releases of due requests, 250 µs),
# BENCH_SLOW_MS (100: the upstream's answer time in the slow-upstream runs; 0 skips them),
# BENCH_SLOW_RATE (their requests per second, 1000), BENCH_SLOW_SECS (how long each, 3),
# CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
out="$target_dir/bench"
requests="${BENCH_REQUESTS:-5000}"
concurrencies="${BENCH_CONCURRENCY:-1 16 64}"
stream="${BENCH_STREAM:-1}"
stream_concurrencies="${BENCH_STREAM_CONCURRENCY:-1 16 64}"
ws_sockets="${BENCH_WS_SOCKETS:-10000}"
overload_secs="${BENCH_OVERLOAD_SECS:-5}"
agent_concurrency="${BENCH_AGENT_CONCURRENCY:-16}"
# Connection options for the runtime's database URL, such as `sslmode=disable` (by default
# the runtime's `prefer`: TLS when the server offers it, as Debian's PostgreSQL does).
pg_options="${BENCH_PG_OPTIONS:-}"
max_in_flight="${BENCH_MAX_IN_FLIGHT:-1024}"
overload_max_in_flight="${BENCH_OVERLOAD_MAX_IN_FLIGHT:-16}"
front_thread="${BENCH_FRONT_THREAD:-false}"
pace_us="${BENCH_PACE_US:-250}"
slow_ms="${BENCH_SLOW_MS:-100}"
slow_rate="${BENCH_SLOW_RATE:-1000}"
slow_secs="${BENCH_SLOW_SECS:-3}"
pg="${AGENTRY_E2E_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
mkdir -p "$out"
# One run at a time: two would share the output files, and the second would record the first's
# changes to PostgreSQL's and NATS's priority and affinity as theirs and put those back on exit.
exec 9>"$out/.lock"
if ! flock -n 9; then
  echo "bench: another benchmark is running (lock $out/.lock)" >&2
  exit 1
fi
rm -f "$out"/*.json "$out"/*-metrics.txt
# Thousands of sockets on each side of the WebSocket run.
ulimit -n "$(ulimit -Hn)"

echo "bench: building release binaries" >&2
cargo build -q --release -p agentry-runtime -p agentry-e2e
bin="$target_dir/release"

suffix=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
database="agentry_bench_$suffix"
role="agentry_bench_$suffix"
work=$(mktemp -d)
pids=()
# What the run changes outside itself, put back by `cleanup` however it ends: the CPU affinity
# and nice value of each PostgreSQL and NATS thread (both are per thread, and nats-server has
# many), their sessions' autogroup weight, and this session's.
services_affinity=()
services_nice=()
services_groups=()
autogroup_before=""
autogroups_enabled_before=""
cleanup() {
  local entry
  if [ -n "$autogroups_enabled_before" ]; then
    echo "$autogroups_enabled_before" 2>/dev/null >/proc/sys/kernel/sched_autogroup_enabled || true
  fi
  for entry in "${services_affinity[@]}"; do
    taskset -p "${entry#*:}" "${entry%%:*}" >/dev/null 2>&1 || true
  done
  for entry in "${services_nice[@]}"; do
    renice "${entry#*:}" -p "${entry%%:*}" >/dev/null 2>&1 || true
  done
  for entry in "${services_groups[@]}"; do
    echo "${entry#*:}" >"/proc/${entry%%:*}/autogroup" 2>/dev/null || true
  done
  if [ -n "$autogroup_before" ]; then echo "$autogroup_before" >/proc/$$/autogroup 2>/dev/null || true; fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql -q "$pg/postgres" -c "drop database if exists $database with (force)" >/dev/null 2>&1 || true
  psql -q "$pg/postgres" -c "drop role if exists $role" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The local PostgreSQL (the server and every backend; a new backend inherits the server's
# affinity and nice value) and NATS: their processes, and every thread of them.
service_pids() { pgrep -x postgres || true; pgrep -x nats-server || true; }
service_threads() {
  local pid
  for pid in $(service_pids); do ls "/proc/$pid/task" 2>/dev/null || true; done
}

if [ "$(nproc)" -ge 2 ]; then
  pin_runtime=(taskset -c 0)
  pin_load=(taskset -c 1)
else
  echo "bench: one core only; nothing is pinned" >&2
  pin_runtime=()
  pin_load=()
fi
# PostgreSQL and NATS off the runtime's core.
if [ "$(nproc)" -ge 2 ] && [ "${BENCH_PIN_SERVICES:-1}" = 1 ]; then
  for tid in $(service_threads); do
    if before=$(taskset -p "$tid" 2>/dev/null | sed -E 's/.*: //') &&
      taskset -p 2 "$tid" >/dev/null 2>&1; then
      services_affinity+=("$tid:$before")
    fi
  done
  if [ "${#services_affinity[@]}" -gt 0 ]; then
    echo "bench: PostgreSQL and NATS moved to CPU 1 (${#services_affinity[@]} threads)" >&2
  else
    echo "bench: PostgreSQL and NATS left where they run (not found, or not permitted)" >&2
  fi
fi
# On a machine shared with other work, the benchmark's processes get a higher CPU weight (a
# lower nice value; needs root or CAP_SYS_NICE, skipped otherwise) so that the figures are the
# code's rather than the neighbours'. With autogroup scheduling (Linux's default for desktop
# and many server kernels) a nice value only counts within its session, so the session's
# autogroup is reniced too. The runs are bounded: neighbours wait seconds.
# PostgreSQL and NATS do the runtime's work during the runs (usage rows, the outbox, events),
# so a local server gets the same weight, its threads and its autogroup: left at 0 while the
# runtime and the load ran at -15, a saturated machine starved them, and usage writes fell
# seconds behind and held up requests. But PostgreSQL starts every backend in a session, and so
# an autogroup, of its own at nice 0, whatever the server's: the runtime's database sessions
# keep a small share of a busy core. BENCH_AUTOGROUPS=0 turns autogroups off for the run (put
# back on exit), so that every thread counts with its own nice value and a new backend
# inherits the server's; on two cores the load's core is then the bottleneck
# (docs/benchmarks.md). (A backend started during the run keeps the weight until it ends.)
nice_value="${BENCH_NICE:--15}"
if [ "$nice_value" != 0 ] && nice -n "$nice_value" true 2>/dev/null; then
  if [ "${BENCH_AUTOGROUPS:-1}" = 0 ] &&
    [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" = 1 ] &&
    echo 0 2>/dev/null >/proc/sys/kernel/sched_autogroup_enabled; then
    autogroups_enabled_before=1
  fi
  pin_runtime=(nice -n "$nice_value" "${pin_runtime[@]}")
  pin_load=(nice -n "$nice_value" "${pin_load[@]}")
  if [ -w /proc/self/autogroup ]; then
    autogroup_before=$(sed -E 's/.* nice (-?[0-9]+).*/\1/' /proc/self/autogroup)
    echo "$nice_value" >/proc/$$/autogroup 2>/dev/null || autogroup_before=""
  fi
  for tid in $(service_threads); do
    # The nice value is the 19th field of stat, the 17th after the command's name.
    before=$(sed -E 's/.*\) //' "/proc/$tid/stat" 2>/dev/null | awk '{print $17}') || continue
    [[ "$before" =~ ^-?[0-9]+$ ]] || continue
    renice "$nice_value" -p "$tid" >/dev/null 2>&1 && services_nice+=("$tid:$before")
  done
  for pid in $(service_pids); do
    before=$(sed -E 's/.* nice (-?[0-9]+).*/\1/' "/proc/$pid/autogroup" 2>/dev/null) || continue
    echo "$nice_value" 2>/dev/null >"/proc/$pid/autogroup" && services_groups+=("$pid:$before")
  done
else
  echo "bench: running at normal priority" >&2
fi

# Waits for a line matching $2 in file $1 and prints it; gives up when process $3 exits.
wait_line() {
  for _ in $(seq 1 600); do
    if line=$(grep -m1 -E "$2" "$1" 2>/dev/null); then echo "$line"; return 0; fi
    kill -0 "$3" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: timed out waiting for '$2' in $1" >&2
  cat "$1" >&2
  return 1
}

upstream_key="bench-upstream-$suffix"
"${pin_load[@]}" "$bin/mock-llm" --listen 127.0.0.1:0 --api-key "$upstream_key" >"$work/mock.log" 2>&1 &
pids+=($!)
mock_url=$(wait_line "$work/mock.log" "listening on" "${pids[-1]}" | sed -E 's/.*listening on (http[^ ]+).*/\1/')

mkdir -p "$work/manifests" "$work/state"
sed "s|@MOCK_BASE_URL@|$mock_url|" e2e/bench/manifests/bench.yaml.tmpl >"$work/manifests/bench.yaml"

# Starts the runtime (log file $1, shedding cap $2) and sets runtime_pid, address, runtime_url.
start_runtime() {
  AGENTRY_DATABASE_URL="$pg/$database${pg_options:+?$pg_options}" AGENTRY_DEV_ROLE="$role" AGENTRY_STATE_DIR="$work/state" \
    AGENTRY_PROVIDER_MOCK_API_KEY="$upstream_key" RUST_LOG="${BENCH_RUST_LOG:-info}" \
    AGENTRY_MAX_IN_FLIGHT="$2" AGENTRY_HTTP_FRONT_THREAD="$front_thread" \
    "${pin_runtime[@]}" "$bin/agentry-runtime" dev --manifests "$work/manifests" \
    --listen 127.0.0.1:0 --log-json >"$1" 2>&1 &
  runtime_pid=$!
  pids+=("$runtime_pid")
  address=$(wait_line "$1" '"message":"serving"' "$runtime_pid" | sed -E 's/.*"address":"([^"]+)".*/\1/')
  runtime_url="http://$address/v1"
  for _ in $(seq 1 100); do
    curl -fsS "http://$address/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
}
start_runtime "$work/runtime.log" "$max_in_flight"
key=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bench"]["key"])' "$work/state/keys.json")

# Drops a stopped process from `pids`, so that `cleanup` does not signal its number again
# (which may belong to another process by then).
forget_pid() {
  local kept=() pid
  for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  pids=("${kept[@]}")
}

# Waits (up to 30 s) until the runtime is done with the previous run's background work: every
# usage row written and every event relayed (the outbox empty), with the row count unchanged for
# 0.3 s. Otherwise a run measures the previous one's thousands of batched writes and publishes
# competing for its core, not its own requests.
settle() {
  local last="" now
  for _ in $(seq 1 100); do
    now=$(psql -tAq "$pg/$database" -c \
      "select (select count(*) from agentry.usage_records) || '/' || (select count(*) from agentry.event_outbox)" \
      2>/dev/null || echo "?")
    if [ "$now" = "$last" ] && [ "${now#*/}" = 0 ]; then return 0; fi
    last=$now
    sleep 0.3
  done
  echo "bench: background work not settled after 30 s ($now rows/outbox)" >&2
}

# One loadgen run: label, url, key ("" for none), concurrency, extra args.
run() {
  local label=$1 url=$2 k=$3 c=$4
  shift 4
  local args=(--url "$url" --model fast --concurrency "$c" --requests "$requests" --label "$label")
  [ -n "$k" ] && args+=(--key "$k")
  "${pin_load[@]}" "$bin/loadgen" "${args[@]}" "$@" >"$out/$label.json"
}

if [ "$ws_sockets" -gt 0 ]; then
  echo "bench: $ws_sockets idle WebSockets" >&2
  "${pin_load[@]}" "$bin/loadgen" --url "$runtime_url" --key "$key" --ws-idle "$ws_sockets" \
    --pid "$runtime_pid" --label ws-idle >"$out/ws-idle.json"
fi

for c in $concurrencies; do
  echo "bench: concurrency $c" >&2
  # Before the pair: the direct run (the baseline) must not absorb the previous run's work
  # either, and it leaves none of its own.
  settle
  run "direct-c$c" "$mock_url" "$upstream_key" "$c"
  run "runtime-c$c" "$runtime_url" "$key" "$c" --pid "$runtime_pid"
  if [ "$c" = 1 ] && [ ${#pin_runtime[@]} -gt 0 ]; then
    # What the layout itself adds: through the runtime a request crosses between the two
    # cores twice there and back (load -> runtime -> mock and back), straight to the mock not
    # at all, and on a VM each crossing wakes the other, idle, vCPU. One crossing there and
    # back, measured: the load on the runtime's core (idle meanwhile), straight at the mock.
    "${pin_runtime[@]}" "$bin/loadgen" --url "$mock_url" --key "$upstream_key" --concurrency 1 \
      --requests "$requests" --label direct-crossing-c1 >"$out/direct-crossing-c1.json"
  fi
done
if [ "$stream" = 1 ]; then
  for c in $stream_concurrencies; do
    echo "bench: streaming, concurrency $c" >&2
    settle
    run "direct-stream-c$c" "$mock_url" "$upstream_key" "$c" --stream
    run "runtime-stream-c$c" "$runtime_url" "$key" "$c" --stream --pid "$runtime_pid"
  done
fi

if [ "$slow_ms" != 0 ]; then
  # An upstream as slow as a real model: the mock waits $slow_ms before each answer (the
  # `#slow` directive in the message), so that about rate x time requests are in flight and
  # the runtime holds them all while it waits. Open loop, so that requests arrive spread out
  # as independent users send them (a closed loop's users all return, and send again, in the
  # same millisecond); plain and streamed, against the same mock directly.
  message=$'#slow '"$slow_ms"$'\nSay hello in five words.'
  in_flight=$(python3 -c "print(max(32, round(1.2 * $slow_rate * $slow_ms / 1000)))")
  slow=(--message "$message" --rate "$slow_rate" --duration-secs "$slow_secs" --pace-us "$pace_us"
    --warmup 8 --warm-connections "$in_flight")
  echo "bench: upstream answering after ${slow_ms} ms, $slow_rate req/s for ${slow_secs}s" >&2
  for kind in slow slow-stream; do
    extra=()
    [ "$kind" = slow-stream ] && extra=(--stream)
    settle
    run "direct-$kind" "$mock_url" "$upstream_key" 1 "${slow[@]}" "${extra[@]}"
    run "runtime-$kind" "$runtime_url" "$key" 1 "${slow[@]}" "${extra[@]}" --pid "$runtime_pid"
  done
fi

if [ "$agent_concurrency" != 0 ]; then
  # An agent through the same endpoint: the agent loop with its conversation, messages, usage
  # row and events written in the request's transactions (the mock requests no tool, so one
  # model call per request). Against the catalog-model run at the same concurrency above.
  echo "bench: agent model, concurrency $agent_concurrency" >&2
  settle
  "${pin_load[@]}" "$bin/loadgen" --url "$runtime_url" --key "$key" --model agent/support \
    --concurrency "$agent_concurrency" --requests "$requests" --label "runtime-agent-c$agent_concurrency" \
    --pid "$runtime_pid" >"$out/runtime-agent-c$agent_concurrency.json"
fi

# How long the batched usage records of the runs above waited in memory before their batch
# was written (agentry_usage_write_delay_seconds): the crash window under this load.
settle
curl -fsS "http://$address/metrics" >"$out/runtime-metrics.txt" || true

# Graceful stop: the usage writer flushes. Every 200 the runtime answered (warm-ups included)
# must have left exactly one usage row.
kill -TERM "$runtime_pid"
wait "$runtime_pid" || true
forget_pid "$runtime_pid"
cp "$work/runtime.log" "$out/runtime.log"
answered=$(python3 -c 'import json,sys; print(sum(json.load(open(f))["ok"] + json.load(open(f)).get("warmup_ok", 0) for f in sys.argv[1:]))' \
  "$out"/runtime-*.json)
rows=$(psql -tAq "$pg/$database" -c "select count(*) from agentry.usage_records")
echo "{\"answered\": $answered, \"usage_rows\": $rows}" >"$out/usage-check.json"

if [ "$overload_secs" != 0 ]; then
  # 1.5x the best closed-loop throughput through the runtime, as a fixed arrival rate.
  capacity=$(python3 -c 'import json,sys; print(max(json.load(open(f)).get("rps", 0) for f in sys.argv[1:]))' \
    $(for c in $concurrencies; do echo "$out/runtime-c$c.json"; done))
  rate="${BENCH_OVERLOAD_RATE:-$(python3 -c "print(round(1.5 * $capacity))")}"
  # The floor: the same open loop against a mock on the runtime's core that refuses every
  # request at once (a `fail-503` model). What the load generator and the machine take to send
  # a request and read a refusal at this rate, to subtract from the runtime's refusals.
  echo "bench: refusal floor, $rate req/s for ${overload_secs}s at a mock answering 503" >&2
  "${pin_runtime[@]}" "$bin/mock-llm" --listen 127.0.0.1:0 >"$work/refuser.log" 2>&1 &
  refuser_pid=$!
  pids+=("$refuser_pid")
  refuser_url=$(wait_line "$work/refuser.log" "listening on" "$refuser_pid" | sed -E 's/.*listening on (http[^ ]+).*/\1/')
  # Its warm-up requests are refused too; their messages are expected.
  "${pin_load[@]}" "$bin/loadgen" --url "$refuser_url" --model refuse-fail-503 --concurrency 1 \
    --requests "$requests" --label overload-floor --rate "$rate" --duration-secs "$overload_secs" --pace-us "$pace_us" --pid "$refuser_pid" \
    >"$out/overload-floor.json" 2>>"$work/refuser.log"
  kill -TERM "$refuser_pid"
  wait "$refuser_pid" 2>/dev/null || true
  forget_pid "$refuser_pid"

  # The shedding cap for this run: past it a request is answered 503 before any work.
  start_runtime "$work/runtime-overload.log" "$overload_max_in_flight"
  # The stopped runtime's last usage batch was written after its relay stopped: this one
  # relays it first.
  settle
  echo "bench: overload, $rate req/s for ${overload_secs}s (1.5x $capacity), max in flight $overload_max_in_flight" >&2
  run overload "$runtime_url" "$key" 1 --rate "$rate" --duration-secs "$overload_secs" --pace-us "$pace_us" \
    --pid "$runtime_pid"
  settle
  curl -fsS "http://$address/metrics" >"$out/overload-metrics.txt" || true
  cp "$work/runtime-overload.log" "$out/runtime-overload.log"
fi

python3 - "$out" $concurrencies <<'EOF'
import glob, json, os, sys
out, cs = sys.argv[1], sys.argv[2:]
def load(name):
    with open(f"{out}/{name}.json") as f:
        return json.load(f)
print(f"{'run':<22}{'conc':>5}{'ok':>7}{'err':>5}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}")
def added(label, d, t, lead):
    """The percentile-by-percentile difference `t - d` (dicts of p50/p90/p99), after `lead`."""
    if d and t:
        print(f"{label:<22}{lead}" + "".join(f"{t[p] - d[p]:>9.3f}" for p in ("p50", "p90", "p99")))
def steal_of(server):
    """How long the VM's host ran something else on each CPU during the run, as `cpu0/cpu1` ms."""
    return "/".join(f"{x:.0f}" for x in server.get("steal_ms_per_cpu", []))
rows = []
for c in cs:
    for kind in ("direct", "runtime"):
        r = load(f"{kind}-c{c}")
        l = r["latency_ms"] or {}
        print(f"{kind:<22}{c:>5}{r['ok']:>7}{r['errors']:>5}{r['rps']:>10.0f}"
              f"{l.get('p50', 0):>9.3f}{l.get('p90', 0):>9.3f}{l.get('p99', 0):>9.3f}{l.get('max', 0):>9.3f}")
    d, t = load(f"direct-c{c}")["latency_ms"], load(f"runtime-c{c}")["latency_ms"]
    added("  added by runtime", d, t, f"{c:>5}{'':>22}")
    try:
        x = load(f"direct-crossing-c{c}")
    except FileNotFoundError:
        x = None
    if x and d and x["latency_ms"]:
        l = x["latency_ms"]
        print(f"{'direct, load on CPU 0':<22}{c:>5}{x['ok']:>7}{x['errors']:>5}{x['rps']:>10.0f}"
              f"{l['p50']:>9.3f}{l['p90']:>9.3f}{l['p99']:>9.3f}{l['max']:>9.3f}")
        added("  one core crossing", d, l, f"{c:>5}{'':>22}")
        print("  (a crossing there and back, straight to the mock; the runtime's path has two)")
    rows.append((c, load(f"runtime-c{c}")))
print()
print("runtime process during each run (all threads, from /proc/<pid>/task/*/schedstat):")
print(f"{'conc':>5}{'CPU us/request':>16}{'CPU busy':>10}{'waited for CPU ms':>19}{'one-core capacity req/s':>25}"
      f"{'steal ms per CPU':>18}")
for c, r in rows:
    s = r.get("server")
    if s:
        busy = s["cpu_ms"] / 1000 / r["seconds"]
        print(f"{c:>5}{s['cpu_us_per_request']:>16.1f}{busy:>10.0%}{s['runqueue_wait_ms']:>19.0f}"
              f"{1e6 / max(s['cpu_us_per_request'], 1e-9):>25.0f}{steal_of(s):>18}")
streamed = sorted(int(f.rsplit("-c", 1)[1].split(".")[0])
                  for f in glob.glob(os.path.join(out, "runtime-stream-c*.json")))
if streamed:
    print()
    print(f"{'SSE first data: chunk':<22}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
for c in streamed:
    d, t = load(f"direct-stream-c{c}"), load(f"runtime-stream-c{c}")
    for name, r in (("direct", d), ("runtime", t)):
        f = r["ttft_ms"] or {}
        print(f"{name:<22}{c:>5}{r['rps']:>10.0f}{f.get('p50', 0):>9.3f}{f.get('p90', 0):>9.3f}"
              f"{f.get('p99', 0):>9.3f}")
    added("  added by runtime", d["ttft_ms"], t["ttft_ms"], f"{c:>5}{'':>10}")
for kind in ("slow", "slow-stream"):
    try:
        d, t = load(f"direct-{kind}"), load(f"runtime-{kind}")
    except FileNotFoundError:
        continue
    if kind == "slow":
        print()
        print(f"slow upstream, open loop at {t['offered_rps']:.0f} req/s (latency from each scheduled start; streams read to the end)")
        print(f"{'':<22}{'ok':>7}{'err':>5}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, r in ((f"direct {kind[5:] or 'plain'}", d), (f"runtime {kind[5:] or 'plain'}", t)):
        l = r["latency_ms"] or {}
        print(f"{name:<22}{r['ok']:>7}{r['errors'] + r['shed']:>5}{r['ok_rps']:>10.0f}"
              f"{l.get('p50', 0):>9.3f}{l.get('p90', 0):>9.3f}{l.get('p99', 0):>9.3f}{l.get('max', 0):>9.3f}")
    added("  added by runtime", d["latency_ms"], t["latency_ms"], f"{'':>22}")
    s = t.get("server")
    if s:
        print(f"  runtime: {s['cpu_us_per_request']:.1f} CPU us per request, "
              f"{s['cpu_ms'] / 1000 / t['seconds']:.0%} busy, waited {s['runqueue_wait_ms']:.0f} ms for a CPU; "
              f"steal {steal_of(s)} ms per CPU")
for f in sorted(glob.glob(os.path.join(out, "runtime-agent-c*.json"))):
    r = json.load(open(f))
    c = int(f.rsplit("-c", 1)[1].split(".")[0])
    l, s = r["latency_ms"] or {}, r.get("server") or {}
    print()
    print(f"{'agent model':<22}{'conc':>5}{'ok':>7}{'err':>5}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    print(f"{'agent/support':<22}{c:>5}{r['ok']:>7}{r['errors']:>5}{r['rps']:>10.0f}"
          f"{l.get('p50', 0):>9.3f}{l.get('p90', 0):>9.3f}{l.get('p99', 0):>9.3f}{l.get('max', 0):>9.3f}")
    if s:
        print(f"runtime: {s['cpu_us_per_request']:.1f} CPU us per request, waited {s['runqueue_wait_ms']:.0f} ms for a CPU")
try:
    w = load("ws-idle")
    print()
    print(f"idle WebSockets: {w['open_at_measurement']} of {w['sockets']} open, RSS "
          f"{w['rss_before_kib']} -> {w['rss_after_kib']} KiB: {w['rss_per_socket_kib']:.1f} KiB per socket")
except FileNotFoundError:
    pass
try:
    u = load("usage-check")
    print()
    verdict = "ok" if u["answered"] == u["usage_rows"] else "MISMATCH"
    print(f"usage rows after graceful stop: {u['usage_rows']} for {u['answered']} answered requests ({verdict})")
except FileNotFoundError:
    pass
def write_delay(name):
    """(count, p50, p99, max) upper bounds of agentry_usage_write_delay_seconds in `name`."""
    buckets = []
    with open(f"{out}/{name}") as f:
        for line in f:
            if line.startswith('agentry_usage_write_delay_seconds_bucket{le="'):
                le, n = line[len('agentry_usage_write_delay_seconds_bucket{le="'):].split('"} ')
                buckets.append((float(le), int(n)))
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    at = lambda q: next(le for le, n in buckets if n >= q * total)
    return total, at(0.5), at(0.99), at(1.0)
def queue_full(name):
    """agentry_usage_queue_full_total in `name`: records whose request waited for room."""
    with open(f"{out}/{name}") as f:
        for line in f:
            if line.startswith("agentry_usage_queue_full_total "):
                return int(float(line.split()[1]))
    return 0
for name, label in (("runtime-metrics.txt", "the closed-loop runs"), ("overload-metrics.txt", "the overload run")):
    try:
        d = write_delay(name)
    except FileNotFoundError:
        continue
    if d:
        print()
        print(f"usage write delay during {label} ({d[0]} batched records; bucket upper bounds): "
              f"p50 <= {d[1] * 1000:.0f} ms, p99 <= {d[2] * 1000:.0f} ms, max <= {d[3] * 1000:.0f} ms; "
              f"{queue_full(name)} waited for room in the full queue")
try:
    o = load("overload")
    l, s = o["latency_ms"] or {}, o["shed_latency_ms"] or {}
    print()
    print(f"overload: offered {o['offered_rps']:.0f} req/s (sent {o['sent_rps']:.0f}) for {o['seconds']:.1f}s: "
          f"{o['ok']} ok ({o['ok_rps']:.0f} req/s), {o['shed']} shed, {o['errors']} errors, {o['not_sent']} not sent")
    print(f"{'':<24}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    rows, runs = [("admitted", l), ("shed (503/429)", s), ("client's start lateness", o.get("start_lateness_ms") or {})], [("", o)]
    try:
        f = load("overload-floor")
        floor = f["shed_latency_ms"] or {}
        rows.append(("refusal floor (mock)", floor))
        rows.append(("  shed minus floor", {k: s.get(k, 0) - floor.get(k, 0) for k in ("p50", "p90", "p99", "max")}))
        rows.append(("  floor's lateness", f.get("start_lateness_ms") or {}))
        runs.append(("floor ", f))
    except FileNotFoundError:
        pass
    for name, r in rows:
        print(f"{name:<24}{r.get('p50', 0):>9.3f}{r.get('p90', 0):>9.3f}{r.get('p99', 0):>9.3f}{r.get('max', 0):>9.3f}")
    for label, run in runs:
        for name in ("server", "client"):
            if name in run:
                busy = run[name]["cpu_ms"] / 1000 / run["seconds"]
                print(f"{label}{name}: {run[name]['cpu_us_per_request']:.1f} CPU us per answer, {busy:.0%} busy, "
                      f"waited {run[name]['runqueue_wait_ms']:.0f} ms for a CPU")
except FileNotFoundError:
    pass
EOF
echo "bench: raw JSON in $out/" >&2
