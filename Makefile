# Agent Registry for Kubernetes. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
# The control-plane binaries live in a cache outside the repository (see docs/decisions.md).
export AGENT_REGISTRY_CACHE ?= $(HOME)/.cache/agent-registry
PYTEST_ARGS ?=
# What ruff checks and formats: `make lint` and `make fmt` share the list.
RUFF_PATHS := operator agent_sidecar tests bench hack

##@ General

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} \
		/^[a-zA-Z0-9_.-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } \
		/^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Setup

$(VENV)/.installed: pyproject.toml
	@echo ">> creating $(VENV) and installing Python dependencies"
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[dev]'
	@touch $@

.PHONY: deps
deps: $(VENV)/.installed system-deps docker-deps ## Install Python deps into .venv and Debian packages (redis-server, chromium, chromium-driver, docker.io, debootstrap)

.PHONY: system-deps
system-deps: ## Install Debian packages the tests need (redis-server, chromium, chromium-driver), if missing
	@bash hack/ensure-system-deps.sh

.PHONY: docker-deps
docker-deps: ## Install Debian's docker.io and debootstrap (image and kind tests), if missing
	@bash hack/ensure-docker.sh

.PHONY: controlplane
controlplane: $(VENV)/.installed ## Build kube-apiserver, kube-controller-manager, kubectl, etcd and helm from Go modules into the cache (builds only what is missing)
	$(VPY) -m agent_registry.localcluster.build

##@ Development

.PHONY: crds
crds: $(VENV)/.installed ## Regenerate crds/ from the pydantic models (and the chart's copy)
	$(VPY) -m agent_registry.schema.crd --out crds
	$(VPY) hack/sync-chart-crd.py

.PHONY: lint
lint: $(VENV)/.installed ## ruff (lint + format check) and mypy --strict
	$(VENV)/bin/ruff check $(RUFF_PATHS)
	$(VENV)/bin/ruff format --check $(RUFF_PATHS)
	$(VENV)/bin/mypy operator/agent_registry agent_sidecar

.PHONY: fmt
fmt: $(VENV)/.installed ## Format and auto-fix with ruff
	$(VENV)/bin/ruff format $(RUFF_PATHS)
	$(VENV)/bin/ruff check --fix $(RUFF_PATHS)

.PHONY: cluster
cluster: deps controlplane ## Start a local kube-apiserver + etcd + kube-controller-manager with the CRD installed; Ctrl-C stops it
	$(VPY) -m agent_registry.localcluster --crds crds

##@ Run

.PHONY: run
run: deps controlplane ## Run the registry locally: control plane, Redis, operator, facade, two demo agents; Ctrl-C stops all. Uses KUBECONFIG's cluster when set
	$(VPY) -m agent_registry.localrun

##@ Delivery

IMAGE ?= agent-registry:dev

.PHONY: image
image: ## Build the container image (needs Docker with BuildKit)
	DOCKER_BUILDKIT=1 docker build -t $(IMAGE) .

.PHONY: images
images: $(VENV)/.installed docker-deps ## Build the base, registry and sidecar images without a registry (starts its own dockerd when none answers; cached)
	$(VPY) -m agent_registry.localcluster.images

.PHONY: manifests
manifests: controlplane ## Copy crds/ into the chart's CRD template and render manifests/install/ from the chart
	$(VPY) hack/sync-chart-crd.py
	$(VPY) hack/render-manifests.py

.PHONY: helm-lint
helm-lint: controlplane ## helm lint --strict with the defaults and each ci/*-values.yaml
	@H=$$($(VPY) -m agent_registry.localcluster.build --print-bin-dir)/helm; \
	$$H lint --strict helm/agent-registry && for f in helm/agent-registry/ci/*-values.yaml; do $$H lint --strict helm/agent-registry -f $$f || exit 1; done

.PHONY: bench
bench: deps controlplane ## Benchmarks: scale at N = 1,000, 3,000, 10,000, Lease shapes, discovery (long; not part of `make test`)
	$(VPY) -m bench
	$(VPY) bench/lease_shapes.py --agents 1000
	$(VPY) -m bench.discovery --agents 1000
	$(VPY) -m bench.discovery --agents 10000

##@ Testing

.PHONY: test
test: deps controlplane ## The whole test command: deps, control plane, CRD drift check, lint, tests
	$(VPY) -m agent_registry.schema.crd --out crds --check
	$(MAKE) --no-print-directory lint
	$(VPY) -m pytest $(PYTEST_ARGS)

.PHONY: e2e
e2e: deps controlplane ## End-to-end suite: chart, manifests, make run, images, the scenarios on local processes and on kind
	$(VPY) -m pytest tests/e2e $(PYTEST_ARGS)

.PHONY: e2e-kind
e2e-kind: deps controlplane ## Only the scenarios on a throwaway kind cluster (a dockerd of ours when none answers)
	E2E_CLUSTER=kind $(VPY) -m pytest tests/e2e/test_scenarios.py -rs $(PYTEST_ARGS)

.PHONY: unit
unit: $(VENV)/.installed ## Only the tests that need no cluster
	$(VPY) -m pytest -m "not k8s and not redis and not docker" $(PYTEST_ARGS)

.PHONY: clean
clean: ## Remove the virtualenv and caches inside the repository (not the control-plane cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
