"""The KV codec: a Context (rotations and codebooks of every layer), slot-mode append/attend into
stores the caller owns, and the owned Cache (sequences, residual window, sinks, save/load).

Host memory is numpy arrays (or CPU torch tensors); device memory is CUDA torch tensors, used with
the current CUDA stream of their device.
"""

from __future__ import annotations

import ctypes
import math
import os
import weakref
from ctypes import c_int64, c_size_t, c_uint8
from typing import Any, NamedTuple

import numpy as np

from ._arrays import (DTYPE_BF16, DTYPE_F16, DTYPE_F32, TensorArg, byte_buffer, host_array, ptr,
                      tensor_arg)
from ._lib import CacheHandle, CacheMemory, ContextHandle, Library, default_library
from .quantizer import ROTATIONS, enum_value

BACKENDS = {"cpu": 0, "cuda": 1}
KEY_MODES = {"mse": 0, "prod": 1}
DTYPES = {"float32": DTYPE_F32, "f32": DTYPE_F32, "float16": DTYPE_F16, "f16": DTYPE_F16,
          "bfloat16": DTYPE_BF16, "bf16": DTYPE_BF16}


class Context:
    """A KV codec context (tq_context_new): every layer's K and V rotation and codebook.

    ``dtype`` is the element type of q, k, v and out ("float32", "float16", "bfloat16");
    ``backend`` "cpu" (numpy arrays / CPU tensors) or "cuda" (CUDA torch tensors on ``device``).
    ``centering`` (key centering) is on by default; ``center_values`` centers V too (off by default).
    ``layer_bits_k`` / ``layer_bits_v``: per-layer bits (a sequence of ``n_layers`` values each, or None
    for ``bits_k`` / ``bits_v`` everywhere; CPU slot mode only when a layer differs from them), e.g.
    more bits for the first and last layers. Row sizes then differ by layer: :meth:`row_bytes`.
    ``key_outliers``: fractional key widths (TurboQuant §4.3) — per kv head that many channels of
    largest energy (chosen from each layer's first append) at ``bits_k + 1``, the rest at ``bits_k``,
    as two independent instances (0 = off; 16..head_dim − 16; MSE keys, CPU slot mode).
    """

    def __init__(self, n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int, *,
                 bits_k: int = 4, bits_v: int = 4, rotation: str | int = "auto",
                 key_mode: str | int = "mse", dtype: str | int = "float32",
                 backend: str | int = "cpu", device: int = 0, n_threads: int = 0,
                 max_batch: int = 512, seed: int = 0, centering: bool = True,
                 center_values: bool = False, layer_bits_k: Any = None, layer_bits_v: Any = None,
                 key_outliers: int = 0, lib: Library | None = None):
        self._lib = default_library(lib)
        p = self._lib.tq_context_default_params()
        p.n_layers, p.n_heads, p.n_kv_heads, p.head_dim = n_layers, n_heads, n_kv_heads, head_dim
        p.bits_k, p.bits_v = bits_k, bits_v
        p.rotation = enum_value(ROTATIONS, rotation, "rotation")
        p.key_mode = enum_value(KEY_MODES, key_mode, "key_mode")
        p.dtype = enum_value(DTYPES, dtype, "dtype")
        p.backend = enum_value(BACKENDS, backend, "backend")
        p.device, p.n_threads, p.max_batch, p.seed = device, n_threads, max_batch, seed
        p.centering = centering
        p.center_values = center_values
        p.key_outliers = key_outliers
        # Per-layer bits: the arrays only need to live through tq_context_new, which copies them.
        arrays = []
        if layer_bits_k is not None or layer_bits_v is not None:
            for name, values, default in (("layer_bits_k", layer_bits_k, bits_k),
                                          ("layer_bits_v", layer_bits_v, bits_v)):
                values = [default] * n_layers if values is None else [int(b) for b in values]
                if len(values) != n_layers:
                    raise ValueError(f"{name} has {len(values)} values but the context has "
                                     f"{n_layers} layers")
                arrays.append((ctypes.c_uint32 * n_layers)(*values))
            p.layer_bits_k, p.layer_bits_v = (ctypes.cast(a, ctypes.POINTER(ctypes.c_uint32))
                                              for a in arrays)
            p.n_layer_bits = n_layers
        handle = ContextHandle()
        self._lib.tq_context_new(ctypes.byref(p), ctypes.byref(handle))
        del arrays
        self._handle = handle
        self._caches = weakref.WeakSet()  # live Caches made from this context (closed with it)
        self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim = (n_layers, n_heads,
                                                                       n_kv_heads, head_dim)
        self.dtype, self.backend, self.device = p.dtype, p.backend, device
        self._row_bytes = []
        for layer in range(n_layers):
            k_bytes, v_bytes = c_size_t(), c_size_t()
            self._lib.tq_context_layer_row_bytes(handle, layer, ctypes.byref(k_bytes),
                                                 ctypes.byref(v_bytes))
            self._row_bytes.append((k_bytes.value, v_bytes.value))
        #: Bytes per token per layer of a K row and of a V row (all kv heads); layer 0's when
        #: per-layer bits differ (see :meth:`row_bytes`).
        self.k_row_bytes, self.v_row_bytes = self._row_bytes[0]

    def row_bytes(self, layer: int) -> tuple[int, int]:
        """Bytes of a K row and of a V row of ``layer`` (tq_context_layer_row_bytes)."""
        return self._row_bytes[self._layer(layer)]

    @property
    def handle(self):
        if not self._handle:
            raise ValueError("the context is closed")
        return self._handle

    def close(self) -> None:
        """Free the context (idempotent). Caches made from it are closed first: using one afterwards
        raises ValueError, as for any closed cache. Calls release the GIL: do not close a context
        (or its caches) while another thread is inside a call on it."""
        if getattr(self, "_handle", None):
            for cache in list(getattr(self, "_caches", ())):
                cache.close()
            self._lib.tq_context_free(self._handle)
            self._handle = ContextHandle()

    def __del__(self):
        # A cache keeps its context alive, so by the time this runs no cache uses it.
        self.close()

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- memory placement -------------------------------------------------------------------------

    def _placed(self, arg: TensorArg, name: str) -> TensorArg:
        if self.backend == BACKENDS["cuda"]:
            if arg.cuda_device is None:
                raise ValueError(f"{name} is in host memory but the context's backend is CUDA: "
                                 f"pass a CUDA torch tensor")
            if arg.cuda_device != self.device:
                raise ValueError(f"{name} is on cuda:{arg.cuda_device} but the context is on "
                                 f"cuda:{self.device}")
        elif arg.cuda_device is not None:
            raise ValueError(f"{name} is on cuda:{arg.cuda_device} but the context's backend is "
                             f"CPU: pass host memory (numpy or a CPU tensor)")
        return arg

    def _tensor(self, x: Any, name: str, n_heads: int, **kw) -> TensorArg:
        return self._placed(tensor_arg(x, name, self.dtype, (None, n_heads, self.head_dim), **kw),
                            name)

    def _layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} is out of range: the context has {self.n_layers} layers")
        return layer

    def _empty_like_q(self, q: Any, n_q: int):
        if isinstance(q, np.ndarray):
            return np.zeros((n_q, self.n_heads, self.head_dim), q.dtype)
        return q.new_zeros((n_q, self.n_heads, self.head_dim))

    def new_stores(self, n_cells: int, device: str | None = None, layer: int = 0):
        """Zeroed K and V stores for ``layer`` in slot mode: (k_store, v_store), n_cells rows each.

        numpy uint8 arrays on the CPU backend; CUDA torch uint8 tensors on the CUDA backend.
        """
        kb, vb = self.row_bytes(layer)
        shape_k, shape_v = (n_cells, kb), (n_cells, vb)
        if self.backend == BACKENDS["cuda"]:
            import torch
            dev = device or f"cuda:{self.device}"
            return (torch.zeros(shape_k, dtype=torch.uint8, device=dev),
                    torch.zeros(shape_v, dtype=torch.uint8, device=dev))
        return np.zeros(shape_k, np.uint8), np.zeros(shape_v, np.uint8)

    # -- slot mode --------------------------------------------------------------------------------

    def append_kv(self, layer: int, k_store: Any, v_store: Any, slots: Any, k: Any, v: Any,
                  part: tuple[int, int] | None = None) -> None:
        """Compress tokens k, v ([n][n_kv_heads][head_dim], innermost dim contiguous) into rows of
        ``layer`` at cells ``slots`` (int64, n distinct cells < n_cells) of the stores.

        ``part=(ith, nth)`` runs tq_append_kv_part (CPU only): this call's share of the work.
        """
        layer = self._layer(layer)
        if self.backend == BACKENDS["cuda"]:
            slots = self._device_slots(slots)
            n, slots_ptr = slots.numel(), ctypes.cast(slots.data_ptr(), ctypes.POINTER(c_int64))
        else:
            slots = host_array(np.asarray(slots) if isinstance(slots, (list, tuple)) else slots,
                               "slots", np.int64, (None,))
            n, slots_ptr = slots.shape[0], ptr(slots, c_int64)
        ka = self._tensor(k, "k", self.n_kv_heads)
        va = self._tensor(v, "v", self.n_kv_heads)
        if ka.shape[0] != n or va.shape[0] != n:
            raise ValueError(f"k has {ka.shape[0]} and v {va.shape[0]} tokens but slots has {n}")
        ks, vs, n_cells = self._stores(layer, k_store, v_store)
        ks_ = ka.strides()
        vs_ = va.strides()
        if part is None:
            self._lib.tq_append_kv(self.handle, layer, ks.ptr, vs.ptr, n_cells,
                                   slots_ptr, n, ka.ptr, ctypes.byref(ks_), va.ptr,
                                   ctypes.byref(vs_), ka.stream)
        else:
            ith, nth = part
            self._lib.tq_append_kv_part(self.handle, layer, ks.ptr, vs.ptr, n_cells,
                                        slots_ptr, n, ka.ptr, ctypes.byref(ks_), va.ptr,
                                        ctypes.byref(vs_), ith, nth)

    def _device_slots(self, slots: Any):
        """Slots for the CUDA backend: device memory (the kernel reads them), int64, 1-D, packed.
        A CUDA tensor is used as it is; host slots (list, numpy, CPU tensor) are copied over."""
        import torch
        if not (isinstance(slots, torch.Tensor) and slots.is_cuda):
            slots = torch.as_tensor(np.asarray(slots, dtype=np.int64), device=f"cuda:{self.device}")
        if slots.dtype != torch.int64 or slots.dim() != 1 or not slots.is_contiguous():
            raise TypeError(f"slots must be a 1-D contiguous int64 tensor, got {slots.dtype} of "
                            f"shape {tuple(slots.shape)}")
        index = slots.device.index if slots.device.index is not None else torch.cuda.current_device()
        if index != self.device:
            raise ValueError(f"slots is on cuda:{index} but the context is on cuda:{self.device}")
        return slots

    def _stores(self, layer: int, k_store: Any, v_store: Any, n_cells: int | None = None):
        kb, vb = self._row_bytes[layer]

        def cells(x, name, row_bytes):
            nbytes = x.nbytes if isinstance(x, np.ndarray) else x.numel()
            return nbytes // row_bytes
        if n_cells is None:
            n_cells = min(cells(k_store, "k_store", kb), cells(v_store, "v_store", vb))
        ks = self._placed(byte_buffer(k_store, "k_store", n_cells * kb), "k_store")
        vs = self._placed(byte_buffer(v_store, "v_store", n_cells * vb), "v_store")
        return ks, vs, n_cells

    def attend(self, layer: int, q: Any, k_store: Any, v_store: Any, *, n_cells: int | None = None,
               mask: Any = None, scale: float | None = None, out: Any = None,
               part: tuple[int, int] | None = None):
        """Attention of queries ``q`` ([n_q][n_heads][head_dim]) over cells 0..n_cells of the
        stores (default: every cell the stores hold). ``mask``: additive, (n_q, ≥n_cells) float32
        or float16 (-inf hides a cell), None = all visible. ``scale`` defaults to 1/sqrt(head_dim).
        Returns ``out`` ([n_q][n_heads][head_dim], allocated if not given).
        """
        layer = self._layer(layer)
        qa = self._tensor(q, "q", self.n_heads)
        n_q = qa.shape[0]
        ks, vs, n_cells = self._stores(layer, k_store, v_store, n_cells)
        if out is None:
            out = self._empty_like_q(q, n_q)
        oa = self._tensor(out, "out", self.n_heads, writable=True)
        if oa.shape[0] != n_q:
            raise ValueError(f"out has {oa.shape[0]} rows but q has {n_q}")
        mask_ptr, mask_dtype, mask_stride = None, DTYPE_F32, 0
        if mask is not None:
            ma = _mask_arg(mask, n_q, n_cells)
            self._placed(ma[0], "mask")
            mask_ptr, mask_dtype, mask_stride = ma[0].ptr, ma[1], ma[2]
        scale = 1.0 / math.sqrt(self.head_dim) if scale is None else float(scale)
        qs, os_ = qa.strides(), oa.strides()
        if part is None:
            self._lib.tq_attend(self.handle, layer, qa.ptr, n_q, ctypes.byref(qs), ks.ptr, vs.ptr,
                                n_cells, mask_ptr, mask_dtype, mask_stride, scale, oa.ptr,
                                ctypes.byref(os_), qa.stream)
        else:
            ith, nth = part
            self._lib.tq_attend_part(self.handle, layer, qa.ptr, n_q, ctypes.byref(qs), ks.ptr,
                                     vs.ptr, n_cells, mask_ptr, mask_dtype, mask_stride, scale,
                                     oa.ptr, ctypes.byref(os_), ith, nth)
        return out

    def dequantize_rows(self, layer: int, store: Any, *, values: bool = False, n_cells: int | None = None,
                        out: Any = None, part: tuple[int, int] | None = None):
        """The rows of cells 0..n_cells of ``layer``'s K store (``values=False``) or V store as vectors
        (tq_dequantize_rows): [n_cells][n_kv_heads][head_dim] of the context dtype, in the original
        basis with the layer's centering mean added — what ``attend`` scores against (keys) or weighs
        (values). ``n_cells`` defaults to every row the store holds. Returns ``out`` (allocated as a
        numpy array, or a torch tensor on the context's CUDA device, if not given).
        """
        layer = self._layer(layer)
        kb, vb = self._row_bytes[layer]
        rb = vb if values else kb
        if n_cells is None:
            n_cells = (store.nbytes if isinstance(store, np.ndarray) else store.numel()) // rb
        sa = self._placed(byte_buffer(store, "store", n_cells * rb), "store")
        if out is None:
            shape = (n_cells, self.n_kv_heads, self.head_dim)
            if self.backend == BACKENDS["cuda"]:
                import torch
                tdt = {DTYPE_F32: torch.float32, DTYPE_F16: torch.float16, DTYPE_BF16: torch.bfloat16}[self.dtype]
                out = torch.zeros(shape, dtype=tdt, device=f"cuda:{self.device}")
            else:
                if self.dtype == DTYPE_BF16:
                    raise TypeError("a bf16 context has no numpy output type: pass out (a bf16 torch tensor)")
                out = np.zeros(shape, np.float32 if self.dtype == DTYPE_F32 else np.float16)
        oa = self._tensor(out, "out", self.n_kv_heads, writable=True)
        if oa.shape[0] != n_cells:
            raise ValueError(f"out has {oa.shape[0]} rows but n_cells is {n_cells}")
        which = 1 if values else 0
        os_ = oa.strides()
        if part is None:
            self._lib.tq_dequantize_rows(self.handle, layer, which, sa.ptr, n_cells, oa.ptr, self.dtype,
                                         ctypes.byref(os_), oa.stream)
        else:
            ith, nth = part
            self._lib.tq_dequantize_rows_part(self.handle, layer, which, sa.ptr, n_cells, oa.ptr,
                                              self.dtype, ctypes.byref(os_), ith, nth)
        return out

    def attend_batch(self, layer: int, q: Any, k_stores: Any, v_stores: Any, n_cells: Any, *,
                     max_cells: int, scale: float | None = None, out: Any = None):
        """Decode attention of several sequences in one call (tq_attend_batch; CUDA contexts only).

        ``q``: CUDA tensor [n_seqs][n_q][n_heads][head_dim] of the context dtype, packed.
        ``k_stores`` / ``v_stores``: CUDA int64 tensors [n_seqs] of store addresses (each store
        16-byte aligned, e.g. ``torch.tensor([s.data_ptr() for s in stores], device=...)``).
        ``n_cells``: CUDA int64 tensor [n_seqs], sequence s attends cells 0..n_cells[s] (≤ max_cells).
        No mask: every cell of a sequence is visible. Returns ``out`` (allocated like q if not given).
        Graph-capture safe (nothing is read on the host).
        """
        import torch
        layer = self._layer(layer)
        if self.backend != BACKENDS["cuda"]:
            raise ValueError("attend_batch is for CUDA contexts; on the CPU call attend per sequence")
        if not (isinstance(q, torch.Tensor) and q.dim() == 4 and q.is_contiguous()):
            raise ValueError("q must be a packed 4-D CUDA tensor [n_seqs][n_q][n_heads][head_dim]")
        n_seqs, n_q = int(q.shape[0]), int(q.shape[1])
        qa = self._tensor(q.view(n_seqs * n_q, q.shape[2], q.shape[3]), "q", self.n_heads)
        if out is None:
            out = torch.empty_like(q)
        if not (isinstance(out, torch.Tensor) and out.shape == q.shape and out.is_contiguous()):
            raise ValueError(f"out must be a packed tensor of q's shape {tuple(q.shape)}")
        oa = self._tensor(out.view(n_seqs * n_q, q.shape[2], q.shape[3]), "out", self.n_heads,
                          writable=True)
        for name, t in (("k_stores", k_stores), ("v_stores", v_stores), ("n_cells", n_cells)):
            if not (isinstance(t, torch.Tensor) and t.is_cuda and t.dtype == torch.int64
                    and t.dim() == 1 and t.numel() == n_seqs and t.is_contiguous()):
                raise ValueError(f"{name} must be a packed 1-D int64 CUDA tensor of {n_seqs} elements "
                                 f"(one per sequence of q)")
            index = t.device.index if t.device.index is not None else torch.cuda.current_device()
            if index != self.device:
                raise ValueError(f"{name} is on cuda:{index} but the context is on cuda:{self.device}")
        scale = 1.0 / math.sqrt(self.head_dim) if scale is None else float(scale)
        seq_bytes = n_q * qa.byte_strides[0]
        qs, os_ = qa.strides(), oa.strides()
        self._lib.tq_attend_batch(self.handle, layer, n_seqs, qa.ptr, n_q, ctypes.byref(qs), seq_bytes,
                                  k_stores.data_ptr(), v_stores.data_ptr(),
                                  ctypes.cast(n_cells.data_ptr(), ctypes.POINTER(c_int64)), int(max_cells),
                                  None, DTYPE_F32, 0, 0, scale, oa.ptr, ctypes.byref(os_), seq_bytes,
                                  qa.stream)
        return out

    # -- state ------------------------------------------------------------------------------------

    def state_save(self) -> bytes:
        """The context's state (centering means and key-outlier channels) as bytes."""
        size = c_size_t()
        self._lib.tq_context_state_size(self.handle, ctypes.byref(size))
        buf = np.empty(size.value, np.uint8)
        self._lib.tq_context_state_save(self.handle, ptr(buf, c_uint8), size.value)
        return buf.tobytes()

    def state_load(self, data: bytes) -> None:
        """Restore a state saved by state_save() from a context with the same parameters."""
        buf = np.frombuffer(bytes(data), np.uint8).copy()
        self._lib.tq_context_state_load(self.handle, ptr(buf, c_uint8), buf.size)


