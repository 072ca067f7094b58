# Ferry's developer entry points. `make help` lists them.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CLUSTER := tests/e2e/cluster
KUBECONFIG_LOCAL := $(CURDIR)/target/cluster/kubeconfig
CARGO ?= cargo
CHART := charts/ferry-operator
# The pinned cluster binaries (kubectl, helm, ...), built by `make tools`.
BIN = $(shell source $(CLUSTER)/versions.env && source $(CLUSTER)/lib.sh && bin_dir)

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

## ---- the two commands -------------------------------------------------------
.PHONY: demo
demo: ## Local cluster, operator chart, the operator under the chart's ServiceAccount, and the shop (DEMO_CLUSTER=external: use KUBECONFIG's cluster)
	tests/e2e/demo.sh up

.PHONY: demo-down
demo-down: ## Stop the demo's operator, remove the shop and the chart, stop the local cluster (DEMO_CLUSTER=external: leave the cluster up)
	tests/e2e/demo.sh down

.PHONY: test
test: lint generated-check unit test-e2e ## The one test command: fmt, clippy, generated files, unit tests, then e2e on the local cluster

## ---- pieces of `make test` ---------------------------------------------------
.PHONY: lint
lint: ## cargo fmt --check and clippy -D warnings, plus shellcheck when installed
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@if command -v shellcheck >/dev/null; then shellcheck -x $(CLUSTER)/*.sh tests/e2e/*.sh tests/e2e/kind/*.sh tests/e2e/images/*.sh services/scripts/*.sh .ci/run; fi

.PHONY: crds
crds: ## Regenerate crds/ from the Rust types and copy them into the chart
	$(CARGO) run --quiet --locked -p ferry-operator --bin crdgen crds/microservice.yaml
	cp crds/microservice.yaml $(CHART)/crds/microservice.yaml

.PHONY: generated-check
generated-check: ## Fail when crds/ is stale or the chart's CRDs differ; helm lint the chart
	@$(CARGO) run --quiet --locked -p ferry-operator --bin crdgen target/microservice.generated.yaml
	@diff -u crds/microservice.yaml target/microservice.generated.yaml >/dev/null || \
	  { echo "crds/microservice.yaml is stale: run 'make crds'"; diff -u crds/microservice.yaml target/microservice.generated.yaml | head -40; exit 1; }
	@cmp -s crds/microservice.yaml $(CHART)/crds/microservice.yaml || \
	  { echo "$(CHART)/crds/microservice.yaml differs from crds/: run 'make crds'"; exit 1; }
	@size=$$(wc -c <crds/microservice.yaml); [ "$$size" -lt 262144 ] || \
	  { echo "crds/microservice.yaml is $$size bytes; it must stay under 256 KiB for client-side kubectl apply"; exit 1; }
	$(CLUSTER)/build.sh helm
	$(BIN)/helm lint --strict $(CHART)
	@echo "generated files are current; chart lints clean"

.PHONY: unit
unit: ## Unit and in-process tests (no cluster; a throwaway PostgreSQL on 127.0.0.1 for the store tests)
	@url="$$(services/scripts/postgres.sh up)"; \
	  trap 'services/scripts/postgres.sh down >/dev/null 2>&1' EXIT; \
	  FERRY_TEST_POSTGRES_URL="$$url" $(CARGO) test --workspace --locked

.PHONY: test-e2e
test-e2e: ## E2e tests against the local cluster (started if needed, left as found)
	tests/e2e/run.sh

## ---- benchmarks (numbers, not tests) ----------------------------------------
SIZES ?= 100,1000
.PHONY: bench-operator
bench-operator: ## Operator: convergence of SIZES MicroServices, peak RSS, idle API traffic, 429s (local cluster)
	$(CARGO) build --release --locked -p ferry-operator --bin operator -p ferry-e2e --bin bench_operator
	$(CLUSTER)/up.sh >/dev/null
	$(BIN)/kubectl --kubeconfig $(KUBECONFIG_LOCAL) apply -f crds/ >/dev/null
	KUBECONFIG=$(KUBECONFIG_LOCAL) FERRY_OPERATOR_BIN=$(CURDIR)/target/release/operator \
	  target/release/bench_operator $(SIZES)

ROLLOUTS ?= 50
.PHONY: bench-rollout
bench-rollout: ## Blue-green promotion overhead (green available -> selector switched) over ROLLOUTS rollouts
	$(CARGO) build --release --locked -p ferry-operator --bin operator --example bench_rollout
	$(CLUSTER)/up.sh >/dev/null
	$(BIN)/kubectl --kubeconfig $(KUBECONFIG_LOCAL) apply -f crds/ >/dev/null
	KUBECONFIG=$(KUBECONFIG_LOCAL) FERRY_OPERATOR_BIN=$(CURDIR)/target/release/operator \
	  target/release/examples/bench_rollout $(ROLLOUTS)

REAL_NS := nsenter --net=/var/run/netns/ferry-node
REAL_KUBECONFIG := $(CURDIR)/target/cluster-real/kubeconfig
RATE ?= 500
.PHONY: bench-cutover
bench-cutover: ## Blue-green cutover on the real node under RATE CreateOrder/s: failed calls, p50/p99 around the switch, time to green (root)
	tests/e2e/images/build.sh >/dev/null
	$(CARGO) build --release --locked -p ferry-e2e --bin bench_cutover
	NODE=real $(CLUSTER)/up.sh >/dev/null
	$(REAL_NS) $(BIN)/kubectl --kubeconfig $(REAL_KUBECONFIG) apply -f crds/ >/dev/null
	$(REAL_NS) env KUBECONFIG=$(REAL_KUBECONFIG) FERRY_REAL_NODE=1 PATH="$(BIN):$$PATH" target/release/bench_cutover $(RATE)

## ---- local cluster ----------------------------------------------------------
.PHONY: tools
tools: ## Build (or find cached) etcd, kube-*, kubectl, kwok and helm from the Go module proxy
	$(CLUSTER)/build.sh

.PHONY: cluster-up
cluster-up: ## Start the local cluster; writes target/cluster/kubeconfig (MONITORING_CRDS=0 skips the Prometheus CRDs; NODE=real: a real node, see tests/e2e/cluster/real-node.sh)
	$(CLUSTER)/up.sh

.PHONY: cluster-down
cluster-down: ## Stop every cluster process and remove its state (NODE=real: the real node, its netns and mounts)
	$(CLUSTER)/down.sh

## ---- images, for machines with Docker --------------------------------------
IMAGE_TAG ?= dev
.PHONY: images-oci
images-oci: ## Build the same images without Docker, as OCI archives in target/images (what the real node imports)
	tests/e2e/images/build.sh

.PHONY: images
images: ## Build the operator, order-service and inventory-service images with Docker
	docker build -f operator/Dockerfile -t ferry/operator:$(IMAGE_TAG) .
	docker build -f services/order/Dockerfile -t ferry/order-service:$(IMAGE_TAG) .
	docker build -f services/inventory/Dockerfile -t ferry/inventory-service:$(IMAGE_TAG) .

## ---- kind, for machines with Docker ----------------------------------------
.PHONY: kind-up
kind-up: ## Create a kind cluster and write its kubeconfig to target/cluster/kubeconfig
	tests/e2e/kind/kind.sh up

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	tests/e2e/kind/kind.sh down

.PHONY: bench-services
bench-services: ## Service benchmarks (numbers, not tests): DeductStock, CreateOrder, bare tonic baseline, RSS
	services/scripts/bench.sh
