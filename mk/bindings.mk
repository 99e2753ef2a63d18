# Python (ctypes) and Go (cgo) bindings: tests against the release library, examples.
# `make bindings-setup` (run by the test targets) installs the venv, the test model and Go.
# `make wheel`: the pip-installable package (bindings/python/pyproject.toml) with libturboquant.so
# bundled, in build/wheel. The Python tests run against that wheel installed into the bindings venv;
# `make test-wheel` installs ./bindings/python into a fresh venv and checks the import there.

BINDINGS_VENV ?= build/bindings-venv
BINDINGS_PYTHON := $(BINDINGS_VENV)/bin/python
TURBOQUANT_LIB_PATH := $(CURDIR)/target/release/libturboquant.so
WHEEL_DIR := build/wheel
WHEEL_VERSION := $(shell awk -F'"' '/^\[/ { p = ($$0 == "[package]") } p && /^version[ \t]*=/ { print $$2; exit }' Cargo.toml)
WHEEL_TEST_VENV := build/wheel-test/venv

.PHONY: bindings-setup test-python test-go example-bindings wheel test-wheel

test: test-wheel test-python test-go

bindings-setup:
	bash .ci/bindings.sh

# Built with the tools venv's pip, in place (setup.py runs cargo build --release and bundles the .so).
wheel: build $(TOOLS_STAMP)
	rm -rf $(WHEEL_DIR) bindings/python/build && mkdir -p $(WHEEL_DIR)
	$(TOOLS_VENV)/bin/pip wheel --quiet --disable-pip-version-check --no-deps ./bindings/python -w $(WHEEL_DIR)
	@ls $(WHEEL_DIR)/libturboquant-$(WHEEL_VERSION)-py3-none-*.whl

# The acceptance command of the package, in a fresh venv, then the installed copy is checked from
# outside the checkout with no TURBOQUANT_LIB.
test-wheel: build
	@printf '\n== %s\n' "pip install ./bindings/python into a fresh venv ($(WHEEL_TEST_VENV))"
	rm -rf $(WHEEL_TEST_VENV) bindings/python/build
	$(PYTHON3) -m venv $(WHEEL_TEST_VENV)
	$(WHEEL_TEST_VENV)/bin/pip install --quiet --disable-pip-version-check ./bindings/python
	cd $(WHEEL_TEST_VENV) && env -u TURBOQUANT_LIB bin/python $(CURDIR)/bindings/python/tests/installed_check.py $(WHEEL_VERSION)

# pytest prints each test, the [hf] measurements (-s) and its own summary line. TQ_TEST_INSTALLED=1:
# conftest.py imports the installed wheel (not the checkout) and checks that it did.
test-python: wheel bindings-setup
	$(BINDINGS_PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
	    $(WHEEL_DIR)/libturboquant-$(WHEEL_VERSION)-py3-none-*.whl
	env -u TURBOQUANT_LIB HF_HUB_OFFLINE=1 TQ_TEST_INSTALLED=1 $(BINDINGS_PYTHON) -m pytest bindings/python/tests -v -s -p no:cacheprovider

test-go: build bindings-setup
	cd bindings/go && go vet ./... && go test -count=1 -v ./...

example-bindings: build bindings-setup
	HF_HUB_OFFLINE=1 TURBOQUANT_LIB=$(TURBOQUANT_LIB_PATH) $(BINDINGS_PYTHON) bindings/python/examples/quantize_and_attend.py
	HF_HUB_OFFLINE=1 TURBOQUANT_LIB=$(TURBOQUANT_LIB_PATH) $(BINDINGS_PYTHON) bindings/python/examples/hf_generate.py
	cd bindings/go && go run ./example