def _int_range(x: int, name: str, lo: int, hi: int) -> int:
    """``x`` as an int in [lo, hi): ctypes would silently wrap a value outside its C type's range
    (a sequence 2**32 would become sequence 0, 2**31 "every sequence")."""
    x = int(x)
    if not lo <= x < hi:
        raise ValueError(f"{name} is {x}: must be in [{lo}, {hi})")
    return x


def _u32(x: int, name: str) -> int:
    return _int_range(x, name, 0, 2**32)


def _i64(x: int, name: str) -> int:
    return _int_range(x, name, -2**63, 2**63)


def _mask_arg(mask: Any, n_q: int, n_cells: int) -> tuple[TensorArg, int, int]:
    if isinstance(mask, np.ndarray):
        dtype = {np.dtype(np.float32): DTYPE_F32, np.dtype(np.float16): DTYPE_F16}.get(mask.dtype)
    else:
        names = {"torch.float32": DTYPE_F32, "torch.float16": DTYPE_F16,
                 "torch.bfloat16": DTYPE_BF16}
        dtype = names.get(str(getattr(mask, "dtype", "")))
    if dtype is None:
        raise TypeError(f"mask must be float32 or float16 (or a bfloat16 tensor), got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    arg = tensor_arg(mask, "mask", dtype, (n_q, None))
    if arg.shape[1] < n_cells:
        raise ValueError(f"mask has {arg.shape[1]} columns, needs at least n_cells = {n_cells}")
    itemsize = 4 if dtype == DTYPE_F32 else 2
    row, col = arg.byte_strides
    if arg.shape[1] > 1 and col != itemsize:
        raise ValueError(f"mask must be contiguous along its cells (last dimension): its stride there "
                         f"is {col} bytes, expected {itemsize}; pass numpy.ascontiguousarray(mask)")
    if n_q > 1 and (row % itemsize or row // itemsize < n_cells):
        raise ValueError(f"mask rows must not overlap: its row stride is {row} bytes, the {n_cells} "
                         f"cells of a row need {n_cells * itemsize}; pass a copy (e.g. of a broadcast)")
    return arg, dtype, row // itemsize


class CacheMemoryUsage(NamedTuple):
    """tq_cache_memory: bytes the cache uses, what the same tokens take in FP16, token counts."""

    bytes_used: int
    bytes_fp16: int
    n_tokens: int
    n_compressed: int


class Cache:
    """An owned KV cache (tq_cache_new) over a Context: per-sequence storage, the most recent
    ``residual_window`` tokens and the first ``n_sink`` tokens kept in full precision."""

    def __init__(self, context: Context, *, max_seqs: int = 1, max_tokens: int = 4096,
                 residual_window: int | None = None, n_sink: int | None = None):
        self.context = context          # the context must outlive the cache
        self._lib = context._lib
        p = self._lib.tq_cache_default_params()
        p.max_seqs, p.max_tokens = max_seqs, max_tokens
        if residual_window is not None:
            p.residual_window = residual_window
        if n_sink is not None:
            p.n_sink = n_sink
        handle = CacheHandle()
        self._lib.tq_cache_new(context.handle, ctypes.byref(p), ctypes.byref(handle))
        self._handle = handle
        context._caches.add(self)
        self.max_seqs, self.max_tokens = max_seqs, max_tokens
        self.residual_window, self.n_sink = p.residual_window, p.n_sink

    @property
    def handle(self):
        if not self._handle:
            raise ValueError("the cache is closed" if self.context._handle else
                             "the cache is closed: its context was closed")
        return self._handle

    def close(self) -> None:
        """Free the cache (idempotent); not while another thread is inside a call on it."""
        if getattr(self, "_handle", None):
            self._lib.tq_cache_free(self._handle)
            self._handle = CacheHandle()

    __del__ = close

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, layer: int, seq: int, k: Any, v: Any) -> None:
        """Append tokens (k, v packed [n][n_kv_heads][head_dim]) to ``seq`` in ``layer``;
        positions continue the sequence."""
        ctx = self.context
        layer = ctx._layer(layer)
        ka = ctx._tensor(k, "k", ctx.n_kv_heads, contiguous=True)
        va = ctx._tensor(v, "v", ctx.n_kv_heads, contiguous=True)
        if ka.shape[0] != va.shape[0]:
            raise ValueError(f"k has {ka.shape[0]} tokens but v has {va.shape[0]}")
        self._lib.tq_cache_append(self.handle, layer, _u32(seq, "seq"), ka.shape[0], ka.ptr, va.ptr,
                                  ka.stream)

    def attend(self, layer: int, seq: int, q: Any, *, scale: float | None = None,
               out: Any = None):
        """Attention of the queries of the last n_q positions of ``seq`` (q packed
        [n_q][n_heads][head_dim], causal among them) over everything ``seq`` holds in ``layer``.
        Returns ``out`` ([n_q][n_heads][head_dim], allocated if not given)."""
        ctx = self.context
        layer = ctx._layer(layer)
        qa = ctx._tensor(q, "q", ctx.n_heads, contiguous=True)
        n_q = qa.shape[0]
        if out is None:
            out = ctx._empty_like_q(q, n_q)
        oa = ctx._tensor(out, "out", ctx.n_heads, writable=True, contiguous=True)
        if oa.shape[0] != n_q:
            raise ValueError(f"out has {oa.shape[0]} rows but q has {n_q}")
        scale = 1.0 / math.sqrt(ctx.head_dim) if scale is None else float(scale)
        self._lib.tq_cache_attend(self.handle, layer, _u32(seq, "seq"), qa.ptr, n_q, scale, oa.ptr,
                                  qa.stream)
        return out

    def seq_len(self, seq: int) -> int:
        out = c_size_t()
        self._lib.tq_cache_seq_len(self.handle, _u32(seq, "seq"), ctypes.byref(out))
        return out.value

    def seq_rm(self, seq: int = -1, p0: int = -1, p1: int = -1) -> None:
        """Remove positions [p0, p1) of ``seq`` (seq < 0: every sequence; p0 < 0: from 0;
        p1 < 0: to the end)."""
        seq = -1 if seq < 0 else _int_range(seq, "seq", 0, 2**31)
        self._lib.tq_cache_seq_rm(self.handle, seq, _i64(p0, "p0"), _i64(p1, "p1"))

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        self._lib.tq_cache_seq_cp(self.handle, _u32(src, "src"), _u32(dst, "dst"), _i64(p0, "p0"),
                                  _i64(p1, "p1"))

    def seq_keep(self, seq: int) -> None:
        self._lib.tq_cache_seq_keep(self.handle, _u32(seq, "seq"))

    def clear(self) -> None:
        self._lib.tq_cache_clear(self.handle)

    def memory_usage(self) -> CacheMemoryUsage:
        m = CacheMemory()
        self._lib.tq_cache_memory_usage(self.handle, ctypes.byref(m))
        return CacheMemoryUsage(m.bytes_used, m.bytes_fp16, m.n_tokens, m.n_compressed)

    def save(self) -> bytes:
        """The cache's contents (versioned, checksummed) as bytes."""
        need = c_size_t()
        self._lib.tq_cache_save(self.handle, None, 0, ctypes.byref(need))
        buf = np.empty(need.value, np.uint8)
        written = c_size_t()
        self._lib.tq_cache_save(self.handle, buf.ctypes.data, buf.size, ctypes.byref(written))
        return buf[:written.value].tobytes()

    def load(self, data: bytes) -> None:
        buf = np.frombuffer(bytes(data), np.uint8)
        self._lib.tq_cache_load(self.handle, buf.ctypes.data, buf.size)

    def save_file(self, path: str | os.PathLike) -> None:
        self._lib.tq_cache_save_file(self.handle, os.fsencode(path))

    def load_file(self, path: str | os.PathLike) -> None:
        self._lib.tq_cache_load_file(self.handle, os.fsencode(path))
