"""Cross-check of bench.py without generate(): the same random-weight Llama-3-8B-shaped model, a prompt of
--context tokens through model(), then --steps single-token forwards with the same cache, each timed with
CUDA synchronisation; prints the median step and, with --profile, the top CUDA/CPU ops of 5 steps.

    python forward_loop.py --cache dynamic|ours --context 32768 [--layers 4 --steps 48 --profile]
"""

import argparse
import json
import os
import sys
import time

import torch
from transformers import DynamicCache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama8b_shape  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--cache", choices=["dynamic", "ours"], required=True)
p.add_argument("--context", type=int, required=True)
p.add_argument("--layers", type=int, default=4)
p.add_argument("--steps", type=int, default=48)
p.add_argument("--batch", type=int, default=1, help="sequences decoded together (one random prompt each)")
p.add_argument("--ours-path", default=None)
p.add_argument("--profile", action="store_true")
p.add_argument("--check", action="store_true",
               help="also compare the logits of 3 decode steps with DynamicCache's, per batch row (cosine)")
p.add_argument("--sdpa", default="default",
               help="SDPA backends torch may use (comma list of flash,efficient,cudnn,math; default: torch's choice)")
a = p.parse_args()
llama8b_shape.set_sdpa_backends(a.sdpa)

if a.cache == "ours":
    sys.path.insert(0, a.ours_path)
    from turboquant.hf import TurboQuantCache
    make_cache = lambda: TurboQuantCache(bits=4)
else:
    make_cache = DynamicCache

config, model = llama8b_shape.build(a.layers, a.context + a.steps + 256)
ids = torch.randint(0, config.vocab_size, (a.batch, a.context), device="cuda")


def run(steps, prof=None):
    cache = make_cache()
    times = []
    with torch.no_grad():
        out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1:].argmax(-1)
        for i in range(steps):
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = model(nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            if prof is not None:
                prof.step()
    return sorted(times)[len(times) // 2]


run(4)
med = run(a.steps)
print("RESULT " + json.dumps({"loop": "forward", "cache": a.cache, "context": a.context, "batch": a.batch, "layers": a.layers,
                              "steps": a.steps, "median_step_ms": round(med * 1e3, 3),
                              "tok_s": round(a.batch / med, 1), "attn_impl": model.config._attn_implementation,
                              "sdpa": a.sdpa, "device": torch.cuda.get_device_name()}), flush=True)
if a.check:
    # the same prompt and tokens through DynamicCache and through this cache: logits cosine per row
    cosines = []
    with torch.no_grad():
        ref, got = DynamicCache(), make_cache()
        r = model(ids, past_key_values=ref, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        g = model(ids, past_key_values=got, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        for _ in range(3):
            nxt = r.argmax(-1, keepdim=True)
            r = model(nxt, past_key_values=ref, use_cache=True, logits_to_keep=1).logits[:, -1].float()
            g = model(nxt, past_key_values=got, use_cache=True, logits_to_keep=1).logits[:, -1].float()
            cosines.append(torch.nn.functional.cosine_similarity(r, g, dim=-1))
    c = torch.stack(cosines)
    print("CHECK " + json.dumps({"cache": a.cache, "batch": a.batch, "min_logits_cosine": round(c.min().item(), 5),
                                 "mean_logits_cosine": round(c.mean().item(), 5)}), flush=True)
if a.profile:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run(5)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12))
