# mlflow-operator: developer entry points. Everything a fresh machine needs is installed
# from this repository's own files (pyproject.toml, constraints.txt, sandbox/build/*).

PYTHON ?= python3
VENV ?= .venv
# The sandbox's operator runs from its own virtualenv with the runtime dependencies only (what
# the image holds), not from the dev venv: what the tests see is what users run.
OPERATOR_VENV ?= .venv-operator
SANDBOX_DIR ?= .sandbox
export VENV OPERATOR_VENV SANDBOX_DIR

PY := $(VENV)/bin/python
SANDBOX := $(PY) sandbox/sandbox.py
KUBECTL := $(SANDBOX_DIR)/bin/kubectl --kubeconfig $(SANDBOX_DIR)/kubeconfig --cache-dir $(SANDBOX_DIR)/kube-cache
PYTEST_ARGS ?=

.PHONY: bench bench-shared-stores chart-crds lint help venv operator-venv binaries node-packages sandbox-up sandbox-helm sandbox-down sandbox sandbox-status sandbox-clean \
        operator-restart test test-cluster test-unit lint

help:
	@echo "make sandbox       bring up cluster + MLflow + operator, apply examples/, print what to look at"
	@echo "make sandbox-up    bring up the sandbox (idempotent: starts only what is not running)"
	@echo "make sandbox-helm  install the Helm chart as the sandbox's operator (pods on the real node)"
	@echo "make sandbox-down  stop exactly the processes the sandbox started"
	@echo "make test          run the whole test suite against the sandbox"
	@echo "make test-unit     run the tests that need no sandbox"
	@echo "make test-cluster  run the chart install tests against the cluster KUBECONFIG names"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Editable, so that `make operator-restart` runs changed code; the dependencies are exactly the
# runtime ones scripts/install-operator.sh puts in the image.
operator-venv: $(OPERATOR_VENV)/.installed

$(OPERATOR_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(OPERATOR_VENV)
	$(OPERATOR_VENV)/bin/pip install --quiet --upgrade pip
	$(OPERATOR_VENV)/bin/pip install --quiet -c constraints.txt -e .
	touch $@

binaries:
	sandbox/build-binaries.sh

# The real node's Debian packages (containerd, runc, CNI plugins, buildah, mmdebstrap): as root.
node-packages:
	sandbox/node/install-packages.sh

sandbox-up: venv operator-venv binaries node-packages
	$(SANDBOX) up

# Install (or upgrade) the chart with the locally built images as the sandbox's operator: its
# operator and MLflow pods run on the real node; the local operator process stops.
# `make sandbox-up` switches back to the local process.
sandbox-helm: sandbox-up
	$(SANDBOX) chart

sandbox-down:
	@if [ -x $(PY) ]; then $(SANDBOX) down; else python3 sandbox/sandbox.py down; fi

sandbox-status:
	$(SANDBOX) status

# Restart the operator alone, e.g. after changing its code (the venv install is editable).
operator-restart: venv operator-venv
	$(SANDBOX) restart operator

# Remove the sandbox's state (etcd data, MLflow store, PKI, logs) after stopping it.
sandbox-clean: sandbox-down
	rm -rf $(SANDBOX_DIR)

# Apply the examples in the default namespace, whose pods run on the real node: the example
# TrainingRun trains in the churn image's container (examples/churn/Dockerfile).
sandbox: sandbox-up
	$(KUBECTL) label namespace default sandbox.mlflow.operator.dev/real-node=true --overwrite
	$(KUBECTL) apply -f examples/
	@$(PY) sandbox/whats_next.py

test: lint sandbox-up
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check operator sandbox tests benchmarks scripts examples
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests

# The chart ships copies of crds/ (Helm reads crds/ inside the chart); a test checks they match.
chart-crds:
	cp crds/*.yaml charts/mlflow-operator/crds/

# Measure reconcile latency, MLflow call latency, memory and idle CPU in the sandbox.
bench: sandbox-up
	$(PY) benchmarks/run.py
	$(PY) benchmarks/authorization.py
	$(PY) benchmarks/search.py
	$(MAKE) bench-shared-stores

# The dispatch scenario against the chart's embedded server on the sandbox's PostgreSQL and
# S3-compatible store (2 replicas x 2 workers), driven by the local operator: the chart is
# installed, then `sandbox.py up` scales its operator to 0 and starts the local one again.
bench-shared-stores: sandbox-up
	$(SANDBOX) chart --shared-stores bench-shared
	$(SANDBOX) up
	$(PY) benchmarks/run.py --tracking-server http://127.0.0.1:$$($(PY) -c "import json; print(json.load(open('$(SANDBOX_DIR)/ports.json'))['chart-mlflow'])") \
	  --experiments 0 --models 0 --distributed-runs 0 --output shared-stores

# The chart install tests (tests marked any_cluster) against the cluster KUBECONFIG names, kind
# say, with the images loaded into its nodes (README "Install on any cluster"); no sandbox.
test-cluster: venv
	MLFLOW_OPERATOR_E2E_TARGET=cluster $(PY) -m pytest -m any_cluster tests/e2e $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest -m "not sandbox" $(PYTEST_ARGS)
