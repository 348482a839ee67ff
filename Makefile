# pop3d developer entry points.  On a fresh Debian machine (as root) `make run` and `make test`
# install what is missing, start private PostgreSQL and memcached under ./var/, and go.

VENV    := .venv
BIN     := $(VENV)/bin
CONFIG  ?= conf/dev.toml
PYTEST_ARGS ?=

.PHONY: run test lint unit services migrate seed stop clean bench bench-setup dovecot deb test-deb

$(VENV)/.installed: setup.py
	scripts/bootstrap.sh

services: $(VENV)/.installed
	scripts/services.sh start

migrate: services
	$(BIN)/pop3d db migrate -c $(CONFIG)

seed: migrate
	scripts/seed-demo.sh $(CONFIG)

## Run the server in the foreground on 127.0.0.1:11110 (STLS) and :11995 (TLS); Ctrl-C stops it.
run: seed
	$(BIN)/pop3d start -c $(CONFIG)

## Lint, type-check and run the whole test suite against the private services.
test: services lint
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check pop3d tests scripts setup.py
	$(BIN)/mypy

## The Debian package in dist/ (installs the build dependencies when missing), checked by lintian.
deb:
	scripts/deb.sh build
	scripts/deb.sh lintian

## Only the package tests (tests/package: install, run as the unit would, Postfix, purge; root).
test-deb: services $(VENV)/.installed
	$(BIN)/pytest tests/package $(PYTEST_ARGS)

## Only the pure unit tests (no services needed).
unit: $(VENV)/.installed
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

bench: services
	$(BIN)/python scripts/bench_protocol.py

## pop3bench's users (BENCH_USERS, default 50) and corpus in var/bench/, through pop3d's CLI.
BENCH_USERS ?= 50
bench-setup: migrate
	$(BIN)/python scripts/bench_setup.py -c $(CONFIG) --users $(BENCH_USERS)

## A private Dovecot with the same users and mail (127.0.0.1:12120 plain/STLS, :12993 TLS).
dovecot: bench-setup
	POP3D_CONFIG=$(CONFIG) scripts/dovecot-bench.sh start

## Stop the private services (and a server started with `make run` in the background).
stop:
	-@[ -x $(BIN)/pop3d ] && $(BIN)/pop3d stop -c $(CONFIG) 2>/dev/null
	scripts/services.sh stop

clean: stop
	rm -rf var $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
