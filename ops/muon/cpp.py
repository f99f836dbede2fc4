"""Newton–Schulz backend "cpp": ops/muon/cpu/newton_schulz.cc through ops.Custom(func_type="aot"), CPU, float32.

One kernel call orthogonalises a whole bucket (all NS steps, normalisation, tall/wide handling), where the
composite issues 3 batched matmuls and ~5 elementwise kernels per step. That matters on CPU: the tiny preset's
optimiser runs 8 buckets x 10 steps, i.e. 240 small BatchMatMul kernels per training step, and on a loaded 2-core
host each parallel MindSpore matmul could wait ~4 ms (a scheduler tick) for its pool threads. No bprop: the
optimiser never differentiates through it. Built by `python ops/build.py muon` (-> ops/muon/cpu/_muon_cpu.so);
without the library the registry falls back to the composite.
"""
from __future__ import annotations

import os

import mindspore as ms
from mindspore import ops

from ..build import library_path
from ..registry import register
from .reference import NS_COEFFS, NS_EPS

LIB = library_path("muon")
TOLERANCE = (3e-6, 1e-4)     # float32 GEMMs over 10 steps vs float64 (observed max ~1e-6 on O(1) outputs)


def available() -> bool:
    return os.path.exists(LIB)


def _shape(x, cfg):
    return x


def _dtype(x, cfg):
    return ms.float32


if available():
    _NS = ops.Custom(f"{LIB}:NewtonSchulz", out_shape=_shape, out_dtype=_dtype, func_type="aot")


def _cfg(coeffs, eps):
    flat = [float(eps)]
    for abc in coeffs:
        if len(abc) != 3:
            raise ValueError(f"Newton–Schulz coefficients come in (a, b, c) triples, got {abc!r}")
        flat += [float(v) for v in abc]
    return ms.Tensor(flat, ms.float32)


def newton_schulz(x, coeffs=NS_COEFFS, eps=NS_EPS, bf16=False):
    """x [k, r, c] -> float32 [k, r, c]. `bf16` must be False: CPU has no bf16 matmul (use the composite)."""
    if bf16:
        raise ValueError("the cpp Newton–Schulz backend computes in float32; bf16=True needs the composite "
                         "backend on Ascend")
    return _NS(ops.cast(x, ms.float32), _cfg(coeffs, eps))


register("newton_schulz", "cpp", ("CPU",), priority=10, available=available, tolerance=TOLERANCE,
         note="C++ library ops/muon/cpu/_muon_cpu.so not built; run `python ops/build.py muon`")(newton_schulz)
