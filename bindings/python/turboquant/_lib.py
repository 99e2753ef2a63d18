"""Loading libturboquant.so and declaring every exported function for ctypes.

Each fallible function has an ``errcheck`` that turns a non-zero tq_status into the matching
TurboQuantError subclass, reading tq_last_error_message() on the same thread right after the call
(the message is thread-local in the library). The params structs are mirrored here and their sizes
are checked against the library's own tq_*_params_size() when the library is loaded.
"""

from __future__ import annotations

import ctypes
import os
import threading
from ctypes import (POINTER, Structure, c_bool, c_char_p, c_double, c_float, c_int32, c_int64,
                    c_size_t, c_uint8, c_uint16, c_uint32, c_uint64, c_void_p)
from pathlib import Path

from .errors import ERROR_BY_STATUS, LibraryNotFoundError, TurboQuantError

#: The params-struct layout version these bindings mirror (TQ_ABI_VERSION in turboquant.h).
ABI_VERSION = 1

LIBRARY_NAME = "libturboquant.so"


class ContextParams(Structure):
    """Mirror of tq_context_params."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("abi_version", c_uint32),
        ("n_layers", c_uint32),
        ("n_heads", c_uint32),
        ("n_kv_heads", c_uint32),
        ("head_dim", c_uint32),
        ("bits_k", c_uint32),
        ("bits_v", c_uint32),
        ("rotation", c_uint32),
        ("key_mode", c_uint32),
        ("dtype", c_uint32),
        ("backend", c_uint32),
        ("device", c_int32),
        ("n_threads", c_uint32),
        ("max_batch", c_uint32),
        ("seed", c_uint64),
        ("centering", c_bool),
        ("layer_bits_k", POINTER(c_uint32)),
        ("layer_bits_v", POINTER(c_uint32)),
        ("n_layer_bits", c_uint32),
        ("center_values", c_bool),
        ("key_outliers", c_uint32),
    ]


class QuantizerParams(Structure):
    """Mirror of tq_quantizer_params."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("abi_version", c_uint32),
        ("dim", c_uint32),
        ("bits", c_uint32),
        ("kind", c_uint32),
        ("rotation", c_uint32),
        ("n_threads", c_uint32),
        ("seed", c_uint64),
    ]


class CacheParams(Structure):
    """Mirror of tq_cache_params."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("abi_version", c_uint32),
        ("max_seqs", c_uint32),
        ("max_tokens", c_uint32),
        ("residual_window", c_uint32),
        ("n_sink", c_uint32),
    ]


class CacheMemory(Structure):
    """Mirror of tq_cache_memory."""

    _fields_ = [
        ("bytes_used", c_size_t),
        ("bytes_fp16", c_size_t),
        ("n_tokens", c_size_t),
        ("n_compressed", c_size_t),
    ]


class Strides(Structure):
    """Mirror of tq_strides: byte strides of a [tokens][heads][head_dim] tensor."""

    _fields_ = [("token", c_size_t), ("head", c_size_t)]


class AttendOptions(Structure):
    """Mirror of tq_attend_options: attention sinks, logit soft-capping and full-precision rows
    standing for cells, for tq_attend_ext."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("abi_version", c_uint32),
        ("logit_softcap", c_float),
        ("sinks", POINTER(c_float)),
        ("full_of_cell", POINTER(c_int32)),
        ("full_k", c_void_p),
        ("full_v", c_void_p),
        ("n_full", c_size_t),
        ("full_row_stride", c_size_t),
        ("full_dtype", c_uint32),
        ("full_mask", POINTER(c_float)),
        ("full_mask_row_stride", c_size_t),
    ]


class _OpaqueContext(Structure):
    pass


class _OpaqueQuantizer(Structure):
    pass


class _OpaqueCache(Structure):
    pass


ContextHandle = POINTER(_OpaqueContext)
QuantizerHandle = POINTER(_OpaqueQuantizer)
CacheHandle = POINTER(_OpaqueCache)

_status = c_uint32
_size_p = POINTER(c_size_t)
_strides_p = POINTER(Strides)

