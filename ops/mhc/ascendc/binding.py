"""mHC backend "ascendc": the AscendC kernels of this folder (HcPreAv4, HcHeadAv4, HcPostAv4) on 910B / 910C.

The kernels are installed as the CANN custom-op package "ascend_v4_mhc" (`bash ops/mhc/ascendc/build.sh --install`,
see README). Bound through ops/ascend_call.py (the one binding style of every family): one `Contract` per OpDef
(op_host/mhc_av4_def.cpp; tests/ops/test_bindings.py checks them against the source), ops.Custom(aot) with reg_info
built from it on Ascend, contract stand-ins when the Ascend resolution is emulated on CPU. Same inputs as the C++
CPU backend (x flattened to [T, hc, D], a float32 cfg tensor for iters/eps); the backward is the hand-written
MindSpore-op VJP of vjp.py attached as bprop. Primitives have no attributes, so they are created once, at
registration (when the backend can run). NOT RUN on an NPU (docs/ascend.md).
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import ops

from ... import ascendc_package as _pkg
from ...ascend_call import Contract, In, primitive

FAMILY = "mhc"
VENDOR = _pkg.vendor_name(FAMILY)          # "ascend_v4_mhc"
OP_TYPES = {"hc_pre": "HcPreAv4", "hc_head": "HcHeadAv4", "hc_post": "HcPostAv4"}
NOTE = _pkg.install_note(FAMILY, OP_TYPES.values())
TOLERANCE = (1e-4, 1e-3)
# The backward unrolls the Sinkhorn at trace time, so its iteration count is fixed per primitive: V4's
# hc_sinkhorn_iters. The forward kernel reads iters from cfg, so only the gradient depends on this constant.
SINKHORN_ITERS = 20   # float32 math on the vector unit (hardware Exp/Reciprocal), bf16 streams in, f32 out

_STREAM = ("float32", "bfloat16")          # kStream: two kernel variants
_F32 = ("float32", "float32")              # kF32


def _hc_limits(shapes, attrs):
    x = shapes.get("x") or shapes.get("residual")
    if x is not None and len(x) != 3:
        return f"stream input must be [T, hc, D], got {list(x)}"
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


def _build():
    """The three primitives (no attributes: one each, created at registration)."""
    from . import vjp

    def pre_shape(x, fn, scale, base, cfg):
        return [x[0], x[2]], [x[0], x[1]], [x[0], x[1], x[1]], [x[0], fn[0]], [x[0]]

    def pre_dtype(x, fn, scale, base, cfg):
        return x, ms.float32, ms.float32, ms.float32, ms.float32

    def head_shape(x, fn, scale, base, cfg):
        return [x[0], x[2]], [x[0], fn[0]], [x[0]]

    def head_dtype(x, fn, scale, base, cfg):
        return x, ms.float32, ms.float32

    def post_shape(f, residual, post, comb):
        return residual

    def post_dtype(f, residual, post, comb):
        return f

    def pre_bprop(x, fn, scale, base, cfg, out, dout):
        gx, gfn, gscale, gbase = vjp.hc_pre_backward(x, fn, scale, base, SINKHORN_ITERS, cfg[1], out[3], out[4],
                                                     dout[0], dout[1], dout[2])
        return gx, gfn, gscale, gbase, ops.zeros_like(cfg)

    def head_bprop(x, fn, scale, base, cfg, out, dout):
        gx, gfn, gscale, gbase = vjp.hc_head_backward(x, fn, scale, base, cfg[0], out[1], out[2], dout[0])
        return gx, gfn, gscale, gbase, ops.zeros_like(cfg)

    def post_bprop(f, residual, post, comb, out, dout):
        return vjp.hc_post_backward(f, residual, post, comb, dout)

    return {
        "hc_pre": primitive(CONTRACTS["HcPreAv4"], {}, pre_shape, pre_dtype, pre_bprop, _emulate_pre),
        "hc_head": primitive(CONTRACTS["HcHeadAv4"], {}, head_shape, head_dtype, head_bprop, _emulate_head),
        "hc_post": primitive(CONTRACTS["HcPostAv4"], {}, post_shape, post_dtype, post_bprop, _emulate_post),
    }


_PRIMS = {}


def prims():
    """The primitives for the current target, created once per target kind (device / emulated)."""
    from ...registry import target
    key = "emulated" if target().emulated else "device"
    if key not in _PRIMS:
        _PRIMS[key] = _build()
    return _PRIMS[key]


def hc_pre(x, fn, scale, base, iters=20, hc_eps=1e-6, norm_eps=1e-6):
    # the bprop unrolls SINKHORN_ITERS iterations; V4 fixes hc_sinkhorn_iters = 20 (checked at model build)
    shape = x.shape
    lead, hc, D = shape[:-2], shape[-2], shape[-1]
    cfg = ms.Tensor([float(iters), float(hc_eps), float(norm_eps)], ms.float32)
    f32 = ms.float32
    y, post, comb, _, _ = _PRE(x.reshape((-1, hc, D)), ops.cast(fn, f32), ops.cast(scale, f32),
                                               ops.cast(base, f32), cfg)
    return y.reshape(lead + (D,)), post.reshape(lead + (hc,)), comb.reshape(lead + (hc, hc))


def hc_post(f, residual, post, comb):
    shape = residual.shape
    hc, D = shape[-2], shape[-1]
    out = _POST(f.reshape((-1, D)), ops.cast(residual, f.dtype).reshape((-1, hc, D)),
                                ops.cast(post, ms.float32).reshape((-1, hc)),
                                ops.cast(comb, ms.float32).reshape((-1, hc, hc)))
    return out.reshape(shape)


def hc_head(x, fn, scale, base, hc_eps=1e-6, norm_eps=1e-6):
    shape = x.shape
    hc, D = shape[-2], shape[-1]
    cfg = ms.Tensor([float(hc_eps), float(norm_eps)], ms.float32)
    f32 = ms.float32
    y, _, _ = _HEAD(x.reshape((-1, hc, D)), ops.cast(fn, f32), ops.cast(scale, f32),
                                    ops.cast(base, f32), cfg)
    return y.reshape(shape[:-2] + (D,))


_PRE = _HEAD = _POST = None       # the primitives in use (set when the backend is handed out)


def _available_and_built() -> bool:
    """available(), and the primitives exist for this target once it says yes (graph mode cannot create them
    inside construct; the registry calls this before handing out the backend)."""
    if not available():
        return False
    from ...registry import target
    if target().planning:          # `ascend-v4 plan`: nothing is built or run
        return True
    global _PRE, _HEAD, _POST
    p = prims()
    _PRE, _HEAD, _POST = p["hc_pre"], p["hc_head"], p["hc_post"]
    return True


def register_backends():
    from ...registry import register
    for op, fn in (("hc_pre", hc_pre), ("hc_post", hc_post), ("hc_head", hc_head)):
        register(op, "ascendc", ("Ascend",), priority=20, available=_available_and_built, tolerance=TOLERANCE,
                 note=NOTE, what=f"AscendC {OP_TYPES[op]} (package {VENDOR})")(fn)

