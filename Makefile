# The one entry point. `make run` starts a demo, `make test` is what CI runs.
CARGO ?= cargo

.PHONY: all build run test lint fmt ci clean

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
