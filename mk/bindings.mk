# Python (ctypes) and Go (cgo) bindings: tests against the release library, examples.
# `make bindings-setup` (run by the test targets) installs the venv, the test model and Go.

BINDINGS_VENV ?= build/bindings-venv
BINDINGS_PYTHON := $(BINDINGS_VENV)/bin/python
TURBOQUANT_LIB_PATH := $(CURDIR)/target/release/libturboquant.so

.PHONY: bindings-setup test-python test-go example-bindings

test: test-python test-go

bindings-setup:
	bash .ci/bindings.sh

# pytest prints each test, the [hf] measurements (-s) and its own summary line.
test-python: build bindings-setup
	HF_HUB_OFFLINE=1 TURBOQUANT_LIB=$(TURBOQUANT_LIB_PATH) $(BINDINGS_PYTHON) -m pytest bindings/python/tests -v -s -p no:cacheprovider

test-go: build bindings-setup
	cd bindings/go && go vet ./... && go test -count=1 -v ./...

example-bindings: build bindings-setup
	HF_HUB_OFFLINE=1 TURBOQUANT_LIB=$(TURBOQUANT_LIB_PATH) $(BINDINGS_PYTHON) bindings/python/examples/quantize_and_attend.py
	HF_HUB_OFFLINE=1 TURBOQUANT_LIB=$(TURBOQUANT_LIB_PATH) $(BINDINGS_PYTHON) bindings/python/examples/hf_generate.py
	cd bindings/go && go run ./example
