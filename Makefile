# Two entry points on a fresh machine (Python 3.10+ and make):
#   make run   - set up and run the node on its embedded defaults
#   make test  - set up and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED_DIR ?= $(abspath ../shared)
export DICOMNODE_SHARED := $(SHARED_DIR)

.PHONY: run test setup setup-test setup-training lint system-deps check-aarch64-wheels clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q -e .

setup-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test,training]'

setup-training: $(BIN)/python
	$(BIN)/pip install -q -e '.[training]'

run: setup
	$(BIN)/dicomnode serve --config config/dicomnode.yaml

# Debian packages the end-to-end tests drive as real peers (needs root: CI runs as root).
system-deps:
	@if ! command -v storescu >/dev/null || ! command -v Orthanc >/dev/null \
	    || ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	    || ! command -v chromium >/dev/null || ! command -v systemd-analyze >/dev/null \
	    || ! command -v openssl >/dev/null || ! command -v dciodvfy >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    dcmtk orthanc postgresql chromium util-linux iproute2 systemd openssl \
	    dicom3tools >/dev/null; \
	fi

lint: setup-test
	$(BIN)/ruff check dicomnode training tests bench

# The suite runs in a private network namespace holding only loopback: every server a test starts
# (the node, Orthanc, PostgreSQL, the web view) can reach nothing but 127.0.0.1, and Orthanc, which
# cannot bind one address, is confined without extra plumbing.
PYTEST_ARGS ?=
test: system-deps setup-test lint
	unshare -n sh -c 'ip link set lo up && exec $(BIN)/pytest -q $(PYTEST_ARGS)'

# Every runtime dependency is a wheel for linux aarch64 / CPython 3.10 (the Jetson), from PyPI.
check-aarch64-wheels: $(BIN)/python
	deploy/check-aarch64-wheels.sh $(BIN)/pip

clean:
	rm -rf $(VENV) var build *.egg-info
