"""ctypes mirror of the parts of include/turboquant.h the GPU benchmark scripts call (bench_decode.py,
experiments/trace_b1.py). open_library() checks the params struct size against the library's."""
import ctypes


class Params(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("abi_version", ctypes.c_uint32), ("n_layers", ctypes.c_uint32),
                ("n_heads", ctypes.c_uint32), ("n_kv_heads", ctypes.c_uint32), ("head_dim", ctypes.c_uint32),
                ("bits_k", ctypes.c_uint32), ("bits_v", ctypes.c_uint32), ("rotation", ctypes.c_uint32),
                ("key_mode", ctypes.c_uint32), ("dtype", ctypes.c_uint32), ("backend", ctypes.c_uint32),
                ("device", ctypes.c_int32), ("n_threads", ctypes.c_uint32), ("max_batch", ctypes.c_uint32),
                ("seed", ctypes.c_uint64), ("centering", ctypes.c_bool),
                ("layer_bits_k", ctypes.POINTER(ctypes.c_uint32)), ("layer_bits_v", ctypes.POINTER(ctypes.c_uint32)),
                ("n_layer_bits", ctypes.c_uint32), ("center_values", ctypes.c_bool)]


class Strides(ctypes.Structure):
    _fields_ = [("token", ctypes.c_size_t), ("head", ctypes.c_size_t)]


def open_library(path):
    """libturboquant at `path` with the argument and result types of the functions used here."""
    lib = ctypes.CDLL(path)
    vp, sz, u32 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32
    strides = ctypes.POINTER(Strides)
    lib.tq_context_params_size.restype = ctypes.c_size_t
    assert ctypes.sizeof(Params) == lib.tq_context_params_size(), "tq_context_params mirror is stale"
    lib.tq_context_default_params.restype = Params
    lib.tq_last_error_message.restype = ctypes.c_char_p
    lib.tq_context_new.argtypes = [ctypes.POINTER(Params), ctypes.POINTER(vp)]
    lib.tq_context_row_bytes.argtypes = [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]
    lib.tq_append_kv.argtypes = [vp, u32, vp, vp, sz, vp, sz, vp, strides, vp, strides, vp]
    lib.tq_attend.argtypes = [vp, u32, vp, sz, strides, vp, vp, sz, vp, u32, sz, ctypes.c_float, vp, strides, vp]
    lib.tq_attend_batch.argtypes = [vp, u32, sz, vp, sz, strides, sz, vp, vp, vp, sz, vp, u32, sz, sz, ctypes.c_float, vp,
                                    strides, sz, vp]
    lib.tq_context_free.argtypes = [vp]
    return lib
