#!/usr/bin/env bash
# Makes sure the services the tests and `make dev` need are reachable: PostgreSQL on
# 127.0.0.1:5432 (trust auth, user postgres) and NATS with JetStream on 127.0.0.1:4222.
# Idempotent: a service that answers is left alone; one that is installed but stopped is
# started; one that is missing is installed when running as root, else the command to
# install it is printed.
set -euo pipefail

log() { printf 'services: %s\n' "$*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  return 1
}

as_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  if as_root; then
    log "installing $*"
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' 2>/dev/null | head -n 1)" ]; then
      apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || {
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    }
  else
    log "missing packages; run: sudo apt-get install -y $*"
    exit 1
  fi
}

ensure_postgres() {
  if port_open 5432; then log "postgresql: up"; return; fi
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then log "postgresql: no cluster found"; exit 1; fi
  # Tests connect over TCP as postgres without a password, as on CI machines.
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if [ -f "$hba" ] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  log "postgresql: starting cluster $version/main"
  setsid pg_ctlcluster --skip-systemctl-redirect "$version" main start </dev/null || true
  wait_port 5432 || { log "postgresql did not come up"; exit 1; }
  log "postgresql: up"
}

ensure_nats() {
  if port_open 4222; then log "nats: up"; return; fi
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || apt_install nats-server
  local bin
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  local store=/var/lib/nats-server
  as_root || store="${TMPDIR:-/tmp}/agentry-nats"
  mkdir -p "$store"
  log "nats: starting with JetStream in $store"
  setsid nohup "$bin" -a 127.0.0.1 -p 4222 -js -sd "$store" >"${TMPDIR:-/tmp}/agentry-nats.log" 2>&1 &
  wait_port 4222 || { log "nats did not come up"; exit 1; }
  log "nats: up"
}

ensure_postgres
ensure_nats
