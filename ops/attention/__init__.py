"""Attention operator family: compress_kv, lightning_indexer, sparse_attention (shared-KV MQA with sink).

Ops and backends (float64 NumPy `reference`, MindSpore `composite`, CPU C++ `cpp` = ops.Custom aot + bprop):
    compress_kv(x, wkv, wgate, ape, norm_w, ratio, overlap, norm_eps)            prefill form, all complete blocks
    compress_kv_step(x, wkv, wgate, ape, norm_w, kv_state, score_state, start_pos, ratio, overlap, norm_eps)
        -> (entries, kv_state, score_state)                                      decode-state form (docs/numerics.md)
    lightning_indexer(q, k, w, ratio, topk, start_pos=0, fp4=True)                ascending ids, -1 padded
        fp4=True: Hadamard + FP4 q/k as DeepSeek's indexer (default); fp4=False: exact scores
        start_pos: an int, or a cached step's first positions [B, 1] int32 (keys may hold more rows than visible)
    sparse_attention(q, kv, sink, window_idx, compressed_idx | None, scale)       CSA / SWA
    hca_attention(q, kv, sink, window_idx, ratio, scale, cmp_offset=None, start_pos=0)
        HCA without an index list: window + every visible compressed entry (kv rows cmp_offset..)
    rope(x, cos, sin, inverse=False)                                              last cos.shape[-1] dims rotated
        by doubled per-pair tables (cos = (c0, c0, c1, c1, ...), sin = (-s0, +s0, ...)), broadcast over x
    index_topk_v2(q, k, w, ratio, topk, start_pos=0, candidates=None) -> (ids, scores)   DeepSeek-V4.1 (CSA-v2)
    candidate_mask(scores, vis, n_blocks, block) -> bool mask              V4.1 level 1 of the two-level indexer
The AscendC kernels (ascendc/, package "ascend_v4_attention") are built with ascendc/build.sh on a CANN machine;
see ascendc/README.md.
"""
from ..registry import register, register_module

_OPS = ("compress_kv", "compress_kv_step", "lightning_indexer", "sparse_attention", "hca_attention", "rope")
_V41 = ("index_topk_v2", "candidate_mask")               # DeepSeek-V4.1 (tests/v41/test_model_v41.py)
register_module(__name__, "reference", _OPS + _V41, tolerance=(0, 0))
register_module(__name__, "composite", _OPS, tolerance=(2e-5, 2e-4))
register_module(__name__, "composite", _V41, tolerance=(0, 0))
register_module(__name__, "cpp", _OPS, tolerance=(2e-5, 2e-4), note="build with `python ops/build.py attention`")

from . import ascendc as _asc   # noqa: E402  (bound through ops/ascend_call.py; available() checks the target)
for _name in ("compress_kv", "lightning_indexer", "sparse_attention", "hca_attention"):
    register(_name, "ascendc", ("Ascend",), priority=20, available=_asc.available, tolerance=_asc.TOLERANCE,
             note=_asc.NOTE,
             what=f"AscendC {_asc.OP_TYPES.get(_name, 'AV4SparseAttnSharedKV')} (package {_asc.VENDOR})")(
        getattr(_asc, _name))
