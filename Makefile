# KT-Chat: `make run` serves a homeserver from ./data; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
DATA ?= data
SERVER_NAME ?= localhost
# Used when the config is generated (a first `make run`); later, edit $(DATA)/homeserver.yaml.
CLIENT_PORT ?= 8008
FEDERATION_PORT ?= 8448
BIN := $(VENV)/bin
# Test files run in parallel processes (pytest-xdist), a file per process at a time.
TEST_WORKERS ?= 2

.PHONY: run test bench lint clean synapse-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(VENV)/.installed $@

# Synapse, for the interoperability tests, in a virtualenv of its own (its pins are its own).
.venv-synapse/.installed: .ci/synapse-requirements.txt
	$(PYTHON) -m venv .venv-synapse
	.venv-synapse/bin/python -m pip install --quiet -r .ci/synapse-requirements.txt
	touch $@

synapse-venv: .venv-synapse/.installed

$(DATA)/homeserver.yaml: | $(VENV)/.installed
	$(BIN)/ktchat generate-config --server-name $(SERVER_NAME) --data-dir $(DATA) --client-port $(CLIENT_PORT) --federation-port $(FEDERATION_PORT)

run: $(VENV)/.installed $(DATA)/homeserver.yaml
	@echo "KT-Chat serving $(DATA)/homeserver.yaml on:"
	@$(BIN)/ktchat show-listeners -c $(DATA)/homeserver.yaml
	@echo "Create a user (in another terminal):"
	@echo "  $(BIN)/ktchat register-user -c $(DATA)/homeserver.yaml --user alice --password 'a long password'"
	$(BIN)/ktchat run -c $(DATA)/homeserver.yaml

# matrix-js-sdk (Node), for tests/test_e2e_js.py; without npm that test skips.
tests/js/node_modules/.installed: tests/js/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix tests/js --no-audit --no-fund && touch $@; \
	else echo "npm not found: not installing tests/js (its matrix-js-sdk test will skip)"; fi

test: $(VENV)/.installed-test .venv-synapse/.installed tests/js/node_modules/.installed
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	@for script in bench/*.py; do echo "== $$script" >&2; $(BIN)/python $$script || exit 1; done

lint: $(VENV)/.installed-test
	$(BIN)/ruff check core roomserver homeserver client_api federation storage tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .venv-synapse .pytest_cache .mypy_cache .ruff_cache
