"""Hugging Face decode speed and memory on CUDA: generate() with DynamicCache, with this project's
turboquant.hf.TurboQuantCache(bits=4), and with the seed package's TurboQuantCache(bits=4) (PyPI
turboquant==0.1.0), on a random-weight model built from a transformers config.

    python bench.py --cache dynamic|ours|seed --context 4096 [--layers 4 --new-tokens 64]

One cache per process (the seed package and these bindings share the import name `turboquant`):
run_on_gpu.sh runs every combination and collects the JSON lines. Decode tok/s is
new_tokens / (time of generate(new_tokens + 1) - time of generate(1)), each on a fresh cache,
after a warm-up; peak memory is torch.cuda.max_memory_allocated() during the long generate, less
the model's weights. For `ours` it also checks the next-token logits after the prompt against
DynamicCache's (cosine similarity), so a broken cache cannot pass as fast.
"""

import argparse
import json
import sys
import time

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--cache", choices=["dynamic", "ours", "seed"], required=True)
p.add_argument("--context", type=int, required=True)
p.add_argument("--layers", type=int, default=4)
p.add_argument("--new-tokens", type=int, default=64)
p.add_argument("--seed-path", default=None, help="directory holding the seed package")
p.add_argument("--ours-path", default=None, help="directory holding this project's package")
a = p.parse_args()

if a.cache == "ours":
    sys.path.insert(0, a.ours_path)
    from turboquant.hf import TurboQuantCache
    make_cache = lambda: TurboQuantCache(bits=4)
elif a.cache == "seed":
    sys.path.insert(0, a.seed_path)
    from turboquant import TurboQuantCache
    make_cache = lambda: TurboQuantCache(bits=4)
else:
    make_cache = lambda: DynamicCache()

torch.manual_seed(0)
# Llama-3-8B attention and MLP shapes (32 q / 8 kv heads, head_dim 128), fewer layers.
config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, num_hidden_layers=a.layers,
                     vocab_size=128256, max_position_embeddings=a.context + a.new_tokens + 256,
                     rope_theta=500000.0, torch_dtype="bfloat16")
with torch.device("cuda"):
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
model.generation_config.eos_token_id = None
model.generation_config.pad_token_id = 0
weights = torch.cuda.memory_allocated()
ids = torch.randint(0, config.vocab_size, (1, a.context), device="cuda")


def generate(n):
    cache = make_cache()
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, past_key_values=cache, max_new_tokens=n, min_new_tokens=n,
                             do_sample=False)
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


generate(2)  # warm-up: kernels compiled, allocator primed
t1 = min(generate(1)[0] for _ in range(2))
torch.cuda.reset_peak_memory_stats()
tn, cache, out = generate(a.new_tokens + 1)
peak = torch.cuda.max_memory_allocated() - weights
result = {"cache": a.cache, "context": a.context, "layers": a.layers, "new_tokens": a.new_tokens,
          "prefill_s": round(t1, 4), "decode_tok_s": round(a.new_tokens / (tn - t1), 2),
          "peak_mib": round(peak / 2**20, 1), "kv_mib": round(kv_bytes(cache) / 2**20, 1),
          "device": torch.cuda.get_device_name()}

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
print("RESULT " + json.dumps(result), flush=True)
