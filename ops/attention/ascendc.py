"""Attention backend "ascendc": the AscendC kernels in ascendc/ (AV4SparseAttnSharedKV, AV4LightningIndexer,
AV4CompressKV), installed as the CANN custom-op package "ascend_v4_attention" by
`bash ops/attention/ascendc/build.sh --install`.

Bound through ops/ascend_call.py like every family: one `Contract` per OpDef (ascendc/op_host/av4_*.cpp, checked
against the source by tests/ops/test_bindings.py), ops.Custom(aot) with reg_info from the contract, one primitive
per static attribute set (scale, ratio, top-k, ...) created on first use — at graph compile time, when the model
is traced — and cached, every input in its OpDef position (HCA passes None for the absent `cmp_idx`), contract
stand-ins when the Ascend resolution is emulated on CPU.
Backward in MindSpore ops: attention from the kernel's saved log-sum-exp (attention_backward), the compressor by
recomputing its pooling (compress_backward), nothing for the indexer's integer ids.
NOT RUN on an NPU (docs/ascend.md); the kernel bodies run on CPU over the real AscendC headers and the project's
intrinsic emulator (docs/ascendc.md).
"""
from __future__ import annotations

import functools

import mindspore as ms
import numpy as np
from mindspore import ops

from .. import ascendc_package as _pkg
from ..ascend_call import Attr, Contract, In, primitive
from ..common import NEG_INF, linear
from ..registry import on_target_change
from . import reference as R
from . import composite
from .composite import fp4_rotate

FAMILY = "attention"
VENDOR = _pkg.vendor_name(FAMILY)          # "ascend_v4_attention"
OP_TYPES = {"sparse_attention": "AV4SparseAttnSharedKV", "lightning_indexer": "AV4LightningIndexer",
            "compress_kv": "AV4CompressKV"}
NOTE = _pkg.install_note(FAMILY, OP_TYPES.values())
TOLERANCE = (1e-2, 1e-2)
_ACT = ("bfloat16", "float16", "float32")
_F32 = ("float32",) * 3
_I32 = ("int32",) * 3


def _attn_limits(s, a):
    q, kv, w = s["query"], s["kv"], s["window_idx"]
    if len(q) != 4 or len(kv) != 3 or len(w) != 3 or q[-1] != kv[-1] or kv[0] != q[0] or w[:2] != q[:2]:
        return f"query [B,S,H,D], kv [B,N,D], window_idx [B,S,W] expected, got {list(q)}, {list(kv)}, {list(w)}"
    if s["sinks"] != (q[2],):
        return f"sinks must be [H={q[2]}], got {s['sinks']}"
    if s["cmp_idx"] is not None and (len(s["cmp_idx"]) != 3 or s["cmp_idx"][:2] != q[:2]):
        return f"cmp_idx must be [B,S,K], got {s['cmp_idx']}"
    if a.get("cmp_ratio", 0) < 0 or s["cmp_idx"] is not None and a.get("cmp_ratio", 0) != 0:
        return "cmp_ratio must be >= 0, and 0 when cmp_idx lists the compressed entries"
    return None


def _indexer_limits(s, a):
    q, k, w = s["query"], s["key"], s["weights"]
    if len(q) != 4 or len(k) != 3 or len(w) != 3 or q[-1] != k[-1] or w != q[:3]:
        return f"query [B,S,H,d], key [B,N,d], weights [B,S,H] expected, got {list(q)}, {list(k)}, {list(w)}"
    if a["sparse_count"] < 1 or a["cmp_ratio"] < 1:
        return "sparse_count and cmp_ratio must be >= 1"
    if q[-1] % 16 or q[2] > 64:   # the Cube kernel's tile: whole 16-element fractals, both rows' heads in 128 rows
        return f"the AscendC indexer needs head dim % 16 == 0 and <= 64 heads, got d={q[-1]}, H={q[2]}"
    return None


def _compress_limits(s, a):
    kv, sc, ape, nw = s["kv_proj"], s["score_proj"], s["ape"], s["norm_weight"]
    if len(kv) != 3 or kv != sc or len(ape) != 2 or ape[1] != kv[2] or kv[2] not in (nw[0], 2 * nw[0]):
        return (f"kv_proj = score_proj [B,S,c or 2c], ape [ratio, same], norm_weight [c] expected, got "
                f"{list(kv)}, {list(sc)}, {list(ape)}, {list(nw)}")
    return None


