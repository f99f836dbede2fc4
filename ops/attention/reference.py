"""KV compressor, lightning indexer and sparse attention with sink in float64 NumPy (docs/numerics.md)."""
import numpy as np

from .rope import apply_rope

NEG = -np.inf


def rms_norm(x, w, eps):
    """RMSNorm in float64 (w None: no weight, the V4 per-head query norm); the one NumPy copy the goldens use."""
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * (1.0 if w is None else w)


def rope(x, cos, sin, inverse=False):
    """The rope op: x [..., d] with its last w dims rotated by the doubled per-pair tables cos [..., w] =
    (c0, c0, c1, c1, ...), sin [..., w] = (-s0, +s0, -s1, +s1, ...) (broadcast against x[..., :1])."""
    return apply_rope(x, np.asarray(cos)[..., 0::2], np.asarray(sin)[..., 1::2], inverse)


def compress_kv(x, wkv, wgate, ape, norm_w, ratio, overlap, norm_eps=1e-6, pooled=None):
    """x [B, S, D] -> entries [B, S//ratio, c] (all complete blocks; RoPE is the caller's, at position ratio*i).

    Per-channel softmax pooling of wkv(x) weighted by wgate(x) + ape. With overlap (ratio 4) block i pools the
    second-half channels of its own tokens and the first-half channels of block i-1's tokens (2*ratio slots).
    pooled: optional storage rounding of the pooled values before the norm (the CUDA emulation's BF16).
    """
    x = x.astype(np.float64)
    B, S, _ = x.shape
    n = S // ratio
    c = norm_w.shape[0]
    kv = (x[:, :n * ratio] @ wkv.astype(np.float64).T).reshape(B, n, ratio, wkv.shape[0])
    sc = (x[:, :n * ratio] @ wgate.astype(np.float64).T).reshape(B, n, ratio, wgate.shape[0]) + ape
    if overlap:
        prev_kv = np.zeros((B, n, ratio, c))
        prev_sc = np.full((B, n, ratio, c), NEG)
        prev_kv[:, 1:] = kv[:, :-1, :, :c]
        prev_sc[:, 1:] = sc[:, :-1, :, :c]
        kv = np.concatenate([prev_kv, kv[..., c:]], axis=2)
        sc = np.concatenate([prev_sc, sc[..., c:]], axis=2)
    p = np.exp(sc - sc.max(axis=2, keepdims=True))
    p = p / p.sum(axis=2, keepdims=True)
    kv = (kv * p).sum(axis=2)
    return rms_norm(kv if pooled is None else pooled(kv), norm_w.astype(np.float64), norm_eps)


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


def lightning_indexer(q, k, w, ratio, topk, start_pos=0, fp4=True):
    """-> [B, S, min(topk, N)] int32: the ids of the top-k visible entries in ascending id order, -1 padded.

    The selected *set* is what attention uses, so the output lists it in id order (cheap for every backend,
    and deterministic); ties in the score — common, since ReLU zeroes whole heads — go to the lower id.
    fp4=True (default, what DeepSeek's indexer computes and the checkpoint was trained with): q and k go through
    fp4_rotate (Hadamard rotation, then FP4 quantise-dequantise) before scoring; fp4=False scores the exact
    values (docs/numerics.md). Computed in query chunks (lightning_indexer_stream), never the full [S, N] matrix.
    """
    return lightning_indexer_stream(q, k, w, ratio, topk, start_pos, fp4)


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


# ------------------------------------------------------------------------------ HCA: every visible entry
def hca_attention(q, kv, sink, window_idx, ratio, scale, cmp_offset=None, start_pos=0):
    """HCA without an index list: query t attends to its window plus every visible compressed entry.

    kv rows [cmp_offset, kv.shape[1]) are compressed entries 0, 1, ... (default cmp_offset = S, the prefill
    layout [S raw rows ‖ entries]); entry i is visible to query t iff i < floor((start_pos + t + 1) / ratio).
    Same numbers as sparse_attention(q, kv, sink, window_idx, <all visible, shifted>, scale).
    """
    B, S = q.shape[:2]
    off = S if cmp_offset is None else int(cmp_offset)
    n = kv.shape[1] - off
    vis = np.minimum(visible_count(S, ratio, start_pos), n)
    ids = np.arange(n)[None, :]
    cmp = np.where(ids < vis[:, None], ids + off, -1).astype(np.int32)
    return sparse_attention(q, kv, sink, window_idx, np.broadcast_to(cmp, (B, S, n)), scale)


