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


def hc_pre(x, fn, scale, base, iters=20, hc_eps=1e-6, norm_eps=1e-6):
    """x [..., hc, D] -> (y [..., D], post [..., hc], comb [..., hc, hc])."""
    hc = x.shape[-2]
    mix = _mixes(x, fn, norm_eps)
    scale = np.asarray(scale, np.float64)
    base = np.asarray(base, np.float64)
    pre = _sigmoid(mix[..., :hc] * scale[0] + base[:hc]) + hc_eps
    post = 2.0 * _sigmoid(mix[..., hc:2 * hc] * scale[1] + base[hc:2 * hc])
    comb = (mix[..., 2 * hc:] * scale[2] + base[2 * hc:]).reshape(*mix.shape[:-1], hc, hc)
    comb = sinkhorn(comb, iters, hc_eps)
    y = np.sum(pre[..., None] * x.astype(np.float64), axis=-2)
    return y, post, comb


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