CONTRACTS = {
    "AV4SparseAttnSharedKV": Contract(
        "AV4SparseAttnSharedKV", "ascendc",
        (In("query", False, _ACT), In("kv", False, _ACT), In("sinks", False, _F32), In("window_idx", False, _I32),
         In("cmp_idx", True, _I32)),
        ("attn_out", "softmax_lse"),
        (Attr("scale_value", "float", True), Attr("cmp_ratio", "int"), Attr("cmp_offset", "int"),
         Attr("start_pos", "int")), _attn_limits),
    "AV4LightningIndexer": Contract(
        "AV4LightningIndexer", "ascendc", (In("query", False, _ACT), In("key", False, _ACT), In("weights", False, _ACT)),
        ("sparse_indices",), (Attr("sparse_count", "int", True), Attr("cmp_ratio", "int", True),
                              Attr("start_pos", "int")), _indexer_limits),
    "AV4CompressKV": Contract(
        "AV4CompressKV", "ascendc", (In("kv_proj", False, _ACT), In("score_proj", False, _ACT), In("ape", False, _F32),
                                     In("norm_weight", False, _F32)),
        ("entries",), (Attr("norm_eps", "float"),), _compress_limits),
}


def package_installed() -> bool:
    """True when a package CANN would find declares all three op types (any SoC's ops-info json)."""
    return _pkg.package_installed(VENDOR, OP_TYPES.values())


def available() -> bool:
    """Ascend device AND the package with every op type (ops/ascendc_package.py: one rule for all families)."""
    return _pkg.available(VENDOR, OP_TYPES.values())


# ------------------------------------------------------------------------------------ CPU emulation (reference)
def _emulate_attention(query, kv, sinks, window_idx, cmp_idx, scale_value, cmp_ratio=0, cmp_offset=-1, start_pos=0):
    B, S = query.shape[:2]
    if cmp_idx is None and cmp_ratio:      # HCA: every visible compressed entry (rows cmp_offset.. of kv)
        off = S if cmp_offset < 0 else cmp_offset
        n = kv.shape[1] - off
        ids = np.arange(n)[None, :]
        vis = np.minimum(R.visible_count(S, cmp_ratio, start_pos), n)
        cmp_idx = np.broadcast_to(np.where(ids < vis[:, None], ids + off, -1), (B, S, n)).astype(np.int32)
    out = R.sparse_attention(query, kv, sinks, window_idx, cmp_idx, scale_value)
    idx = window_idx if cmp_idx is None else np.concatenate([window_idx, cmp_idx], -1)
    q, k = query.astype(np.float64), kv.astype(np.float64)
    z = np.einsum("bshd,bskd->bshk", q, k[np.arange(B)[:, None, None], np.maximum(idx, 0)]) * scale_value
    z = np.where((idx >= 0)[:, :, None, :], z, -np.inf)
    m = np.maximum(z.max(-1), sinks.astype(np.float64))
    lse = m + np.log(np.exp(z - m[..., None]).sum(-1) + np.exp(sinks - m))   # sink in the denominator only
    return out, lse


def _emulate_indexer(query, key, weights, sparse_count, cmp_ratio, start_pos=0):
    # the kernel scores what it is given: the binding already applied the FP4 simulation (lightning_indexer below)
    return R.lightning_indexer(query, key, weights, cmp_ratio, sparse_count, start_pos, fp4=False)


def _emulate_compress(kv_proj, score_proj, ape, norm_weight, norm_eps=1e-6):
    c = norm_weight.shape[0]
    w = kv_proj.shape[-1]
    eye = np.eye(w)
    x = np.concatenate([kv_proj, score_proj], -1)           # the kernel's inputs are the two projections
    return R.compress_kv(x, np.concatenate([eye, 0 * eye], 1), np.concatenate([0 * eye, eye], 1), ape, norm_weight,
                         ape.shape[0], w == 2 * c, norm_eps)


