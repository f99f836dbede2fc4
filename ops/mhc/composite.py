"""mHC as a MindSpore composite: graph-mode friendly, differentiable by autodiff, bf16-ready on Ascend.

Coefficients are always computed in float32 (the reference does the same in every precision).
"""
import mindspore as ms
from mindspore import ops

from ..common import linear, rsqrt


def _mixes(x, fn, norm_eps):
    shape = x.shape
    v = ops.cast(x, ms.float32).reshape(shape[:-2] + (shape[-2] * shape[-1],))
    rs = rsqrt(ops.mean(v * v, -1, True) + norm_eps)
    return linear(v, fn) * rs


def sinkhorn(c, iters, eps):
    c = ops.softmax(c, -1) + eps
    c = c / (ops.sum(c, -2, True) + eps)
    for _ in range(iters - 1):
        c = c / (ops.sum(c, -1, True) + eps)
        c = c / (ops.sum(c, -2, True) + eps)
    return c


def hc_mixes(x, fn, scale, base, iters=20, hc_eps=1e-6, norm_eps=1e-6):
    hc = x.shape[-2]
    mix = _mixes(x, fn, norm_eps)
    pre = ops.sigmoid(mix[..., :hc] * scale[0] + base[:hc]) + hc_eps
    post = 2.0 * ops.sigmoid(mix[..., hc:2 * hc] * scale[1] + base[hc:2 * hc])
    comb = (mix[..., 2 * hc:] * scale[2] + base[2 * hc:]).reshape(mix.shape[:-1] + (hc, hc))
    comb = sinkhorn(comb, iters, hc_eps)
    return pre, post, comb


def hc_collapse(x, pre):
    """y = Σ_s pre[s]·x[s] in float32, cast back to x's dtype."""
    return ops.cast(ops.sum(ops.expand_dims(pre, -1) * ops.cast(x, ms.float32), -2), x.dtype)


def hc_pre(x, fn, scale, base, iters=20, hc_eps=1e-6, norm_eps=1e-6):
    pre, post, comb = hc_mixes(x, fn, scale, base, iters, hc_eps, norm_eps)
    return hc_collapse(x, pre), post, comb


def hc_post(f, residual, post, comb):
    out = ops.expand_dims(post, -1) * ops.expand_dims(ops.cast(f, ms.float32), -2)
    # stream k gathers column k of comb: combᵀ · residual
    out = out + ops.matmul(comb.swapaxes(-1, -2), ops.cast(residual, ms.float32))
    return ops.cast(out, f.dtype)


def hc_head(x, fn, scale, base, hc_eps=1e-6, norm_eps=1e-6):
    mix = _mixes(x, fn, norm_eps)
    pre = ops.sigmoid(mix * scale[0] + base) + hc_eps
    y = ops.sum(ops.expand_dims(pre, -1) * ops.cast(x, ms.float32), -2)
    return ops.cast(y, x.dtype)
