#!/usr/bin/env bash
# `make bench`, operator part: the operator at scale (operator/examples/scale). For 1, 100 and
# 10,000 generated tenants (manifests/examples/acme.yaml: 5 agents, 5 tools, 3 workflows each)
# it measures build + compile time per tenant, API requests and operator CPU time per
# reconcile (new and converged) and checks that a converged reconcile changes nothing; then,
# in a fresh process, the operator's RSS with 10,000 tenants in the controller's caches.
# Everything runs in process against an in-process API server; no cluster is needed.
# Prints the figures; a copy goes to target/bench/operator.txt.
#
# Knobs: BENCH_OPERATOR_TENANTS ("1 100 10000"), BENCH_OPERATOR_MEMORY_TENANTS (10000),
# CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
out="$target_dir/bench"
tenants="${BENCH_OPERATOR_TENANTS:-1 100 10000}"
memory_tenants="${BENCH_OPERATOR_MEMORY_TENANTS:-10000}"
mkdir -p "$out"

# The `dist` profile (release with link-time optimization) is what the image ships.
echo "bench-operator: building the scale benchmark (dist profile)" >&2
cargo build -q --profile dist -p agentry-operator --example scale
bin="$target_dir/dist/examples/scale"

# shellcheck disable=SC2086 # a list of counts
{
  "$bin" reconcile $tenants
  "$bin" memory "$memory_tenants"
} | tee "$out/operator.txt"
echo "bench-operator: figures in $out/operator.txt" >&2
