# The C robustness suite (tests/c/fuzz.c, tests/c/hardening.c) built with AddressSanitizer and
# UndefinedBehaviorSanitizer against the release libturboquant.so, run with a fixed seed (bounded:
# well under 2 minutes on 2 cores). `make fuzz-long` runs more mutations (README "Robustness").
# `make tsan` builds tests/c/tsan.c with ThreadSanitizer (concurrent use of one quantizer and of
# distinct contexts).

FUZZ_CC ?= cc
FUZZ_DIR := target/fuzz
FUZZ_SEED ?= 1
FUZZ_ITERS ?= 3000
FUZZ_LIB := target/release
FUZZ_CFLAGS := -std=c11 -g -O1 -Iinclude -Itests/c -fno-omit-frame-pointer
FUZZ_LINK := -L$(FUZZ_LIB) -Wl,-rpath,$(abspath $(FUZZ_LIB)) -lturboquant -lm -lpthread
FUZZ_ENV := LD_LIBRARY_PATH=$(abspath $(FUZZ_LIB)) ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 LSAN_OPTIONS=suppressions=$(abspath tests/c/lsan.supp)

.PHONY: fuzz fuzz-long tsan
test: fuzz tsan

$(FUZZ_DIR)/%-asan: tests/c/%.c tests/c/robust.h tests/c/check.h include/turboquant.h build
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all $< -o $@ $(FUZZ_LINK)

fuzz: $(FUZZ_DIR)/fuzz-asan $(FUZZ_DIR)/hardening-asan
	$(FUZZ_ENV) TQ_FUZZ_SEED=$(FUZZ_SEED) TQ_FUZZ_ITERS=$(FUZZ_ITERS) timeout 120 $(FUZZ_DIR)/fuzz-asan
	$(FUZZ_ENV) timeout 120 $(FUZZ_DIR)/hardening-asan

fuzz-long: $(FUZZ_DIR)/fuzz-asan
	for seed in 1 2 3 4 5 6 7 8; do \
	  $(FUZZ_ENV) TQ_FUZZ_SEED=$$seed TQ_FUZZ_ITERS=5000 timeout 600 $(FUZZ_DIR)/fuzz-asan || exit 1; done

$(FUZZ_DIR)/tsan: tests/c/tsan.c tests/c/robust.h include/turboquant.h build
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=thread $< -o $@ $(FUZZ_LINK)

tsan: $(FUZZ_DIR)/tsan
	LD_LIBRARY_PATH=$(abspath $(FUZZ_LIB)) TSAN_OPTIONS=halt_on_error=1 timeout 300 $(FUZZ_DIR)/tsan
