# The README's commands. Each target does its own set-up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup controlplane demo bench lint test unit integration

setup: $(VENV)/.installed
	@bash dev/install-system-packages.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# etcd, kube-apiserver, kube-controller-manager, kubectl and helm, built once per version.
controlplane: setup
	$(BIN)/python -m herald_dev.build

# The main job on the local stack: the sample campaign, delivered and checked.
demo: controlplane
	$(BIN)/herald demo

# What Herald's guarantees cost: herald job against a naive mailer, side by side.
bench: controlplane
	$(BIN)/python -m herald_dev.bench

lint: setup
	$(BIN)/ruff check dev operator jobs tests
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest tests/unit

integration: controlplane
	$(BIN)/pytest tests/integration

test: lint controlplane
	$(BIN)/pytest
