# Agentry developer commands. `make test` is what CI runs (through .ci/run).
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
# `#[sqlx::test]` creates a fresh database per test through this server.
export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres

.PHONY: test fmt fmt-check lint clippy unit crds kustomize-base tools dev setup bench bench-operator

## Everything CI checks: formatting, lints, every test (drift checks included).
test: tools fmt-check clippy unit

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all --check

clippy lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace --no-fail-fast

## Regenerate every generated file (CRDs, their Helm copy, docs/api.md) from the Rust types.
crds:
	$(CARGO) run -q -p agentry-operator -- generate --copy-to helm/agentry/crds

## Regenerate kustomize/base/agentry.yaml from the Helm chart (its default values).
kustomize-base: tools
	AGENTRY_BLESS=1 $(CARGO) test -q -p agentry-e2e --test install -- kustomize_base_is_the_rendered_chart

## Install helm, kubectl and kubernetes-validate into .tools/ (the install tests use them).
tools:
	scripts/tools.sh

## Run the whole platform locally from manifests/examples (prints URL, keys and a curl line).
dev:
	scripts/dev.sh

## Make sure PostgreSQL and NATS are reachable (starting or installing them when needed).
setup:
	scripts/services.sh

## Benchmark (not part of `make test`): what the runtime adds over direct-to-mock, and the
## operator at scale; see docs/benchmarks.md.
bench:
	scripts/bench.sh
	scripts/bench-operator.sh
	scripts/bench-workflows.sh

## The operator at scale alone (1, 100, 10,000 tenants; no cluster needed).
bench-operator:
	scripts/bench-operator.sh