# ------------------------------------------------------------------ FP4 simulation of indexer q / k
def hadamard(x):
    """Normalised Walsh-Hadamard transform over the last dim (Sylvester order, scale d^-1/2), in float64: the
    rotation DeepSeek's rotate_activation takes from fast_hadamard_transform. d must be a power of two.
    The project's one definition: the composite takes its matrix from hadamard_matrix, the NumPy CUDA-numerics
    emulation (ascend_v4/numerics.py) calls this; only the C++ kernel has its own butterfly (fwht)."""
    x = np.array(x, np.float64)
    d = x.shape[-1]
    if d < 1 or d & (d - 1):
        raise ValueError(f"Hadamard rotation needs a power-of-two last dim, got {d}")
    h = 1
    while h < d:                       # butterflies: (a, b) -> (a + b, a - b) at stride h
        y = x.reshape(x.shape[:-1] + (d // (2 * h), 2, h))
        a, b = y[..., 0, :].copy(), y[..., 1, :].copy()
        y[..., 0, :], y[..., 1, :] = a + b, a - b
        x = y.reshape(x.shape)
        h *= 2
    return x / np.sqrt(d)


def hadamard_matrix(d):
    """[d, d] matrix H with x @ H == hadamard(x) (symmetric; for the matmul backends)."""
    return hadamard(np.eye(d))


FP4_BLOCK = 32
E2M1_MAX = 6.0


def fp4_act_quant(x, block=FP4_BLOCK):
    """DeepSeek's fp4_act_quant(x, 32, inplace=True) in float32: per block of 32 along the last dim the scale is
    the power of two 2^ceil(log2(amax/6)) (amax floored at 6·2^-126, an E8M0 value), and x/scale, clamped to
    ±6, rounds to nearest-even on the E2M1 grid {0, .5, 1, 1.5, 2, 3, 4, 6}. float32 in, float32 out."""
    x = np.asarray(x, np.float32)
    if x.shape[-1] % block:
        raise ValueError(f"FP4 quantisation works on blocks of {block}: last dim {x.shape[-1]} is not a multiple")
    xb = x.reshape(x.shape[:-1] + (x.shape[-1] // block, block)).astype(np.float64)
    amax = np.maximum(np.abs(xb).max(-1, keepdims=True), E2M1_MAX * 2.0 ** -126)
    mant, ex = np.frexp(amax / E2M1_MAX)                  # amax/6 = mant·2^ex, mant in [0.5, 1)
    scale = np.exp2((ex - (mant == 0.5)).astype(np.float64))
    v = np.clip(xb / scale, -E2M1_MAX, E2M1_MAX)
    a = np.abs(v)
    step = np.where(a < 2, 0.5, np.where(a < 4, 1.0, 2.0))   # E2M1 spacing per binade
    q = np.sign(v) * np.rint(a / step) * step                 # rint: ties to even
    return (q * scale).astype(np.float32).reshape(x.shape)


def fp4_rotate(x):
    """What the official indexer does to its queries and keys before scoring: rotate_activation (Hadamard) then
    fp4_act_quant (block 32). float32 in, float32 out; the rotation is rounded to float32 once, as the
    float32 CPU path holds it."""
    return fp4_act_quant(hadamard(np.asarray(x, np.float32)).astype(np.float32))


def lightning_indexer_stream(q, k, w, ratio, topk, start_pos=0, fp4=True, chunk=256):
    """Same result as lightning_indexer, computed `chunk` queries at a time: memory O(chunk · N), never the
    whole [S, N] score matrix (the CPU kernel streams the same way, per query row)."""
    if fp4:
        q, k = fp4_rotate(q), fp4_rotate(k)
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    w = np.asarray(w, np.float64)
    B, S = q.shape[:2]
    N = k.shape[1]
    kk = min(topk, N)
    out = np.full((B, S, kk), -1, np.int32)
    for s0 in range(0, S, chunk):
        s1 = min(S, s0 + chunk)
        I = indexer_scores(q[:, s0:s1], k, w[:, s0:s1])
        out[:, s0:s1] = select_topk(I, (np.reshape(start_pos, (-1, 1)) + np.arange(s0, s1) + 1) // ratio, kk)
    return out


def select_topk(I, vis, kk):
    """I [B, S, N] scores, vis [S] (or [B, S]) visible entries per query -> [B, S, kk] int32: the kk best visible
    entries in ascending id order, -1 padded; equal scores go to the lower id (stable sort)."""
    N = I.shape[-1]
    vis = np.asarray(vis).reshape(-1, I.shape[1])[:, :, None]
    I = np.where(np.arange(N)[None, None, :] < vis, I, NEG)
    idx = np.sort(np.argsort(-I, axis=-1, kind="stable")[..., :kk], axis=-1)
    idx = np.sort(np.where(idx < vis, idx, N + idx), axis=-1)
    return np.where(idx < N, idx, -1).astype(np.int32)


# --------------------------------------------------------------- compressor with decode state (docs/design.md)
def compressor_state(B, ratio, c, overlap, dtype=np.float64):
    """Fresh (reset) decode state: kv_state zeros, score_state -inf, both [B, coff·ratio, coff·c].

    Overlap mode: slots 0..ratio-1 hold the previous complete block, ratio..2·ratio-1 the current partial one.
    Reset between sequences by taking a fresh state (the DeepSeek reference never resets; docs/numerics.md).
    """
    coff = 2 if overlap else 1
    return (np.zeros((B, coff * ratio, coff * c), dtype), np.full((B, coff * ratio, coff * c), NEG, dtype))


def _pool(kv_state, score_state, ratio, c, overlap, norm_w, norm_eps):
    if overlap:
        kv = np.concatenate([kv_state[:, :ratio, :c], kv_state[:, ratio:, c:]], axis=1)
        sc = np.concatenate([score_state[:, :ratio, :c], score_state[:, ratio:, c:]], axis=1)
    else:
        kv, sc = kv_state, score_state
    p = np.exp(sc - sc.max(axis=1, keepdims=True))
    p = p / p.sum(axis=1, keepdims=True)
    return rms_norm((kv * p).sum(axis=1), norm_w, norm_eps)


def compress_kv_step(x, wkv, wgate, ape, norm_w, kv_state, score_state, start_pos, ratio, overlap,
                     norm_eps=1e-6):
    """Chunked / decode form of compress_kv: feed tokens start_pos .. start_pos+T-1 of one sequence.

    x [B, T, D]; state as from compressor_state(). Returns (entries [B, n_new, c], kv_state, score_state) with
    n_new = (start_pos + T)//ratio - start_pos//ratio: the blocks this chunk completes, in order (entry index
    start_pos//ratio + j). Token by token as the reference Compressor decodes: the score gets ape[p mod ratio] and goes to slot
    (ratio if overlap else 0) + p mod ratio; when a block completes it is pooled (overlap: previous block's
    first-half channels + current block's second-half channels, softmax over the 2·ratio slots per channel),
    RMS-normed, and the current slots move to the previous slots and are cleared (a canonical state: unused
    slots are always kv 0 / score -inf). Prefill of S tokens from a fresh state gives compress_kv's entries.
    """
    x = np.asarray(x, np.float64)
    kv_state = np.array(kv_state, np.float64)
    score_state = np.array(score_state, np.float64)
    c = norm_w.shape[0]
    B, T, _ = x.shape
    off = ratio if overlap else 0
    kvp = x @ np.asarray(wkv, np.float64).T
    scp = x @ np.asarray(wgate, np.float64).T
    out = []
    for j in range(T):
        p = start_pos + j
        s = off + p % ratio
        kv_state[:, s] = kvp[:, j]
        score_state[:, s] = scp[:, j] + ape[p % ratio]
        if (p + 1) % ratio == 0:
            out.append(_pool(kv_state, score_state, ratio, c, overlap, np.asarray(norm_w, np.float64), norm_eps))
            if overlap:
                kv_state[:, :ratio] = kv_state[:, ratio:]
                score_state[:, :ratio] = score_state[:, ratio:]
            kv_state[:, off:] = 0.0
            score_state[:, off:] = NEG
    ent = np.stack(out, 1) if out else np.zeros((B, 0, c))
    return ent, kv_state, score_state


# ------------------------------------------------------------- CSA-v2 (DeepSeek-V4.1, docs/deepseek-v4.1.md)
def compress_kv_v2_step(x, wkv, wgate, norm_w, kv_state, score_state, start_pos, ratio, norm_eps=1e-20):
    """The V4.1 compressor, chunked: no ape, no overlap. Ratio 2: per-channel 2-way softmax pooling of wkv(x)
    weighted by wgate(x) over the group's two tokens (compress_kv_step with ape = 0); ratio 1: no gate, no
    pooling, latent_t = norm(wkv(x_t)). -> (latents [B, n_new, c] un-rotated, kv_state, score_state); group j's
    latent stands for token j·ratio. State as compressor_state(B, ratio, c, False) (unused at ratio 1)."""
    if ratio == 1:
        return rms_norm(np.asarray(x, np.float64) @ np.asarray(wkv, np.float64).T, np.asarray(norm_w, np.float64),
                    norm_eps), kv_state, score_state
    c = np.asarray(norm_w).shape[0]
    return compress_kv_step(x, wkv, wgate, np.zeros((ratio, c)), norm_w, kv_state, score_state, start_pos, ratio,
                            False, norm_eps)


def candidate_mask(I, vis, n_blocks, block):
    """Level 1 of the two-level indexer: I [B, S, T] index scores (−inf where not visible), vis [S] visible
    entries per query -> bool [B, S, T] candidate positions.

    Block score = max over `block` consecutive positions (T padded with −inf); the block holding the query's
    newest visible position is pinned (+inf: it is partly filled and would lose to older full blocks); the
    min(n_blocks, #blocks) best blocks are kept (ties to the lower block), minus any whose score is −inf."""
    I = np.asarray(I, np.float64)
    B, S, T = I.shape
    nb = -(-T // block)
    pad = np.full((B, S, nb * block), NEG)
    pad[..., :T] = I
    b = pad.reshape(B, S, nb, block).max(-1)
    vis = np.asarray(vis)
    for t in range(S):
        if vis[t] > 0:
            b[:, t, (vis[t] - 1) // block] = np.inf
    keep_ids = np.argsort(-b, axis=-1, kind="stable")[..., :min(n_blocks, nb)]
    keep = np.zeros((B, S, nb), bool)
    np.put_along_axis(keep, keep_ids, True, -1)
    keep &= b > NEG
    return np.repeat(keep, block, axis=-1)[..., :T]


def index_topk_v2(q, k, w, ratio, topk, start_pos=0, candidates=None):
    """One V4.1 index source: q [B, S, H, d] and k [B, T, d] as cached (RoPE'd, FP4-QDQ'd by the caller), w [B, S, H]
    head weights -> (ids [B, S, min(topk, T)] int32 ascending, −1 where not visible; masked scores [B, S, T]).

    Scores I[t, j] = Σ_h w·ReLU(q·k_j), −inf for j ≥ ⌊(t+1)/ratio⌋; a candidate mask (level 2) sets the scores
    outside it to −inf before the top-k. A visible position chosen at −inf (fewer finite scores than k) stays
    selected, as in DeepSeek's code; only invisible ones become −1."""
    T = k.shape[1]
    vis = visible_count(q.shape[1], ratio, start_pos)
    I = indexer_scores(q, k, w) if T else np.zeros(q.shape[:2] + (0,))
    I = np.where(np.arange(T)[None, None, :] < vis[None, :, None], I, NEG)
    sel = I if candidates is None else np.where(candidates, I, NEG)
    kk = min(topk, T)
    idx = np.sort(np.argsort(-sel, axis=-1, kind="stable")[..., :kk], axis=-1)
    return np.where(idx < vis[None, :, None], idx, -1).astype(np.int32), I
