"""mHC backend "ascendc": the AscendC kernels of this folder (HcPreAv4, HcHeadAv4, HcPostAv4) on 910B / 910C.

The kernels are installed as the CANN custom-op package "ascend_v4_mhc" (`bash ops/mhc/ascendc/build.sh --install`,
see README). Bound through ops/ascend_call.py (the one binding style of every family): one `Contract` per OpDef
(op_host/mhc_av4_def.cpp; tests/ops/test_bindings.py checks them against the source), ops.Custom(aot) with reg_info
built from it on Ascend, contract stand-ins when the Ascend resolution is emulated on CPU. Same inputs as the C++
CPU backend (x flattened to [T, hc, D], a float32 cfg tensor for iters/eps); the backward is the hand-written
MindSpore-op VJP of vjp.py attached as bprop (one HcPreAv4 primitive per Sinkhorn count: the bprop unrolls it).
NOT RUN on an NPU (docs/ascend.md).
"""
from __future__ import annotations

import functools

import mindspore as ms
import numpy as np
from mindspore import ops

from ... import ascendc_package as _pkg
from ...ascend_call import Contract, In, primitive
from . import vjp

FAMILY = "mhc"
VENDOR = _pkg.vendor_name(FAMILY)          # "ascend_v4_mhc"
OP_TYPES = {"hc_pre": "HcPreAv4", "hc_head": "HcHeadAv4", "hc_post": "HcPostAv4"}
NOTE = _pkg.install_note(FAMILY, OP_TYPES.values())
TOLERANCE = (1e-4, 1e-3)
SINKHORN_ITERS = 20   # V4's hc_sinkhorn_iters; projection on the Cube unit (float32 accumulation), the rest
                      # float32 on the vector unit, bf16 streams in, f32 out

_STREAM = ("float32", "bfloat16")          # kStream: two kernel variants
_F32 = ("float32", "float32")              # kF32


def _hc_limits(shapes, attrs):
    x = shapes.get("x") or shapes.get("residual")
    if x is not None and len(x) != 3:
        return f"stream input must be [T, hc, D], got {list(x)}"
    if shapes.get("fn") is not None and x[1] * x[2] > 65535:
        # hc_pre / hc_head project on the Cube unit: an x row is one ND2NZ source row (16-bit row stride)
        return f"hc * D must be at most 65535 for the Cube projection, got {x[1]} * {x[2]}"
    return None


CONTRACTS = {
    "HcPreAv4": Contract("HcPreAv4", "ascendc",
                         (In("x", False, _STREAM), In("fn", False, _F32), In("scale", False, _F32),
                          In("base", False, _F32), In("cfg", False, _F32)),
                         ("y", "post", "comb", "mix", "rstd"), (), _hc_limits),
    "HcHeadAv4": Contract("HcHeadAv4", "ascendc",
                          (In("x", False, _STREAM), In("fn", False, _F32), In("scale", False, _F32),
                           In("base", False, _F32), In("cfg", False, _F32)),
                          ("y", "mix", "rstd"), (), _hc_limits),
    "HcPostAv4": Contract("HcPostAv4", "ascendc",
                          (In("f", False, _STREAM), In("residual", False, _STREAM), In("post", False, _F32),
                           In("comb", False, _F32)),
                          ("out",), (), _hc_limits),
}


def package_installed() -> bool:
    """True when a package CANN would find declares all three op types (any SoC's ops-info json)."""
    return _pkg.package_installed(VENDOR, OP_TYPES.values())


def available() -> bool:
    """Ascend device AND the package with every op type (ops/ascendc_package.py: one rule for all families)."""
    return _pkg.available(VENDOR, OP_TYPES.values())


# ------------------------------------------------------------------------------------ CPU emulation (reference)
def _emulate_pre(x, fn, scale, base, cfg):
    from .. import reference as R
    iters, hc_eps, norm_eps = int(cfg[0]), float(cfg[1]), float(cfg[2])
    y, post, comb = R.hc_pre(x, fn, scale, base, iters, hc_eps, norm_eps)
    v = x.reshape(x.shape[0], -1).astype(np.float64)
    rstd = 1.0 / np.sqrt(np.mean(v * v, -1) + norm_eps)
    return y, post, comb, R._mixes(x, fn, norm_eps), rstd


def _emulate_head(x, fn, scale, base, cfg):
    from .. import reference as R
    hc_eps, norm_eps = float(cfg[0]), float(cfg[1])
    v = x.reshape(x.shape[0], -1).astype(np.float64)
    rstd = 1.0 / np.sqrt(np.mean(v * v, -1) + norm_eps)
    return R.hc_head(x, fn, scale, base, hc_eps, norm_eps), R._mixes(x, fn, norm_eps), rstd


