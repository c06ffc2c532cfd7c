# syntax=docker/dockerfile:1
# wsgate's image: a static binary on distroless/static, running as its nonroot user, UID/GID
# 65532, the UID the Helm chart's securityContext demands (charts/wsgate/values.yaml).
# Build with `make image` (docker or podman). The tests here build no image: the development
# machines and CI have no container engine; `make chart-test` proves the chart instead.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
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

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/wsgate /wsgate
USER 65532:65532
# Clients, then /healthz, /readyz and /metrics.
EXPOSE 8080 9090
ENTRYPOINT ["/wsgate"]
