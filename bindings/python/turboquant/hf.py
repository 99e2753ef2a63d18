"""Hugging Face transformers drop-in: a KV cache compressed by libturboquant, with attention computed
by the library over the compressed cache (the history is never dequantized to tensors).

    from turboquant.hf import TurboQuantCache
    cache = TurboQuantCache(bits=4)
    out = model.generate(**inputs, past_key_values=cache, max_new_tokens=32)

How it is wired: ``TurboQuantCache.update`` hands the new K/V of a layer to the library and returns
them tagged with the layer; the attention function registered here (``"turboquant"``, and wrapped
around ``"sdpa"`` so that models on the default SDPA attention need no change) sees the tag and
calls ``tq_cache_append`` + ``tq_cache_attend`` (causal, also for the prompt), one sequence per batch
row. Attention of models whose cache is not a TurboQuantCache is left exactly as it was.

Supported: decoder-only models with full causal attention (llama architecture and alike), host
(CPU) tensors, batches without padding, greedy/sampling generation. Padding masks, sliding windows,
beam search and CUDA tensors are refused with an error (the owned cache is a CPU cache).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .context import Cache as OwnedCache
from .context import Context
from ._lib import Library

ATTENTION_NAME = "turboquant"
_TAG = "_turboquant_layer"


class TurboQuantLayer(CacheLayerMixin):
    """One model layer of a TurboQuantCache. Holds no K/V tensors: the library's cache does."""

    is_sliding = False
    is_croppable = True

    def __init__(self, parent: "TurboQuantCache", layer_idx: int):
        super().__init__()
        self.parent = parent
        self.layer_idx = layer_idx
        self.length = 0
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.pending is not None:
            raise RuntimeError(
                f"TurboQuantCache layer {self.layer_idx}: the attention of the previous step did not "
                f"go through libturboquant. Use attn_implementation='sdpa' (the default) or "
                f"'{ATTENTION_NAME}' (model.set_attn_implementation('{ATTENTION_NAME}')).")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.device.type != "cpu":
            raise NotImplementedError(
                f"TurboQuantCache holds host tensors only (the owned cache is a CPU cache); got K/V "
                f"on {key_states.device}")
        self.pending = (key_states, value_states)
        self.length += key_states.shape[-2]
        setattr(key_states, _TAG, self)
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.parent.max_tokens or -1

    def reset(self) -> None:
        self.length = 0
        self.pending = None

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        keep = max(self.length + tokens_to_remove, 0)
        if self.parent.cache is not None and keep < self.length:
            self.parent.cache.seq_rm(-1, keep, -1)
        self.length = keep

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("TurboQuantCache does not support beam search")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length:
            raise NotImplementedError("TurboQuantCache cannot repeat a filled cache along the batch")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("TurboQuantCache does not support selecting batch rows")


