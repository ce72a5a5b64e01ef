# syntax=docker/dockerfile:1
# One small, non-root image with both binaries: agentry-operator and agentry-runtime (which also
# runs the database migrations). The chart and the kustomize base pick the binary by `command`.
#
#   docker build -t agentry:dev .

# Build: the workspace's toolchain (rust-version in Cargo.toml), on the same Debian release as
# the runtime image so that glibc matches.
FROM rust:1.94-slim-bookworm AS builder
# make: the binaries' allocator (jemalloc) is built from its C sources.
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The `dist` profile: release with link-time optimization (Cargo.toml).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p agentry-operator -p agentry-runtime \
    && mkdir -p /out \
    && cp target/dist/agentry-operator target/dist/agentry-runtime /out/

# Run: distroless (glibc, CA certificates, no shell, no package manager), as user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/agentry-dev/agentry" \
      org.opencontainers.image.description="Agentry operator and runtime" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/agentry-operator /out/agentry-runtime /usr/local/bin/
# Numeric, so that Kubernetes can verify runAsNonRoot without a passwd lookup.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/agentry-runtime"]
CMD ["--help"]
