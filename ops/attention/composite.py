"""Compressor, lightning indexer and sparse attention as MindSpore composites (graph mode + autodiff).

Static shapes throughout: index lists have fixed widths with -1 padding, as the vendor ops take them.
The composite materialises [S, K] gathers and the [S, N] indexer score matrix; it is the portable
fallback, not the long-context path (the fused kernels stream instead).
"""
import mindspore as ms
from mindspore import ops

from ..common import NEG_INF, linear, rms_norm


def apply_rope(x, cos, sin, inverse=False):
    """Interleaved-pair rotation of the last 2*cos.shape[-1] dims; cos/sin broadcast to x[..., pairs]."""
    rd = cos.shape[-1] * 2
    head = x[..., :x.shape[-1] - rd]
    r = x[..., x.shape[-1] - rd:].reshape(x.shape[:-1] + (rd // 2, 2))
    a = r[..., 0]
    b = r[..., 1]
    if inverse:
        sin = -sin
    rot = ops.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(x.shape[:-1] + (rd,))
    return ops.concat([head, rot], -1)


def compress_kv(x, wkv, wgate, ape, norm_w, ratio, overlap, norm_eps=1e-6):
    B, S, _ = x.shape
    n = S // ratio
    c = norm_w.shape[0]
    xf = ops.cast(x[:, :n * ratio], ms.float32)
    kv = linear(xf, ops.cast(wkv, ms.float32)).reshape(B, n, ratio, -1)
    sc = linear(xf, ops.cast(wgate, ms.float32)).reshape(B, n, ratio, -1) + ape
    if overlap:
        # block i's "b" slots are block i-1's first-half channels; block 0 has none (weight 0)
        prev_kv = ops.zeros((B, 1, ratio, c), kv.dtype)
        prev_sc = ops.full((B, 1, ratio, c), NEG_INF, dtype=sc.dtype)
        if n > 1:   # (an empty slice has no gradient kernel on CPU)
            prev_kv = ops.concat([prev_kv, kv[:, :n - 1, :, :c]], 1)
            prev_sc = ops.concat([prev_sc, sc[:, :n - 1, :, :c]], 1)
        kv = ops.concat([prev_kv, kv[..., c:]], 2)
        sc = ops.concat([prev_sc, sc[..., c:]], 2)
    p = ops.softmax(sc, 2)
    return rms_norm(ops.sum(kv * p, 2), norm_w, norm_eps)


def window_indices(S, window, start_pos=0):
    w = min(S + start_pos, window)
    t = ops.arange(S, dtype=ms.int32).reshape(S, 1) + start_pos
    idx = t - (w - 1) + ops.arange(w, dtype=ms.int32).reshape(1, w)
    return ops.where(idx >= 0, idx, -ops.ones_like(idx))


def visible_count(S, ratio, start_pos=0):
    return (ops.arange(S, dtype=ms.int32) + (start_pos + 1)) // ratio


def compressed_indices(S, ratio, start_pos=0):
    n = (start_pos + S) // ratio
    idx = ops.broadcast_to(ops.arange(n, dtype=ms.int32).reshape(1, n), (S, n))
    vis = visible_count(S, ratio, start_pos).reshape(S, 1)
    return ops.where(idx < vis, idx, -ops.ones_like(idx))


def lightning_indexer(q, k, w, ratio, topk, start_pos=0):
    B, S = q.shape[0], q.shape[1]
    N = k.shape[1]
    qf = ops.cast(q, ms.float32)
    kf = ops.cast(k, ms.float32)
    # [B, S, H, N] -> weighted head sum -> [B, S, N]
    s = ops.relu(ops.matmul(qf, ops.expand_dims(kf, 1).swapaxes(-1, -2)))
    score = ops.sum(s * ops.expand_dims(ops.cast(w, ms.float32), -1), 2)
    vis = visible_count(S, ratio, start_pos).reshape(1, S, 1)
    ent = ops.arange(N, dtype=ms.int32).reshape(1, 1, N)
    score = ops.stop_gradient(ops.where(ent < vis, score, ops.full_like(score, NEG_INF)))
    k = min(topk, N)
    # Exact set selection with ties to the lower id: everything above the k-th value, then the first
    # (by id) of the entries equal to it until k are taken.
    kth = ops.topk(score, k)[0][..., k - 1:k]
    above = score > kth
    tied = score == kth
    room = k - ops.sum(ops.cast(above, ms.int32), -1, True)
    take = ops.logical_or(above, ops.logical_and(tied, ops.cumsum(ops.cast(tied, ms.int32), -1) <= room))
    take = ops.logical_and(take, ent < vis)
    # unique keys: taken entries sort first, by id; the rest after them
    key = ops.cast(ops.where(take, ent, ent + N), ms.float32)
    _, idx = ops.topk(-key, k)
    idx = ops.cast(idx, ms.int32)
    return ops.where(ops.gather_elements(take, -1, idx), idx, -ops.ones_like(idx))


def sparse_attention(q, kv, sink, window_idx, compressed_idx, scale):
    B, S, H, D = q.shape
    N = kv.shape[1]
    idx = window_idx if compressed_idx is None else ops.concat([window_idx, compressed_idx], -1)
    K = idx.shape[-1]
    valid = idx >= 0
    base = (ops.arange(B, dtype=ms.int32) * N).reshape(B, 1, 1)
    flat = (ops.where(valid, idx, ops.zeros_like(idx)) + base).reshape(-1)
    g = ops.gather(kv.reshape(B * N, D), flat, 0).reshape(B, S, K, D)
    gf = ops.cast(g, ms.float32)
    z = ops.matmul(ops.cast(q, ms.float32), gf.swapaxes(-1, -2)) * scale           # [B, S, H, K]
    z = ops.where(ops.expand_dims(valid, 2), z, ops.full_like(z, NEG_INF))
    sk = ops.cast(sink, ms.float32).reshape(1, 1, H, 1)
    m = ops.stop_gradient(ops.maximum(ops.max(z, -1, True)[0], sk))
    e = ops.exp(z - m)
    p = e / (ops.sum(e, -1, True) + ops.exp(sk - m))                                   # sink: denominator only
    return ops.cast(ops.matmul(p, gf), q.dtype)
