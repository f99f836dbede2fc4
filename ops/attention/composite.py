"""Compressor, lightning indexer and sparse attention as MindSpore composites (graph mode + autodiff).

Static shapes throughout: index lists have fixed widths with -1 padding, as the vendor ops take them.
The composite materialises [S, K] gathers and the [S, N] indexer score matrix; it is the portable
fallback, not the long-context path (the fused kernels stream instead).
"""
import numpy as np
import mindspore as ms
from mindspore import ops

from ..common import NEG_INF, ceil, cumsum, linear, rms_norm
from .reference import FP4_BLOCK, hadamard_matrix


def pair_perm(width: int) -> np.ndarray:
    """int32 [width]: each dim's pair partner (2i <-> 2i+1)."""
    return np.arange(width).reshape(-1, 2)[:, ::-1].reshape(-1).astype(np.int32)


def rope(x, cos, sin, inverse=False):
    """The reference's apply_rotary_emb on the last w = cos.shape[-1] dims of x [..., d] with doubled per-pair
    tables cos = (c0, c0, c1, c1, ...), sin = (-s0, +s0, -s1, +s1, ...): rot = x·cos + pairswap(x)·sin, i.e.
    (a, b) -> (a·cos − b·sin, a·sin + b·cos) per pair; inverse rotates by −θ. w == d rotates the whole row (tables
    with ones / zeros on the non-RoPE dims: the decode step's 4-kernel form)."""
    d, w = x.shape[-1], cos.shape[-1]
    if w == d:
        sw = ops.gather(x, ms.Tensor(pair_perm(d)), x.ndim - 1)
        return x * cos - sw * sin if inverse else x * cos + sw * sin
    r = x[..., d - w:]
    sw = ops.gather(r, ms.Tensor(pair_perm(w)), r.ndim - 1)
    rot = r * cos - sw * sin if inverse else r * cos + sw * sin
    return ops.concat([x[..., :d - w], rot], -1)


def compress_kv(x, wkv, wgate, ape, norm_w, ratio, overlap, norm_eps=1e-6):
    B, S, _ = x.shape
    n = S // ratio
    c = norm_w.shape[0]
    if n == 0:   # shorter than one block: no entries (x still flows, so autodiff gives zero gradients)
        return ops.zeros((B, 0, c), x.dtype) + 0 * ops.sum(x) * ops.sum(wkv)
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


def _hadamard(d):
    """The normalised Hadamard matrix of ops/attention/reference.py (the project's one definition), float32."""
    return ms.Tensor(hadamard_matrix(d).astype(np.float32))