class TurboQuantCache(Cache):
    """A transformers Cache whose K/V live compressed in a libturboquant owned cache.

    ``bits`` sets both K and V (or ``bits_k``/``bits_v``); ``residual_window`` most recent and
    ``n_sink`` first tokens stay full precision (library defaults when None); ``max_tokens`` per
    sequence defaults to the model's max_position_embeddings. ``centering`` (default on) subtracts
    per-head K and V means estimated from the prompt before quantizing: exact for attention, and it
    takes the large constant key components of llama-family models out of the error budget. The
    library context and cache are created at the first attention call, when the shapes are known.
    """

    def __init__(self, bits: int = 4, *, bits_k: int | None = None, bits_v: int | None = None,
                 residual_window: int | None = None, n_sink: int | None = None,
                 max_tokens: int | None = None, key_mode: str = "mse", rotation: str = "auto",
                 seed: int = 0, centering: bool = True, n_threads: int = 0,
                 lib: Library | None = None):
        super().__init__(layers=[])
        self.bits_k = bits if bits_k is None else bits_k
        self.bits_v = bits if bits_v is None else bits_v
        self.residual_window, self.n_sink, self.max_tokens = residual_window, n_sink, max_tokens
        self.key_mode, self.rotation, self.seed, self.centering = key_mode, rotation, seed, centering
        self.n_threads = n_threads
        self._lib = lib
        self.context: Context | None = None
        self.cache: OwnedCache | None = None
        self._batch = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args,
               **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(TurboQuantLayer(self, len(self.layers)))
        return self.layers[layer_idx].update(key_states, value_states)

    def reset(self) -> None:
        super().reset()
        if self.cache is not None:
            self.cache.clear()

    def memory_usage(self):
        """The library's tq_cache_memory for this cache (bytes_used, bytes_fp16, n_tokens,
        n_compressed), or None before the first forward."""
        return None if self.cache is None else self.cache.memory_usage()

    def close(self) -> None:
        """Free the library's cache and context now (otherwise when garbage-collected)."""
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        if self.context is not None:
            self.context.close()
            self.context = None

    # -- attention --------------------------------------------------------------------------------

    def _ensure(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor) -> None:
        batch, n_heads, _, head_dim = query.shape
        n_kv_heads = key.shape[1]
        if self.cache is not None:
            if batch != self._batch:
                raise ValueError(f"TurboQuantCache was filled with batch size {self._batch}, got {batch}")
            return
        config = module.config
        n_layers = getattr(config, "num_hidden_layers", None) or len(self.layers)
        max_tokens = self.max_tokens or getattr(config, "max_position_embeddings", 0) or 4096
        self.context = Context(n_layers, n_heads, n_kv_heads, head_dim, bits_k=self.bits_k,
                               bits_v=self.bits_v, rotation=self.rotation, key_mode=self.key_mode,
                               dtype="float32", seed=self.seed, centering=self.centering,
                               n_threads=self.n_threads, lib=self._lib)
        self.cache = OwnedCache(self.context, max_seqs=batch, max_tokens=max_tokens,
                                residual_window=self.residual_window, n_sink=self.n_sink)
        self.max_tokens, self._batch = max_tokens, batch
        if self.residual_window is None:
            self.residual_window = self.cache.residual_window
        if self.n_sink is None:
            self.n_sink = self.cache.n_sink

    def _attend(self, layer: TurboQuantLayer, module: torch.nn.Module, query: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None) -> torch.Tensor:
        k, v = layer.pending
        layer.pending = None
        _check_causal_mask(attention_mask, query.shape[2], layer.length)
        self._ensure(module, query, k)
        if query.device.type != "cpu":
            raise NotImplementedError(f"TurboQuantCache takes host tensors; query is on {query.device}")
        scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        # [B, heads, tokens, head_dim] -> [B, tokens, heads, head_dim], f32, packed
        k = k.detach().transpose(1, 2).to(torch.float32).contiguous()
        v = v.detach().transpose(1, 2).to(torch.float32).contiguous()
        q = query.detach().transpose(1, 2).to(torch.float32).contiguous()
        out = torch.empty_like(q)
        for b in range(q.shape[0]):
            self.cache.append(layer.layer_idx, b, k[b], v[b])
            self.cache.attend(layer.layer_idx, b, q[b], scale=scale, out=out[b])
        return out.to(query.dtype)


def _check_causal_mask(mask: Any, n_q: int, length: int) -> None:
    """Refuse masks that hide more than causality does (padding, sliding windows): the library's
    owned cache applies exactly the causal mask."""
    if mask is None or not isinstance(mask, torch.Tensor):
        return
    m = mask[..., -n_q:, :length]
    visible = m if m.dtype == torch.bool else (m == 0)
    causal = torch.ones(n_q, length, dtype=torch.bool, device=m.device).tril(length - n_q)
    if visible.shape[-1] != length or not torch.equal(visible, causal.expand_as(visible)):
        raise NotImplementedError(
            "TurboQuantCache applies a causal mask only: padded batches and sliding-window "
            "attention are not supported (generate one unpadded prompt per batch row)")


def turboquant_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                         value: torch.Tensor, attention_mask: torch.Tensor | None,
                         dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """Attention over a TurboQuantCache (an AttentionInterface function). Any other cache (or
    none) falls through to PyTorch's SDPA."""
    layer = getattr(key, _TAG, None)
    if layer is None:
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                     **kwargs)
    if dropout:
        raise NotImplementedError("TurboQuantCache attention has no dropout (use model.eval())")
    out = layer.parent._attend(layer, module, query, attention_mask, scaling)
    return out, None


_sdpa = sdpa_attention_forward


def _register() -> None:
    global _sdpa
    AttentionInterface.register(ATTENTION_NAME, turboquant_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    current = AttentionInterface._global_mapping.get("sdpa", sdpa_attention_forward)
    if current is not turboquant_attention:
        _sdpa = current
        AttentionInterface.register("sdpa", turboquant_attention)


_register()
