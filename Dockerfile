# syntax=docker/dockerfile:1
# wsgate's image: a static binary on distroless/static, running as its nonroot user, UID/GID
# 65532, the UID the Helm chart's securityContext demands (charts/wsgate/values.yaml).
# Build with `make image` (docker or podman). The tests here build no image: the development
# machines and CI have no container engine; `make chart-test` proves the chart instead.

# Both bases are pinned by digest (a tag can be moved under a build); renovate.json keeps the
# digests current. Digests taken from published images as seen in public Dockerfiles; this
# machine reaches no registry to resolve them itself.
FROM golang:1.26-trixie@sha256:76a29248dedcd75870e95cbd90cc8cb356db082404ac7d3a5803f276c3ba79c9 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=none
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/wsgate . \
 && /out/wsgate --version

# Debian 13: the distroless debian12 images were scheduled for deprecation on 2026-09-01.
FROM gcr.io/distroless/static-debian13:nonroot@sha256:f7f8f729987ad0fdf6b05eeeae94b26e6a0f613bdf46feea7fc40f7bd72953e6
ARG VERSION=dev
ARG COMMIT=none
LABEL org.opencontainers.image.title="wsgate" \
      org.opencontainers.image.description="WebSocket rate-limiting sidecar: JWT at the handshake, per-message limits shared in Redis" \
      org.opencontainers.image.source="https://github.com/holo/wsgate" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
# On distroless's PATH, so that `kubectl exec ... -- wsgate admin ...` (README) finds it.
COPY --from=build /out/wsgate /usr/local/bin/wsgate
USER 65532:65532
# Clients, then /healthz, /readyz and /metrics.
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/wsgate"]
