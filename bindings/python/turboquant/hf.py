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

Supported: decoder-only models whose layers are plain causal attention — the llama, Qwen2, Mistral,
Gemma 2 and Gemma 3 architectures (``SUPPORTED_MODEL_TYPES``; Mistral without a sliding window, Gemma
without logit soft-capping, and only layers without a sliding window); other architectures are refused
at the first forward with an error naming them. Batches without padding, greedy/sampling generation.
Padding masks, sliding windows and beam search are refused with an error.

Host (CPU) tensors use the library's owned cache (``tq_cache``). CUDA tensors use a Python-level owned
cache over the library's slot mode on a CUDA context (the library's owned cache is CPU-only): per layer
and batch row, K and V stores are device byte buffers allocated with torch that grow by doubling;
``tq_append_kv``/``tq_attend`` run on ``torch.cuda.current_stream()`` with device slot indices. The first
prompt of a sequence attends its own fresh K/V exactly (SDPA) and is then appended compressed; every
later step appends its tokens and attends the compressed cache. On CUDA there is no residual window or
sink (every cached token is compressed); centering works on both (the means come from a layer's first
append: the prompt).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ._arrays import DTYPE_BF16, DTYPE_F16
from .context import Cache as OwnedCache
from .context import CacheMemoryUsage, Context
from ._lib import Library

ATTENTION_NAME = "turboquant"
_TAG = "_turboquant_layer"

