"""Hand-written backward of the mHC ops in MindSpore ops: the bprop of the Ascend backend.

On Ascend the two GEMMs of the backward (gx += graw·fn, gfn = grawᵀ·x) run on the cube units through MindSpore's
MatMul, which a vector-only custom kernel could not beat; the per-token Sinkhorn backward recomputes the 20
iterates on [T, hc, hc] (tiny) and walks them back exactly, like the C++ kernel. Inputs are what the forward
kernels return (mix = raw mixes times rstd, rstd = rsqrt(mean(x²) + norm_eps)). Pure MindSpore, so the tests
check it on CPU against the C++ backward.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops


def _f32(t):
    return ops.cast(t, ms.float32)


def _scale_vec(scale, hc, head):
    """Per-mix-row scale: (pre, post, comb) groups for hc_pre, one group for the head."""
    if head:
        return ops.broadcast_to(scale[0:1], (hc,))
    return ops.concat([ops.broadcast_to(scale[0:1], (hc,)), ops.broadcast_to(scale[1:2], (hc,)),
                       ops.broadcast_to(scale[2:3], (hc * hc,))])


def _sinkhorn_grad(c0, g, iters, eps):
    """d loss / d c0 through softmax + eps, column norm, (iters - 1) x (row, column) norms."""
    p = ops.softmax(c0, -1)
    c = p + eps
    trace = ()
    for it in range(iters):
        if it > 0:
            den = ops.sum(c, -1, True) + eps
            c = c / den
            trace = trace + ((c, -1, den),)
        den = ops.sum(c, -2, True) + eps
        c = c / den
        trace = trace + ((c, -2, den),)
    for out, axis, den in trace[::-1]:      # out = in / den  =>  g_in = (g - sum_axis(g * out)) / den
        g = (g - ops.sum(g * out, axis, True)) / den
    return p * (g - ops.sum(g * p, -1, True))


def _mix_backward(x, fn, mix, rstd, gz, scale, hc, head):
    """Shared tail: gz (d loss / d logits) -> (gv, graw, v, gscale, gbase); gv is the mix path's part of gx."""
    T, D = x.shape[0], x.shape[2]
    K = hc * D
    xf = _f32(x)
    v = xf.reshape(T, K)
    svec = _scale_vec(scale, hc, head)
    gbase = ops.sum(gz, 0)
    gzm = gz * mix
    if head:
        gscale = ops.sum(gzm).reshape(1)
    else:
        gscale = ops.stack([ops.sum(gzm[:, :hc]), ops.sum(gzm[:, hc:2 * hc]), ops.sum(gzm[:, 2 * hc:])])
    gmix = gz * svec
    r = ops.expand_dims(rstd, -1)
    graw = gmix * r                                             # mix = raw * r
    gr = ops.sum(gmix * mix, -1, True) / r                      # d loss / d r
    gv = ops.matmul(graw, fn) - (gr * r * r * r / K) * v        # r = (mean(v²) + eps)^-1/2
    return gv, graw, v, gscale, gbase


def hc_pre_backward(x, fn, scale, base, iters, hc_eps, mix, rstd, gy, gpost, gcomb):
    """Cotangents of (y, post, comb) -> (gx, gfn, gscale, gbase); x [T, hc, D], everything else float32."""
    T, hc, D = x.shape
    fn, scale, base = _f32(fn), _f32(scale), _f32(base)
    z = mix * _scale_vec(scale, hc, False) + base
    s_pre = ops.sigmoid(z[:, :hc])
    s_post = ops.sigmoid(z[:, hc:2 * hc])
    gy32 = _f32(gy)
    xf = _f32(x)
    gpre = ops.sum(ops.expand_dims(gy32, 1) * xf, -1)
    gc0 = _sinkhorn_grad(z[:, 2 * hc:].reshape(T, hc, hc), _f32(gcomb), iters, hc_eps)
    gz = ops.concat([gpre * s_pre * (1 - s_pre), _f32(gpost) * 2 * s_post * (1 - s_post), gc0.reshape(T, hc * hc)], 1)
    gv, graw, v, gscale, gbase = _mix_backward(x, fn, mix, rstd, gz, scale, hc, False)
    gx = ops.expand_dims(s_pre + hc_eps, -1) * ops.expand_dims(gy32, 1) + gv.reshape(T, hc, D)
    gfn = ops.matmul(graw.swapaxes(0, 1), v)
    return ops.cast(gx, x.dtype), gfn, gscale, gbase


def hc_head_backward(x, fn, scale, base, hc_eps, mix, rstd, gy):
    T, hc, D = x.shape
    fn, scale, base = _f32(fn), _f32(scale), _f32(base)
    s_pre = ops.sigmoid(mix * scale[0] + base)
    gy32 = _f32(gy)
    gpre = ops.sum(ops.expand_dims(gy32, 1) * _f32(x), -1)
    gz = gpre * s_pre * (1 - s_pre)
    gv, graw, v, gscale, gbase = _mix_backward(x, fn, mix, rstd, gz, scale, hc, True)
    gx = ops.expand_dims(s_pre + hc_eps, -1) * ops.expand_dims(gy32, 1) + gv.reshape(T, hc, D)
    gfn = ops.matmul(graw.swapaxes(0, 1), v)
    return ops.cast(gx, x.dtype), gfn, gscale, gbase


def hc_post_backward(f, residual, post, comb, gout):
    """out[k] = post[k] f + Σ_j comb[j, k] residual[j]  ->  (gf, gresidual, gpost, gcomb)."""
    g = _f32(gout)
    post, comb = _f32(post), _f32(comb)
    gf = ops.sum(ops.expand_dims(post, -1) * g, 1)
    gres = ops.matmul(comb, g)                                   # Σ_k comb[j, k] g[k]
    gpost = ops.sum(g * ops.expand_dims(_f32(f), 1), -1)
    gcomb = ops.matmul(_f32(residual), g.swapaxes(-1, -2))       # Σ_d residual[j, d] g[k, d]
    return ops.cast(gf, f.dtype), ops.cast(gres, residual.dtype), gpost, gcomb