# ------------------------------------------------------------------------------------------------ backward
def attention_backward(q, kv, sinks, idx, out, lse, dout, dlse, scale):
    """VJP of the kernel's attention from its saved softmax statistics (lse, sink in the denominator):
    p_j = exp(z_j - lse), z_j = scale·q·kv[idx_j]; dz_j = p_j·(dout·kv[idx_j] - Σ dout·out + dlse);
    dq = scale·Σ_j dz_j kv[idx_j]; dkv[idx_j] += scale·Σ_h dz_j q + Σ_h p_j dout; dsink = Σ p_sink·(dlse - Σ dout·out).
    MindSpore ops (cube matmuls + scatter-add): the backward of our AscendC attention on the NPU."""
    B, S, H, D = q.shape
    N, K = kv.shape[1], idx.shape[-1]
    f32 = ms.float32
    qf, kvf, do, of = ops.cast(q, f32), ops.cast(kv, f32), ops.cast(dout, f32), ops.cast(out, f32)
    valid = idx >= 0
    flat = ops.where(valid, idx, ops.zeros_like(idx)) + ops.arange(B, dtype=ms.int32).reshape(B, 1, 1) * N
    g = ops.gather(kvf.reshape(B * N, D), flat.reshape(-1), 0).reshape(B, S, K, D)           # kv[idx]
    z = ops.matmul(qf, g.swapaxes(-1, -2)) * scale                                          # [B, S, H, K]
    p = ops.exp(z - ops.expand_dims(lse, -1)) * ops.cast(ops.expand_dims(valid, 2), f32)
    dsum = ops.sum(do * of, -1)                                                             # [B, S, H]
    dz = p * (ops.matmul(do, g.swapaxes(-1, -2)) - ops.expand_dims(dsum, -1) + ops.expand_dims(dlse, -1))
    dq = ops.matmul(dz, g) * scale
    dg = (ops.matmul(dz.swapaxes(2, 3), qf) * scale + ops.matmul(p.swapaxes(2, 3), do))     # [B, S, K, D]
    seg = ops.where(valid, flat, ops.full_like(flat, B * N)).reshape(-1)
    dkv = ops.unsorted_segment_sum(dg.reshape(-1, D), seg, B * N + 1)[:B * N].reshape(B, N, D)
    psink = ops.exp(ops.cast(sinks, f32).reshape(1, 1, H) - lse)
    dsink = ops.sum(psink * (dlse - dsum), (0, 1))
    return ops.cast(dq, q.dtype), ops.cast(dkv, kv.dtype), dsink


