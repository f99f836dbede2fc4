"""CUDA-numerics emulation ("official" mode): what DeepSeek's released kernels compute, on CPU (docs/numerics.md).

- every linear whose weight ships as FP8 (128x128 E8M0 blocks): activations quantised to FP8 E4M3 in 1x128 blocks
  with power-of-two scales (act_quant, ue8m0), then fp8_gemm: per 128-wide K block the exact FP8xFP8 partial
  product, scaled by sA[row]·sB[block], accumulated in FP32; output rounded to BF16;
- routed experts (MXFP4 weights, 1x32 E8M0): activations FP8 1x128 as above, fp4_gemm with per-32 K steps,
  FP32 accumulation, BF16 output;
- the indexer's q and compressed k: normalised Walsh-Hadamard rotation, then FP4 E2M1 QDQ in 1x32 blocks — the
  lightning_indexer op's fp4=True (ops/attention/reference.py: hadamard, fp4_act_quant), the default on every backend;
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
    """act_quant(x, 128, ue8m0) then fp8_gemm with 128-wide K blocks; BF16 output."""
    return bf16_round(blocked_gemm(qdq_fp8(x, 128), w, 128)).astype(np.float64)


def fp4_linear(x, w):
    """act_quant(x, 128, ue8m0) then fp4_gemm with 32-wide K steps; BF16 output."""
    return bf16_round(blocked_gemm(qdq_fp8(x, 128), w, 32)).astype(np.float64)