#: config.model_type values whose decoder layers can be plain causal attention.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "gemma2", "gemma3", "gemma3_text")


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
        if key_states.device.type not in ("cpu", "cuda"):
            raise NotImplementedError(
                f"TurboQuantCache takes CPU or CUDA tensors; got K/V on {key_states.device}")
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
            if isinstance(self.parent.cache, CudaSlotCache):
                self.parent.cache.truncate(self.layer_idx, keep)
            else:
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
    sequence defaults to the model's max_position_embeddings. ``centering`` (default: on) subtracts
    per-head K means (and V means where the library centers values) estimated from the prompt before quantizing: exact for attention, and it takes the large
    constant key components of llama-family models out of the error budget. The library context
    and cache are created at the first attention call, when the shapes and the device are known.
    On CUDA the cache is a :class:`CudaSlotCache` (see the module docstring).
    """

    def __init__(self, bits: int = 4, *, bits_k: int | None = None, bits_v: int | None = None,
                 residual_window: int | None = None, n_sink: int | None = None,
                 max_tokens: int | None = None, key_mode: str = "mse", rotation: str = "auto",
                 seed: int = 0, centering: bool | None = None, n_threads: int = 0,
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
        """The cache's memory (bytes_used, bytes_fp16, n_tokens, n_compressed; tq_cache_memory on
        the CPU), or None before the first forward."""
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
        _check_architecture(config)
        n_layers = getattr(config, "num_hidden_layers", None) or len(self.layers)
        if query.is_cuda:
            if self.residual_window or self.n_sink:
                raise NotImplementedError("TurboQuantCache on CUDA compresses every cached token: "
                                          "residual_window and n_sink are CPU-only")
            dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(query.dtype, "float32")
            device = query.device.index if query.device.index is not None else torch.cuda.current_device()
            self.context = Context(n_layers, n_heads, n_kv_heads, head_dim, bits_k=self.bits_k,
                                   bits_v=self.bits_v, rotation=self.rotation,
                                   key_mode=self.key_mode, dtype=dtype, backend="cuda",
                                   device=device, max_batch=CudaSlotCache.CHUNK, seed=self.seed,
                                   centering=True if self.centering is None else self.centering,
                                   lib=self._lib)
            self.cache = CudaSlotCache(self.context, batch, self.max_tokens)
            self._batch = batch
            return
        max_tokens = self.max_tokens or getattr(config, "max_position_embeddings", 0) or 4096
        self.context = Context(n_layers, n_heads, n_kv_heads, head_dim, bits_k=self.bits_k,
                               bits_v=self.bits_v, rotation=self.rotation, key_mode=self.key_mode,
                               dtype="float32", seed=self.seed,
                               centering=True if self.centering is None else self.centering,
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
        _check_layer(module)
        self._ensure(module, query, k)
        scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        if query.is_cuda:
            return self.cache.step(layer.layer_idx, module, query, k, v, attention_mask, scale)
        # [B, heads, tokens, head_dim] -> [B, tokens, heads, head_dim], f32, packed
        k = k.detach().transpose(1, 2).to(torch.float32).contiguous()
        v = v.detach().transpose(1, 2).to(torch.float32).contiguous()
        q = query.detach().transpose(1, 2).to(torch.float32).contiguous()
        out = torch.empty_like(q)
        for b in range(q.shape[0]):
            self.cache.append(layer.layer_idx, b, k[b], v[b])
            self.cache.attend(layer.layer_idx, b, q[b], scale=scale, out=out[b])
        return out.to(query.dtype)


class CudaSlotCache:
    """A Python-level owned cache over the library's slot mode on a CUDA context (the library's own
    owned cache, tq_cache, is CPU-only).

    Per layer: K and V stores of shape (batch, capacity, row bytes), uint8 device tensors allocated
    with torch: the first prompt's size plus MIN_CELLS, then doubling when full (rows do not depend
    on their cell, so growing is a copy); capacity is a multiple of 16 cells, so every batch row's
    store is 16-byte aligned. Cells 0..length of each batch row hold its tokens in order. ``step``
    appends a step's K/V at device slot indices — all batch rows in one call, the layer's stores
    taken as one store of batch × capacity cells — and attends: a sequence's first prompt attends its
    own fresh K/V exactly with SDPA (nothing compressed exists yet) and is then appended; later steps
    append first, then attend the compressed cache — a decode step of the whole batch in one
    tq_attend_batch call, a multi-token step per batch row with a causal mask. Every library call is
    enqueued on torch.cuda.current_stream(); nothing synchronises.
    """

    MIN_CELLS = 256
    #: tokens per tq_append_kv and queries per tq_attend (the CUDA context's max_batch)
    CHUNK = 512

    def __init__(self, context: Context, batch: int, max_tokens: int | None = None):
        self.context, self.batch, self.max_tokens = context, batch, max_tokens
        n = context.n_layers
        self.stores: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n
        self.lengths = [0] * n
        # per layer: device int64 tensors of the batch rows' K and V store addresses (tq_attend_batch)
        self.pointers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n

    def _reserve(self, layer: int, need: int, device: torch.device):
        if self.max_tokens and need > self.max_tokens:
            raise ValueError(f"TurboQuantCache: {need} tokens exceed max_tokens={self.max_tokens}")
        old = self.stores[layer]
        capacity = 0 if old is None else old[0].shape[1]
        if need <= capacity:
            return old
        # the first prompt gets its size plus MIN_CELLS cells of room, then capacity doubles
        cells = need + self.MIN_CELLS if capacity == 0 else max(2 * capacity, need)
        cells = -(-cells // 16) * 16  # batch rows start 16-byte aligned (tq_attend_batch)
        ctx, length = self.context, self.lengths[layer]
        k = torch.empty((self.batch, cells, ctx.k_row_bytes), dtype=torch.uint8, device=device)
        v = torch.empty((self.batch, cells, ctx.v_row_bytes), dtype=torch.uint8, device=device)
        if old is not None and length:
            k[:, :length].copy_(old[0][:, :length])
            v[:, :length].copy_(old[1][:, :length])
        self.stores[layer] = (k, v)
        self.pointers[layer] = tuple(
            torch.tensor([s[b].data_ptr() for b in range(self.batch)], dtype=torch.int64, device=device)
            for s in (k, v))
        return k, v

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [batch, tokens, n_kv_heads, head_dim] in the context's dtype, packed."""
        n, start = k.shape[1], self.lengths[layer]
        ks, vs = self._reserve(layer, start + n, k.device)
        cells = ks.shape[1]
        # batch row b's token i goes to cell b * cells + start + i of the layer's stores taken as one
        rows = torch.arange(self.batch, dtype=torch.int64, device=k.device)[:, None] * cells
        slots = (rows + torch.arange(start, start + n, dtype=torch.int64, device=k.device)).reshape(-1)
        kf, vf = k.reshape(self.batch * n, *k.shape[2:]), v.reshape(self.batch * n, *v.shape[2:])
        ksf, vsf = ks.view(self.batch * cells, -1), vs.view(self.batch * cells, -1)
        for i in range(0, self.batch * n, self.CHUNK):
            j = min(i + self.CHUNK, self.batch * n)
            self.context.append_kv(layer, ksf, vsf, slots[i:j], kf[i:j], vf[i:j])
        self.lengths[layer] = start + n

    def step(self, layer: int, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
             value: torch.Tensor, attention_mask: Any, scale: float) -> torch.Tensor:
        """One attention call of ``layer``: query [B, heads, n_q, d] and the step's key/value
        [B, kv heads, n_q, d]. Returns [B, n_q, heads, d] in the query's dtype."""
        dtype = {DTYPE_F16: torch.float16, DTYPE_BF16: torch.bfloat16}.get(self.context.dtype,
                                                                            torch.float32)
        k = key.detach().transpose(1, 2).to(dtype).contiguous()
        v = value.detach().transpose(1, 2).to(dtype).contiguous()
        if self.lengths[layer] == 0:
            out, _ = _sdpa(module, query, key, value, attention_mask, scaling=scale)
            self.append(layer, k, v)
            return out
        self.append(layer, k, v)
        q = query.detach().transpose(1, 2).to(dtype).contiguous()
        n_q, n_cells = q.shape[1], self.lengths[layer]
        mask = None
        if n_q > 1:  # the step's own tokens see each other causally
            mask = torch.zeros((n_q, n_cells), dtype=torch.float32, device=q.device)
            mask[:, n_cells - n_q:] = torch.full((n_q, n_q), float("-inf"), device=q.device).triu(1)
        ks, vs = self.stores[layer]
        if mask is None and self.batch * n_q <= self.CHUNK:
            kp, vp = self.pointers[layer]
            lens = torch.full((self.batch,), n_cells, dtype=torch.int64, device=q.device)
            out = self.context.attend_batch(layer, q, kp, vp, lens, max_cells=n_cells, scale=scale)
            return out.to(query.dtype)
        out = torch.empty_like(q)
        for i in range(0, n_q, self.CHUNK):
            j = min(i + self.CHUNK, n_q)
            rows = None if mask is None else mask[i:j]
            for b in range(self.batch):
                self.context.attend(layer, q[b, i:j], ks[b], vs[b], n_cells=n_cells, mask=rows,
                                    scale=scale, out=out[b, i:j])
        return out.to(query.dtype)

    def truncate(self, layer: int, keep: int) -> None:
        self.lengths[layer] = min(self.lengths[layer], keep)

    def clear(self) -> None:
        self.lengths = [0] * len(self.lengths)

    def memory_usage(self):
        """bytes_used: the stores as allocated (their capacity); bytes_fp16: an FP16 K and V of the
        cached tokens; n_tokens: the longest layer's tokens, all compressed."""
        ctx = self.context
        used = sum(k.numel() + v.numel() for k, v in filter(None, self.stores))
        tokens = max(self.lengths, default=0)
        fp16 = sum(self.lengths) * self.batch * 2 * ctx.n_kv_heads * ctx.head_dim * 2
        return CacheMemoryUsage(used, fp16, tokens, tokens)

    def close(self) -> None:
        self.stores = [None] * len(self.stores)
        self.pointers = [None] * len(self.pointers)