def fp4_quant(x, block=FP4_BLOCK):
    """fp4_act_quant(inplace=True): blocks of 32 along the last dim, scale 2^ceil(log2(amax/6)) (amax floored
    at 6*2^-126), round-to-nearest-even onto the E2M1 grid; float32 throughout, exact like the reference."""
    shape = x.shape
    if shape[-1] % block:
        raise ValueError(f"FP4 quantisation works on blocks of {block}: last dim {shape[-1]} is not a multiple")
    xb = x.reshape(shape[:-1] + (shape[-1] // block, block))
    amax = ops.maximum(ops.amax(ops.abs(xb), -1, True), ops.full((1,), 6.0 * 2.0 ** -126, dtype=ms.float32))
    y = amax / 6.0
    e = ceil(ops.log2(y))                      # then make it exact: 2^(e-1) < y <= 2^e
    e = ops.where(ops.pow(2.0, e - 1) >= y, e - 1, e)
    e = ops.where(ops.pow(2.0, e) < y, e + 1, e)
    scale = ops.pow(2.0, e)
    v = ops.clamp(xb / scale, -6.0, 6.0)
    a = ops.abs(v)
    step = ops.where(a < 2.0, ops.full_like(a, 0.5), ops.where(a < 4.0, ops.ones_like(a), ops.full_like(a, 2.0)))
    qv = ops.round(a / step) * step
    return (ops.where(v < 0, -qv, qv) * scale).reshape(shape)


def fp4_rotate(x):
    """Hadamard rotation (normalised) of the last dim, then FP4 fake-quant: what the official indexer does to its
    q and k before scoring (rotate_activation + fp4_act_quant). The Ascend backend calls this too."""
    return fp4_quant(ops.matmul(ops.cast(x, ms.float32), _hadamard(x.shape[-1])))


def lightning_indexer(q, k, w, ratio, topk, start_pos=0, fp4=True):
    S = q.shape[1]
    N = k.shape[1]
    qf = ops.cast(q, ms.float32)
    kf = ops.cast(k, ms.float32)
    if fp4:
        qf = fp4_rotate(qf)
        kf = fp4_rotate(kf)
    # [B, S, H, N] -> weighted head sum -> [B, S, N]
    s = ops.relu(ops.matmul(qf, ops.expand_dims(kf, 1).swapaxes(-1, -2)))
    score = ops.sum(s * ops.expand_dims(ops.cast(w, ms.float32), -1), 2)
    vis = visible_count(S, ratio, start_pos).reshape(-1, S, 1)
    ent = ops.arange(N, dtype=ms.int32).reshape(1, 1, N)
    visible = ent < vis
    k = min(topk, N)
    return mask_to_ids(topk_mask(ops.stop_gradient(score), visible, k), k)


def topk_mask(score, visible, k):
    """score [..., N], visible bool (broadcast to score) -> bool [..., N]: the k best visible entries. Exact set
    selection with ties to the lower id: everything above the k-th value, then the first (by id) of the entries
    equal to it until k are taken."""
    score = ops.where(visible, score, ops.full_like(score, NEG_INF))
    kth = ops.topk(score, k)[0][..., k - 1:k]
    above = score > kth
    tied = score == kth
    room = k - ops.sum(ops.cast(above, ms.int32), -1, True)
    take = ops.logical_or(above, ops.logical_and(tied, cumsum(ops.cast(tied, ms.int32), -1) <= room))
    return ops.logical_and(take, visible)


def mask_to_ids(take, k):
    """bool [B, S, N] with <= k True -> [B, S, k] their ids (ascending), -1 padded."""
    N = take.shape[-1]
    ent = ops.arange(N, dtype=ms.int32).reshape(1, 1, N)
    # unique keys: taken entries sort first, by id; the rest after them
    key = ops.cast(ops.where(take, ent, ent + N), ms.float32)
    _, idx = ops.topk(-key, k)
    idx = ops.cast(idx, ms.int32)
    return ops.where(ops.gather_elements(take, -1, idx), idx, -ops.ones_like(idx))


# ------------------------------------------------------------- DeepSeek-V4.1: the two-level indexer (CSA-v2)
PIN = 3.0e38        # above any score: the query's newest (partial) block is always kept


def candidate_mask(I, vis, n_blocks, block):
    """Level 1 (reference.candidate_mask): I [B, S, T] scores (NEG_INF where invisible), vis [S] (or [B, S] in a
    cached step) -> bool [B, S, T]."""
    T = I.shape[-1]
    nb = -(-T // block)
    if nb * block > T:
        I = ops.concat([I, ops.full(I.shape[:-1] + (nb * block - T,), NEG_INF, dtype=I.dtype)], -1)
    b = ops.max(I.reshape(I.shape[:-1] + (nb, block)), -1)[0]                               # [B, S, nb]
    blk = ops.arange(nb, dtype=ms.int32).reshape(1, 1, nb)
    v = vis.reshape(-1, I.shape[1], 1)
    b = ops.where(ops.logical_and(blk == (v - 1) // block, v > 0), ops.full_like(b, PIN), b)
    kept = topk_mask(b, b > NEG_INF / 2, min(n_blocks, nb))
    kept = ops.broadcast_to(ops.expand_dims(kept, -1), kept.shape + (block,))
    return kept.reshape(kept.shape[:-2] + (nb * block,))[..., :T]


def index_topk_v2(q, k, w, ratio, topk, start_pos=0, candidates=None):
    """One V4.1 index source (reference.index_topk_v2): q, k as cached (RoPE'd, FP4-QDQ'd by the caller) ->
    (ids [B, S, min(topk, T)], scores [B, S, T] with NEG_INF where not visible). start_pos: an int, or a cached
    step's first positions [B, 1] (int32 tensor; then keys may hold more rows than are visible)."""
    S, T = q.shape[1], k.shape[1]
    qf, kf = ops.cast(q, ms.float32), ops.cast(k, ms.float32)
    s = ops.relu(ops.matmul(qf, ops.expand_dims(kf, 1).swapaxes(-1, -2)))                 # [B, S, H, T]
    I = ops.stop_gradient(ops.sum(s * ops.expand_dims(ops.cast(w, ms.float32), -1), 2))
    vis = visible_count(S, ratio, start_pos).reshape(-1, S, 1)
    visible = ops.arange(T, dtype=ms.int32).reshape(1, 1, T) < vis
    I = ops.where(visible, I, ops.full_like(I, NEG_INF))
    sel = I if candidates is None else ops.where(candidates, I, ops.full_like(I, NEG_INF))
    kk = min(topk, T)
    return mask_to_ids(topk_mask(sel, visible, kk), kk), I


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


def hca_attention(q, kv, sink, window_idx, ratio, scale, cmp_offset=None, start_pos=0):
    """HCA: window + every visible compressed entry (rows cmp_offset.. of kv, default S). The composite
    builds the [B, S, N] index list; the C++ kernel never does."""
    B, S = q.shape[0], q.shape[1]
    off = S if cmp_offset is None else cmp_offset
    n = kv.shape[1] - off
    ids = ops.arange(n, dtype=ms.int32).reshape(1, n)
    vis = ops.minimum(visible_count(S, ratio, start_pos), n).reshape(S, 1)
    cmp = ops.where(ids < vis, ids + off, -ops.ones_like(ids + off))
    return sparse_attention(q, kv, sink, window_idx, ops.broadcast_to(ops.expand_dims(cmp, 0), (B, S, n)), scale)


def compressor_state(B, ratio, c, overlap):
    """Fresh decode state (kv 0, score -inf), [B, coff·ratio, coff·c] float32 each."""
    coff = 2 if overlap else 1
    shape = (B, coff * ratio, coff * c)
    return ops.zeros(shape, ms.float32), ops.full(shape, float("-inf"), dtype=ms.float32)


def compress_kv_step(x, wkv, wgate, ape, norm_w, kv_state, score_state, start_pos, ratio, overlap,
                     norm_eps=1e-6):
    """Chunk/decode form of compress_kv (same contract as reference.compress_kv_step; start_pos static)."""
    B, T = x.shape[0], x.shape[1]
    c = norm_w.shape[0]
    m = ratio
    coff = 2 if overlap else 1
    off = m if overlap else 0
    r0 = start_pos % m
    n_new = (r0 + T) // m
    rem = (r0 + T) % m
    xf = ops.cast(x, ms.float32)
    pos = ms.Tensor((np.arange(start_pos, start_pos + T) % m).astype(np.int32))
    kv = linear(xf, ops.cast(wkv, ms.float32))
    sc = linear(xf, ops.cast(wgate, ms.float32)) + ops.gather(ops.cast(ape, ms.float32), pos, 0)
    if r0 > 0:
        kv = ops.concat([kv_state[:, off:off + r0], kv], 1)
        sc = ops.concat([score_state[:, off:off + r0], sc], 1)
    width = coff * c
    if n_new > 0:
        bkv = kv[:, :n_new * m].reshape(B, n_new, m, width)
        bsc = sc[:, :n_new * m].reshape(B, n_new, m, width)
        if overlap:
            pkv = ops.expand_dims(kv_state[:, :m], 1)
            psc = ops.expand_dims(score_state[:, :m], 1)
            if n_new > 1:
                pkv = ops.concat([pkv, bkv[:, :n_new - 1]], 1)
                psc = ops.concat([psc, bsc[:, :n_new - 1]], 1)
            pool_kv = ops.concat([pkv[..., :c], bkv[..., c:]], 2)
            pool_sc = ops.concat([psc[..., :c], bsc[..., c:]], 2)
        else:
            pool_kv, pool_sc = bkv, bsc
        ent = rms_norm(ops.sum(pool_kv * ops.softmax(pool_sc, 2), 2), ops.cast(norm_w, ms.float32), norm_eps)
    else:
        ent = ops.zeros((B, 0, c), ms.float32)
    cur_kv = ops.zeros((B, m - rem, width), ms.float32)
    cur_sc = ops.full((B, m - rem, width), float("-inf"), dtype=ms.float32)
    if rem > 0:
        cur_kv = ops.concat([kv[:, n_new * m:], cur_kv], 1) if rem < m else kv[:, n_new * m:]
        cur_sc = ops.concat([sc[:, n_new * m:], cur_sc], 1) if rem < m else sc[:, n_new * m:]
    if overlap:
        prev_kv = bkv[:, n_new - 1] if n_new > 0 else kv_state[:, :m]
        prev_sc = bsc[:, n_new - 1] if n_new > 0 else score_state[:, :m]
        cur_kv = ops.concat([prev_kv, cur_kv], 1)
        cur_sc = ops.concat([prev_sc, cur_sc], 1)
    return ent, cur_kv, cur_sc
