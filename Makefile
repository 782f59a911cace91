# The entry points that people and CI share. Everything runs inside .venv, which `make install`
# creates from the pinned requirements-dev.lock and Cargo.lock; nothing is installed by hand.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.modbatt-installed
SOURCES := $(shell find rust/src python/modbatt -type f -not -name '*.so' -not -path '*/__pycache__/*')

.PHONY: install demo test test-rust test-python lint format bench clean

## install: create .venv, install the pinned dependencies and modbatt with its Rust core (release)
install: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.lock Cargo.toml Cargo.lock rust/Cargo.toml $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/maturin develop --release --quiet
	touch $@

## demo: set up, then show the frame path at work on python-can virtual buses
demo: install
	$(BIN)/modbatt demo

## test: set up, then run every Rust and Python test
test: test-rust test-python

test-rust:
	cargo test --locked --quiet

test-python: install
	$(BIN)/python -m pytest -q

## lint: ruff, mypy, rustfmt and clippy, as strict as the commits are held to
lint: install
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest modbatt._core
	cargo fmt --check
	cargo clippy --locked --all-targets --all-features -- -D warnings

## format: apply ruff format and rustfmt
format: install
	$(BIN)/ruff format python tests benches
	$(BIN)/ruff check --fix python tests benches
	cargo fmt

## bench: the benchmark commands (figures on stdout) and the pytest-benchmark suite
bench: install
	$(BIN)/modbatt bench frame-path
	$(BIN)/python -m pytest benches --benchmark-enable -q

clean:
	rm -rf $(VENV) target .pytest_cache .mypy_cache .ruff_cache .hypothesis
