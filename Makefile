# The one entry point. `make run` starts a demo, `make test` is what CI runs.
CARGO ?= cargo

.PHONY: all build run test lint fmt ci clean bench fuzz

all: build

build:
	$(CARGO) build --release --locked -p sluice -p sluice-testkit --bins

## sluice on 127.0.0.1:8080 in front of three WebSocket echo backends (Ctrl-C stops everything)
run: build
	scripts/demo.sh

## the whole test suite: unit, reader/parser and end-to-end tests
test:
	$(CARGO) test --workspace --locked

## formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## what CI runs
ci: lint test

clean:
	$(CARGO) clean

## the benchmark suite: sluice against a direct connection, HAProxy and nginx (bench/run.py);
## writes bench/results/ and updates docs/performance.md. QUICK=1: a smoke run, docs untouched
bench:
	$(CARGO) build --release --locked -p sluice -p sluice-testkit -p sluice-bench --bins
	python3 bench/run.py $(if $(QUICK),--quick,--update-docs)

## fuzz the request-head reader, parser and router for FUZZ_TIME seconds (default 60); needs
## cargo-fuzz (`cargo install cargo-fuzz --locked`); nightly features through RUSTC_BOOTSTRAP.
## New inputs go to fuzz/corpus/ (not committed), crashes to fuzz/artifacts/. Not part of `test`.
FUZZ_TIME ?= 60
fuzz:
	mkdir -p fuzz/corpus/request_head
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run request_head corpus/request_head seeds/request_head \
		-- -max_total_time=$(FUZZ_TIME) -print_final_stats=1
