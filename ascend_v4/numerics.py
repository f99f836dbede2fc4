"""CUDA-numerics emulation ("official" mode): what DeepSeek's released kernels compute, on CPU
(the reference's act_quant / fp8_gemm / fp4_gemm / rotate_activation; docs/numerics.md).

- every linear whose weight ships as FP8 (128x128 E8M0 blocks): activations quantised to FP8 E4M3 in 1x128 blocks
  with power-of-two scales (act_quant, ue8m0), then fp8_gemm: per 128-wide K block the exact FP8xFP8 partial
  product, scaled by sA[row]·sB[block], accumulated in FP32; output rounded to BF16;
- routed experts (MXFP4 weights, 1x32 E8M0): activations FP8 1x128 as above, fp4_gemm with per-32 K steps,
  FP32 accumulation, BF16 output;
- the indexer's q and compressed k: normalised Walsh-Hadamard rotation, then FP4 E2M1 QDQ in 1x32 blocks — the
  lightning_indexer op's fp4=True (ops/attention/reference.py: hadamard, fp4_act_quant), the default on every backend;
- activations entering a quantised GEMM are BF16 (the official model runs in BF16): rounded before act_quant; every
  tensor the official model stores in BF16 is rounded so (bf16, applied by NumpyV4 in official mode), the query's
  parameterless RMS norm runs as BF16 tensor ops (bf16_rms);
- sparse attention as the sparse_attn kernel: BF16 q/kv, FP32 online softmax in blocks of 64, probabilities rounded
  to BF16 before P·V (sparse_attn), over the index list in the official layout (valid_first, index_list); index
  scores BF16 per head and after the head sum before the top-k (index_select);
- KV FP8 fake-quant of the non-RoPE dims (block 64): in the released GPU kernels the pinned TileLang compiles the
  cast away, so it is a no-op there. `kv_fp8="gpu"` (default) reproduces that; `kv_fp8="spec"` applies the QDQ the
  code intends.
Ragged last blocks (dims not a multiple of the block, only in tiny test configs) are quantised on their own.
"""
from __future__ import annotations

import numpy as np

from .checkpoint.formats import act_quant_fp8, bf16_round

KV_FP8_MODES = ("gpu", "spec")


def _pad_last(x, block):
    pad = (-x.shape[-1]) % block
    if not pad:
        return x, 0
    return np.concatenate([x, np.zeros(x.shape[:-1] + (pad,), x.dtype)], -1), pad


def qdq_fp8(x, block=128):
    xp, pad = _pad_last(np.asarray(x, np.float32), block)
    y = act_quant_fp8(xp, block, ue8m0=True)
    return y[..., :y.shape[-1] - pad] if pad else y


def blocked_gemm(xq, w, k_block):
    """C = xq·wᵀ with an FP32 accumulator across K blocks; each block's partial product is exact (FP8/FP4
    products of few-bit mantissas summed in float64 stand in for the tensor core's wide internal sum)."""
    K = xq.shape[-1]
    x2 = xq.reshape(-1, K).astype(np.float64)
    acc = np.zeros((x2.shape[0], w.shape[0]), np.float32)
    for k0 in range(0, K, k_block):
        acc = (acc + (x2[:, k0:k0 + k_block] @ w[:, k0:k0 + k_block].astype(np.float64).T).astype(np.float32))
    return acc.reshape(xq.shape[:-1] + (w.shape[0],))


def fp8_linear(x, w):
    """act_quant(x, 128, ue8m0) then fp8_gemm with 128-wide K blocks; BF16 output. x is first rounded to BF16: the
    official model's activations are BF16 tensors (GEMM outputs, norms, SwiGLU products) before act_quant sees them."""
    return bf16_round(blocked_gemm(qdq_fp8(bf16(x), 128), w, 128)).astype(np.float64)


def fp4_linear(x, w):
    """act_quant(bf16(x), 128, ue8m0) then fp4_gemm with 32-wide K steps; BF16 output."""
    return bf16_round(blocked_gemm(qdq_fp8(bf16(x), 128), w, 32)).astype(np.float64)


def bf16(x):
    """Round to BF16 (RNE) and return float64: what a BF16 tensor of the official model holds."""
    return bf16_round(np.asarray(x, np.float32)).astype(np.float64)


def bf16_rms(x, eps):
    """The query's parameterless RMS norm as the official Attention computes it on a BF16 tensor,
    q *= rsqrt(q.square().mean(-1) + eps): every op's result is a BF16 tensor (the mean accumulates in FP32)."""
    x = bf16(x)
    ms = bf16(np.mean(bf16(x * x), -1, keepdims=True))
    return bf16(x * bf16(1.0 / np.sqrt(bf16(ms + eps))))


