# The entry points that people and CI share. Everything runs inside .venv, which `make install`
# creates from the pinned requirements-dev.lock and Cargo.lock; nothing is installed by hand.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.modbatt-installed
SOURCES := $(shell find rust/src python/modbatt -type f -not -name '*.so' -not -path '*/__pycache__/*')

.PHONY: vm-run test-socketcan install demo test test-rust test-python test-fuzz fuzz fuzz-build soak lint format bench clean

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

## test: set up, then run every Rust and Python test, a short coverage-guided fuzz run, and
## the SocketCAN tests in a real kernel
test: test-rust test-fuzz test-socketcan test-python

test-rust:
	cargo test --locked --quiet

test-python: install
	$(BIN)/python -m pytest -q

# Coverage-guided fuzzing with libFuzzer (fuzz/). SanitizerCoverage is switched on with stable
# rustc flags (the ones cargo-fuzz passes), so neither nightly nor cargo-fuzz is needed. The
# explicit --target keeps these flags off build scripts.
FUZZ_TARGETS := open_frame gateway_step open_message
FUZZ_TRIPLE  := $(shell rustc -vV | sed -n 's/^host: //p')
FUZZ_BIN     := target/fuzz/$(FUZZ_TRIPLE)/release
FUZZ_FLAGS   := -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
	-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
	-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions
FUZZ_SECONDS ?= 300
FUZZ_RUNS    ?= 100000

fuzz-build:
	RUSTFLAGS="$(FUZZ_FLAGS)" cargo build --locked --quiet --release \
		--manifest-path fuzz/Cargo.toml --target $(FUZZ_TRIPLE) --target-dir target/fuzz

## test-fuzz: the inputs that once failed (fuzz/regressions/<target>/), then FUZZ_RUNS inputs
## per target from an empty corpus, seeded, so a failure replays
test-fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		if [ -d fuzz/regressions/$$t ]; then \
			$(FUZZ_BIN)/$$t fuzz/regressions/$$t/* 2>target/fuzz/$$t.log \
				|| { tail -40 target/fuzz/$$t.log; exit 1; }; \
			echo "fuzz $$t: $$(ls fuzz/regressions/$$t | wc -l) regression input(s) pass"; \
		fi; \
		dir=$$(mktemp -d); \
		$(FUZZ_BIN)/$$t -seed=1 -runs=$(FUZZ_RUNS) -artifact_prefix=target/fuzz/$$t- $$dir 2>target/fuzz/$$t.log \
			|| { tail -40 target/fuzz/$$t.log; rm -rf $$dir; exit 1; }; \
		echo "fuzz $$t: $$(grep -o 'DONE.*cov: [0-9]*' target/fuzz/$$t.log | sed 's/.*cov/cov/') after $(FUZZ_RUNS) runs, no failure"; \
		rm -rf $$dir; \
	done

## fuzz: each target for FUZZ_SECONDS, keeping its corpus in fuzz/corpus/ between runs
fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t fuzz/artifacts; \
		$(FUZZ_BIN)/$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
			-artifact_prefix=fuzz/artifacts/$$t- fuzz/corpus/$$t || exit 1; \
	done

## test-socketcan: the tests that need the kernel's CAN stack (tests/socketcan), in the QEMU
## guest, or on this host when it has vcan0 and vcan1
test-socketcan: install
	scripts/socketcan-guest.sh test

## vm-run: run CMD='...' from the checkout's root in a Linux guest with SocketCAN (vcan0,
## vcan1, can-gw, can-isotp) under QEMU; scripts/socketcan-guest.sh builds it once in .socketcan/
vm-run: install
	scripts/socketcan-guest.sh run "$$CMD"

## lint: ruff, mypy, rustfmt and clippy, as strict as the commits are held to
lint: install
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest modbatt._core
	$(BIN)/lint-imports
	cargo fmt --check
	cargo fmt --check --manifest-path fuzz/Cargo.toml
	cargo clippy --locked --all-targets --all-features -- -D warnings

## format: apply ruff format and rustfmt
format: install
	$(BIN)/ruff format python tests benches
	$(BIN)/ruff check --fix python tests benches
	cargo fmt
	cargo fmt --manifest-path fuzz/Cargo.toml

## soak: 60 s of both buses at the full classic rate through a pack, then the same under a
## garbage flood at the full rate; fails on any loss, reordering, backlog or memory growth
SOAK_SECONDS ?= 60
soak: install
	$(BIN)/modbatt soak --seconds $(SOAK_SECONDS) --json bench-soak.json
	$(BIN)/modbatt soak --seconds $(SOAK_SECONDS) --garbage-rate 6250 --json bench-soak-flood.json

## bench: the benchmark commands (figures on stdout) and the pytest-benchmark suite
bench: install
	$(BIN)/modbatt bench
	$(BIN)/python -m pytest benches --benchmark-enable -q

clean:
	rm -rf $(VENV) target .pytest_cache .mypy_cache .ruff_cache .hypothesis
