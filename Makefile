# Two commands do all the set-up: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Debian packages the suite runs for real (Orthanc, haproxy for mTLS, docker-compose); see
# tests/support/ensure_test_packages.sh (a change to it re-runs it).
TEST_PACKAGES_STAMP := .local/test-packages.stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install demo stop status test lint bench bench-quick clean lock deploy-files

# Three distributions from this checkout: the service (himig), the emulator and the local tooling (devstack).
$(STAMP): pyproject.toml emulator/pyproject.toml devstack/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e ./emulator -e ./devstack -e '.[local,dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the local stack, migrate the bundled sample corpus, print the report (the stack keeps running).
demo: $(STAMP)
	$(VENV)/bin/himig demo

## Stop the local stack (Temporal history and emulator state persist under .local/).
stop:
	@if [ -x $(VENV)/bin/himig ]; then $(VENV)/bin/himig stack down; else echo "nothing to stop"; fi

status: $(STAMP)
	$(VENV)/bin/himig stack status

$(TEST_PACKAGES_STAMP): tests/support/ensure_test_packages.sh
	@bash tests/support/ensure_test_packages.sh $@

## Install (or refresh) the venv, Orthanc, haproxy and docker-compose, and run the whole suite against real local
## servers, inside a private network namespace (Orthanc cannot bind to 127.0.0.1 only).
## TEST_PROCESSES: pytest-xdist processes, each with its own servers (Temporal, moto, emulator) on free ports; a test
## file stays in one process (--dist loadfile). Much of the suite waits on servers, so 4 beat 2 even on 2 cores.
TEST_PROCESSES ?= 4
test: $(STAMP) $(TEST_PACKAGES_STAMP)
	bash tests/support/in_private_netns.sh $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_PROCESSES) --dist loadfile

## ruff, mypy and the import contracts (the layering in pyproject's [tool.importlinter]).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

## Re-pin the worker image's dependencies (hashed) from pyproject's core dependencies.
lock: $(STAMP)
	$(VENV)/bin/pip-compile -q --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
		--allow-unsafe -o deploy/requirements.lock pyproject.toml

## Re-render deploy/ecs, deploy/iam, deploy/sqs, deploy/events and deploy/s3 from deploy/cloudformation/himig.yaml.
deploy-files: $(STAMP)
	$(PY) deploy/render.py

## Every benchmark; bench/end_to_end.py (the service against raw, naive and the AWS sample's design, as is and with
## S3 latency) appends its table to bench/RESULTS.md. `make bench-quick`: the same ratio lines at 1,000 instances.
bench: $(STAMP)
	$(PY) bench/end_to_end.py
	$(PY) bench/emulator.py
	$(PY) bench/parse.py
	$(PY) bench/corpus_generation.py
	$(PY) bench/stage_requests.py
	$(PY) bench/orchestration.py
	$(PY) bench/process_exits.py
	$(PY) bench/worker_footprint.py
	$(PY) bench/workers.py
	$(PY) bench/codec_overhead.py
	$(PY) bench/dicomweb_auth.py
	$(PY) bench/receive_rate.py
	$(PY) bench/pacs_retrieval.py
	$(PY) bench/commands.py
	$(PY) bench/plan.py
	$(PY) bench/memory.py
	$(PY) bench/verify_cost.py

bench-quick: $(STAMP)
	$(PY) bench/end_to_end.py --quick --no-results

clean: stop
	rm -rf .local $(VENV)