def _check_architecture(config: Any) -> None:
    model_type = getattr(config, "model_type", None)
    text = getattr(config, "text_config", None)
    if model_type not in SUPPORTED_MODEL_TYPES and text is not None:
        model_type, config = getattr(text, "model_type", model_type), text
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise NotImplementedError(
            f"TurboQuantCache does not support the {model_type!r} architecture: it handles models "
            f"whose layers are plain causal attention ({', '.join(SUPPORTED_MODEL_TYPES)})")
    if getattr(config, "attn_logit_softcapping", None):
        raise NotImplementedError(
            f"TurboQuantCache: {model_type} with attn_logit_softcapping="
            f"{config.attn_logit_softcapping} is not plain attention (set it to None)")
    if model_type == "mistral" and getattr(config, "sliding_window", None):
        raise NotImplementedError(
            f"TurboQuantCache: mistral with sliding_window={config.sliding_window} is not plain "
            f"causal attention (set sliding_window=None)")


def _check_layer(module: torch.nn.Module) -> None:
    window = getattr(module, "sliding_window", None)
    if window:
        raise NotImplementedError(
            f"TurboQuantCache: layer {getattr(module, 'layer_idx', '?')} is sliding-window "
            f"attention (window {window}); only plain causal attention layers are supported")


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
