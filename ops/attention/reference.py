"""KV compressor, lightning indexer and sparse attention with sink in float64 NumPy (spec §4, §9)."""
import numpy as np

NEG = -np.inf


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * (1.0 if w is None else w)


def compress_kv(x, wkv, wgate, ape, norm_w, ratio, overlap, norm_eps=1e-6):
    """x [B, S, D] -> entries [B, S//ratio, c] (all complete blocks; RoPE is the caller's, at position ratio*i).

    Per-channel softmax pooling of wkv(x) weighted by wgate(x) + ape. With overlap (ratio 4) block i pools the
    second-half channels of its own tokens and the first-half channels of block i-1's tokens (2*ratio slots).
    """
    x = x.astype(np.float64)
    B, S, _ = x.shape
    n = S // ratio
    c = norm_w.shape[0]
    kv = (x[:, :n * ratio] @ wkv.astype(np.float64).T).reshape(B, n, ratio, -1)
    sc = (x[:, :n * ratio] @ wgate.astype(np.float64).T).reshape(B, n, ratio, -1) + ape
    if overlap:
        prev_kv = np.zeros((B, n, ratio, c))
        prev_sc = np.full((B, n, ratio, c), NEG)
        prev_kv[:, 1:] = kv[:, :-1, :, :c]
        prev_sc[:, 1:] = sc[:, :-1, :, :c]
        kv = np.concatenate([prev_kv, kv[..., c:]], axis=2)
        sc = np.concatenate([prev_sc, sc[..., c:]], axis=2)
    p = np.exp(sc - sc.max(axis=2, keepdims=True))
    p = p / p.sum(axis=2, keepdims=True)
    return _rms((kv * p).sum(axis=2), norm_w.astype(np.float64), norm_eps)


def window_indices(S, window, start_pos=0):
    """[S, min(S, window)]: raw positions start_pos+t-window+1 .. start_pos+t for each query, -1 if before 0."""
    w = min(S + start_pos, window)
    t = start_pos + np.arange(S)[:, None]
    idx = t - w + 1 + np.arange(w)[None, :]
    return np.where(idx >= 0, idx, -1).astype(np.int32)


def visible_count(S, ratio, start_pos=0):
    """Compressed entries visible to each query: floor((t+1)/ratio)."""
    return (start_pos + np.arange(S) + 1) // ratio


def compressed_indices(S, ratio, start_pos=0):
    """HCA: every visible entry, [S, (start_pos+S)//ratio], -1 where not yet visible."""
    n = (start_pos + S) // ratio
    idx = np.broadcast_to(np.arange(n), (S, n))
    return np.where(idx < visible_count(S, ratio, start_pos)[:, None], idx, -1).astype(np.int32)


def indexer_scores(q, k, w):
    """I[b, t, s] = Σ_h w[b,t,h]·ReLU(q[b,t,h]·k[b,s])."""
    return np.einsum("bth,bths->bts", w.astype(np.float64),
                     np.maximum(np.einsum("bthd,bsd->bths", q.astype(np.float64), k.astype(np.float64)), 0.0))


def lightning_indexer(q, k, w, ratio, topk, start_pos=0):
    """-> [B, S, min(topk, N)] int32: the ids of the top-k visible entries in ascending id order, -1 padded.

    The selected *set* is what attention uses, so the output lists it in id order (cheap for every backend,
    and deterministic); ties in the score — common, since ReLU zeroes whole heads — go to the lower id.
    """
    B, S = q.shape[:2]
    N = k.shape[1]
    I = indexer_scores(q, k, w)
    vis = visible_count(S, ratio, start_pos)
    I = np.where(np.arange(N)[None, None, :] < vis[None, :, None], I, NEG)
    kk = min(topk, N)
    idx = np.sort(np.argsort(-I, axis=-1, kind="stable")[..., :kk], axis=-1)
    idx = np.where(idx < vis[None, :, None], idx, N + idx)        # invisible picks move to the end ...
    idx = np.sort(idx, axis=-1)
    return np.where(idx < N, idx, -1).astype(np.int32)            # ... and become -1


def sparse_attention(q, kv, sink, window_idx, compressed_idx, scale):
    """q [B,S,H,D], kv [B,N,D] (shared key=value), idx into kv (-1 = skip), sink [H] in the denominator only."""
    idx = window_idx if compressed_idx is None else np.concatenate([window_idx, compressed_idx], axis=-1)
    q = q.astype(np.float64)
    kv = kv.astype(np.float64)
    B, S, H, D = q.shape
    out = np.zeros((B, S, H, D))
    for b in range(B):
        for t in range(S):
            sel = idx[b, t][idx[b, t] >= 0]
            g = kv[b, sel]                                   # [K, D]
            z = q[b, t] @ g.T * scale                        # [H, K]
            m = np.maximum(z.max(-1) if len(sel) else NEG, sink)
            e = np.exp(z - m[:, None])
            denom = e.sum(-1) + np.exp(sink - m)
            out[b, t] = (e / denom[:, None]) @ g
    return out
