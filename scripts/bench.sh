#!/usr/bin/env bash
# `make bench`: what the runtime adds to a chat completion. Starts the mock OpenAI upstream and
# `agentry-runtime dev` (release builds, a fresh database and dev role), then runs the load
# generator (a) straight at the mock and (b) through `POST /v1/chat/completions` with auth,
# rate limits, budgets and metering on, at several concurrencies, in the same run. With two or
# more cores the runtime is pinned to CPU 0 and the mock and the load generator to CPU 1
# (PostgreSQL and NATS are not pinned). Prints a table; raw JSON goes to target/bench/.
# Loopback only; every run is a bounded request count, so the whole script ends by itself.
#
# Knobs: BENCH_REQUESTS (default 5000 per run), BENCH_CONCURRENCY ("1 16 64"),
# BENCH_STREAM (1: also measure SSE time to first token), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
out="$target_dir/bench"
requests="${BENCH_REQUESTS:-5000}"
concurrencies="${BENCH_CONCURRENCY:-1 16 64}"
stream="${BENCH_STREAM:-1}"
pg="${AGENTRY_E2E_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
mkdir -p "$out"

echo "bench: building release binaries" >&2
cargo build -q --release -p agentry-runtime -p agentry-e2e
bin="$target_dir/release"

if [ "$(nproc)" -ge 2 ]; then
  pin_runtime=(taskset -c 0)
  pin_load=(taskset -c 1)
else
  echo "bench: one core only; nothing is pinned" >&2
  pin_runtime=()
  pin_load=()
fi

suffix=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
database="agentry_bench_$suffix"
role="agentry_bench_$suffix"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql -q "$pg/postgres" -c "drop database if exists $database with (force)" >/dev/null 2>&1 || true
  psql -q "$pg/postgres" -c "drop role if exists $role" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

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

AGENTRY_DATABASE_URL="$pg/$database" AGENTRY_DEV_ROLE="$role" AGENTRY_STATE_DIR="$work/state" \
  AGENTRY_PROVIDER_MOCK_API_KEY="$upstream_key" RUST_LOG="${BENCH_RUST_LOG:-info}" \
  "${pin_runtime[@]}" "$bin/agentry-runtime" dev --manifests "$work/manifests" \
  --listen 127.0.0.1:0 --log-json >"$work/runtime.log" 2>&1 &
pids+=($!)
address=$(wait_line "$work/runtime.log" '"message":"serving"' "${pids[-1]}" | sed -E 's/.*"address":"([^"]+)".*/\1/')
runtime_url="http://$address/v1"
key=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bench"]["key"])' "$work/state/keys.json")
for _ in $(seq 1 100); do
  curl -fsS "http://$address/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

# One loadgen run: label, url, key ("" for none), concurrency, extra args.
run() {
  local label=$1 url=$2 k=$3 c=$4
  shift 4
  local args=(--url "$url" --model fast --concurrency "$c" --requests "$requests" --label "$label")
  [ -n "$k" ] && args+=(--key "$k")
  "${pin_load[@]}" "$bin/loadgen" "${args[@]}" "$@" >"$out/$label.json"
}

for c in $concurrencies; do
  echo "bench: concurrency $c" >&2
  run "direct-c$c" "$mock_url" "$upstream_key" "$c"
  run "runtime-c$c" "$runtime_url" "$key" "$c"
done
if [ "$stream" = 1 ]; then
  echo "bench: streaming, concurrency 1" >&2
  run "direct-stream-c1" "$mock_url" "$upstream_key" 1 --stream
  run "runtime-stream-c1" "$runtime_url" "$key" 1 --stream
fi
cp "$work/runtime.log" "$out/runtime.log"

python3 - "$out" $concurrencies <<'EOF'
import json, sys
out, cs = sys.argv[1], sys.argv[2:]
def load(name):
    with open(f"{out}/{name}.json") as f:
        return json.load(f)
print(f"{'run':<22}{'conc':>5}{'ok':>7}{'err':>5}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}")
rows = []
for c in cs:
    for kind in ("direct", "runtime"):
        r = load(f"{kind}-c{c}")
        l = r["latency_ms"] or {}
        print(f"{kind:<22}{c:>5}{r['ok']:>7}{r['errors']:>5}{r['rps']:>10.0f}"
              f"{l.get('p50', 0):>9.3f}{l.get('p90', 0):>9.3f}{l.get('p99', 0):>9.3f}{l.get('max', 0):>9.3f}")
    d, t = load(f"direct-c{c}")["latency_ms"], load(f"runtime-c{c}")["latency_ms"]
    if d and t:
        print(f"{'  added by runtime':<22}{c:>5}{'':>7}{'':>5}{'':>10}"
              f"{t['p50'] - d['p50']:>9.3f}{t['p90'] - d['p90']:>9.3f}{t['p99'] - d['p99']:>9.3f}")
try:
    d, t = load("direct-stream-c1"), load("runtime-stream-c1")
    print()
    print(f"{'SSE first data: chunk':<22}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    for name, r in (("direct", d), ("runtime", t)):
        f = r["ttft_ms"] or {}
        print(f"{name:<22}{f.get('p50', 0):>9.3f}{f.get('p90', 0):>9.3f}{f.get('p99', 0):>9.3f}")
    if d["ttft_ms"] and t["ttft_ms"]:
        print(f"{'added by runtime':<22}" + "".join(
            f"{t['ttft_ms'][p] - d['ttft_ms'][p]:>9.3f}" for p in ("p50", "p90", "p99")))
except FileNotFoundError:
    pass
EOF
echo "bench: raw JSON in $out/" >&2
