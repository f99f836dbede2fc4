"""CPU C++ backends of the attention family: ops.Custom(func_type="aot") over cpu/_attention_cpu.so, with bprop.

Kernels live in cpu/attention.cc (build: `python ops/build.py attention`). Every Custom primitive is created
once at import, with out_shape a pure function of input shapes, so the same functions run in PyNative, under
ms.jit and inside GRAPH_MODE construct: scalars reach the kernels in a small float32 `cfg` tensor and a
shape-only argument (top-k width, entries emitted by a decode step) as the shape of a dummy int32 tensor.

Long-context memory: sparse_attention / hca_attention keep O(H·D) per thread (online softmax over the
candidate list; HCA never materialises its index list); the indexer keeps one [N] score row per query of a
tile of 8 and selects exactly (nth_element, ties to the lower id). Training memory adds the [B,S,H] log-sum-exp
and, in backward, one dkv buffer per thread.
"""
from __future__ import annotations

import os

import mindspore as ms
from mindspore import ops

from ..common import linear
from . import composite

LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu", "_attention_cpu.so")


def available() -> bool:
    return _PRIMS is not None


def _f32(*_):
    return ms.float32


def _make_prims():
    if not os.path.exists(LIB):
        return None

    def fn(name):
        return LIB + ":" + name

    P = {}

    # ---- sparse attention (explicit compressed list: 6 inputs; window only / HCA: 5 inputs) ----
    P["attn_bwd_c"] = ops.Custom(fn("SparseAttnBwd"),
                                 out_shape=lambda q, kv, s, w, c, cfg, o, l, do: (q, kv, s),
                                 out_dtype=lambda q, kv, s, w, c, cfg, o, l, do: (q, kv, ms.float32),
                                 func_type="aot")
    P["attn_bwd_w"] = ops.Custom(fn("SparseAttnBwdW"),
                                 out_shape=lambda q, kv, s, w, cfg, o, l, do: (q, kv, s),
                                 out_dtype=lambda q, kv, s, w, cfg, o, l, do: (q, kv, ms.float32),
                                 func_type="aot")

    def bprop_c(q, kv, sink, w, c, cfg, out, dout):
        dq, dkv, ds = P["attn_bwd_c"](q, kv, sink, w, c, cfg, out[0], out[1], dout[0])
        return dq, dkv, ds, ops.zeros_like(w), ops.zeros_like(c), ops.zeros_like(cfg)

    def bprop_w(q, kv, sink, w, cfg, out, dout):
        dq, dkv, ds = P["attn_bwd_w"](q, kv, sink, w, cfg, out[0], out[1], dout[0])
        return dq, dkv, ds, ops.zeros_like(w), ops.zeros_like(cfg)

    P["attn_c"] = ops.Custom(fn("SparseAttnFwd"), out_shape=lambda q, kv, s, w, c, cfg: (q, q[:3]),
                             out_dtype=lambda q, kv, s, w, c, cfg: (q, ms.float32), func_type="aot", bprop=bprop_c)
    P["attn_w"] = ops.Custom(fn("SparseAttnFwdW"), out_shape=lambda q, kv, s, w, cfg: (q, q[:3]),
                             out_dtype=lambda q, kv, s, w, cfg: (q, ms.float32), func_type="aot", bprop=bprop_w)
    P["dense"] = ops.Custom(fn("DenseCausalFwd"), out_shape=lambda q, kv, s, w, cfg: (q, q[:3]),
                            out_dtype=lambda q, kv, s, w, cfg: (q, ms.float32), func_type="aot")

    # ---- lightning indexer (not differentiable: zero cotangents) ----
    def bprop_idx(q, k, w, cfg, sel, out, dout):
        return (ops.zeros_like(q), ops.zeros_like(k), ops.zeros_like(w), ops.zeros_like(cfg), ops.zeros_like(sel))

    P["indexer"] = ops.Custom(fn("IndexerFwd"), out_shape=lambda q, k, w, cfg, sel: (q[0], q[1], sel[0]),
                              out_dtype=lambda q, k, w, cfg, sel: ms.int32, func_type="aot", bprop=bprop_idx)

    def bprop_idx_p(q, k, w, start, cfg, sel, out, dout):
        return (ops.zeros_like(q), ops.zeros_like(k), ops.zeros_like(w), ops.zeros_like(start), ops.zeros_like(cfg),
                ops.zeros_like(sel))

    # cached step: per-row first positions as an int32 [B] input instead of cfg's start_pos
    P["indexer_p"] = ops.Custom(fn("IndexerFwdP"), out_shape=lambda q, k, w, st, cfg, sel: (q[0], q[1], sel[0]),
                                out_dtype=lambda q, k, w, st, cfg, sel: ms.int32, func_type="aot",
                                bprop=bprop_idx_p)

    # ---- compressor pooling + RMSNorm (projections stay MindSpore matmuls, differentiated by autodiff) ----
    P["pool_bwd"] = ops.Custom(fn("CompressPoolBwd"),
                               out_shape=lambda kv, sc, ape, nw, cfg, do: (kv, sc, ape, nw),
                               out_dtype=lambda kv, sc, ape, nw, cfg, do: (kv, sc, ms.float32, ms.float32),
                               func_type="aot")

    def bprop_pool(kvp, scp, ape, nw, cfg, out, dout):
        dkv, dsc, dape, dnw = P["pool_bwd"](kvp, scp, ape, nw, cfg, dout)
        return dkv, dsc, dape, dnw, ops.zeros_like(cfg)

    P["pool"] = ops.Custom(fn("CompressPoolFwd"),
                           out_shape=lambda kv, sc, ape, nw, cfg: (kv[0], kv[1] // ape[0], nw[0]),
                           out_dtype=lambda kv, sc, ape, nw, cfg: kv, func_type="aot", bprop=bprop_pool)
    P["step"] = ops.Custom(fn("CompressStepFwd"),
                           out_shape=lambda kv, sc, ape, nw, ks, ss, cfg, sel: ((kv[0], sel[0], nw[0]), ks, ss),
                           out_dtype=lambda kv, sc, ape, nw, ks, ss, cfg, sel: (ms.float32, ms.float32, ms.float32),
                           func_type="aot")
    # ---- RoPE: one pass over x (the composite slices, gathers, multiplies and concatenates) ----
    P["rope_bwd"] = ops.Custom(fn("RopeBwd"), out_shape=lambda x, c, s, cfg: x, out_dtype=lambda x, c, s, cfg: x,
                               func_type="aot")

    def bprop_rope(x, c, s, cfg, out, dout):      # the rotation's transpose (for RoPE tables: its inverse)
        dx = P["rope_bwd"](dout, c, s, cfg)
        return dx, ops.zeros_like(c), ops.zeros_like(s), ops.zeros_like(cfg)

    P["rope"] = ops.Custom(fn("RopeFwd"), out_shape=lambda x, c, s, cfg: x, out_dtype=lambda x, c, s, cfg: x,
                           func_type="aot", bprop=bprop_rope)
    # ---- RMS norm (cpu/rms_norm.cc): one kernel each way; ops/common.py rms_norm calls it on CPU ----
    P["rms_bwd"] = ops.Custom(fn("RmsNormBwd"), out_shape=lambda x, w, r, dy, cfg: (x, w),
                              out_dtype=lambda x, w, r, dy, cfg: (ms.float32, ms.float32), func_type="aot")

    def bprop_rms(x, w, cfg, out, dout):
        dx, dw = P["rms_bwd"](x, w, out[1], dout[0], cfg)
        return dx, dw, ops.zeros_like(cfg)

    P["rms"] = ops.Custom(fn("RmsNormFwd"), out_shape=lambda x, w, cfg: (x, x[:-1]),
                          out_dtype=lambda x, w, cfg: (ms.float32, ms.float32), func_type="aot", bprop=bprop_rms)
    return P


_PRIMS = _make_prims()


def rms_norm(x, weight, eps):
    """x [..., D] float32 normalised by its RMS over D, times weight [D] (None: no gain) -> float32, in one C++
    kernel (backward: one more). ops/common.py `rms_norm` routes float32 CPU calls here."""
    if weight is None:
        cfg = ops.stack((ops.scalar_to_tensor(eps, ms.float32), ops.zeros((), ms.float32)))
        return _PRIMS["rms"](x, ops.zeros((1,), ms.float32), cfg)[0]
    cfg = ops.stack((ops.scalar_to_tensor(eps, ms.float32), ops.ones((), ms.float32)))
    return _PRIMS["rms"](x, weight, cfg)[0]


if _PRIMS is not None:
    from .. import common as _common
    _common.use_cpu_rms_norm(rms_norm)


def _rope_layout(xs, cs):
    """x shape, table shape -> (A, M, G) with x = [A, M, G, d] and the table's M rows (its other dims 1), or None
    when the table broadcasts in another pattern. (Plain loops: graph mode compiles this at trace time.)"""
    n = len(xs) - 1
    pad = n - (len(cs) - 1)
    if pad < 0:
        return None
    i, j = n, n                         # the table's non-1 dims span [i, j) of x's leading dims
    for k in range(n):
        c = cs[k - pad] if k >= pad else 1
        if c != 1:
            i = min(i, k)
            j = k + 1
    if i == n:
        i = j = n
    A, M, G = 1, 1, 1
    for k in range(n):
        c = cs[k - pad] if k >= pad else 1
        if k < i:
            A = A * xs[k]
        elif k < j:
            if c != xs[k]:
                return None
            M = M * xs[k]
        else:
            G = G * xs[k]
    return A, M, G


# ------------------------------------------------------------------------------------------ public backends
def rope(x, cos, sin, inverse=False):
    amg = _rope_layout(x.shape, cos.shape) if x.dtype == ms.float32 and cos.shape == sin.shape else None
    if amg is None:        # a table broadcast the kernel does not walk (or bf16): the composite
        return composite.rope(x, cos, sin, inverse)
    cfg = ms.Tensor([float(amg[0]), float(amg[1]), float(amg[2]), -1.0 if inverse else 1.0], ms.float32)
    return _PRIMS["rope"](x, ops.cast(cos, ms.float32), ops.cast(sin, ms.float32), cfg)


def sparse_attention(q, kv, sink, window_idx, compressed_idx, scale):
    cfg = ms.Tensor([scale, 0.0, 0.0, 0.0], ms.float32)
    sink = ops.cast(sink, ms.float32)
    if compressed_idx is None:
        return _PRIMS["attn_w"](q, kv, sink, window_idx, cfg)[0]
    return _PRIMS["attn_c"](q, kv, sink, window_idx, compressed_idx, cfg)[0]


def hca_attention(q, kv, sink, window_idx, ratio, scale, cmp_offset=None, start_pos=0):
    off = q.shape[1] if cmp_offset is None else cmp_offset
    cfg = ms.Tensor([scale, float(ratio), float(off), float(start_pos)], ms.float32)
    return _PRIMS["attn_w"](q, kv, ops.cast(sink, ms.float32), window_idx, cfg)[0]


def dense_causal_attention(q, kv, sink, scale, stride=1):
    """Bench baseline: causal MQA over all tokens with the same kernel machinery. Query row t is position
    (t+1)·stride - 1 and attends to kv rows 0..(t+1)·stride - 1 (stride > 1 samples every stride-th query)."""
    cfg = ms.Tensor([scale, float(stride), 0.0, 0.0], ms.float32)
    dummy = ops.zeros((q.shape[0], q.shape[1], 1), ms.int32)
    return _PRIMS["dense"](q, kv, ops.cast(sink, ms.float32), dummy, cfg)[0]


def lightning_indexer(q, k, w, ratio, topk, start_pos=0, fp4=True):
    d = q.shape[-1]
    if fp4 and (d & (d - 1) or d % 32):   # the kernel's fwht / fp4_quant would read past the row
        raise ValueError(f"fp4 indexer needs a power-of-two head dim >= 32 (Hadamard + FP4 blocks of 32), got {d}")
    kk = min(topk, k.shape[1])
    if isinstance(start_pos, int):
        cfg = ms.Tensor([float(ratio), float(start_pos), 1.0 if fp4 else 0.0, 0.0], ms.float32)
        return _PRIMS["indexer"](q, k, w, cfg, ops.zeros((kk,), ms.int32))
    cfg = ms.Tensor([float(ratio), 0.0, 1.0 if fp4 else 0.0, 0.0], ms.float32)
    return _PRIMS["indexer_p"](q, k, w, ops.cast(start_pos, ms.int32).reshape(-1), cfg, ops.zeros((kk,), ms.int32))


def compress_kv(x, wkv, wgate, ape, norm_w, ratio, overlap, norm_eps=1e-6):
    xf = ops.cast(x, ms.float32)
    kvp = linear(xf, ops.cast(wkv, ms.float32))
    scp = linear(xf, ops.cast(wgate, ms.float32))
    cfg = ms.Tensor([norm_eps], ms.float32)
    return _PRIMS["pool"](kvp, scp, ops.cast(ape, ms.float32), ops.cast(norm_w, ms.float32), cfg)


def compress_kv_step(x, wkv, wgate, ape, norm_w, kv_state, score_state, start_pos, ratio, overlap,
                     norm_eps=1e-6):
    n_new = (start_pos + x.shape[1]) // ratio - start_pos // ratio
    xf = ops.cast(x, ms.float32)
    kvp = linear(xf, ops.cast(wkv, ms.float32))
    scp = linear(xf, ops.cast(wgate, ms.float32))
    cfg = ms.Tensor([float(start_pos), norm_eps], ms.float32)
    return _PRIMS["step"](kvp, scp, ops.cast(ape, ms.float32), ops.cast(norm_w, ms.float32),
                          ops.cast(kv_state, ms.float32), ops.cast(score_state, ms.float32), cfg,
                          ops.zeros((n_new,), ms.int32))
