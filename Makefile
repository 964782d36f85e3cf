# The two commands of the README: `make run` (set up + serve on embedded SQLite) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make run PORT=8080 HOST=0.0.0.0`: where the server listens, and what `demo` prints.
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet -e './clients/python[cli]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/mega-crm db upgrade
	MEGA_HOST=$(HOST) MEGA_PORT=$(PORT) $(BIN)/mega-crm demo
	MEGA_HOST=$(HOST) MEGA_PORT=$(PORT) $(BIN)/mega-crm serve

test: $(STAMP)
	$(BIN)/pytest -q
	$(BIN)/pytest -q clients/python/tests

lint: $(STAMP)
	$(BIN)/ruff check src tests bench clients/python
	$(BIN)/mypy src
	$(BIN)/mypy tests
	cd clients/python && ../../$(BIN)/mypy src

bench: $(STAMP)
	$(BIN)/python -m bench
	$(BIN)/python clients/python/bench/import_bench.py

clean:
	rm -rf $(VENV) *.egg-info mega-crm.db mega-crm.db-wal mega-crm.db-shm mega-crm.db.secret mega-crm.db.worker.lock