def _emulate_post(f, residual, post, comb):
    from .. import reference as R
    return R.hc_post(f, residual, post, comb)


def _pre_shape(x, fn, scale, base, cfg):
    return [x[0], x[2]], [x[0], x[1]], [x[0], x[1], x[1]], [x[0], fn[0]], [x[0]]


def _pre_dtype(x, fn, scale, base, cfg):
    return x, ms.float32, ms.float32, ms.float32, ms.float32


def _head_shape(x, fn, scale, base, cfg):
    return [x[0], x[2]], [x[0], fn[0]], [x[0]]


def _head_dtype(x, fn, scale, base, cfg):
    return x, ms.float32, ms.float32


def _post_shape(f, residual, post, comb):
    return residual


def _post_dtype(f, residual, post, comb):
    return f


@functools.lru_cache(None)
def _pre(iters):
    """HcPreAv4 for `iters` Sinkhorn iterations: the forward kernel reads iters from cfg, but the bprop unrolls
    them at trace time, so each count has its own primitive."""
    def bprop(x, fn, scale, base, cfg, out, dout):
        gx, gfn, gscale, gbase = vjp.hc_pre_backward(x, fn, scale, base, iters, cfg[1], out[3], out[4],
                                                     dout[0], dout[1], dout[2])
        return gx, gfn, gscale, gbase, ops.zeros_like(cfg)

    return primitive(CONTRACTS["HcPreAv4"], {}, _pre_shape, _pre_dtype, bprop, _emulate_pre)


@functools.lru_cache(None)
def _head():
    def bprop(x, fn, scale, base, cfg, out, dout):
        gx, gfn, gscale, gbase = vjp.hc_head_backward(x, fn, scale, base, cfg[0], out[1], out[2], dout[0])
        return gx, gfn, gscale, gbase, ops.zeros_like(cfg)

    return primitive(CONTRACTS["HcHeadAv4"], {}, _head_shape, _head_dtype, bprop, _emulate_head)


@functools.lru_cache(None)
def _post():
    def bprop(f, residual, post, comb, out, dout):
        return vjp.hc_post_backward(f, residual, post, comb, dout)

    return primitive(CONTRACTS["HcPostAv4"], {}, _post_shape, _post_dtype, bprop, _emulate_post)


def hc_pre(x, fn, scale, base, iters=20, hc_eps=1e-6, norm_eps=1e-6):
    shape = x.shape
    lead, hc, D = shape[:-2], shape[-2], shape[-1]
    cfg = ms.Tensor([float(iters), float(hc_eps), float(norm_eps)], ms.float32)
    f32 = ms.float32
    y, post, comb, _, _ = _pre(int(iters))(x.reshape((-1, hc, D)), ops.cast(fn, f32), ops.cast(scale, f32),
                                           ops.cast(base, f32), cfg)
    return y.reshape(lead + (D,)), post.reshape(lead + (hc,)), comb.reshape(lead + (hc, hc))


def hc_post(f, residual, post, comb):
    shape = residual.shape
    hc, D = shape[-2], shape[-1]
    out = _post()(f.reshape((-1, D)), ops.cast(residual, f.dtype).reshape((-1, hc, D)),
                  ops.cast(post, ms.float32).reshape((-1, hc)), ops.cast(comb, ms.float32).reshape((-1, hc, hc)))
    return out.reshape(shape)


def hc_head(x, fn, scale, base, hc_eps=1e-6, norm_eps=1e-6):
    shape = x.shape
    hc, D = shape[-2], shape[-1]
    cfg = ms.Tensor([float(hc_eps), float(norm_eps)], ms.float32)
    f32 = ms.float32
    y, _, _ = _head()(x.reshape((-1, hc, D)), ops.cast(fn, f32), ops.cast(scale, f32), ops.cast(base, f32), cfg)
    return y.reshape(shape[:-2] + (D,))


def register_backends():
    from ...registry import on_target_change, register
    for cache in (_pre, _head, _post):      # device primitives and CPU stand-ins differ
        on_target_change(cache.cache_clear)
    for op, fn in (("hc_pre", hc_pre), ("hc_post", hc_post), ("hc_head", hc_head)):
        register(op, "ascendc", ("Ascend",), priority=20, available=available, tolerance=TOLERANCE,
                 note=NOTE, what=f"AscendC {OP_TYPES[op]} (package {VENDOR})")(fn)

