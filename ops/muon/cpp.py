"""Newton–Schulz backend "cpp": ops/muon/cpu/newton_schulz.cc through ops.Custom(func_type="aot"), CPU, float32.

One kernel call orthogonalises a whole bucket (all NS steps, normalisation, tall/wide handling), where the
composite issues 3 batched matmuls and ~5 elementwise kernels per step. That matters on CPU: the tiny preset's
optimiser runs 8 buckets x 10 steps, i.e. 240 small BatchMatMul kernels per training step, and on a loaded 2-core
host each parallel MindSpore matmul could wait ~4 ms (a scheduler tick) for its pool threads. No bprop: the
optimiser never differentiates through it. Built by `python ops/build.py muon` (-> ops/muon/cpu/_muon_cpu.so);
without the library the registry falls back to the composite.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import mindspore as ms
from mindspore import ops
from mindspore.ops import signature as sig

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


# ------------------------------------------------------------------------------------------------ fused optimiser
# cpu/optim_fused.cc: MuonAdamW's elementwise parts as a few kernels that write parameters and state in place
# (the graph-op form is ~10 kernels per Muon matrix and ~15 per AdamW tensor). ascend_v4/train/optim.py uses them
# on CPU for float32 parameters without masters, tensor parallelism or ZeRO; results are bitwise the graph ops'.
def fused_available() -> bool:
    """The library is built and holds the fused optimiser kernels (an older build has only NewtonSchulz)."""
    if not available():
        return False
    import ctypes
    try:
        return hasattr(ctypes.CDLL(LIB), "AdamWApply")
    except OSError:
        return False


def _numel(shape):
    return int(np.prod(shape)) if len(shape) else 1


def _token_shape(*shapes):
    return [1]


def _token_dtype(*dtypes):
    return ms.float32


# Which inputs each kernel writes in place: (leading read-only inputs, written groups of n, trailing groups of n).
_WRITES = {"MuonMomentumStack": (2, 1, 1), "MuonApply": (4, 1, 0), "AdamWApply": (2, 3, 1)}


@functools.lru_cache(None)
def _fused(name, n, rows=0, cols=0):
    if name == "MuonMomentumStack":
        def shape(*shapes):
            return [sum(_numel(s) for s in shapes[2:2 + n]) // (rows * cols), rows, cols]
        prim = ops.Custom(f"{LIB}:{name}", out_shape=shape, out_dtype=_token_dtype, func_type="aot")
    else:
        prim = ops.Custom(f"{LIB}:{name}", out_shape=_token_shape, out_dtype=_token_dtype, func_type="aot")
    # shape inference is cached per (kernel, attributes): one attribute per static configuration
    prim.add_prim_attr("fused_cfg", repr((n, rows, cols)))
    if name in _WRITES:
        # The kernel writes these inputs (Parameters) in place, so the graph must know: inputs declared
        # RW_WRITE reach the kernel as the Parameters themselves, and the call is ordered after every read of
        # them (side_effect_mem), as for ops.assign. Undeclared, a Parameter input is a Load (a value): when
        # the graph reads that Parameter at two side-effect states, MindSpore's order enforcement hands the
        # kernel a TensorMove copy and the update is written to the copy, silently lost (the expert-parallel
        # train step was such a graph, docs/performance.md).
        lead, written, tail = _WRITES[name]
        kinds = [False] * lead + [True] * (written * n) + [False] * (tail * n)
        prim.set_signatures(tuple(sig.make_sig(f"x{i}", sig.sig_rw.RW_WRITE if w else sig.sig_rw.RW_READ)
                                  for i, w in enumerate(kinds)))
        prim.add_prim_attr("side_effect_mem", True)
    return prim


def momentum_cfg(mu, nesterov):
    """The constant config tensor of muon_momentum_stack (build it outside the graph)."""
    return ms.Tensor(np.array([mu, 1.0 if nesterov else 0.0], np.float32))


def adamw_cfg(b1, b2, eps):
    """The constant config tensor of adamw_apply: (b1, 1 − b1, b2, 1 − b2, eps) as the graph ops see them (a
    compiled graph folds `1.0 - b1` in float32: 1 − float32(b1), not float32(1 − b1))."""
    f = np.float32
    return ms.Tensor(np.array([f(b1), f(1.0) - f(b1), f(b2), f(1.0) - f(b2), f(eps)], np.float32))


def scales_tensor(scales):
    """The constant per-matrix scale tensor of muon_apply."""
    return ms.Tensor(np.array(scales, np.float32))


def muon_momentum_stack(momenta, grads, cfg, gscale, rows, cols):
    """Writes m ← m·mu + g·gscale into every momentum of a Newton–Schulz bucket and returns the bucket's NS input
    [K, rows, cols] (g + m·mu with Nesterov, else m), the members stacked in order. cfg = momentum_cfg(...)."""
    args = (cfg, ops.reshape(gscale, (1,))) + tuple(momenta) + tuple(grads)
    return _fused("MuonMomentumStack", len(momenta), rows, cols)(*args)


def muon_apply(o, lr, decay, scales, weights):
    """Writes w ← w·decay − o_i·(lr·scale_i) into every weight of a bucket (o [K, r, c] = their NS outputs in
    order; scales = scales_tensor(...)); returns a token to depend on."""
    args = (o, ops.reshape(lr, (1,)), ops.reshape(decay, (1,)), scales) + tuple(weights)
    return _fused("MuonApply", len(weights))(*args)


def adamw_apply(weights, m, v, grads, lr, decay, bc1, bc2, gscale, cfg):
    """Writes the AdamW moments and weights of every tensor (formula in optim.py; cfg = adamw_cfg(...)); returns
    a token to depend on."""
    s = ops.concat((ops.reshape(lr, (1,)), ops.reshape(decay, (1,)), ops.reshape(bc1, (1,)), ops.reshape(bc2, (1,)),
                    ops.reshape(gscale, (1,))), 0)
    args = (cfg, s) + tuple(weights) + tuple(m) + tuple(v) + tuple(grads)
    return _fused("AdamWApply", len(weights))(*args)


def sum_squares(grads):
    """Σ g² over a tuple of float32 tensors (accumulated in double) -> float32 scalar."""
    return ops.reshape(_fused("SumSquares", len(grads))(*grads), ())


register("newton_schulz", "cpp", ("CPU",), priority=10, available=available, tolerance=TOLERANCE,
         note="C++ library ops/muon/cpu/_muon_cpu.so not built; run `python ops/build.py muon`")(newton_schulz)
