"""`ascend-v4 train --dry-run`: validate a cluster layout before anyone burns hours on 910B/910C.

Checks, each a readable sentence instead of an aclnn error code later:
- divisibility: heads / o_groups / index heads by tp, routed experts by ep, layers by pp, world = dp·tp·pp,
  dp·tp divisible by ep (experts live inside the data×tensor group, as in mindformers), batch by micro-batches;
- vendor-op limits (the CANN operator documentation; docs/ascend.md) of MoeDistributeDispatch/Combine (MC2 EP sizes,
  experts per rank, hidden size multiple of 32 and <= 7168, tokens per rank), LightningIndexer (top-k <= 2048,
  index heads per rank <= 64, head dim 128), and the HCCL_BUFFSIZE the dispatch/combine pair needs;
- a per-device memory estimate (weights, gradients, optimiser state, activations, KV) against the HBM size.
The formulas are estimates; every number is printed so a user can see which term dominates.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..config import ModelConfig

SOCS = {
    # name: (HBM GiB per device, AIV cores, max tokens per rank for dispatch/combine, MC2 EP sizes)
    "910b": {"hbm_gib": 64, "aiv": 48, "max_bs": 256, "ep_sizes": (16, 32, 64, 128, 256),
             "ep_sizes_hierarchy": (16, 32, 64), "label": "Ascend 910B (Atlas A2)"},
    "910b4": {"hbm_gib": 32, "aiv": 40, "max_bs": 256, "ep_sizes": (16, 32, 64, 128, 256),
              "ep_sizes_hierarchy": (16, 32, 64), "label": "Ascend 910B4 (Atlas A2, 32 GB)"},
    "910c": {"hbm_gib": 64, "aiv": 48, "max_bs": 512, "ep_sizes": None, "ep_sizes_hierarchy": None,
             "label": "Ascend 910C (Atlas A3, per die)"},
}


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def hccl_buffsize_mb(soc: str, hidden: int, topk: int, n_experts: int, ep: int, max_bs: int,
                     shared_experts: int = 0, hierarchy: bool = False) -> int:
    """Minimum HCCL_BUFFSIZE (MB) for MoeDistributeDispatchV2/CombineV2, from the aclnn documentation."""
    local = max(n_experts // ep, 1)
    if soc.startswith("910b"):
        if hierarchy:
            b = (n_experts + ep // 4) * _align(max_bs * (hidden * 2 + 16 * _align(topk, 8)), 512) + 8 * 2 ** 20
        else:
            b = 2 * (max_bs * ep * min(local, topk) * hidden * 2 + 2 * 2 ** 20)
    else:
        b = 2 * (local * max_bs * ep * _align(_align(2 * hidden, 32) + 64, 512)
                 + (topk + shared_experts) * max_bs * _align(2 * hidden, 512))
    return max(2, math.ceil(b / 2 ** 20))


@dataclass
class Report:
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    memory: Dict[str, float] = field(default_factory=dict)
    host: Dict[str, float] = field(default_factory=dict)       # per-process host memory (V4.1's Engram tables)
    notes: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        lines = []
        if self.memory:
            lines.append("per-device memory estimate (GiB): " + ", ".join(f"{k} {v:.2f}" for k, v in self.memory.items()))
        if self.host:
            lines.append("per-process host memory estimate (GiB): " + ", ".join(f"{k} {v:.2f}"
                                                                            for k, v in self.host.items()))
        lines += [f"  {n}" for n in self.notes]
        for k, v in self.env.items():
            lines.append(f"set {k}={v}")
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"error: {e}" for e in self.errors]
        lines.append("layout OK" if not self.errors else f"{len(self.errors)} problem(s): fix them before launching")
        return "\n".join(lines)


def dry_run(cfg: ModelConfig, tc, soc: str = "910b", world: Optional[int] = None,
            hbm_gib: Optional[float] = None, comm_alg: str = "fullmesh") -> Report:
    soc = soc.lower()
    if soc not in SOCS:
        raise ValueError(f"unknown soc '{soc}'; choose one of {', '.join(SOCS)}")
    info = SOCS[soc]
    p = tc.parallel
    r = Report()
    err, warn = r.errors.append, r.warnings.append
    world = world or p.dp * p.tp * p.pp
    if p.dp * p.tp * p.pp != world:
        err(f"dp·tp·pp = {p.dp}·{p.tp}·{p.pp} = {p.dp * p.tp * p.pp} but the job has {world} devices")
    # --- divisibility
    if cfg.n_heads % p.tp:
        err(f"n_heads {cfg.n_heads} is not divisible by tp {p.tp}")
    if cfg.o_groups % p.tp:
        err(f"o_groups {cfg.o_groups} is not divisible by tp {p.tp} (wo_a is split by output group)")
    if cfg.index_n_heads % p.tp:
        err(f"index_n_heads {cfg.index_n_heads} is not divisible by tp {p.tp}")
    if cfg.moe_inter_dim % p.tp:
        err(f"moe_inter_dim {cfg.moe_inter_dim} is not divisible by tp {p.tp}")
    if cfg.n_routed_experts % p.ep:
        err(f"n_routed_experts {cfg.n_routed_experts} is not divisible by ep {p.ep}")
    if cfg.version == "v4.1" and cfg.n_mtp_layers and cfg.dspark_n_routed_experts % p.ep:
        err(f"dspark_n_routed_experts {cfg.dspark_n_routed_experts} is not divisible by ep {p.ep} (the DSpark "
            f"drafter's experts split over ep too)")
    if (p.dp * p.tp) % p.ep:
        err(f"dp·tp = {p.dp * p.tp} must be divisible by ep {p.ep}: experts are sharded inside the data×tensor group")
    # what `ascend-v4 train` itself runs (ascend_v4/parallel.py): experts split across dp ranks
    if p.ep > 1 and p.dp % p.ep and (p.dp * p.tp) % p.ep == 0:
        warn(f"ep {p.ep} does not divide dp {p.dp}: `ascend-v4 train` splits experts across data-parallel ranks only "
             f"and refuses this layout (experts spanning tensor-parallel ranks need another runtime)")
    if p.pp > cfg.n_layers:
        err(f"pp {p.pp} exceeds n_layers {cfg.n_layers}: every pipeline stage needs a layer")
    if cfg.n_layers % p.pp:
        warn(f"n_layers {cfg.n_layers} is not divisible by pp {p.pp}: stages get {cfg.n_layers // p.pp} or "
             f"{cfg.n_layers // p.pp + 1} layers (give the last stage fewer: it also holds the head and MTP)")
    if p.pp > 1 and p.micro_batches < p.pp:
        warn(f"micro_batches {p.micro_batches} < pp {p.pp}: the pipeline bubble exceeds 50%")
    if tc.batch_size % p.micro_batches:
        err(f"batch_size {tc.batch_size} is not divisible by micro_batches {p.micro_batches}")
    if tc.seq_len % 128 and any(cfg.ratio(i) == 128 for i in range(cfg.n_layers)):
        warn(f"seq_len {tc.seq_len} is not a multiple of 128: the last HCA block of every sequence is never used")
    # --- vendor-op limits
    tokens_per_rank = tc.batch_size // max(p.micro_batches, 1) * tc.seq_len
    if p.ep > 1:
        sizes = info["ep_sizes_hierarchy"] if comm_alg == "hierarchy" else info["ep_sizes"]
        if sizes is not None and p.ep not in sizes:
            err(f"MoeDistributeDispatch on {info['label']} supports ep in {sizes} ({comm_alg}), not {p.ep}; "
                f"use one of those or the AllGather dispatch (slower)")
        if cfg.n_routed_experts > 512:
            err(f"MoeDistributeDispatch supports at most 512 experts, the model has {cfg.n_routed_experts}")
        if soc.startswith("910b") and cfg.n_routed_experts // p.ep > 24:
            err(f"{cfg.n_routed_experts // p.ep} experts per rank exceeds the 24 MoeDistributeDispatch allows on A2; "
                f"raise ep to at least {math.ceil(cfg.n_routed_experts / 24)}")
        hmax = 10240 if comm_alg == "hierarchy" else 7168
        if cfg.dim % 32 or cfg.dim > hmax:
            err(f"hidden size {cfg.dim} must be a multiple of 32 and <= {hmax} for MoeDistributeDispatch")
        mb_per_rank = tokens_per_rank
        if mb_per_rank > info["max_bs"]:
            warn(f"{mb_per_rank} tokens per rank per micro-batch exceed the dispatch limit {info['max_bs']} on "
                 f"{info['label']}: the step must chunk the MoE into {math.ceil(mb_per_rank / info['max_bs'])} calls")
        bs = min(mb_per_rank, info["max_bs"])
        r.env["HCCL_BUFFSIZE"] = str(hccl_buffsize_mb(soc, cfg.dim, cfg.n_activated_experts, cfg.n_routed_experts,
                                                      p.ep, bs, cfg.n_shared_experts, comm_alg == "hierarchy"))
        have = os.environ.get("HCCL_BUFFSIZE")
        if have is not None and int(have) < int(r.env["HCCL_BUFFSIZE"]):
            err(f"HCCL_BUFFSIZE={have} MB is below the {r.env['HCCL_BUFFSIZE']} MB dispatch/combine need "
                f"(too small shows up as 'DDR address of the MTE instruction is out of range')")
    if any(cfg.ratio(i) == 4 for i in range(cfg.n_layers)):
        if cfg.index_topk > 2048:
            err(f"index_topk {cfg.index_topk} exceeds LightningIndexer's 2048")
        if cfg.index_n_heads // p.tp > 64:
            err(f"{cfg.index_n_heads // p.tp} indexer heads per rank exceed LightningIndexer's 64")
        if cfg.index_head_dim != 128:
            warn(f"index_head_dim {cfg.index_head_dim}: the vendor LightningIndexer needs 128 (ours runs any)")
    if cfg.dim % 32:
        err(f"hidden size {cfg.dim} must be a multiple of 32 (32-byte DataCopy alignment of bf16 rows)")
    # --- memory
    r.memory = memory_estimate(cfg, tc)
    state = _optimiser_state_gib(r.memory)
    shard_hint = ""
    if p.dp > 1 and p.optimizer_shard:
        r.notes.append(f"optimiser state (master_fp32 + adam_state + muon_momentum = {state:.2f}) is this rank's "
                       f"ZeRO-1 share: dense tensors split over dp {p.dp}, expert shards over their "
                       f"{max(p.dp // p.ep, 1)} dp/ep replica(s)")
    elif p.dp > 1 and p.pp == 1 and p.micro_batches == 1:
        alt = memory_estimate(cfg, dataclasses.replace(tc, parallel=dataclasses.replace(p, optimizer_shard=True)))
        r.notes.append(f"optimiser state {state:.2f} is replicated on each of the dp {p.dp} ranks; "
                       f"parallel.optimizer_shard: true makes it {_optimiser_state_gib(alt):.2f} "
                       f"(total {alt['total']:.2f})")
        shard_hint = ", set parallel.optimizer_shard: true"
    r.host = engram_host_memory(cfg, tc)
    if r.host:
        z = p.dp if p.optimizer_shard and p.dp > 1 else 1
        r.notes.append(f"Engram tables (host memory, float32): rows split over tp {p.tp}, their moments and counts "
                       f"over tp·{'dp' if z > 1 else '1'} = {p.tp * z} ranks; a checkpoint save assembles the full "
                       f"state ({_engram_full_gib(cfg):.1f} GiB) on rank 0")
    if not getattr(tc, "recompute", False):
        shard_hint += ", enable recompute"
    hbm = hbm_gib or info["hbm_gib"]
    total = r.memory["total"]
    if total > 0.92 * hbm:
        err(f"estimated {total:.1f} GiB per device exceeds {hbm} GiB HBM of {info['label']} (keep ~8% for the runtime); "
            f"raise ep/tp/pp, lower batch_size or seq_len{shard_hint}")
    elif total > 0.8 * hbm:
        warn(f"estimated {total:.1f} GiB of {hbm} GiB: little headroom for fragmentation")
    return r


def engram_host_memory(cfg: ModelConfig, tc) -> Dict[str, float]:
    """GiB of host memory per process for DeepSeek-V4.1's Engram tables as `ascend-v4 train` places them
    (train/v41.py EngramSparseAdamW): float32 rows split over tp; their row-sparse AdamW state (two float32
    moments and an int64 update count per row) split over tp, and over dp with parallel.optimizer_shard (ZeRO-1).
    Empty for a model without Engram."""
    if getattr(cfg, "version", "v4") != "v4.1" or not cfg.engram_layer_ids:
        return {}
    p = tc.parallel
    rows = sum(int(n) for n in cfg.engram_num_embeddings)
    d = cfg.engram_head_dim
    z = p.dp if p.optimizer_shard and p.dp > 1 else 1
    gib = 2 ** 30
    out = {"engram_tables": 4 * rows * d / p.tp / gib, "engram_state": (8 * d + 8) * rows / (p.tp * z) / gib}
    out["total"] = out["engram_tables"] + out["engram_state"]
    return out


def _engram_full_gib(cfg: ModelConfig) -> float:
    rows = sum(int(n) for n in cfg.engram_num_embeddings)
    return (12 * cfg.engram_head_dim + 8) * rows / 2 ** 30


def _optimiser_state_gib(memory: Dict[str, float]) -> float:
    return memory["master_fp32"] + memory["adam_state"] + memory["muon_momentum"]


def memory_estimate(cfg: ModelConfig, tc) -> Dict[str, float]:
    """GiB per device. bf16 params and grads, fp32 master + optimiser state (Muon: 1 buffer, AdamW: 2), the state
    split over each parameter's replica group when parallel.optimizer_shard, as the runtime does (ZeRO-1,
    ascend_v4.parallel.OptimizerShard: dense tensors over dp, expert shards over their dp/ep replicas; whole
    tensors per owner, so the split is even up to one tensor). The all-gather of the new weights needs one transient
    float32 buffer of the replicated weights, not counted here.

    Activations: per token per layer, the 4 mHC streams and sublayer inputs (bf16) plus the attention query and the
    k routed experts' intermediate — saved for backward without recompute; divided by tp (and by pp for layers).
    With `recompute: true` a block keeps only its input streams and one block's activations exist at a time.
    With pp > 1 the trainer's schedule (train/pipeline.py) holds one micro-batch's stage activations (the backward
    recomputes the stage) plus the input streams of all micro-batches.
    """
    from .param_groups import classify
    from ..checkpoint.inventory import official_inventory
    p = tc.parallel
    inv = official_inventory(cfg)
    dense = experts = adam = muon = 0
    for name, spec in inv.items():
        n = math.prod(spec.shape)
        if name.startswith("mtp.") and not tc.mtp:
            continue
        group = classify(name, spec.shape, requires_grad=spec.fmt != "i64")[0]
        if ".ffn.experts." in name:
            experts += n
        else:
            dense += n
        if group == "adamw":
            adam += n
        elif group == "muon":
            muon += n
    frac_experts = 1.0 / (p.ep * p.pp)
    frac_dense = 1.0 / (p.tp * p.pp)
    share = experts * frac_experts + dense * frac_dense
    # optimizer_shard: state split over the replicas of each parameter (dense: dp; expert shards: dp/ep)
    rep_dense = p.dp if p.optimizer_shard else 1
    rep_experts = max(p.dp // p.ep, 1) if p.optimizer_shard else 1
    state_share = experts * frac_experts / rep_experts + dense * frac_dense / rep_dense
    shard_adam = adam * frac_dense / rep_dense
    shard_muon = state_share - shard_adam
    gib = 2 ** 30
    tokens = tc.batch_size // max(p.micro_batches, 1) * tc.seq_len
    layers = math.ceil((cfg.n_layers + (cfg.n_mtp_layers if tc.mtp else 0)) / p.pp)
    per_tok_layer = 2 * (3 * cfg.hc_mult * cfg.dim + cfg.n_heads * cfg.head_dim // p.tp + cfg.q_lora_rank
                         + 3 * cfg.n_activated_experts * cfg.moe_inter_dim // p.tp + 2 * cfg.head_dim)
    act = per_tok_layer * tokens * layers
    if getattr(tc, "recompute", False):     # each block keeps its input streams; one block's activations live
        act = (2 * cfg.hc_mult * cfg.dim * tokens * (layers - 1)) + per_tok_layer * tokens
    if p.pp > 1:      # train/pipeline.py: GPipe + full stage recompute keeps every micro-batch's stage input
        act += p.micro_batches * tokens * cfg.hc_mult * cfg.dim * 2
    logits = 4 * tokens * cfg.vocab_size / p.tp * (2 if tc.mtp else 1)
    out = {
        "weights_bf16": 2 * share / gib,
        "grads_bf16": 2 * share / gib,
        "master_fp32": 4 * state_share / gib,
        "adam_state": 8 * shard_adam / gib,
        "muon_momentum": 4 * shard_muon / gib,
        "activations": act / gib,
        "logits": logits / gib,
    }
    out["total"] = sum(out.values())
    return out
