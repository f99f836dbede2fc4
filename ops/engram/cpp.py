"""Engram backend "cpp": ops/engram/cpu/engram_cpu.cc. `engram_lookup` through ops.Custom(func_type="aot") with a
scatter-add backward (the table gradient training needs); `ngram_hash_cpp` through ctypes for the host prefetch
path (same signature and bit-exact result as reference.ngram_hash). Built by `python ops/build.py engram`; without
the library the registry falls back to the composite and `ngram_hash_cpp` is None."""
from __future__ import annotations

import ctypes
import os

import numpy as np

from ..build import library_path

LIB = library_path("engram")


def available() -> bool:
    return os.path.exists(LIB)


ngram_hash_cpp = None
if available():
    _dll = ctypes.CDLL(LIB)
    _i64p = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
    _dll.EngramHash.argtypes = [_i64p, ctypes.c_int64, ctypes.c_int64, _i64p, _i64p, _i64p, ctypes.c_int64,
                                ctypes.c_int64, _i64p]
    _dll.EngramHash.restype = ctypes.c_int

    def ngram_hash_cpp(hist, multipliers, primes, offsets, pad_id, n_heads):  # noqa: F811
        hist = np.ascontiguousarray(hist, np.int64)
        K = hist.shape[-1]
        flat = hist.reshape(-1, K)
        out = np.empty((flat.shape[0], (K - 1) * n_heads), np.int64)
        rc = _dll.EngramHash(flat, flat.shape[0], K, np.ascontiguousarray(multipliers, np.int64),
                             np.ascontiguousarray(primes, np.int64), np.ascontiguousarray(offsets, np.int64),
                             n_heads, int(pad_id), out)
        if rc:
            raise ValueError(f"EngramHash rejected max_ngram {K} / n_heads {n_heads} (code {rc})")
        return out.reshape(*hist.shape[:-1], out.shape[-1])

try:
    import mindspore as ms
    from mindspore import ops
except ImportError:  # pragma: no cover
    ms = None

if ms is not None and available():
    from ..registry import register

    def _fwd_shape(table, ids):
        return list(ids[:-1]) + [ids[-1] * table[1]]

    def _fwd_dtype(table, ids):
        return table

    def _bwd_shape(table, ids, dout):
        return table

    def _bwd_dtype(table, ids, dout):
        return table

    _BWD = ops.Custom(f"{LIB}:EngramLookupBwd", out_shape=_bwd_shape, out_dtype=_bwd_dtype, func_type="aot")

    def _bprop(table, ids, out, dout):
        return _BWD(table, ids, dout), ops.zeros_like(ids)

    _FWD = ops.Custom(f"{LIB}:EngramLookupFwd", out_shape=_fwd_shape, out_dtype=_fwd_dtype, func_type="aot",
                      bprop=_bprop)

    def engram_lookup(table, ids):
        """table [rows, d] float32/bf16, ids int [..., C] -> [..., C·d]; backward: scatter-add into the table."""
        return _FWD(table, ops.cast(ids, ms.int32))

    register("engram_lookup", "cpp", ("CPU",), priority=10, available=available, tolerance=(0, 1e-7),
             note="C++ library ops/engram/cpu/_engram_cpu.so not built; run `python ops/build.py engram`")(
        engram_lookup)
