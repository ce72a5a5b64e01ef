#!/usr/bin/env bash
# `make bench` (workflow part): the orchestrator's engine overhead per step without I/O and
# checkpointed steps per second with PostgreSQL, each against a baseline measured in the same
# run (see docs/benchmarks.md, "Workflow orchestrator"). Builds the example in release mode;
# it creates a fresh database with a non-superuser role and drops it when done.
#
# Knobs: BENCH_WF_STEPS (nodes per run, 50), BENCH_WF_ENGINE_RUNS (2000), BENCH_WF_PG_RUNS
# (200), BENCH_WF_CONCURRENCY (16), AGENTRY_BENCH_POSTGRES (a superuser URL without database,
# postgres://postgres@127.0.0.1:5432), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
out="$target_dir/bench"
mkdir -p "$out"

echo "bench: building the workflow benchmark (release)" >&2
cargo build -q --release -p agentry-runtime --example workflow_bench
"$target_dir/release/examples/workflow_bench" | tee "$out/workflows.txt"
echo "bench: raw figures in $out/workflows.txt" >&2
