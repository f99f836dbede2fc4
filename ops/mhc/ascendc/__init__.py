"""mHC backend "ascendc": the AscendC kernels of this folder (HcPreAv4, HcHeadAv4, HcPostAv4) on 910B / 910C.

The kernels are installed as the CANN custom-op package "ascend_v4_mhc" (`bash ops/mhc/ascendc/build.sh --install`,
see README). MindSpore calls them through ops.Custom(func="<OpType>", func_type="aot") - graph mode and PyNative -
with the same inputs as the C++ CPU backend (x flattened to [T, hc, D], cfg tensor for iters/eps), and the
backward is the hand-written MindSpore-op VJP of vjp.py attached with bprop.

Registered for platform "Ascend" only; available() (ops/ascendc_package.py, the same rule for every family) needs
an Ascend device and an installed package declaring all three op types, so on CPU the registry never picks it.
Nothing here has run on an NPU yet (see README "verified here / needs hardware").
"""
from __future__ import annotations

from ... import ascendc_package as _pkg

FAMILY = "mhc"
VENDOR = _pkg.vendor_name(FAMILY)          # "ascend_v4_mhc"
OP_TYPES = {"hc_pre": "HcPreAv4", "hc_head": "HcHeadAv4", "hc_post": "HcPostAv4"}
NOTE = _pkg.install_note(FAMILY, OP_TYPES.values())
TOLERANCE = (1e-4, 1e-3)
# The backward unrolls the Sinkhorn at trace time, so its iteration count is fixed per primitive: V4's
# hc_sinkhorn_iters. The forward kernel reads iters from cfg, so only the gradient depends on this constant.
SINKHORN_ITERS = 20   # float32 math on the vector unit (hardware Exp/Reciprocal), bf16 streams in, f32 out


def package_installed() -> bool:
    """True when a package CANN would find declares all three op types (any SoC's ops-info json)."""
    return _pkg.package_installed(VENDOR, OP_TYPES.values())


def available() -> bool:
    """Ascend device AND the package with every op type (ops/ascendc_package.py: one rule for all families)."""
    return _pkg.available(VENDOR, OP_TYPES.values())


def _build():
    """Create the Custom primitives and the public functions (only when the package exists: on Ascend)."""
    import mindspore as ms
    from mindspore import ops

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

    prims = {
        "hc_pre": ops.Custom(OP_TYPES["hc_pre"], pre_shape, pre_dtype, func_type="aot", bprop=pre_bprop),
        "hc_head": ops.Custom(OP_TYPES["hc_head"], head_shape, head_dtype, func_type="aot", bprop=head_bprop),
        "hc_post": ops.Custom(OP_TYPES["hc_post"], post_shape, post_dtype, func_type="aot", bprop=post_bprop),
    }
    return prims


_PRIMS = _build() if available() else {}


def hc_pre(x, fn, scale, base, iters=20, hc_eps=1e-6, norm_eps=1e-6):
    import mindspore as ms
    from mindspore import ops
    if iters != SINKHORN_ITERS:
        raise ValueError(f"the ascendc hc_pre backward is built for {SINKHORN_ITERS} Sinkhorn iterations")
    shape = x.shape
    lead, hc, D = shape[:-2], shape[-2], shape[-1]
    cfg = ms.Tensor([float(iters), float(hc_eps), float(norm_eps)], ms.float32)
    f32 = ms.float32
    y, post, comb, _, _ = _PRIMS["hc_pre"](x.reshape((-1, hc, D)), ops.cast(fn, f32), ops.cast(scale, f32),
                                           ops.cast(base, f32), cfg)
    return y.reshape(lead + (D,)), post.reshape(lead + (hc,)), comb.reshape(lead + (hc, hc))


def hc_post(f, residual, post, comb):
    import mindspore as ms
    from mindspore import ops
    shape = residual.shape
    hc, D = shape[-2], shape[-1]
    out = _PRIMS["hc_post"](f.reshape((-1, D)), ops.cast(residual, f.dtype).reshape((-1, hc, D)),
                            ops.cast(post, ms.float32).reshape((-1, hc)),
                            ops.cast(comb, ms.float32).reshape((-1, hc, hc)))
    return out.reshape(shape)


def hc_head(x, fn, scale, base, hc_eps=1e-6, norm_eps=1e-6):
    import mindspore as ms
    from mindspore import ops
    shape = x.shape
    hc, D = shape[-2], shape[-1]
    cfg = ms.Tensor([float(hc_eps), float(norm_eps)], ms.float32)
    f32 = ms.float32
    y, _, _ = _PRIMS["hc_head"](x.reshape((-1, hc, D)), ops.cast(fn, f32), ops.cast(scale, f32),
                                ops.cast(base, f32), cfg)
    return y.reshape(shape[:-2] + (D,))


def register_backends():
    from ...registry import register
    for op, fn in (("hc_pre", hc_pre), ("hc_post", hc_post), ("hc_head", hc_head)):
        register(op, "ascendc", ("Ascend",), priority=20, available=available, tolerance=TOLERANCE, note=NOTE)(fn)
