"""Hugging Face decode speed and memory on CUDA: generate() with DynamicCache, with this project's
turboquant.hf.TurboQuantCache(bits=4), and with the seed package's TurboQuantCache(bits=4) (PyPI
turboquant==0.1.0), on a random-weight model built from a transformers config.

    python bench.py --cache dynamic|ours|seed --context 4096 [--layers 4 --new-tokens 64]

One cache per process (the seed package and these bindings share the import name `turboquant`):
run_on_gpu.sh runs every combination and collects the JSON lines. Decode tok/s is
1 / the median time between tokens over the second half of a generate(new_tokens + 1) (steady
state; decode_tok_s_whole_run also counts one-time costs), after a warm-up; peak_decode_mib is
torch.cuda.max_memory_allocated() during the decode, less the model's weights. For `ours` it also checks the next-token logits after the prompt against
DynamicCache's (cosine similarity), so a broken cache cannot pass as fast.
"""

import argparse
import json
import os
import sys
import time

import torch
from transformers import DynamicCache, LogitsProcessor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama8b_shape  # noqa: E402


class StepClock(LogitsProcessor):
    """Called once per generated token: records a synchronized time stamp, and resets the peak
    memory counter at the first token (the prompt's activations are freed by then), so the peak
    read at the end is the decode phase's."""

    def __init__(self):
        self.stamps = []

    def __call__(self, input_ids, scores):
        torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        if len(self.stamps) == 1:
            torch.cuda.reset_peak_memory_stats()
        return scores

p = argparse.ArgumentParser()
p.add_argument("--cache", choices=["dynamic", "ours", "seed"], required=True)
p.add_argument("--context", type=int, required=True)
p.add_argument("--layers", type=int, default=4)
p.add_argument("--new-tokens", type=int, default=64)
p.add_argument("--seed-path", default=None, help="directory holding the seed package")
p.add_argument("--ours-path", default=None, help="directory holding this project's package")
p.add_argument("--sdpa", default="default",
               help="SDPA backends torch may use (comma list of flash,efficient,cudnn,math; default: torch's choice)")
a = p.parse_args()
llama8b_shape.set_sdpa_backends(a.sdpa)

if a.cache == "ours":
    sys.path.insert(0, a.ours_path)
    from turboquant.hf import TurboQuantCache
    make_cache = lambda: TurboQuantCache(bits=4)
elif a.cache == "seed":
    import numpy as np
    if not hasattr(np, "trapz"):  # the seed's codebook code calls np.trapz, removed in numpy 2
        np.trapz = np.trapezoid
    sys.path.insert(0, a.seed_path)
    from turboquant import TurboQuantCache
    make_cache = lambda: TurboQuantCache(bits=4)
else:
    make_cache = lambda: DynamicCache()

config, model = llama8b_shape.build(a.layers, a.context + a.new_tokens + 256)
model.generation_config.eos_token_id = None
model.generation_config.pad_token_id = 0
weights = torch.cuda.memory_allocated()
ids = torch.randint(0, config.vocab_size, (1, a.context), device="cuda")


def generate(n, clock=None):
    cache = make_cache()
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                             max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             logits_processor=[clock] if clock else None)
    torch.cuda.synchronize()
    return time.perf_counter() - t, cache, out


def kv_bytes(cache):
    if a.cache == "ours":
        return cache.memory_usage().bytes_used
    total = 0
    for layer in cache.layers:
        for name, t in vars(layer).items():
            if isinstance(t, torch.Tensor) and name in ("keys", "values", "_quantized_keys",
                                                        "_quantized_values", "_residual_keys",
                                                        "_residual_values"):
                total += t.numel() * t.element_size()
    return total


generate(8)  # warm-up: kernels compiled, allocator primed
t1 = min(generate(1)[0] for _ in range(2))
torch.cuda.reset_peak_memory_stats()
clock = StepClock()
tn, cache, out = generate(a.new_tokens + 1, clock)
peak_decode = torch.cuda.max_memory_allocated() - weights
# steady state: the median interval between tokens over the second half of the decode
half = [b - a_ for a_, b in zip(clock.stamps, clock.stamps[1:])][len(clock.stamps) // 2:]
median = sorted(half)[len(half) // 2]
result = {"cache": a.cache, "context": a.context, "layers": a.layers, "new_tokens": a.new_tokens,
          "prefill_s": round(t1, 4), "decode_tok_s": round(1.0 / median, 1),
          "decode_tok_s_whole_run": round(a.new_tokens / (tn - t1), 1),
          "peak_decode_mib": round(peak_decode / 2**20, 1),
          "kv_mib": round(kv_bytes(cache) / 2**20, 1), "sdpa": a.sdpa, "device": torch.cuda.get_device_name()}

if a.cache == "ours":
    # next-token logits after the prompt plus one token, against DynamicCache
    with torch.no_grad():
        ref_cache, tq_cache = DynamicCache(), make_cache()
        model(ids, past_key_values=ref_cache)
        model(ids, past_key_values=tq_cache)
        nxt = ids[:, -1:]
        ref = model(nxt, past_key_values=ref_cache).logits[0, -1].float()
        got = model(nxt, past_key_values=tq_cache).logits[0, -1].float()
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=0).item()
    result["logits_cosine_vs_dynamic"] = round(cos, 5)
    result["same_argmax_as_dynamic"] = bool(ref.argmax() == got.argmax())
    # the same check at 2 and 3 bits: the error must grow as bits shrink (a pipeline bug would not)
    for bits in (2, 3):
        c = TurboQuantCache(bits=bits)
        with torch.no_grad():
            model(ids, past_key_values=c)
            g = model(nxt, past_key_values=c).logits[0, -1].float()
        result[f"logits_cosine_vs_dynamic_{bits}bit"] = round(
            torch.nn.functional.cosine_similarity(ref, g, dim=0).item(), 5)
print("RESULT " + json.dumps(result), flush=True)
