"""The benchmark model of bench.py and forward_loop.py: a random-weight Llama with Llama-3-8B attention
and MLP shapes (hidden 4096, 32 q / 8 kv heads, head_dim 128, MLP 14336, vocab 128256), fewer layers, in
bf16 on the GPU, seeded."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def build(layers: int, max_positions: int):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, num_hidden_layers=layers,
                         vocab_size=128256, max_position_embeddings=max_positions,
                         rope_theta=500000.0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    return config, model


SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")


def set_sdpa_backends(spec):
    """Restrict torch's scaled_dot_product_attention to the backends named in `spec` (comma list of
    flash, efficient, cudnn, math), or leave torch's choice ("default"). The benchmarks record it:
    which backend DynamicCache's SDPA takes changes its decode step (cuDNN attention plans per shape)."""
    if spec == "default":
        return
    names = spec.split(",")
    unknown = [n for n in names if n not in SDPA_BACKENDS]
    if unknown:
        raise SystemExit(f"--sdpa: unknown backend(s) {unknown}; choose from {SDPA_BACKENDS} or 'default'")
    torch.backends.cuda.enable_flash_sdp("flash" in names)
    torch.backends.cuda.enable_mem_efficient_sdp("efficient" in names)
    torch.backends.cuda.enable_cudnn_sdp("cudnn" in names)
    torch.backends.cuda.enable_math_sdp("math" in names)
