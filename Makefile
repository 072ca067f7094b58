# Ferry's developer entry points. `make help` lists them.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CLUSTER := tests/e2e/cluster
KUBECONFIG_LOCAL := $(CURDIR)/target/cluster/kubeconfig
CARGO ?= cargo

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

## ---- the two commands -------------------------------------------------------
.PHONY: demo
demo: cluster-up ## Bring up the local cluster (and, as issues land, the operator and the shop)
	@echo "The local cluster is up. Next: export KUBECONFIG=$(KUBECONFIG_LOCAL); kubectl get nodes"

.PHONY: demo-down
demo-down: cluster-down ## Tear down what `make demo` started

.PHONY: test
test: lint unit test-e2e ## The one test command: fmt, clippy, unit tests, then e2e on the local cluster

## ---- pieces of `make test` ---------------------------------------------------
.PHONY: lint
lint: ## cargo fmt --check and clippy -D warnings, plus shellcheck when installed
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@if command -v shellcheck >/dev/null; then shellcheck -x $(CLUSTER)/*.sh tests/e2e/*.sh tests/e2e/kind/*.sh .ci/run; fi

.PHONY: unit
unit: ## Unit and in-process tests (no cluster needed)
	$(CARGO) test --workspace --locked

.PHONY: test-e2e
test-e2e: ## E2e tests against the local cluster (started if needed, left as found)
	tests/e2e/run.sh

## ---- local cluster ----------------------------------------------------------
.PHONY: tools
tools: ## Build (or find cached) etcd, kube-*, kubectl, kwok and helm from the Go module proxy
	$(CLUSTER)/build.sh

.PHONY: cluster-up
cluster-up: ## Start the local cluster; writes target/cluster/kubeconfig (MONITORING_CRDS=0 skips the Prometheus CRDs)
	$(CLUSTER)/up.sh

.PHONY: cluster-down
cluster-down: ## Stop every cluster process and remove its state
	$(CLUSTER)/down.sh

## ---- kind, for machines with Docker ----------------------------------------
.PHONY: kind-up
kind-up: ## Create a kind cluster and write its kubeconfig to target/cluster/kubeconfig
	tests/e2e/kind/kind.sh up

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	tests/e2e/kind/kind.sh down
