# mlinfra.shared_cache: `make site` provisions localhost, `make test` runs every test stage.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
VENV_221    ?= .venv-2.21
PYTHON      ?= python3.11
PYTHON_312  ?= $(shell ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1 || true)
INVENTORY   ?= inventory/hosts.yml
ANSIBLE_ARGS ?=

export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.collections:$(HOME)/.ansible/collections:/usr/share/ansible/collections
export ANSIBLE_ROLES_PATH := $(CURDIR)/roles
export ANSIBLE_FORCE_COLOR := 0
export PY_COLORS := 0

.PHONY: help venv venv-2.21 site test lint sanity units molecule bench runtime build clean

help:
	@echo "make site   - create .venv, install the pinned toolchain, provision the cache on localhost"
	@echo "make test   - create the venvs and run ruff, ansible-lint, sanity (2.19, 2.21), units (2.19, 2.21), Molecule"
	@echo "make bench  - benchmarks against du/find/chmod/ansible.builtin.file (BENCH_FILES=N)"
	@echo "make build  - ansible-galaxy collection build"

$(VENV)/.stamp: requirements/dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -r requirements/dev.txt
	@touch $@

.collections/ansible_collections/mlinfra/shared_cache:
	mkdir -p .collections/ansible_collections/mlinfra
	ln -sfn ../../.. .collections/ansible_collections/mlinfra/shared_cache

venv: $(VENV)/.stamp .collections/ansible_collections/mlinfra/shared_cache

$(VENV_221)/.stamp: requirements/core-2.21.txt
	@test -n "$(PYTHON_312)" || { echo "make: Python 3.12 not found (pyenv install 3.12)"; exit 1; }
	test -x $(VENV_221)/bin/python || $(PYTHON_312) -m venv $(VENV_221)
	$(VENV_221)/bin/python -m pip install -q --upgrade pip
	$(VENV_221)/bin/python -m pip install -q -r requirements/core-2.21.txt
	@touch $@

venv-2.21: $(VENV_221)/.stamp

site: venv
	source $(VENV)/bin/activate && ansible-playbook -i $(INVENTORY) site.yml $(ANSIBLE_ARGS)

test: venv venv-2.21
	scripts/test.sh

lint: venv
	scripts/test.sh lint

sanity: venv venv-2.21
	scripts/test.sh sanity

units: venv venv-2.21
	scripts/test.sh units

molecule: venv
	scripts/test.sh molecule

runtime:
	scripts/docker-runtime.sh

bench: venv
	source $(VENV)/bin/activate && python benchmarks/run.py

build: venv
	source $(VENV)/bin/activate && ansible-galaxy collection build --force --output-path dist/

clean:
	rm -rf $(VENV) $(VENV_221) .collections dist tests/output
