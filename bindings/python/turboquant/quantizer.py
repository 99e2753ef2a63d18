"""TurboQuant vector quantizer (tq_quantizer_*): quantize / dequantize / inner products of host vectors."""

from __future__ import annotations

import ctypes
from ctypes import c_double, c_float, c_size_t, c_uint8, c_uint16

import numpy as np

from ._arrays import host_array, ptr
from ._lib import Library, QuantizerHandle, default_library

ROTATIONS = {"auto": 0, "dense": 1, "hadamard": 2}
QUANTIZER_KINDS = {"mse": 0, "prod": 1}


def enum_value(table: dict[str, int], value: str | int, name: str) -> int:
    """A C enum value from its lower-case name (or the integer itself, passed through for the
    library to check)."""
    if isinstance(value, str):
        try:
            return table[value.lower()]
        except KeyError:
            raise ValueError(f"{name} must be one of {', '.join(table)}, got {value!r}") from None
    return int(value)


class Quantizer:
    """A TurboQuant quantizer for vectors of ``dim`` floats (tq_quantizer_new).

    ``kind`` "mse" (TurboQuant_mse) or "prod" (TurboQuant_prod: unbiased inner products);
    ``rotation`` "auto", "dense" or "hadamard". Close it (or use ``with``) to free it at once.
    """

    def __init__(self, dim: int = 128, bits: int = 4, kind: str | int = "mse",
                 rotation: str | int = "auto", seed: int = 0, n_threads: int = 0,
                 lib: Library | None = None):
        self._lib = default_library(lib)
        params = self._lib.tq_quantizer_default_params()
        params.dim = dim
        params.bits = bits
        params.kind = enum_value(QUANTIZER_KINDS, kind, "kind")
        params.rotation = enum_value(ROTATIONS, rotation, "rotation")
        params.seed = seed
        params.n_threads = n_threads
        handle = QuantizerHandle()
        self._lib.tq_quantizer_new(ctypes.byref(params), ctypes.byref(handle))
        self._handle = handle
        self.dim, self.bits = dim, bits
        out = c_size_t()
        self._lib.tq_quantizer_code_bytes(handle, ctypes.byref(out))
        self.code_bytes = out.value
        self._lib.tq_quantizer_scale_count(handle, ctypes.byref(out))
        self.scale_count = out.value

    @property
    def handle(self):
        if not self._handle:
            raise ValueError("the quantizer is closed")
        return self._handle

    def close(self) -> None:
        """Free the quantizer (idempotent)."""
        if getattr(self, "_handle", None):
            self._lib.tq_quantizer_free(self._handle)
            self._handle = QuantizerHandle()

    __del__ = close

    def __enter__(self) -> "Quantizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def expected_mse(self) -> float:
        """The exact expected normalised MSE E‖x−x̂‖²/‖x‖² of the (MSE stage of the) codebook."""
        out = c_double()
        self._lib.tq_quantizer_expected_mse(self.handle, ctypes.byref(out))
        return out.value

    def quantize(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Quantize ``x`` (float32, shape (n, dim)): returns ``codes`` (uint8, (n, code_bytes)) and
        ``scales`` (bf16 bit patterns as uint16, (n, scale_count))."""
        x = host_array(x, "x", np.float32, (None, self.dim))
        n = x.shape[0]
        codes = np.empty((n, self.code_bytes), np.uint8)
        scales = np.empty((n, self.scale_count), np.uint16)
        self._lib.tq_quantize(self.handle, ptr(x, c_float), n, ptr(codes, c_uint8),
                              ptr(scales, c_uint16))
        return codes, scales

    def _codes_scales(self, codes: np.ndarray, scales: np.ndarray) -> int:
        host_array(codes, "codes", np.uint8, (None, self.code_bytes))
        n = codes.shape[0]
        host_array(scales, "scales", np.uint16, (n, self.scale_count))
        return n

    def dequantize(self, codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """Reconstruct float32 vectors (n, dim) from what quantize() returned."""
        n = self._codes_scales(codes, scales)
        out = np.empty((n, self.dim), np.float32)
        self._lib.tq_dequantize(self.handle, ptr(codes, c_uint8), ptr(scales, c_uint16), n,
                                ptr(out, c_float))
        return out

    def inner_product(self, y: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """Estimates of ⟨y, x_i⟩ (float32, (n,)) for one query ``y`` (float32, (dim,)) against n
        quantized vectors (PROD: TurboQuant's unbiased estimator)."""
        y = host_array(y, "y", np.float32, (self.dim,))
        n = self._codes_scales(codes, scales)
        out = np.empty(n, np.float32)
        self._lib.tq_inner_product(self.handle, ptr(y, c_float), ptr(codes, c_uint8),
                                   ptr(scales, c_uint16), n, ptr(out, c_float))
        return out


def bf16_to_float(values: np.ndarray, lib: Library | None = None) -> np.ndarray:
    """Convert bf16 bit patterns (uint16, e.g. ``scales``) to float32, via tq_bf16_to_float."""
    values = np.ascontiguousarray(host_array(values, "values", np.uint16,
                                             (None,) * np.ndim(values)))
    out = np.empty(values.shape, np.float32)
    default_library(lib).tq_bf16_to_float(ptr(values, c_uint16), values.size, ptr(out, c_float))
    return out
