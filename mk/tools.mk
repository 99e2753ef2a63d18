# Build tools from PyPI, so that no target needs a system cmake: cmake, ninja and scikit-build-core (which
# `pip download` of the llama.cpp sdist needs to prepare its metadata) in the venv build/tools-venv, and
# build/tools/bin holding only their commands, put first on PATH for every recipe. What must come from the
# system (compilers, Rust, python3-venv) is checked up front by tools/preflight.sh, with how to get it.

space := $(subst ,, )
PYTHON3 ?= python3
TOOLS_VENV     := build/tools-venv
TOOLS_BIN      := build/tools/bin
TOOLS_PACKAGES := cmake==3.31.10 ninja==1.13.0 scikit-build-core==0.11.6
TOOLS_STAMP    := $(TOOLS_VENV)/.stamp-$(subst ==,-,$(subst $(space),+,$(TOOLS_PACKAGES)))

export PATH := $(CURDIR)/$(TOOLS_BIN):$(PATH)

.PHONY: preflight tools

preflight:
	@bash tools/preflight.sh $(if $(filter test,$(MAKECMDGOALS)),test,example)

$(TOOLS_STAMP):
	@bash tools/preflight.sh $(if $(filter test,$(MAKECMDGOALS)),test,example)
	@printf '\n== %s\n' "build tools from PyPI into $(TOOLS_VENV): $(TOOLS_PACKAGES)"
	test -x $(TOOLS_VENV)/bin/pip || $(PYTHON3) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet --disable-pip-version-check $(TOOLS_PACKAGES)
	rm -f $(TOOLS_VENV)/.stamp-* && mkdir -p $(TOOLS_BIN)
	for c in cmake ctest ninja; do ln -sf ../../tools-venv/bin/$$c $(TOOLS_BIN)/$$c; done
	$(TOOLS_BIN)/cmake --version | head -1 && $(TOOLS_BIN)/ninja --version
	touch $@

tools: $(TOOLS_STAMP)