def sparse_attn(q, kv, sink, idx, scale, block=64):
    """The sparse_attn kernel's numerics (docs/numerics.md): per (b, t) the listed kv rows (-1 skipped) in blocks of
    `block`; logits z = f32(q·kv)·scale; online softmax with the running max m (initialised -1e30): per block
    alpha = exp(m_old - m), p = exp(z - m) in FP32, the denominator l = l·alpha + Σp from the FP32 p, the output
    acc = acc·alpha + bf16(p)·kv (P rounded to BF16 before P·V); at the end o = acc / (l + exp(sink - m)) (the sink
    is not scaled), rounded to BF16. q [B,S,H,D], kv [B,N,D], sink [H], idx [B,S,K]."""
    q = np.asarray(q, np.float64)
    kv = np.asarray(kv, np.float64)
    sink = np.asarray(sink, np.float32)
    B, S, H, D = q.shape
    out = np.zeros((B, S, H, D))
    f32 = np.float32
    for b in range(B):
        for t in range(S):
            ids = np.asarray(idx[b, t])
            m = np.full(H, -1e30, f32)
            l = np.zeros(H, f32)
            acc = np.zeros((H, D), f32)
            for j0 in range(0, len(ids), block):
                sel = ids[j0:j0 + block]
                sel = sel[sel >= 0]
                if not len(sel):
                    continue
                g = kv[b, sel]                                               # [k, D]
                z = ((q[b, t] @ g.T).astype(f32) * f32(scale)).astype(f32)   # [H, k]
                m_new = np.maximum(m, z.max(-1))
                alpha = np.exp(m - m_new).astype(f32)
                p = np.exp(z - m_new[:, None]).astype(f32)
                l = (l * alpha + p.sum(-1, dtype=f32)).astype(f32)
                acc = (acc * alpha[:, None] + (bf16(p) @ g).astype(f32)).astype(f32)
                m = m_new
            o = acc / (l + np.exp(sink - m).astype(f32))[:, None]
            out[b, t] = bf16(o)
    return out


def index_select(q, k, w, ratio, topk):
    """The official Indexer's selection (prefill, start_pos 0) on its BF16 tensors: rotate_activation (Hadamard,
    BF16 out) then fp4_act_quant of q and k; per-head scores s_h = bf16(q_h·k) (FP32 accumulation), then
    bf16(ReLU(s_h)·w_h), summed over heads in FP32 and rounded to BF16 (index_score is a BF16 tensor: many exact
    ties); causal mask; top-k. Ties among equal BF16 scores go to the lower entry id (torch.topk's order among ties
    is implementation-defined on CPU and CUDA; docs/numerics.md). -> ([B, S, min(topk, N)] ascending ids, -1 padded;
    the BF16 index scores [B, S, N])."""
    from .ops.attention.reference import fp4_act_quant, hadamard, select_topk
    qf = fp4_act_quant(bf16(hadamard(bf16(q))))
    kf = fp4_act_quant(bf16(hadamard(bf16(k))))
    s = bf16(np.einsum("bthd,bsd->bths", qf, kf))                              # [B, S, H, N]
    I = bf16((bf16(np.maximum(s, 0.0) * bf16(w)[..., None])).astype(np.float32).sum(2, dtype=np.float32))
    return select_topk(I, (np.arange(I.shape[1]) + 1) // ratio, min(topk, I.shape[2])), I


def index_list(q, k, w, ratio, topk):
    """The compressed half of the sparse_attn index list as the official Indexer hands it over: index_select's set
    in torch.topk's sorted order (best score first, equal scores lower id first), -1 (not yet visible) last. The
    order fixes which entries share one of the kernel's blocks of 64, so it changes the BF16 probabilities."""
    ids, I = index_select(q, k, w, ratio, topk)
    score = np.take_along_axis(I, np.maximum(ids, 0), -1).astype(np.float64)
    order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int32).max), -np.where(ids >= 0, score, -np.inf)), -1)
    return np.take_along_axis(ids, order, -1)


def valid_first(idx):
    """An index list with its -1 entries moved to the end, the rest in ascending order: the layout of the official
    prefill window list (get_window_topk_idxs: positions max(0, t-127) .. t, then -1), which decides the sparse_attn
    kernel's blocks of 64 for the first window-1 queries."""
    idx = np.asarray(idx)
    big = np.iinfo(np.int64).max
    return np.where((v := np.sort(np.where(idx >= 0, idx, big), -1)) == big, -1, v).astype(idx.dtype)
