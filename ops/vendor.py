"""CANN vendor operators against V4's operators: which one has V4's semantics, through which MindSpore entry, from
which CANN release, and — where we do not call it — why. The mapped ones are registry backends "aclnn"
(ops/moe/aclnn.py); the table is what `ascend-v4 plan` and docs/ascend.md print next to each operator, so a reader
sees the vendor option and the reason our AscendC kernel or composite runs instead.

Each entry: (vendor operator, MindSpore 2.10 entry or None, first CANN release, SoCs, used?, why).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional


class Candidate(NamedTuple):
    vendor_op: str
    mindspore: Optional[str]
    cann: str
    socs: str
    used: bool
    why: str


def _cann(op: str, mindspore: Optional[str], cann: str, used: bool, why: str) -> Candidate:
    """A CANN operator (910B = A2 and 910C = A3)."""
    return Candidate(op, mindspore, cann, "910b,910c", used, why)


def _recipe(op: str, detail: str) -> Candidate:
    """A cann-recipes custom op: outside CANN, no MindSpore entry, documented for 910C (A3) only."""
    return Candidate(f"custom {op}", None, "-", "910c", False, f"cann-recipes custom op{detail}, not part of CANN")


CANDIDATES: Dict[str, List[Candidate]] = {
    "moe_route": [
        _cann("aclnnMoeGatingTopK", None, "8.0", False,
              "normType softmax/sigmoid only; V4 scores with sqrt-softplus and routes the first layers by tid2eid "
              "hash; MindSpore 2.10 ships only MoeGatingTopKSoftmax"),
        _recipe("npu_moe_gating_top_k (hash variant)", " (normType 2 + hash, k <= 64; also in vllm-ascend)"),
    ],
    "moe_init_routing": [
        _cann("aclnnMoeInitRoutingV2", "ops.moe_init_routing_v2", "8.0", True,
              "same semantics (dropless and drop/pad, count or cumsum histogram)"),
        _cann("aclnnMoeDistributeDispatch (MC2, EP)", "ops.moe_distribute_dispatch", "8.0", False,
              "not wired: EP runs AlltoAll + MoeInitRoutingV2 (ops/moe/parallel.py); its limits (A2: ep_world 16..256, "
              "batch <= 256, H <= 7168 and % 32, <= 24 local experts) are checked by `train --dry-run`"),
    ],
    "grouped_expert_ffn": [
        _cann("aclnnGroupedMatmulV4", "ops.grouped_matmul", "8.0", True,
              "split_item 3, group_type 0, int64 cumsum group list; V4's clamped SwiGLU between the GMMs"),
        _cann("aclnnGroupedMatmulSwigluQuant", None, "8.0", False,
              "quantised (W8A8) path only and no SwiGLU clamp (V4 clamps at 10)"),
    ],
    "moe_finalize_routing": [
        _cann("aclnnMoeFinalizeRouting", "ops.moe_finalize_routing", "8.0", True,
              "V1 layout (column-arranged row index; ours is transposed); drop/pad calls go to our AscendC kernel "
              "(V2's drop_pad_mode is not exposed by MindSpore 2.10)"),
        _cann("aclnnMoeDistributeCombine (MC2, EP)", "ops.moe_distribute_combine", "8.0", False,
              "pairs with MoeDistributeDispatch (not wired, see moe_init_routing)"),
    ],
    "lightning_indexer": [
        _cann("aclnnLightningIndexer", "ops.lightning_indexer", "8.3", False,
              "DSA (V3.2) semantics in MindSpore 2.10's binding: no cmp_ratio, so visibility over compressed entries "
              "(id < floor((t+1)/ratio)) cannot be expressed; returns score order, V4 wants ascending ids; limits: "
              "head dim 128, sparse_count <= 2048, Q_N <= 64"),
    ],
    "sparse_attention": [
        _cann("aclnnSparseFlashAttention", "ops.sparse_flash_attention", "8.3", False,
              "MLA-absorb layout only (D 512 + rope 64) and attention sinks only on 950; V4 needs the sink"),
        _recipe("npu_sparse_attn_sharedkv", " (V4 SWA/CSA/HCA with sinks), A3 inference only"),
    ],
    "hca_attention": [_recipe("npu_sparse_attn_sharedkv", ", A3 inference only")],
    "compress_kv": [_recipe("compressor", " (A3, 950), inference only")],
    "hc_pre": [_recipe("npu_hc_pre (+ sinkhorn)", ": hc = 4, D = 4096, fused only for T <= 128 and T % 16 == 0, "
                                                  "no backward")],
    "hc_post": [_recipe("npu_hc_post", ", inference only")],
    "hc_head": [],
    "expert_ffn": [],
    "newton_schulz": [],
    "compress_kv_step": [],
    # DeepSeek-V4.1 Engram (docs/ascendc.md, "Engram on Ascend"): the tables stay in host memory, no device gather
    "engram_lookup": [],
    "engram_dequant": [
        _cann("aclnnAscendAntiQuant", None, "8.0", False,
              "scale is 1-D (one per column of x, or one for all); Engram rows carry one scale per 32 values of each "
              "row, and its output is fp16/bf16 only"),
    ],
    "engram_gate": [],
}


def candidates(op: str) -> List[Candidate]:
    return CANDIDATES.get(op, [])


def cann_at_least(have: str, need: str) -> bool:
    """'8.5' >= '8.0'; an unknown version ('') counts as new enough (the plan says which it assumed)."""
    if not have or need in ("", "-"):
        return True

    def parse(v):
        return tuple(int(p) for p in v.split(".")[:2] if p.isdigit())
    return parse(have) >= parse(need)
