"""Python bindings of libturboquant (ctypes, no compiled extension).

    import turboquant as tq
    q = tq.Quantizer(dim=128, bits=4)
    codes, scales = q.quantize(x)            # x: float32 (n, 128)
    x_hat = q.dequantize(codes, scales)

    ctx = tq.Context(n_layers=1, n_heads=8, n_kv_heads=2, head_dim=128, bits_k=4, bits_v=4)
    cache = tq.Cache(ctx, max_tokens=4096)
    cache.append(0, 0, k, v)                 # [n][n_kv_heads][head_dim]
    out = cache.attend(0, 0, q)              # [n_q][n_heads][head_dim]

The library is found by turboquant.load_library(path), else $TURBOQUANT_LIB, else next to this
package, else target/release of the repository. Failures raise TurboQuantError subclasses carrying
the library's message. The Hugging Face drop-in lives in turboquant.hf (imports torch/transformers).
"""

from ._lib import ABI_VERSION, Library, check_struct_size, load_library
from .context import Cache, CacheMemoryUsage, Context
from .errors import (AbiMismatchError, BackendError, BackendUnavailableError,
                     CapacityExceededError, CorruptDataError, IncompatibleError, InternalError,
                     InvalidArgumentError, LibraryNotFoundError, NonFiniteError, NullPointerError,
                     OutOfMemoryError, PoisonedError, TurboQuantError, TurboQuantIOError,
                     UnsupportedError)
from .quantizer import Quantizer, bf16_to_float

__all__ = [
    "ABI_VERSION", "Library", "check_struct_size", "load_library", "library_version",
    "Cache", "CacheMemoryUsage", "Context", "Quantizer", "bf16_to_float",
    "TurboQuantError", "LibraryNotFoundError", "InvalidArgumentError", "NullPointerError",
    "UnsupportedError", "AbiMismatchError", "NonFiniteError", "OutOfMemoryError",
    "CapacityExceededError", "BackendUnavailableError", "BackendError", "TurboQuantIOError",
    "CorruptDataError", "IncompatibleError", "PoisonedError", "InternalError",
]


def library_version() -> str:
    """Version string of the default library."""
    return load_library().version


# Load (and check the mirrored struct sizes against) the default library at import when it can be
# found; when it cannot, import still succeeds so that load_library(path) can name it explicitly,
# and the first object created raises LibraryNotFoundError.
try:
    load_library()
except LibraryNotFoundError as _e:
    if "not found; looked at" not in str(_e):
        raise
