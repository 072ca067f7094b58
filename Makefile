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
demo: ## The operator chart and the shop: on kind with real pods and a short order load when the machine can, else on the kwok cluster (DEMO_CLUSTER=kind|local|external)
	tests/e2e/demo.sh up

.PHONY: demo-down
demo-down: ## Remove the demo's shop and chart; stop the cluster only if `make demo` started it
	tests/e2e/demo.sh down

.PHONY: test
test: deps warm lint generated-check unit test-e2e ## The one test command: installs what it needs, fmt, clippy, generated files, unit tests, e2e on kwok and on kind

.PHONY: deps
deps: ## Install the Debian packages the tests need (apt-get; as root), when missing
	tests/e2e/install-deps.sh

## ---- pieces of `make test` ---------------------------------------------------
.PHONY: warm
warm: ## Start the Go builds the later steps need in the background at nice 19 (tests/e2e/warm.sh; log in target/warm.log)
	tests/e2e/warm.sh start

SCRIPTS := $(CLUSTER)/*.sh tests/e2e/*.sh tests/e2e/kind/*.sh tests/e2e/kind/runc-without-sys-resource \
  tests/e2e/kind/node/iptables-wrapper tests/e2e/kind/node/files/usr/local/bin/ferry-entrypoint \
  tests/e2e/images/*.sh tests/e2e/monitoring/*.sh tests/e2e/monitoring/*/*.sh tests/e2e/argo-rollouts/*.sh \
  services/scripts/*.sh .ci/run
CARGO_DENY_VERSION := 0.20.2
# ADVISORIES=required fails the lint when the RustSec database cannot be fetched (it lives on github.com).
ADVISORIES ?= auto
.PHONY: lint
lint: ## cargo fmt --check, clippy -D warnings, cargo deny (deny.toml), shellcheck of every script
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@command -v cargo-deny >/dev/null || $(CARGO) install --locked cargo-deny --version $(CARGO_DENY_VERSION)
	$(CARGO) deny --locked check licenses bans sources
	@mkdir -p target; if $(CARGO) deny fetch db >target/cargo-deny-fetch.log 2>&1; then \
	  $(CARGO) deny --offline --locked check advisories; \
	else \
	  echo "cargo deny: advisories NOT checked: the RustSec database could not be fetched from github.com:"; \
	  grep -m1 -E 'fatal|error' target/cargo-deny-fetch.log || tail -1 target/cargo-deny-fetch.log; \
	  [ "$(ADVISORIES)" != required ]; \
	fi
	@command -v shellcheck >/dev/null || { echo "shellcheck is missing: make deps"; exit 1; }
	shellcheck -x $(SCRIPTS)

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
unit: ## Unit and in-process tests (no cluster; a throwaway PostgreSQL and NATS JetStream on 127.0.0.1 for the services; promtool for the alert rules)
	tests/e2e/monitoring/build.sh promtool
	@url="$$(services/scripts/postgres.sh up)"; \
	  trap 'services/scripts/postgres.sh down >/dev/null 2>&1; services/scripts/nats.sh down >/dev/null 2>&1' EXIT; \
	  nats="$$(services/scripts/nats.sh up)"; \
	  FERRY_TEST_NATS_URL="$$nats" FERRY_TEST_NATS_SERVER="$$(services/scripts/nats.sh path)" \
	  FERRY_PROMTOOL="$$(tests/e2e/monitoring/build.sh path promtool)" \
	  FERRY_TEST_POSTGRES_URL="$$url" $(CARGO) test --workspace --locked

.PHONY: test-e2e
test-e2e: ## E2e tests: kwok phases 1-2, then the real-pod tests on kind (clusters started if needed, left as found; REAL_PODS=0 skips kind)
	tests/e2e/run.sh

.PHONY: test-e2e-kind
test-e2e-kind: ## The whole e2e suite on kind: the kwok-tier tests (their pods run inventory-service there), then the real-pod phases (kind is left up)
	tests/e2e/images/build.sh >/dev/null
	tests/e2e/kind/kind.sh up >/dev/null
	E2E_EXTERNAL=1 KUBECONFIG=$(CURDIR)/target/kind/kubeconfig tests/e2e/run.sh

## ---- benchmarks (numbers, not tests) ----------------------------------------
# Applies crds/ with kubeconfig $(1) and waits until MicroServices are served: on a cluster
# started a moment before, a create right after the apply gets a 404.
apply_crds = $(BIN)/kubectl --kubeconfig $(1) apply -f crds/ >/dev/null && \
  $(BIN)/kubectl --kubeconfig $(1) wait --for=condition=Established --timeout=30s crd/microservices.ferry.dev >/dev/null
SIZES ?= 100,1000
# ARGO=0 skips the Argo Rollouts round (its controller is built once from the Go module proxy).
# KCM_API_QPS=N starts the local cluster with kube-controller-manager limited to N requests/s
# (default 20; stop a running cluster first); ARGO_ROLLOUTS_QPS=N sets Argo's limit (default 40).
ARGO ?= 1
.PHONY: bench-operator
bench-operator: ## Operator: convergence of SIZES MicroServices, peak RSS, idle API traffic, 429s, and Argo Rollouts side by side (local cluster)
	$(CARGO) build --release --locked -p ferry-operator --bin operator -p ferry-e2e --bin bench_operator
	$(CLUSTER)/up.sh >/dev/null
	$(call apply_crds,$(KUBECONFIG_LOCAL))
	argo=""; if [[ "$(ARGO)" != 0 ]]; then argo="$$(tests/e2e/argo-rollouts/build.sh install $(KUBECONFIG_LOCAL))"; fi; \
	KUBECONFIG=$(KUBECONFIG_LOCAL) FERRY_OPERATOR_BIN=$(CURDIR)/target/release/operator ARGO_ROLLOUTS_BIN="$$argo" \
	  target/release/bench_operator $(SIZES)

ROLLOUTS ?= 50
.PHONY: bench-rollout
bench-rollout: ## Blue-green promotion, Ferry and Argo Rollouts alternating over ROLLOUTS rollouts each (green available -> selector switched, patch -> old pods gone; local cluster)
	$(CARGO) build --release --locked -p ferry-operator --bin operator -p ferry-e2e --bin bench_rollout
	$(CLUSTER)/up.sh >/dev/null
	$(call apply_crds,$(KUBECONFIG_LOCAL))
	argo=""; if [[ "$(ARGO)" != 0 ]]; then argo="$$(tests/e2e/argo-rollouts/build.sh install $(KUBECONFIG_LOCAL))"; fi; \
	KUBECONFIG=$(KUBECONFIG_LOCAL) FERRY_OPERATOR_BIN=$(CURDIR)/target/release/operator ARGO_ROLLOUTS_BIN="$$argo" \
	  target/release/bench_rollout $(ROLLOUTS)

RATE ?= 500
.PHONY: bench-cutover
bench-cutover: ## Blue-green cutover on kind under RATE CreateOrder/s: failed calls, p50/p99 around the switch, time to green (root)
	tests/e2e/images/build.sh >/dev/null
	$(CARGO) build --release --locked -p ferry-e2e --bin bench_cutover
	tests/e2e/kind/kind.sh up >/dev/null
	tests/e2e/kind/kind.sh load
	$(call apply_crds,$(CURDIR)/target/kind/kubeconfig)
	source target/kind/env && tests/e2e/kind/kind.sh netns env KUBECONFIG=$$KIND_NODE_KUBECONFIG FERRY_REAL_PODS=1 \
	  FERRY_POSTGRES_HOST=$$FERRY_POSTGRES_HOST FERRY_POSTGRES_PORT=$$FERRY_POSTGRES_PORT PATH="$(BIN):$$PATH" \
	  target/release/bench_cutover $(RATE)

AUTOSCALE_RATE ?= 200
AUTOSCALE_DELAY_MS ?= 400
AUTOSCALE_SECONDS ?= 150
.PHONY: bench-autoscale
bench-autoscale: ## Order scaled on gRPC p99 (KEDA) vs CPU (HPA) on kind under the same load: time to scale out, max replicas (root)
	tests/e2e/images/build.sh >/dev/null
	$(CARGO) build --release --locked -p ferry-e2e --bin bench_autoscale
	tests/e2e/monitoring/images.sh >/dev/null
	tests/e2e/monitoring/images.sh keda >/dev/null
	tests/e2e/kind/kind.sh up >/dev/null
	tests/e2e/kind/kind.sh load
	source target/kind/env && $(call apply_crds,"$$KIND_KUBECONFIG") && \
	  tests/e2e/monitoring/metrics-server/install.sh "$$KIND_KUBECONFIG" && \
	  tests/e2e/monitoring/prometheus/install.sh "$$KIND_KUBECONFIG" && \
	  tests/e2e/monitoring/keda/install.sh "$$KIND_KUBECONFIG"
	source target/kind/env && tests/e2e/kind/kind.sh netns env KUBECONFIG=$$KIND_NODE_KUBECONFIG FERRY_REAL_PODS=1 \
	  FERRY_POSTGRES_HOST=$$FERRY_POSTGRES_HOST FERRY_POSTGRES_PORT=$$FERRY_POSTGRES_PORT PATH="$(BIN):$$PATH" \
	  target/release/bench_autoscale $(AUTOSCALE_RATE) $(AUTOSCALE_DELAY_MS) $(AUTOSCALE_SECONDS)

## ---- local cluster ----------------------------------------------------------
.PHONY: tools
tools: ## Build (or find cached) etcd, kube-*, kubectl, kwok and helm from the Go module proxy
	$(CLUSTER)/build.sh

.PHONY: monitoring-tools
monitoring-tools: ## Build (or find cached) Prometheus, promtool, Alertmanager, kube-state-metrics, metrics-server and prometheus-operator from the Go module proxy, and their OCI archives in target/images/monitoring
	tests/e2e/monitoring/images.sh

.PHONY: keda-tools
keda-tools: ## Build (or find cached) KEDA (issue 19) and its OCI archives; install on kind: tests/e2e/monitoring/keda/install.sh target/kind/kubeconfig
	tests/e2e/monitoring/images.sh keda

.PHONY: cluster-up
cluster-up: ## Start the local kwok cluster; writes target/cluster/kubeconfig (MONITORING_CRDS=0 skips the Prometheus CRDs)
	$(CLUSTER)/up.sh

.PHONY: cluster-down
cluster-down: ## Stop every kwok cluster process and remove its state
	$(CLUSTER)/down.sh

## ---- images, for machines with Docker --------------------------------------
IMAGE_TAG ?= dev
.PHONY: images-oci
images-oci: ## Build the same images without Docker, as OCI archives in target/images (what kind loads)
	tests/e2e/images/build.sh

.PHONY: images
images: ## Build the operator, order-service and inventory-service images with Docker
	docker build -f operator/Dockerfile -t ferry/operator:$(IMAGE_TAG) .
	docker build -f services/order/Dockerfile -t ferry/order-service:$(IMAGE_TAG) .
	docker build -f services/inventory/Dockerfile -t ferry/inventory-service:$(IMAGE_TAG) .

## ---- kind: the real-pod tier ----------------------------------------------
.PHONY: kind-up
kind-up: ## One-node kind cluster (v1.36.3) on Docker or a private dockerd, a PostgreSQL on its network, images loaded when built; kubeconfig in target/kind/
	tests/e2e/kind/kind.sh up

.PHONY: kind-load
kind-load: ## Load the operator, order-service and inventory-service OCI archives of `make images-oci` into kind
	tests/e2e/kind/kind.sh load

.PHONY: kind-down
kind-down: ## Delete the kind cluster and everything kind-up started; lists what it checked
	tests/e2e/kind/kind.sh down

.PHONY: bench-services
bench-services: ## Service benchmarks (numbers, not tests): DeductStock, CreateOrder, bare tonic baseline, RSS
	services/scripts/bench.sh

.PHONY: bench-events
bench-events: ## Order saga sync vs async (NATS JetStream) at the same load: p50/p99 CreateOrder->CONFIRMED, throughput, relay lag through a broker outage
	services/scripts/bench-events.sh
