# Agentry developer commands. `make test` is what CI runs (through .ci/run).
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: test fmt fmt-check lint clippy unit crds dev bench setup

## Everything CI checks: formatting, lints, every test (drift checks included).
test: fmt-check clippy unit

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

## Make sure PostgreSQL and NATS are reachable (starting or installing them when needed).
setup:
	scripts/services.sh
