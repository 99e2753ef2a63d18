"""Loading, declarations and errors: every exported function is declared, mirrored structs match the
library's sizes, failures carry the library's own message."""

import ctypes
import re
import threading
from pathlib import Path

import numpy as np
import pytest

import turboquant as tq
from turboquant import _lib

HEADER = Path(__file__).resolve().parents[3] / "include" / "turboquant.h"


def header_functions():
    text = HEADER.read_text()
    return set(re.findall(r"^[A-Za-z_][\w \*]*?\b(tq_\w+)\(", text, re.M))


def test_every_header_function_is_declared():
    declared = set(_lib.PROTOTYPES)
    exported = header_functions()
    assert len(exported) > 30
    assert exported - declared == set(), "functions in turboquant.h without argtypes/restype"
    assert declared - exported == set(), "declared functions missing from turboquant.h"


def test_argument_counts_match_header():
    text = HEADER.read_text()
    for name, (_, argtypes) in _lib.PROTOTYPES.items():
        m = re.search(rf"\b{name}\(([^)]*)\);", text)
        assert m, name
        params = m.group(1).strip()
        n = 0 if params in ("", "void") else params.count(",") + 1
        assert n == len(argtypes), f"{name}: header has {n} parameters, binding {len(argtypes)}"


def test_struct_sizes_match_library():
    lib = tq.load_library()
    assert ctypes.sizeof(_lib.ContextParams) == lib.tq_context_params_size()
    assert ctypes.sizeof(_lib.QuantizerParams) == lib.tq_quantizer_params_size()
    assert ctypes.sizeof(_lib.CacheParams) == lib.tq_cache_params_size()
    # The defaults come back through the mirror with the library's own struct_size.
    assert lib.tq_context_default_params().struct_size == lib.tq_context_params_size()
    assert lib.tq_cache_default_params().struct_size == lib.tq_cache_params_size()


def test_struct_size_check_raises_on_drift():
    class Drifted(ctypes.Structure):
        _fields_ = _lib.QuantizerParams._fields_ + [("extra", ctypes.c_uint64)]

    lib = tq.load_library()
    with pytest.raises(tq.LibraryNotFoundError, match=r"sizeof\(Drifted\) is \d+ in the Python mirror"):
        tq.check_struct_size(Drifted, lib.tq_quantizer_params_size())


def test_explicit_path_and_env(monkeypatch, tmp_path):
    lib = tq.load_library()
    again = tq.load_library(lib.path)
    assert again.version == lib.version == tq.library_version()
    monkeypatch.setenv("TURBOQUANT_LIB", str(tmp_path / "missing.so"))
    assert _lib.candidate_paths()[0] == tmp_path / "missing.so"
    with pytest.raises(tq.LibraryNotFoundError, match="cannot load"):
        tq.load_library(tmp_path / "missing.so")
    tq.load_library(lib.path)  # restore the default


def test_error_carries_library_message():
    with pytest.raises(tq.UnsupportedError) as e:
        tq.Quantizer(dim=100, rotation="hadamard")
    err = e.value
    assert err.function == "tq_quantizer_new"
    assert err.status == 3 and err.status_name
    assert "dim 100" in err.message and "power of two" in err.message
    assert isinstance(err, tq.TurboQuantError)


def test_invalid_bits_message():
    with pytest.raises(tq.TurboQuantError, match=r"params->bits is 9: must be in 1..=8"):
        tq.Quantizer(dim=64, bits=9)


def test_non_finite_input_names_the_element():
    with tq.Quantizer(dim=64, bits=2) as q:
        x = np.zeros((3, 64), np.float32)
        x[2, 5] = np.nan
        with pytest.raises(tq.NonFiniteError) as e:
            q.quantize(x)
        assert e.value.status == 5
        assert "2" in e.value.message and "5" in e.value.message


def test_last_error_is_read_on_the_failing_thread():
    """Concurrent failures on several threads each get their own message."""
    results = {}

    def worker(dim):
        try:
            tq.Quantizer(dim=dim, rotation="hadamard")
        except tq.TurboQuantError as e:
            results[dim] = e.message

    threads = [threading.Thread(target=worker, args=(d,)) for d in (48, 80, 96, 112)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [48, 80, 96, 112]
    for dim, msg in results.items():
        assert f"dim {dim}" in msg


def test_binding_argument_checks():
    with tq.Quantizer(dim=64, bits=4) as q:
        with pytest.raises(TypeError, match="x must have dtype float32, got float64"):
            q.quantize(np.zeros((2, 64)))
        with pytest.raises(ValueError, match=r"x must have shape \(n, 64\), got \(2, 32\)"):
            q.quantize(np.zeros((2, 32), np.float32))
        with pytest.raises(ValueError, match="C-contiguous"):
            q.quantize(np.zeros((64, 2), np.float32).T)
        with pytest.raises(TypeError, match="numpy.ndarray"):
            q.quantize([[0.0] * 64])
    with pytest.raises(ValueError, match="closed"):
        q.expected_mse
    with pytest.raises(ValueError, match="rotation must be one of"):
        tq.Quantizer(rotation="diagonal")


def test_cuda_backend_errors_cleanly():
    """On a machine without the CUDA backend compiled in or without a driver the library says so;
    where CUDA works, a context is created."""
    try:
        ctx = tq.Context(1, 4, 2, 64, backend="cuda")
    except tq.BackendUnavailableError as e:
        assert e.status == 8 and e.message
    else:
        ctx.close()
