# Developer entry points. The local control plane (docs/development.md):
#   make cluster-up      build missing binaries (cached), start the cluster, print KUBECONFIG
#   make cluster-down    stop every process of it by PID
# Variables: RUN_DIR (default ${XDG_RUNTIME_DIR:-~/.cache}/perllm/cluster), SCENARIO,
# EXTENDER_URL, EXTENDER_IGNORABLE=true|false, PROMETHEUS=true|false.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
SCENARIO ?= paper-llama2-7b
EXTENDER_IGNORABLE ?= true
PROMETHEUS ?= true

DEVCLUSTER = $(PY) -m perllm.devcluster cluster
RUN_DIR_ARG = $(if $(RUN_DIR),--run-dir $(RUN_DIR))
UP_ARGS = --scenario '$(SCENARIO)' \
	$(if $(EXTENDER_URL),--extender-url '$(EXTENDER_URL)') \
	$(if $(filter false,$(EXTENDER_IGNORABLE)),--no-extender-ignorable,--extender-ignorable) \
	$(if $(filter false,$(PROMETHEUS)),--no-prometheus,--prometheus)

.PHONY: help venv binaries cluster-binaries cluster-up cluster-down cluster-status test test-unit test-e2e ci

help:
	@sed -n '1,6p' Makefile

# A fresh clone gets a virtual environment with the package installed (once).
venv:
	@$(PY) -c 'import perllm.devcluster' 2>/dev/null || { \
	  [ -x $(PY) ] || python3 -m venv $(VENV); $(PY) -m pip install -q -e '.[dev]'; }

binaries:  # everything, Helm included
	tools/build-binaries.sh

cluster-binaries:
	tools/build-binaries.sh k8s etcd kwok $(if $(filter false,$(PROMETHEUS)),,prometheus)

cluster-up: venv cluster-binaries
	$(DEVCLUSTER) up $(RUN_DIR_ARG) $(UP_ARGS)

cluster-down: venv
	$(DEVCLUSTER) down $(RUN_DIR_ARG)

cluster-status: venv
	$(DEVCLUSTER) status $(RUN_DIR_ARG)

test-unit: venv
	$(PY) -m pytest -q -m 'not e2e'

test-e2e: venv cluster-binaries
	tools/build-binaries.sh llamacpp promsd  # test_llamacpp.py, test_chart_scrape.py
	$(PY) -m pytest -q tests/e2e

test: test-unit test-e2e

ci:
	.ci/run

# The README's first command (docs/demo.md): a virtual environment (created once), the
# package installed into it, then the closed loop with a live view. The first run builds
# the local Kubernetes binaries (cached, ~10-15 min on 2 cores). DEMO_ARGS, e.g.
# DEMO_ARGS='--duration 60 --speed 20' or DEMO_ARGS=--no-live.
.PHONY: demo
demo:
	@[ -x $(PY) ] || { echo "creating $(VENV) (once)"; python3 -m venv $(VENV); }
	@echo "installing PerLLM into $(VENV) (pip; quick when already installed)"
	$(PY) -m pip install -q --disable-pip-version-check -e .
	$(VENV)/bin/perllm demo $(DEMO_ARGS)
