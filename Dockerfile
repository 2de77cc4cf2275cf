# syntax=docker/dockerfile:1
#
# Luthien's container image: the three binaries — `luthien` (all in one, and the `policy check` /
# `replay` tools), `luthien-dataplane` and `luthien-controlplane` — on a minimal runtime that runs
# as a non-root user. The manifests in deploy/kubernetes/ run one plane per pod from this image.
#
#   docker build -t luthien:dev .
#
# The drift test `cargo test -p luthien-tests --test e2e -- deploy::` checks this file against the
# workspace: the binaries copied, the user, and the listen addresses against EXPOSE.

# The build stage: the workspace's toolchain on Debian bookworm, whose glibc the runtime shares.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep downloaded crates and compiled dependencies between builds (BuildKit), so a
# change to Luthien's own code recompiles only Luthien. `--locked`: exactly the Cargo.lock versions.
# The target directory is a cache mount, gone after this step: the binaries are copied out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      --bin luthien --bin luthien-dataplane --bin luthien-controlplane \
 && mkdir -p /out \
 && cp target/release/luthien target/release/luthien-dataplane target/release/luthien-controlplane /out/

# The runtime: glibc, libgcc, CA certificates (the data plane verifies the providers' TLS
# certificates against the system roots) and nothing else — no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/luthien /out/luthien-dataplane /out/luthien-controlplane /usr/local/bin/

# The binaries listen on 127.0.0.1 by default, which nothing outside a container can reach: here
# every listener is on all interfaces. The control plane still refuses to serve its gRPC port off
# loopback without `LUTHIEN_CONTROL_PLANE_TOKEN` or client certificates (or `--insecure`), and
# without `LUTHIEN_ADMIN_KEY` its debug routes answer loopback clients only.
ENV LUTHIEN_LISTEN=0.0.0.0:8080 \
    LUTHIEN_GRPC_LISTEN=0.0.0.0:50051 \
    LUTHIEN_HTTP_LISTEN=0.0.0.0:8081
# Data plane (provider APIs, /healthz, /readyz, /metrics); control plane debug HTTP API, UI,
# probes and /metrics; control plane gRPC.
EXPOSE 8080 8081 50051

# distroless's `nonroot` user, by number so that Kubernetes can check `runAsNonRoot`.
USER 65532:65532
# Its home, writable: `luthien up`'s default SQLite store (`sqlite://luthien.db`) lands here.
WORKDIR /home/nonroot
CMD ["/usr/local/bin/luthien", "--help"]
