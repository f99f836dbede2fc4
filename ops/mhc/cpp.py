"""mHC backend "cpp": the C++ kernels of ops/mhc/cpu/ through ops.Custom(func_type="aot"), backward via bprop.

Built at install time (`python ops/build.py mhc` -> ops/mhc/cpu/_mhc_cpu.so); when the library is missing this
backend reports itself unavailable and the registry falls back to the composite. Works in PyNative, ms.jit and
GRAPH_MODE. Streams (x, y, f, residual, out) may be float32 or bfloat16 (bf16 reaches the kernel as raw 16-bit
words, compute is float32); fn/scale/base/post/comb are cast to float32, as the reference keeps them.

The forward kernels also return the per-token mixes and rsqrt factor (25 floats per token for hc_pre): the
backward kernel reuses them instead of redoing the 24 x hc*D GEMV, and recomputes each token's 20 Sinkhorn
iterates itself (nothing per-iteration is stored).
"""
from __future__ import annotations

import os

import mindspore as ms
from mindspore import ops

from ..build import library_path
from ..registry import register

LIB = library_path("mhc")
TOLERANCE = (2e-5, 2e-4)      # float32 streams with float32 GEMV partials; coefficient math is in double


def available() -> bool:
    return os.path.exists(LIB)


# ------------------------------------------------------------------------------------ shape/dtype inference
def _pre_shape(x, fn, scale, base, cfg):
    T, hc, D = x
    return [T, D], [T, hc], [T, hc, hc], [T, fn[0]], [T]


def _pre_dtype(x, fn, scale, base, cfg):
    return x, ms.float32, ms.float32, ms.float32, ms.float32


def _head_shape(x, fn, scale, base, cfg):
    T, hc, D = x
    return [T, D], [T, fn[0]], [T]


def _head_dtype(x, fn, scale, base, cfg):
    return x, ms.float32, ms.float32


def _grads_shape(x, fn, scale, base, *rest):
    return x, fn, scale, base


def _grads_dtype(x, fn, scale, base, *rest):
    return x, fn, scale, base


def _post_shape(f, residual, post, comb):
    return residual


def _post_dtype(f, residual, post, comb):
    return f


def _post_grads_shape(f, residual, post, comb, gout):
    return f, residual, post, comb


def _post_grads_dtype(f, residual, post, comb, gout):
    return f, residual, post, comb


def _custom(name, shape, dtype, bprop=None):
    return ops.Custom(f"{LIB}:{name}", out_shape=shape, out_dtype=dtype, func_type="aot", bprop=bprop)


# ------------------------------------------------------------------------------------------- primitives
if available():
    _PRE_BWD = _custom("HcPreBwd", _grads_shape, _grads_dtype)
    _HEAD_BWD = _custom("HcHeadBwd", _grads_shape, _grads_dtype)
    _POST_BWD = _custom("HcPostBwd", _post_grads_shape, _post_grads_dtype)

    def _pre_bprop(x, fn, scale, base, cfg, out, dout):
        gx, gfn, gscale, gbase = _PRE_BWD(x, fn, scale, base, cfg, out[3], out[4], dout[0], dout[1], dout[2])
        return gx, gfn, gscale, gbase, ops.zeros_like(cfg)

    def _head_bprop(x, fn, scale, base, cfg, out, dout):
        gx, gfn, gscale, gbase = _HEAD_BWD(x, fn, scale, base, cfg, out[1], out[2], dout[0])
        return gx, gfn, gscale, gbase, ops.zeros_like(cfg)

    def _post_bprop(f, residual, post, comb, out, dout):
        return _POST_BWD(f, residual, post, comb, dout)

    _PRE = _custom("HcPreFwd", _pre_shape, _pre_dtype, _pre_bprop)
    _HEAD = _custom("HcHeadFwd", _head_shape, _head_dtype, _head_bprop)
    _POST = _custom("HcPostFwd", _post_shape, _post_dtype, _post_bprop)


# --------------------------------------------------------------------------------------- public functions
def _f32(t):
    return ops.cast(t, ms.float32)


def hc_pre(x, fn, scale, base, iters=20, hc_eps=1e-6, norm_eps=1e-6):
    """x [..., hc, D] -> (y [..., D] in x.dtype, post [..., hc], comb [..., hc, hc]) in float32."""
    shape = x.shape
    lead, hc, D = shape[:-2], shape[-2], shape[-1]
    cfg = ms.Tensor([float(iters), float(hc_eps), float(norm_eps)], ms.float32)
    y, post, comb, _, _ = _PRE(x.reshape((-1, hc, D)), _f32(fn), _f32(scale), _f32(base), cfg)
    return y.reshape(lead + (D,)), post.reshape(lead + (hc,)), comb.reshape(lead + (hc, hc))


def hc_post(f, residual, post, comb):
    """out[..., k, :] = post[k]·f + Σ_j comb[j, k]·residual[j] (transposed residual mix), dtype of f."""
    shape = residual.shape
    hc, D = shape[-2], shape[-1]
    out = _POST(f.reshape((-1, D)), ops.cast(residual, f.dtype).reshape((-1, hc, D)),
                _f32(post).reshape((-1, hc)), _f32(comb).reshape((-1, hc, hc)))
    return out.reshape(shape)


def hc_head(x, fn, scale, base, hc_eps=1e-6, norm_eps=1e-6):
    """Final stream collapse: x [..., hc, D] -> [..., D] (sigmoid weights, no post, no Sinkhorn)."""
    shape = x.shape
    hc, D = shape[-2], shape[-1]
    cfg = ms.Tensor([float(hc_eps), float(norm_eps)], ms.float32)
    y, _, _ = _HEAD(x.reshape((-1, hc, D)), _f32(fn), _f32(scale), _f32(base), cfg)
    return y.reshape(shape[:-2] + (D,))


_NOTE = "C++ library ops/mhc/cpu/_mhc_cpu.so not built; run `python ops/build.py mhc`"
register("hc_pre", "cpp", ("CPU",), priority=10, available=available, tolerance=TOLERANCE, note=_NOTE)(hc_pre)
register("hc_post", "cpp", ("CPU",), priority=10, available=available, tolerance=TOLERANCE, note=_NOTE)(hc_post)
register("hc_head", "cpp", ("CPU",), priority=10, available=available, tolerance=TOLERANCE, note=_NOTE)(hc_head)
