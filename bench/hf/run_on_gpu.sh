#!/usr/bin/env bash
# Runs bench.py for every cache and context on the GPU of this machine; writes results.jsonl and
# the raw log to $OUT (default ./out). Layout expected beside this script (or under $HF_DIR):
#   python/turboquant/...        this project's package with a CUDA libturboquant.so bundled
#   seed/turboquant/...          the seed package (PyPI turboquant==0.1.0), unpacked
#   wheels/*.whl                 extra wheels to install first when missing (e.g. scipy for the seed)
set -uo pipefail
HF_DIR=${HF_DIR:-$(cd "$(dirname "$0")" && pwd)}
OUT=${OUT:-$HF_DIR/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
log=$OUT/raw.log
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$log"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$log"
if ! $PY -c "import scipy" 2>/dev/null && ls "$HF_DIR"/wheels/*.whl >/dev/null 2>&1; then
    $PY -m pip install --quiet --no-deps --no-index "$HF_DIR"/wheels/*.whl 2>&1 | tail -3 | tee -a "$log"
fi
for ctx in ${CONTEXTS:-4096 32768}; do
    for cache in ${CACHES:-dynamic ours seed}; do
        echo "== $cache $ctx" | tee -a "$log"
        timeout ${BENCH_TIMEOUT:-150} $PY "$HF_DIR/bench.py" --cache "$cache" --context "$ctx" \
            --layers "${LAYERS:-4}" --new-tokens "${NEW_TOKENS:-64}" \
            --ours-path "$HF_DIR/python" --seed-path "$HF_DIR/seed" >>"$log" 2>&1 || echo "FAILED ($?)" | tee -a "$log"
        grep '^RESULT ' "$log" | tail -1 | grep -q "\"cache\": \"$cache\", \"context\": $ctx" &&
            grep '^RESULT ' "$log" | tail -1 | cut -c8- | tee -a "$OUT/results.jsonl"
    done
done
