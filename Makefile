# Fusion — `make help` lists the targets. `make run` and `make test` set up everything they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
FUSION_HOME ?= .fusion
export FUSION_HOME
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))

.PHONY: audit help setup run run-example run-examples serve up down deploy status notebooks lab test test-fast lint typecheck rust-check bench bench-events bench-features bench-models bench-dask-train bench-scale device-check bench-serving bench-serving-logs bench-serving-scaling mlflow-ui docs clean infra-check

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "uv==$(UV_VERSION)"

RUST_SOURCES := rust_ext/pyproject.toml rust_ext/Cargo.toml rust_ext/Cargo.lock $(wildcard rust_ext/src/*.rs)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock $(RUST_SOURCES)
	@command -v cargo >/dev/null || { echo "error: rust_ext needs a Rust toolchain (cargo) on PATH" >&2; exit 1; }
	$(UV) sync --frozen --python 3.11 --compile-bytecode
	@touch $@

# Migrated databases for the installed Prefect and MLflow: a fresh FUSION_HOME's embedded API and local
# registry start from copies instead of migrating (fusion/runtime.py, tasks/registry_store.py)
TEMPLATES := $(VENV)/.templates

$(TEMPLATES): $(VENV)/.synced
	$(PY) -m fusion.runtime templates
	@touch $@

DATA_DOCS_ASSETS := $(TOOLS)/datadocs/.complete

$(DATA_DOCS_ASSETS): $(VENV)/.synced tasks/data_docs.py
	$(PY) -m tasks.data_docs fetch $(TOOLS)/datadocs

setup: $(VENV)/.synced $(TEMPLATES) $(DATA_DOCS_ASSETS) ## install uv, the locked environment (compiled to bytecode), migrated Prefect and MLflow databases and GX Data Docs' CSS/JS (idempotent)

run: setup ## run the training pipeline on the default config (2013 NYC flights)
	$(VENV)/bin/fusion run

run-example: setup ## generate the card-transactions example data and run its config (a second dataset)
	$(PY) -m tests.datasets.card_transactions $(FUSION_HOME)/examples
	$(VENV)/bin/fusion run --config configs/card_transactions.yaml

run-examples: setup ## generate configs/examples/' data (no time column, repeated entities, a daily series) and run each config
	for name in applicants visits daily_demand; do \
		$(PY) -m tests.datasets.$$name $(FUSION_HOME)/examples && \
		$(VENV)/bin/fusion run --config configs/examples/$$name.yaml || exit 1; \
	done

serve: setup ## serve the champion (after make run) on http://127.0.0.1:8000 with Redis (started if missing); Ctrl-C stops
	infra/local/services.sh up redis
	FUSION_REDIS_URL=$${FUSION_REDIS_URL:-redis://127.0.0.1:$${FUSION_REDIS_PORT:-6379}/0} $(VENV)/bin/fusion serve

up: setup ## start Kafka, Redis, PostgreSQL + Prefect server, worker, MLflow on loopback (installs what is missing)
	infra/local/services.sh up
	@echo "Point Fusion at them:"; infra/local/services.sh env

down: ## stop the services `make up` started (by recorded PID)
	infra/local/services.sh down

deploy: setup ## register prefect.yaml's deployments on the local Prefect server (after make up)
	FUSION_PROJECT_DIR=$(CURDIR) PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:4200/api} $(VENV)/bin/prefect --no-prompt deploy --all

status: setup ## fusion status: recent runs and their stages, champions, serving, which local services are up
	$(VENV)/bin/fusion status

notebooks: setup ## run notebooks/ top to bottom in fresh kernels (each in a temporary FUSION_HOME)
	$(PY) -m tests.notebooks run

lab: setup ## JupyterLab on the project's environment, in notebooks/
	$(UV) run --frozen --with jupyterlab jupyter lab --notebook-dir=notebooks

lint: setup ## ruff lint and format check; import-linter: the layer contract in pyproject.toml; notebooks without outputs; bandit; pip-audit
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m tests.notebooks check
	$(UV) tool run --from "bandit[toml]==$(BANDIT_VERSION)" bandit -c pyproject.toml -q -r fusion tasks flows serving
	@$(MAKE) --no-print-directory audit

BANDIT_VERSION := 1.9.4
PIP_AUDIT_VERSION := 2.10.1
AUDIT_PROBE := https://pypi.org/pypi/pip/24.0/json

audit: setup ## pip-audit of uv.lock's packages against PyPI's vulnerability data (says so when that cannot be reached)
	@$(UV) export --frozen --all-groups --no-emit-project --no-emit-workspace --format requirements-txt -o $(TOOLS)/audit-requirements.txt -q
	@if curl -fsS -m 15 -o /dev/null $(AUDIT_PROBE) 2>/dev/null; then \
		$(UV) tool run --from "pip-audit==$(PIP_AUDIT_VERSION)" pip-audit -r $(TOOLS)/audit-requirements.txt \
			--no-deps --disable-pip --vulnerability-service pypi --strict --progress-spinner off; \
	else \
		echo "audit: NOT RUN: PyPI's per-release JSON API, where pip-audit reads vulnerabilities, does not answer here ($(AUDIT_PROBE)); $$(grep -c '==' $(TOOLS)/audit-requirements.txt) locked packages unaudited"; \
	fi

typecheck: setup ## mypy over the packages
	$(VENV)/bin/mypy fusion tasks flows serving benchmarks

rust-check: setup ## rust_ext: cargo fmt --check, clippy (warnings are errors) and cargo test
	cd rust_ext && cargo fmt --check
	cd rust_ext && PYO3_PYTHON=$(abspath $(PY)) cargo clippy --locked --all-targets -- -D warnings
	cd rust_ext && PYO3_PYTHON=$(abspath $(PY)) cargo test --locked

test: setup lint typecheck rust-check infra-check ## lint, layers, types, Rust checks, infra checks and the whole pytest suite, in random order
	$(VENV)/bin/pytest --ignore=tests/infra --durations=15

infra-check: setup ## infra/ offline: Terraform parsed and formatted, manifests against Kubernetes schemas and CRDs, wiring, checkov
	$(PY) -m tests.infra.crds
	@if command -v terraform >/dev/null; then terraform -chdir=infra/terraform fmt -recursive -check; \
	elif command -v tofu >/dev/null; then tofu -chdir=infra/terraform fmt -recursive -check; \
	else echo "infra-check: no terraform or tofu on PATH, format check skipped (python-hcl2 still parses every file)"; fi
	$(VENV)/bin/pytest -p no:randomly tests/infra

test-fast: setup ## unit, data and property tests: no services, no whole-pipeline runs (about a minute)
	$(VENV)/bin/pytest -m "not integration and not services"

bench: setup ## pipeline benchmark: orchestrated vs plain-script floor -> docs/BENCHMARKS.md
	$(PY) -m benchmarks.pipeline --write docs/BENCHMARKS.md

bench-events: setup ## Kafka request -> flow run latency (p50/p95/p99) and throughput -> docs/BENCHMARKS.md
	$(PY) -m benchmarks.events --write docs/BENCHMARKS.md

bench-features: setup ## Rust kernels vs pure-Polars twins vs pandas at 1M/10M rows, whole feature step -> docs/BENCHMARKS.md
	$(PY) -m benchmarks.features --write docs/BENCHMARKS.md

bench-models: setup ## LightGBM vs torch MLP vs best (and a valid-tuned blend) on flights: test AUC, fit time -> docs/BENCHMARKS.md
	$(PY) -m benchmarks.models --write docs/BENCHMARKS.md

bench-dask-train: setup ## lightgbm.dask on 2 worker processes (reading the lake) vs plain LightGBM in one process: time, test AUC, peak RSS -> docs/BENCHMARKS.md
	$(PY) -m benchmarks.dask_training --write docs/BENCHMARKS.md $(ARGS)

bench-scale: setup ## fusion run at 336,776 / 1M / 10M rows, 1 and 2 Dask workers: per-stage time and peak RSS of every process -> docs/BENCHMARKS.md, docs/scale.png
	$(PY) -m benchmarks.scale --write docs/BENCHMARKS.md

device-check: setup ## torch on CUDA and on CPU, same epochs: rows/s, test AUC, peak GPU memory (CPU part only without CUDA)
	$(PY) -m benchmarks.models --device-check --write docs/BENCHMARKS.md

bench-serving: setup ## Fusion (cache miss/hit/90% hits, direct and proxy ingress) vs mlflow models serve vs uvicorn floor, 1/8/32/64 clients, CPU per process -> docs/BENCHMARKS.md
	$(PY) -m benchmarks.serving --write docs/BENCHMARKS.md

bench-serving-logs: setup ## serving's req/s and CPU with text vs JSON logs and the access log off vs on -> docs/BENCHMARKS.md
	$(PY) -m benchmarks.serving --logs --rounds 2 --write docs/BENCHMARKS.md

bench-serving-scaling: setup ## serving's req/s and CPU with 1 replica (1 or 2 model threads) vs 2 and 3 replicas -> docs/BENCHMARKS.md
	$(PY) -m benchmarks.serving --scaling --rounds 2 --write docs/BENCHMARKS.md

mlflow-ui: setup ## MLflow UI on http://127.0.0.1:5000 over $FUSION_HOME/mlflow.db
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(FUSION_HOME))/mlflow.db --host 127.0.0.1 --port 5000

docs: ## where the GX Data Docs of the last run are
	@ls $(FUSION_HOME)/gx/uncommitted/data_docs/local_site/index.html 2>/dev/null || echo "no Data Docs yet: make run"

clean: ## remove run state ($FUSION_HOME); keeps the environment
	rm -rf $(FUSION_HOME)
