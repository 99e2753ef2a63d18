# CUDA backend checks that need no GPU (CI): build the library with the `cuda` feature, and compile
# every kernel variant for sm_80 and sm_90 with NVRTC from the PyPI wheel nvidia-cuda-nvrtc (a venv
# under build/; libnvrtc.so.13 lives in its nvidia/cu13/lib). GPU tests (tests/gpu_kernels.rs) run
# where nvidia-smi sees a GPU; elsewhere `test-gpu` prints a loud SKIPPED banner and only lists them
# (nothing is counted as passed). On a GPU machine: bench/gpu/run_on_gpu.sh tests sanitize.

NVRTC_VENV := build/nvrtc-venv
NVRTC_STAMP := $(NVRTC_VENV)/.nvrtc-13.0
NVRTC_LIB = $(shell ls -d $(CURDIR)/$(NVRTC_VENV)/lib/python3*/site-packages/nvidia/cu13/lib 2>/dev/null | head -1)

.PHONY: build-cuda test-cuda-compile test-gpu

$(NVRTC_STAMP):
	python3 -m venv $(NVRTC_VENV)
	$(NVRTC_VENV)/bin/pip install --quiet 'nvidia-cuda-nvrtc==13.0.*'
	touch $@

build-cuda:
	$(CARGO) build $(CARGO_FLAGS) --features cuda

test-cuda-compile: $(NVRTC_STAMP) build-cuda
	LD_LIBRARY_PATH="$(NVRTC_LIB):$$LD_LIBRARY_PATH" TQ_REQUIRE_NVRTC=1 \
		$(CARGO) test $(CARGO_FLAGS) --features cuda --test cuda_compile -- --nocapture

test: test-cuda-compile test-gpu

test-gpu:
	@if nvidia-smi -L >/dev/null 2>&1; then \
		$(CARGO) test $(CARGO_FLAGS) --features cuda --test gpu_kernels -- --test-threads=2; \
	else \
		echo "=================================================================================="; \
		echo "SKIPPED: GPU tests (tests/gpu_kernels.rs) - no GPU on this machine. They run on an"; \
		echo "H100/H200: bench/gpu/run_on_gpu.sh tests sanitize (results in bench/gpu/results/)."; \
		echo "=================================================================================="; \
		$(CARGO) test $(CARGO_FLAGS) --features cuda --test gpu_kernels -- --list; \
	fi