# name -> (restype, argtypes). A restype of _status means "fallible": errcheck raises on failure.
PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    # library
    "tq_version": (c_char_p, []),
    "tq_status_to_string": (c_char_p, [c_uint32]),
    "tq_last_error_message": (c_char_p, []),
    # quantizer
    "tq_quantizer_default_params": (QuantizerParams, []),
    "tq_quantizer_params_size": (c_size_t, []),
    "tq_quantizer_new": (_status, [POINTER(QuantizerParams), POINTER(QuantizerHandle)]),
    "tq_quantizer_free": (None, [QuantizerHandle]),
    "tq_quantizer_code_bytes": (_status, [QuantizerHandle, _size_p]),
    "tq_quantizer_scale_count": (_status, [QuantizerHandle, _size_p]),
    "tq_quantizer_expected_mse": (_status, [QuantizerHandle, POINTER(c_double)]),
    "tq_bf16_to_float": (_status, [POINTER(c_uint16), c_size_t, POINTER(c_float)]),
    "tq_quantize": (_status, [QuantizerHandle, POINTER(c_float), c_size_t, POINTER(c_uint8),
                              POINTER(c_uint16)]),
    "tq_dequantize": (_status, [QuantizerHandle, POINTER(c_uint8), POINTER(c_uint16), c_size_t,
                                POINTER(c_float)]),
    "tq_inner_product": (_status, [QuantizerHandle, POINTER(c_float), POINTER(c_uint8),
                                   POINTER(c_uint16), c_size_t, POINTER(c_float)]),
    # context and slot mode
    "tq_context_default_params": (ContextParams, []),
    "tq_context_params_size": (c_size_t, []),
    "tq_context_new": (_status, [POINTER(ContextParams), POINTER(ContextHandle)]),
    "tq_context_free": (None, [ContextHandle]),
    "tq_context_row_bytes": (_status, [ContextHandle, _size_p, _size_p]),
    "tq_context_layer_row_bytes": (_status, [ContextHandle, c_uint32, _size_p, _size_p]),
    "tq_context_state_size": (_status, [ContextHandle, _size_p]),
    "tq_context_state_save": (_status, [ContextHandle, POINTER(c_uint8), c_size_t]),
    "tq_context_state_load": (_status, [ContextHandle, POINTER(c_uint8), c_size_t]),
    "tq_append_kv": (_status, [ContextHandle, c_uint32, c_void_p, c_void_p, c_size_t,
                               POINTER(c_int64), c_size_t, c_void_p, _strides_p, c_void_p,
                               _strides_p, c_void_p]),
    "tq_append_kv_part": (_status, [ContextHandle, c_uint32, c_void_p, c_void_p, c_size_t,
                                    POINTER(c_int64), c_size_t, c_void_p, _strides_p, c_void_p,
                                    _strides_p, c_uint32, c_uint32]),
    "tq_attend": (_status, [ContextHandle, c_uint32, c_void_p, c_size_t, _strides_p, c_void_p,
                            c_void_p, c_size_t, c_void_p, c_uint32, c_size_t, c_float, c_void_p,
                            _strides_p, c_void_p]),
    "tq_attend_part": (_status, [ContextHandle, c_uint32, c_void_p, c_size_t, _strides_p,
                                 c_void_p, c_void_p, c_size_t, c_void_p, c_uint32, c_size_t,
                                 c_float, c_void_p, _strides_p, c_uint32, c_uint32]),
    "tq_dequantize_rows": (_status, [ContextHandle, c_uint32, c_uint32, c_void_p, c_size_t, c_void_p,
                                     c_uint32, _strides_p, c_void_p]),
    "tq_dequantize_rows_part": (_status, [ContextHandle, c_uint32, c_uint32, c_void_p, c_size_t,
                                          c_void_p, c_uint32, _strides_p, c_uint32, c_uint32]),
    "tq_attend_default_options": (AttendOptions, []),
    "tq_attend_ext": (_status, [ContextHandle, c_uint32, c_void_p, c_size_t, _strides_p, c_void_p,
                                c_void_p, c_size_t, c_void_p, c_uint32, c_size_t, c_float,
                                POINTER(AttendOptions), c_void_p, _strides_p, c_void_p]),
    "tq_attend_part_ext": (_status, [ContextHandle, c_uint32, c_void_p, c_size_t, _strides_p,
                                     c_void_p, c_void_p, c_size_t, c_void_p, c_uint32, c_size_t,
                                     c_float, POINTER(AttendOptions), c_void_p, _strides_p,
                                     c_uint32, c_uint32]),
    # CUDA contexts only: several sequences in one launch (device pointer arrays).
    "tq_attend_batch": (_status, [ContextHandle, c_uint32, c_size_t, c_void_p, c_size_t, _strides_p,
                                  c_size_t, c_void_p, c_void_p, POINTER(c_int64), c_size_t,
                                  c_void_p, c_uint32, c_size_t, c_size_t, c_float, c_void_p,
                                  _strides_p, c_size_t, c_void_p]),
    # owned cache
    "tq_cache_default_params": (CacheParams, []),
    "tq_cache_params_size": (c_size_t, []),
    "tq_cache_new": (_status, [ContextHandle, POINTER(CacheParams), POINTER(CacheHandle)]),
    "tq_cache_free": (None, [CacheHandle]),
    "tq_cache_append": (_status, [CacheHandle, c_uint32, c_uint32, c_size_t, c_void_p, c_void_p,
                                  c_void_p]),
    "tq_cache_attend": (_status, [CacheHandle, c_uint32, c_uint32, c_void_p, c_size_t, c_float,
                                  c_void_p, c_void_p]),
    "tq_cache_seq_rm": (_status, [CacheHandle, c_int32, c_int64, c_int64]),
    "tq_cache_seq_cp": (_status, [CacheHandle, c_uint32, c_uint32, c_int64, c_int64]),
    "tq_cache_seq_keep": (_status, [CacheHandle, c_uint32]),
    "tq_cache_clear": (_status, [CacheHandle]),
    "tq_cache_seq_len": (_status, [CacheHandle, c_uint32, _size_p]),
    "tq_cache_memory_usage": (_status, [CacheHandle, POINTER(CacheMemory)]),
    "tq_cache_save": (_status, [CacheHandle, c_void_p, c_size_t, _size_p]),
    "tq_cache_load": (_status, [CacheHandle, c_void_p, c_size_t]),
    "tq_cache_save_file": (_status, [CacheHandle, c_char_p]),
    "tq_cache_load_file": (_status, [CacheHandle, c_char_p]),
}