def _all_indices(window_idx, cmp_idx, S, N, ratio, cmp_offset, start_pos):
    """The entry list the kernel attends: window + compressed ids (HCA: every visible one, rows cmp_offset..)."""
    if cmp_idx is not None:
        return ops.concat([window_idx, cmp_idx], -1)
    if ratio == 0:
        return window_idx
    off = S if cmp_offset < 0 else cmp_offset
    n = N - off
    ids = ops.arange(n, dtype=ms.int32).reshape(1, n)
    vis = ops.minimum((ops.arange(S, dtype=ms.int32) + start_pos + 1) // ratio, n).reshape(S, 1)
    cmp = ops.where(ids < vis, ids + off, -ops.ones_like(ids))
    B = window_idx.shape[0]
    return ops.concat([window_idx, ops.broadcast_to(ops.expand_dims(cmp, 0), (B, S, n))], -1)


def compress_backward(kvp, scp, ape, norm_w, dout, norm_eps):
    """VJP of the kernel's compressor: entries = RMSNorm(Σ_slots softmax_slots(score + ape)·kv)·w, with V4's overlap
    (ratio 4: block i pools its own second-half channels and block i-1's first-half ones) -> (dkv_proj, dscore_proj,
    dape, dnorm_weight). Recomputes the pooling in MindSpore ops; tokens past the last complete block get zero."""
    f32 = ms.float32
    B, S, W = kvp.shape
    R, c = ape.shape[0], norm_w.shape[0]
    n = S // R
    overlap = W == 2 * c
    kv = ops.cast(kvp[:, :n * R], f32).reshape(B, n, R, W)
    sc = ops.cast(scp[:, :n * R], f32).reshape(B, n, R, W) + ops.cast(ape, f32)
    if overlap:
        prev_kv = ops.zeros((B, 1, R, c), f32)
        prev_sc = ops.full((B, 1, R, c), NEG_INF, dtype=f32)
        if n > 1:
            prev_kv = ops.concat([prev_kv, kv[:, :n - 1, :, :c]], 1)
            prev_sc = ops.concat([prev_sc, sc[:, :n - 1, :, :c]], 1)
        kv = ops.concat([prev_kv, kv[..., c:]], 2)
        sc = ops.concat([prev_sc, sc[..., c:]], 2)
    p = ops.softmax(sc, 2)
    pooled = ops.sum(kv * p, 2)                                                     # [B, n, c]
    r = ops.rsqrt(ops.mean(pooled * pooled, -1, True) + norm_eps)
    do = ops.cast(dout, f32)
    g = do * ops.cast(norm_w, f32)
    dpooled = r * g - pooled * r * r * r * ops.mean(g * pooled, -1, True)
    dnorm = ops.sum(do * pooled * r, (0, 1))
    dp = ops.expand_dims(dpooled, 2)
    dkv = p * dp
    dsc = p * (kv - ops.expand_dims(pooled, 2)) * dp
    if overlap:   # slots [0, R) of block i are block i-1's first-half channels; slots [R, 2R) its own second half
        tail = ops.zeros((B, 1, R, c), f32)
        dkv_first = ops.concat([dkv[:, 1:, :R], tail], 1) if n > 1 else tail
        dsc_first = ops.concat([dsc[:, 1:, :R], tail], 1) if n > 1 else tail
        dkv = ops.concat([dkv_first, dkv[:, :, R:]], -1)
        dsc = ops.concat([dsc_first, dsc[:, :, R:]], -1)
    dape = ops.sum(dsc, (0, 1))
    dkv = dkv.reshape(B, n * R, W)
    dsc = dsc.reshape(B, n * R, W)
    if S > n * R:
        pad = ops.zeros((B, S - n * R, W), f32)
        dkv, dsc = ops.concat([dkv, pad], 1), ops.concat([dsc, pad], 1)
    return ops.cast(dkv, kvp.dtype), ops.cast(dsc, scp.dtype), ops.cast(dape, ape.dtype), ops.cast(dnorm, norm_w.dtype)


# ------------------------------------------------------------------------------------------------ primitives
@functools.lru_cache(None)
def _attention(scale, ratio, cmp_offset, start_pos):
    def shape(q, kv, sinks, widx, cidx):
        return q, q[:3]

    def dtype(q, kv, sinks, widx, cidx):
        return q, ms.float32

    def bprop(q, kv, sinks, widx, cidx, out, dout):
        idx = _all_indices(widx, cidx, q.shape[1], kv.shape[1], ratio, cmp_offset, start_pos)
        dq, dkv, dsink = attention_backward(q, kv, sinks, idx, out[0], out[1], dout[0], dout[1], scale)
        return dq, dkv, dsink, ops.zeros_like(widx), None if cidx is None else ops.zeros_like(cidx)

    attrs = {"scale_value": scale, "cmp_ratio": ratio, "cmp_offset": cmp_offset, "start_pos": start_pos}
    return primitive(CONTRACTS["AV4SparseAttnSharedKV"], attrs, shape, dtype, bprop, _emulate_attention)


@functools.lru_cache(None)
def _indexer(topk, ratio, start_pos):
    def shape(q, k, w):
        return [q[0], q[1], min(topk, k[1])]

    def dtype(q, k, w):
        return ms.int32

    def bprop(q, k, w, out, dout):       # integer ids: no gradient flows through the selection
        return ops.zeros_like(q), ops.zeros_like(k), ops.zeros_like(w)

    attrs = {"sparse_count": topk, "cmp_ratio": ratio, "start_pos": start_pos}
    return primitive(CONTRACTS["AV4LightningIndexer"], attrs, shape, dtype, bprop, _emulate_indexer)


@functools.lru_cache(None)
def _compress(norm_eps):
    def shape(kv, sc, ape, nw):
        return [kv[0], kv[1] // ape[0], nw[0]]

    def dtype(kv, sc, ape, nw):
        return kv

    def bprop(kv, sc, ape, nw, out, dout):
        return compress_backward(kv, sc, ape, nw, dout, norm_eps)

    return primitive(CONTRACTS["AV4CompressKV"], {"norm_eps": norm_eps}, shape, dtype, bprop, _emulate_compress)


# ------------------------------------------------------------------------- backends (the registry's functions)
def sparse_attention(q, kv, sink, window_idx, compressed_idx, scale):
    cidx = None if compressed_idx is None else ops.cast(compressed_idx, ms.int32)
    return _attention(float(scale), 0, -1, 0)(q, kv, ops.cast(sink, ms.float32), ops.cast(window_idx, ms.int32),
                                              cidx)[0]


def hca_attention(q, kv, sink, window_idx, ratio, scale, cmp_offset=None, start_pos=0):
    off = -1 if cmp_offset is None else int(cmp_offset)
    return _attention(float(scale), int(ratio), off, int(start_pos))(
        q, kv, ops.cast(sink, ms.float32), ops.cast(window_idx, ms.int32), None)[0]


def lightning_indexer(q, k, w, ratio, topk, start_pos=0, fp4=True):
    if not isinstance(start_pos, int):   # per-row positions of a cached step: the kernel takes one scalar start
        return composite.lightning_indexer(q, k, w, ratio, topk, start_pos, fp4)
    if fp4:   # Hadamard + FP4 QDQ is the kernel's input quantisation; the composite's fp4_rotate runs it on the cube
        q, k = fp4_rotate(q), fp4_rotate(k)
    return _indexer(int(topk), int(ratio), int(start_pos))(q, k, ops.cast(w, q.dtype))


def compress_kv(x, wkv, wgate, ape, norm_w, ratio, overlap, norm_eps=1e-6):
    if x.shape[1] < ratio:     # no complete block: nothing to launch (an empty output)
        return ops.zeros((x.shape[0], 0, norm_w.shape[0]), x.dtype)
    kvp = linear(x, wkv)       # cube matmuls; the kernel pools and normalises
    scp = linear(x, wgate)
    return _compress(float(norm_eps))(kvp, scp, ops.cast(ape, ms.float32), ops.cast(norm_w, ms.float32))


for _cache in (_attention, _indexer, _compress):
    on_target_change(_cache.cache_clear)
