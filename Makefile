# wsgate: the commands a person uses. `make demo` and `make test` work on a
# fresh Debian/Ubuntu machine (as root they install what they need).

GO        ?= go
BIN       ?= bin/wsgate
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo none)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
FUZZTIME  ?= 40000x
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
ROOT      := $(shell id -u 2>/dev/null)

# Fuzz targets run by `make test` for FUZZTIME each (package:target). A count, not a
# duration: a duration races the Go 1.26 fuzz coordinator at its deadline and fails
# with a bare "context deadline exceeded" that found nothing.
FUZZ_TARGETS := ./frames:FuzzStream ./frames:FuzzUTF8 ./auth/clientip:FuzzXFF ./auth/clientip:FuzzProxyHeader ./auth:FuzzExtractToken ./proxy:FuzzCountSocketIOMessages ./proxy:FuzzPollingPayload ./policy:FuzzSocketIOEvent ./policy:FuzzJSONField ./policy:FuzzClassScan ./policy:FuzzParse

.PHONY: all build demo demo-rules test unit fuzz e2e deps e2e-deps lint clean

all: build

## build: the binary the image ships: static (no cgo), paths trimmed, version and commit stamped.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) .

## demo: the gate on its embedded default (memory store) in front of a built-in echo backend.
demo: build
	./$(BIN) demo --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9090 --log-format text

## demo-rules: the demo under docs/rules.example.yaml (send "!hi" by hand more than 3 times in 10 s)
demo-rules: build
	./$(BIN) demo --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9090 --log-format text --rules-file docs/rules.example.yaml

## test: everything CI runs: vet, unit tests with -race (and the allocation tests without it), a few seconds of fuzzing per target, end-to-end tests.
test: deps e2e-deps lint unit fuzz e2e chart-test

unit:
	$(GO) test -race -count=1 ./...
	$(GO) test -count=1 -run 'Allocate|InflateHead' ./frames/ ./proxy/

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		if grep -qs "func $$name(" $$pkg/*_test.go; then \
			echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 100x $$pkg; \
		fi; \
	done

e2e:
	$(GO) test -race -count=1 -tags e2e -timeout 10m ./e2e/

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt: run gofmt -w on: $$(gofmt -l $$(git ls-files '*.go'))"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e/
	$(GO) -C e2e/bench vet ./...
	$(GO) run $(STATICCHECK) ./...
	$(GO) run $(STATICCHECK) -tags e2e ./e2e/
	$(GO) -C e2e/bench run $(STATICCHECK) ./...
	$(GO) -C charts/test run $(STATICCHECK) ./...

## deps: redis-server, node, npm and chromium (installed with apt-get when run as root).
deps:
	@missing=""; \
	for c in redis-server:redis-server redis-cli:redis-tools node:nodejs npm:npm chromium:chromium; do \
		command -v $${c%%:*} >/dev/null 2>&1 || missing="$$missing $${c##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$(ROOT)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "make test needs:$$missing (apt-get install$$missing, or run make test as root)"; exit 1; \
		fi; \
	fi

e2e-deps: deps
	@if [ ! -d e2e/backend/node_modules ] || [ e2e/backend/package-lock.json -nt e2e/backend/node_modules ]; then \
		npm ci --prefix e2e/backend --no-audit --no-fund --loglevel=error && touch e2e/backend/node_modules; \
	fi

clean:
	rm -rf bin

# chart-test, image
include charts/Makefile.include
# bench: micro-benchmarks, then nginx and HAProxy side by side (e2e/bench), writes BENCHMARKS.md
include e2e/bench/Makefile.include