# (params struct, the library's size function) pairs checked at load.
MIRRORED_STRUCTS = [
    (ContextParams, "tq_context_params_size"),
    (QuantizerParams, "tq_quantizer_params_size"),
    (CacheParams, "tq_cache_params_size"),
]


class Library:
    """A loaded libturboquant with every function declared; attribute access gives the functions."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        try:
            self._dll = ctypes.CDLL(self.path)
        except OSError as e:
            raise LibraryNotFoundError(f"cannot load {self.path}: {e}") from None
        missing = [name for name in PROTOTYPES if not hasattr(self._dll, name)]
        if missing:
            raise LibraryNotFoundError(
                f"{self.path} does not export {', '.join(missing)}: the library is older or newer "
                f"than these bindings")
        for name, (restype, argtypes) in PROTOTYPES.items():
            fn = getattr(self._dll, name)
            fn.restype = restype
            fn.argtypes = argtypes
            if restype is _status:
                fn.errcheck = self._errcheck
            setattr(self, name, fn)
        self.version = self.tq_version().decode()
        self._check_structs()

    def _errcheck(self, status, fn, args):
        if status == 0:
            return status
        # Same thread, right after the call: the thread-local message belongs to this failure.
        message = self.tq_last_error_message().decode(errors="replace")
        name = self.tq_status_to_string(status).decode(errors="replace")
        cls = ERROR_BY_STATUS.get(status, TurboQuantError)
        raise cls(message or name, status=status, status_name=name, function=fn.__name__)

    def _check_structs(self) -> None:
        for struct, size_fn in MIRRORED_STRUCTS:
            check_struct_size(struct, getattr(self, size_fn)(), self.path)
        check_struct_size(AttendOptions, self.tq_attend_default_options().struct_size, self.path)
        for default_fn in ("tq_context_default_params", "tq_quantizer_default_params",
                           "tq_cache_default_params", "tq_attend_default_options"):
            abi = getattr(self, default_fn)().abi_version
            if abi != ABI_VERSION:
                raise LibraryNotFoundError(
                    f"{self.path}: {default_fn}() has abi_version {abi}, these bindings mirror "
                    f"version {ABI_VERSION}")


def check_struct_size(struct: type[Structure], library_size: int, where: str = "library") -> None:
    """Raise LibraryNotFoundError when a mirrored struct's size differs from the library's."""
    if ctypes.sizeof(struct) != library_size:
        raise LibraryNotFoundError(
            f"{where}: sizeof({struct.__name__}) is {ctypes.sizeof(struct)} in the Python mirror "
            f"but {library_size} in the library: the bindings and the library disagree on the "
            f"struct layout")


def candidate_paths() -> list[Path]:
    """Where the library is looked for when no explicit path is given, in order."""
    out = []
    env = os.environ.get("TURBOQUANT_LIB")
    if env:
        out.append(Path(env))
    here = Path(__file__).resolve().parent
    out.append(here / LIBRARY_NAME)
    # bindings/python/turboquant -> repository root
    out.append(here.parents[2] / "target" / "release" / LIBRARY_NAME)
    return out


_lock = threading.Lock()
_default: Library | None = None


def load_library(path: str | os.PathLike | None = None) -> Library:
    """Load libturboquant (once per path) and make it the default for new objects.

    With no ``path``: ``$TURBOQUANT_LIB`` if set (and then only it), else ``libturboquant.so``
    next to this package, else ``target/release`` of the repository this package sits in.
    """
    global _default
    with _lock:
        if path is not None:
            lib = Library(path)
        else:
            if _default is not None:
                return _default
            candidates = candidate_paths()
            if os.environ.get("TURBOQUANT_LIB"):
                candidates = candidates[:1]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise LibraryNotFoundError(
                    "libturboquant.so not found; looked at " + ", ".join(map(str, candidates)) +
                    ". Build it with `cargo build --release`, set TURBOQUANT_LIB, or pass a path to "
                    "turboquant.load_library()")
            lib = Library(found)
        _default = lib
        return lib


def default_library(lib: Library | None = None) -> Library:
    """``lib`` if given, else the default library (loaded on first use)."""
    return lib if lib is not None else load_library()
