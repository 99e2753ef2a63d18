"""Checking the arrays handed to the library: numpy arrays (host memory) and torch tensors (host or
CUDA device memory). Every check names the argument and says what was expected."""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._lib import Strides

DTYPE_F32, DTYPE_F16, DTYPE_BF16 = 0, 1, 2
DTYPE_NAMES = {DTYPE_F32: "float32", DTYPE_F16: "float16", DTYPE_BF16: "bfloat16"}
_NUMPY_DTYPES = {DTYPE_F32: np.dtype(np.float32), DTYPE_F16: np.dtype(np.float16),
                 # numpy has no bfloat16: bf16 data travels as its uint16 bit patterns
                 DTYPE_BF16: np.dtype(np.uint16)}
_ITEMSIZE = {DTYPE_F32: 4, DTYPE_F16: 2, DTYPE_BF16: 2}


def _shape_str(shape: Sequence[Any]) -> str:
    return "(" + ", ".join("n" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_shape(name: str, actual: Sequence[int], expected: Sequence[int | None]) -> None:
    if len(actual) != len(expected) or any(e is not None and a != e for a, e in zip(actual, expected)):
        raise ValueError(f"{name} must have shape {_shape_str(expected)}, got {tuple(actual)}")


def host_array(x: Any, name: str, dtype: Any, shape: Sequence[int | None],
               writable: bool = False) -> np.ndarray:
    """``x`` as a C-contiguous numpy array of ``dtype`` and ``shape`` (None = any), or a clear error."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    want = np.dtype(dtype)
    if x.dtype != want:
        raise TypeError(f"{name} must have dtype {want.name}, got {x.dtype.name} "
                        f"(convert with {name}.astype(numpy.{want.name}))")
    _check_shape(name, x.shape, shape)
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray({name}))")
    if writable and not x.flags.writeable:
        raise ValueError(f"{name} must be writable")
    return x


def ptr(x: np.ndarray, ctype: Any) -> Any:
    """A typed ctypes pointer to a checked numpy array's first element."""
    return x.ctypes.data_as(ctypes.POINTER(ctype))


def _torch():
    # A torch tensor can only exist once torch is imported: never import it here ourselves.
    return sys.modules.get("torch")


def is_torch_tensor(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


@dataclass
class TensorArg:
    """A checked tensor argument: its address, byte strides and where it lives."""

    ptr: int
    shape: tuple[int, ...]
    byte_strides: tuple[int, ...]
    cuda_device: int | None      # None: host memory
    stream: int | None           # the current CUDA stream of its device (None: host)
    keepalive: Any

    def strides(self) -> Strides:
        return Strides(self.byte_strides[0], self.byte_strides[1])


_TORCH_DTYPE_NAMES = {DTYPE_F32: "float32", DTYPE_F16: "float16", DTYPE_BF16: "bfloat16"}


def tensor_arg(x: Any, name: str, tq_dtype: int, shape: Sequence[int | None], *,
               writable: bool = False, contiguous: bool = False) -> TensorArg:
    """Check a [tokens][heads][head_dim]-like tensor: numpy array (host) or torch tensor (host or CUDA).

    The innermost dimension must be contiguous; the others may have any non-negative stride unless
    ``contiguous`` is set.
    """
    if isinstance(x, np.ndarray):
        want = _NUMPY_DTYPES[tq_dtype]
        if x.dtype != want:
            extra = " (bfloat16 data as uint16 bit patterns)" if tq_dtype == DTYPE_BF16 else ""
            raise TypeError(f"{name} must have dtype {want.name}{extra} to match the context dtype "
                            f"{DTYPE_NAMES[tq_dtype]}, got {x.dtype.name}")
        _check_shape(name, x.shape, shape)
        if writable and not x.flags.writeable:
            raise ValueError(f"{name} must be writable")
        strides = tuple(int(s) for s in x.strides)
        address, device, stream = x.ctypes.data, None, None
        itemsize = x.itemsize
    elif is_torch_tensor(x):
        torch = _torch()
        want = getattr(torch, _TORCH_DTYPE_NAMES[tq_dtype])
        if x.dtype != want:
            raise TypeError(f"{name} must have dtype torch.{_TORCH_DTYPE_NAMES[tq_dtype]} to match "
                            f"the context dtype, got {x.dtype}")
        _check_shape(name, tuple(x.shape), shape)
        if x.requires_grad and writable:
            raise ValueError(f"{name} requires grad; pass a tensor that does not (or use .detach())")
        itemsize = x.element_size()
        strides = tuple(int(s) * itemsize for s in x.stride())
        address = x.data_ptr()
        if x.is_cuda:
            device = x.device.index if x.device.index is not None else torch.cuda.current_device()
            stream = torch.cuda.current_stream(x.device).cuda_stream
        elif x.device.type == "cpu":
            device, stream = None, None
        else:
            raise ValueError(f"{name} is on device {x.device}; libturboquant takes host (cpu) or "
                             f"CUDA tensors")
    else:
        raise TypeError(f"{name} must be a numpy.ndarray or a torch.Tensor, got {type(x).__name__}")
    if any(s < 0 for s in strides):
        raise ValueError(f"{name} has a negative stride; pass a copy")
    if len(shape) and shape[-1] is not None and x.shape[-1] > 1 and strides[-1] != itemsize:
        raise ValueError(f"{name} must be contiguous in its last dimension (stride {strides[-1]} "
                         f"bytes, expected {itemsize})")
    if contiguous:
        expect, acc = [], itemsize
        for dim in reversed(x.shape):
            expect.append(acc)
            acc *= int(dim)
        expect.reverse()
        if any(d > 1 and s != e for d, s, e in zip(x.shape, strides, expect)):
            raise ValueError(f"{name} must be contiguous (packed); call .contiguous() / "
                             f"numpy.ascontiguousarray first")
    return TensorArg(address, tuple(int(d) for d in x.shape), strides, device, stream, x)


def byte_buffer(x: Any, name: str, nbytes: int) -> TensorArg:
    """A writable buffer of at least ``nbytes`` contiguous bytes (numpy uint8 array or torch uint8
    tensor), e.g. a slot-mode K or V store."""
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise TypeError(f"{name} must have dtype uint8, got {x.dtype.name}")
        if not x.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        if not x.flags.writeable:
            raise ValueError(f"{name} must be writable")
        if x.nbytes < nbytes:
            raise ValueError(f"{name} holds {x.nbytes} bytes, needs {nbytes}")
        return TensorArg(x.ctypes.data, x.shape, x.strides, None, None, x)
    if is_torch_tensor(x):
        torch = _torch()
        if x.dtype != torch.uint8:
            raise TypeError(f"{name} must have dtype torch.uint8, got {x.dtype}")
        if not x.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
        if x.numel() < nbytes:
            raise ValueError(f"{name} holds {x.numel()} bytes, needs {nbytes}")
        if x.is_cuda:
            device = x.device.index if x.device.index is not None else torch.cuda.current_device()
            stream = torch.cuda.current_stream(x.device).cuda_stream
        elif x.device.type == "cpu":
            device, stream = None, None
        else:
            raise ValueError(f"{name} is on device {x.device}; expected cpu or cuda")
        return TensorArg(x.data_ptr(), tuple(x.shape), tuple(x.stride()), device, stream, x)
    raise TypeError(f"{name} must be a numpy.ndarray or a torch.Tensor of uint8, got "
                    f"{type(x).__name__}")
