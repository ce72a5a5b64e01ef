#!/usr/bin/env bash
# `make dev`: the whole platform on this machine, from manifests/examples.
#
# Makes sure PostgreSQL and NATS are reachable. As root it uses (and if needed installs and
# starts) the system services, like CI. As another user it starts private ones under .dev/
# from the installed packages, or prints the command that installs them. Then it runs
# `agentry-runtime dev`, which migrates the database, creates the example tenants and their
# admin keys, and prints the URL, each tenant's key and a curl line. Idempotent; Ctrl-C stops
# the runtime and whatever this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

state="${AGENTRY_STATE_DIR:-.dev}"
mkdir -p "$state"
started_pids=()
pg_data=""

stop_started() {
  for pid in "${started_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$pg_data" ]; then "$pg_bin/pg_ctl" -D "$pg_data" -m fast stop >/dev/null 2>&1 || true; fi
}
trap stop_started EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done; return 1; }

if [ "$(id -u)" = 0 ]; then
  scripts/services.sh
else
  if ! port_open 5432; then
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$pg_bin" ]; then
      echo "PostgreSQL is not running and not installed; run: sudo apt-get install -y postgresql" >&2
      exit 1
    fi
    pg_data="$state/postgres"
    if [ ! -f "$pg_data/PG_VERSION" ]; then
      "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust >/dev/null
    fi
    echo "dev: starting PostgreSQL in $pg_data"
    "$pg_bin/pg_ctl" -D "$pg_data" -o "-p 5432 -k /tmp -c listen_addresses=127.0.0.1" -l "$state/postgres.log" start >/dev/null
    wait_port 5432 || { echo "PostgreSQL did not start; see $state/postgres.log" >&2; exit 1; }
  fi
  if ! port_open 4222; then
    nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
    if [ ! -x "$nats_bin" ]; then
      echo "NATS is not running and not installed; run: sudo apt-get install -y nats-server" >&2
      exit 1
    fi
    mkdir -p "$state/nats"
    echo "dev: starting NATS with JetStream in $state/nats"
    "$nats_bin" -a 127.0.0.1 -p 4222 -js -sd "$state/nats" >"$state/nats.log" 2>&1 &
    started_pids+=($!)
    wait_port 4222 || { echo "NATS did not start; see $state/nats.log" >&2; exit 1; }
  fi
fi

bin="${AGENTRY_RUNTIME_BIN:-}"
if [ -z "$bin" ]; then
  cargo build -q -p agentry-runtime
  bin="${CARGO_TARGET_DIR:-target}/debug/agentry-runtime"
fi

export AGENTRY_STATE_DIR="$state"
export AGENTRY_LISTEN="${AGENTRY_LISTEN:-127.0.0.1:8080}"
# Run in the foreground (not exec) so that the trap stops what this script started.
"$bin" dev --manifests "${AGENTRY_MANIFESTS:-manifests/examples}" "$@" &
runtime=$!
trap 'kill -TERM $runtime 2>/dev/null || true' INT TERM
wait $runtime || true
wait $runtime 2>/dev/null || true
