# libturboquant — top-level commands. `make test` runs every test; `make example` is the main demo.
# Topic-specific targets live in mk/*.mk (each adds its own prerequisites to `test`).

CARGO ?= cargo
CARGO_FLAGS ?= --release
export CARGO_TERM_COLOR ?= never

.PHONY: all build header test test-rust example mse-table bench clean

all: build

build:
	$(CARGO) build $(CARGO_FLAGS)

# Regenerate include/turboquant.h from the Rust sources (a test fails when the committed copy is stale).
header:
	TQ_BLESS_HEADER=1 $(CARGO) test $(CARGO_FLAGS) --test header_fresh -- committed_header_is_fresh

test: preflight test-rust

# Rust unit + integration tests, including the C tests (tests/c) compiled against the built .so.
test-rust:
	$(CARGO) test $(CARGO_FLAGS)

# Verification table: measured MSE / PROD distortion against the exact Lloyd–Max values and bounds.
mse-table:
	$(CARGO) run $(CARGO_FLAGS) --example mse_table

example: preflight llama-example

bench:
	$(CARGO) bench --bench quantizer

clean:
	$(CARGO) clean

# mk/tools.mk first: the others name its variables in their prerequisites (expanded as they are read).
include mk/tools.mk
-include $(filter-out mk/tools.mk,$(sort $(wildcard mk/*.mk)))

# Attention error of the compressed cache against exact attention, by bit width (README table).
.PHONY: attend-table
attend-table:
	$(CARGO) run $(CARGO_FLAGS) --example attend_error
