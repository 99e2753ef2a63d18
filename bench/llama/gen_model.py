#!/usr/bin/env python3
"""Write a GGUF with random weights in the shape of Llama 3 8B (for speed measurements only).

32 layers, n_embd 4096, 32 query heads and 8 KV heads of size 128 (GQA 4), FFN 14336, vocabulary 128256, RoPE
base 500000; every matrix Q4_0, norms f32. The tokenizer is a SentencePiece-style table (byte tokens plus
placeholder pieces) so that llama.cpp's tools load it and llama-bench can draw random tokens; the text such a
model writes means nothing. Weights are random 4-bit codes with a fixed block scale chosen so that each layer's
outputs keep about unit size (no overflow in f16 activations or caches); one random pool is reused across
tensors (the contents do not matter for speed, only the shapes and the types).

Usage: gen_model.py OUT.gguf [--layers N]   (needs numpy and the gguf package, e.g. llama.cpp's gguf-py)
"""

import argparse
import sys

import numpy as np

try:
    import gguf
except ImportError:  # llama.cpp's own copy, when run from a llama.cpp tree
    sys.path.insert(0, "gguf-py")
    import gguf

Q4_0_BLOCK = 32  # weights per block
Q4_0_BYTES = 18  # f16 scale + 16 bytes of 4-bit codes


def q4_0_bytes(rows: int, cols: int) -> int:
    assert cols % Q4_0_BLOCK == 0
    return rows * (cols // Q4_0_BLOCK) * Q4_0_BYTES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab = 4096, 32, 8, 128, 14336, 128256
    arch = "llama"

    w = gguf.GGUFWriter(args.out, arch)
    w.add_name("random Llama-3-8B-shaped model (speed only)")
    w.add_block_count(args.layers)
    w.add_context_length(131072)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)

    # tokenizer: <unk> <s> </s>, the 256 byte tokens, then placeholder pieces
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    n_rest = n_vocab - len(tokens)
    tokens += [f"\u2581t{i}" for i in range(n_rest)]
    types += [gguf.TokenType.NORMAL] * n_rest
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(n_rest)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    # tensors: (name, rows, cols) for Q4_0 matrices (ggml shape [cols, rows]), and f32 norms of n_embd
    mats = [("token_embd.weight", n_vocab, n_embd), ("output.weight", n_vocab, n_embd)]
    norms = ["output_norm.weight"]
    for il in range(args.layers):
        p = f"blk.{il}."
        mats += [(p + "attn_q.weight", n_head * head_dim, n_embd), (p + "attn_k.weight", n_head_kv * head_dim, n_embd),
                 (p + "attn_v.weight", n_head_kv * head_dim, n_embd), (p + "attn_output.weight", n_embd, n_head * head_dim),
                 (p + "ffn_gate.weight", n_ff, n_embd), (p + "ffn_up.weight", n_ff, n_embd),
                 (p + "ffn_down.weight", n_embd, n_ff)]
        norms += [p + "attn_norm.weight", p + "ffn_norm.weight"]

    q4 = gguf.GGMLQuantizationType.Q4_0
    for name, rows, cols in mats:
        w.add_tensor_info(name, [rows, cols], np.dtype(np.float32), q4_0_bytes(rows, cols), raw_dtype=q4)
    for name in norms:
        w.add_tensor_info(name, [n_embd], np.dtype(np.float32), n_embd * 4)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()

    # the pool: Q4_0 blocks with scale 0.003 (codes uniform in 0..15, weights in [-0.024, 0.021], std ~0.014:
    # a 4096-wide product of a unit-RMS input has std ~0.9) and random codes
    rng = np.random.default_rng(args.seed)
    pool_blocks = (1 << 28) // Q4_0_BYTES
    pool = rng.integers(0, 256, size=(pool_blocks, Q4_0_BYTES), dtype=np.uint8)
    pool[:, 0:2] = np.frombuffer(np.float16(0.003).tobytes(), dtype=np.uint8)
    pool = pool.reshape(-1)

    # the data section: each tensor at the next multiple of the alignment (every size here is one already)
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())
    for name, rows, cols in mats:
        nbytes = q4_0_bytes(rows, cols)
        done = 0
        while done < nbytes:
            n = min(nbytes - done, pool.size)
            pool[:n].tofile(fout)
            done += n
        w.write_padding(fout, nbytes)
    for name in norms:
        np.ones(n_embd, dtype=np.float32).tofile(fout)
        w.write_padding(fout, n_embd * 4)
    w.close()
    print(f"wrote {args.out}: {args.layers} layers, {len(mats)} Q4_0 matrices")


if __name__ == "__main__":
    main()
