"""mHC in float64 NumPy: the golden every other backend is tested against.

As DeepSeek's reference computes it (`hc_pre`, `hc_post`, the `hc_split_sinkhorn` kernel), where it differs from
the paper's wording (docs/design.md, conventions)."""
import numpy as np


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _mixes(x, fn, norm_eps):
    """x [..., hc, D] -> fn·vec(x) scaled by rsqrt(mean(vec(x)^2) + eps): RMS norm applied after the matmul."""
    v = x.reshape(*x.shape[:-2], -1).astype(np.float64)
    rs = 1.0 / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + norm_eps)
    return (v @ fn.astype(np.float64).T) * rs


def sinkhorn(c, iters, eps):
    """Code variant: softmax over rows + eps, column norm, then (iters-1) x (row norm, column norm)."""
    c = c - c.max(axis=-1, keepdims=True)
    c = np.exp(c)
    c = c / c.sum(axis=-1, keepdims=True) + eps
    c = c / (c.sum(axis=-2, keepdims=True) + eps)
    for _ in range(iters - 1):
        c = c / (c.sum(axis=-1, keepdims=True) + eps)
        c = c / (c.sum(axis=-2, keepdims=True) + eps)
    return c


def hc_mixes(x, fn, scale, base, iters=20, hc_eps=1e-6, norm_eps=1e-6):
    """x [..., hc, D] -> (pre [..., hc], post [..., hc], comb [..., hc, hc]): one sublayer's mHC coefficients."""
    hc = x.shape[-2]
    mix = _mixes(x, fn, norm_eps)
    scale = np.asarray(scale, np.float64)
    base = np.asarray(base, np.float64)
    pre = _sigmoid(mix[..., :hc] * scale[0] + base[:hc]) + hc_eps
    post = 2.0 * _sigmoid(mix[..., hc:2 * hc] * scale[1] + base[hc:2 * hc])
    comb = (mix[..., 2 * hc:] * scale[2] + base[2 * hc:]).reshape(*mix.shape[:-1], hc, hc)
    return pre, post, sinkhorn(comb, iters, hc_eps)


def hc_collapse(x, pre):
    """y = Σ_s pre[s]·x[s]: the sublayer input collapsed from the streams x [..., hc, D]."""
    return np.sum(np.asarray(pre, np.float64)[..., None] * np.asarray(x, np.float64), axis=-2)


def hc_pre(x, fn, scale, base, iters=20, hc_eps=1e-6, norm_eps=1e-6):
    """x [..., hc, D] -> (y [..., D], post [..., hc], comb [..., hc, hc]) — V4: the sublayer collapses its own
    input with its own pre. (DeepSeek-V4.1's pipelined mHC collapses with the previous sublayer's pre:
    hc_mixes + hc_collapse, docs/deepseek-v4.1.md.)"""
    pre, post, comb = hc_mixes(x, fn, scale, base, iters, hc_eps, norm_eps)
    return hc_collapse(x, pre), post, comb


def hc_post(f, residual, post, comb):
    """out[k] = post[k]·f + Σ_j comb[j, k]·residual[j]  (the transposed residual mix)."""
    f = f.astype(np.float64)
    residual = residual.astype(np.float64)
    return post[..., :, None] * f[..., None, :] + np.einsum("...jk,...jd->...kd", comb, residual)


def hc_head(x, fn, scale, base, hc_eps=1e-6, norm_eps=1e-6):
    """Final collapse: sigmoid weights, no post, no Sinkhorn."""
    mix = _mixes(x, fn, norm_eps)
    pre = _sigmoid(mix * np.asarray(scale, np.float64)[0] + np.asarray(base, np.float64)) + hc_eps
    return np.sum(pre[..., None] * x.astype(np.float64), axis=-2)
