"""`ascend-v4 plan`: what runs on a 910B / 910C for every operator call of prefill, decode and a train step.

For each phase the model's operator calls are listed from the config alone (no weights, no model in memory), and each
is resolved by the registry's own rule (`registry.explain`) for an Ascend target of the given SoC and CANN version —
the code path a device run takes (runtime.setup sets the same target), so the plan is what happens. Each row says
which backend runs (a CANN vendor operator with its CANN release, our AscendC kernel, or the MindSpore composite),
why (the verdicts of the better-ranked backends, and the vendor operators that exist for the op and why they are not
used: ops/vendor.py), the dtypes under the bf16 policy (ascend_v4/precision.py), and per-device memory.
"""
from __future__ import annotations

from typing import Dict

from .config import ModelConfig

PHASES = ("prefill", "decode", "train")
SOCS = ("910b", "910b4", "910c")

# dtypes on Ascend under the bf16 policy: bf16 activations/weights, float32 islands (ascend_v4/precision.py)
DTYPES = {
    "hc_pre": "x bf16 -> y bf16; mixes, Sinkhorn, post, comb fp32",
    "hc_post": "f, residual bf16; post, comb fp32 -> bf16",
    "hc_head": "streams bf16 -> bf16; head weights fp32",
    "compress_kv": "x bf16, projections bf16; softmax pooling + RMSNorm fp32 -> bf16",
    "compress_kv_step": "x bf16; state and pooling fp32 -> bf16",
    "lightning_indexer": "q, k, weights bf16; scores fp32 -> ids int32",
    "sparse_attention": "q, kv bf16, sinks fp32, ids int32; softmax fp32 -> bf16",
    "hca_attention": "q, kv bf16, sinks fp32, window ids int32; softmax fp32 -> bf16",
    "moe_route": "x bf16 -> router logits fp32 -> weights fp32, expert ids int32",
    "moe_init_routing": "x bf16, ids int32 -> rows bf16, row index int32",
    "grouped_expert_ffn": "rows bf16, weights bf16 (fp32 accumulate), clamped SwiGLU -> bf16",
    "moe_finalize_routing": "rows bf16, scales fp32 -> bf16",
    "expert_ffn": "x bf16, weights bf16 -> bf16 (shared expert)",
    "newton_schulz": "update matrices bf16 matmuls, fp32 master weights",
    "hc_mixes": "streams bf16 -> pre, post, comb fp32 (pipelined mHC)",
    "engram_lookup": "tables in host memory (INT8 + fp32 group scales, FP8 or BF16) -> rows decoded to fp32 on the "
                     "host, [tokens, C·d] copied H2D (INT8 rows for the AscendC engram_dequant: not in the step "
                     "graph yet)",
    "engram_dequant": "rows int8, scales fp32 -> fp32 (cast to bf16 by the model)",
    "engram_gate": "streams bf16, wkv(rows) bf16, q·k weight fp32; norms, dot, sigmoid fp32 -> bf16",
}


def _calls(cfg: ModelConfig, phase: str) -> Dict[str, int]:
    """op -> calls per step, in the order the model makes them (model.py Cells). A cached step's compressor state update
    and index selection run in model code today (Compressor.step, Indexer.select: composite ops, the same formulas as
    compress_kv_step / lightning_indexer, which take only a static start_pos); they are listed under those ops."""
    calls: Dict[str, int] = {}

    def add(op, n=1):
        calls[op] = calls.get(op, 0) + n

    blocks = [cfg.ratio(i) for i in range(cfg.n_layers)] + [0] * cfg.n_mtp_layers
    v41 = getattr(cfg, "version", "v4") == "v4.1"
    engram = len(getattr(cfg, "engram_layer_ids", ()) or ())
    if engram:
        # DeepSeek-V4.1 Engram (docs/ascendc.md, "Engram on Ascend"): serving gathers and decodes each Engram
        # layer's rows on the host and copies them H2D (engram_lookup), the device reads them into the streams
        # (engram_gate); training feeds the gathered rows as a graph input and scatter-adds their gradient into the
        # host tables (row-sparse optimiser), so only the gate runs on the device. engram_dequant (INT8 rows decoded
        # on the device) is not in the step graph yet
        if phase != "train":
            add("engram_lookup", engram)
        add("engram_gate", engram)
    for r in blocks:
        add("hc_mixes" if v41 else "hc_pre", 2)
        if phase == "decode":
            if r:      # compressor state step (and the indexer's), then one attention call
                add("compress_kv_step", 2 if r == 4 else 1)
            add("sparse_attention")
        elif r == 4:   # CSA: KV compressor + the indexer's compressor, indexer top-k, attention over both lists
            add("compress_kv", 2)
            add("lightning_indexer")
            add("sparse_attention")
        elif r:        # HCA: every visible compressed entry, no index list
            add("compress_kv")
            add("hca_attention")
        else:          # SWA (and the MTP block)
            add("sparse_attention")
        add("hc_post", 2)
        add("moe_route")
        add("moe_init_routing")
        add("grouped_expert_ffn")
        add("moe_finalize_routing")
        add("expert_ffn")
    add("hc_head", 1 + (cfg.n_mtp_layers if phase == "train" else 0))
    if phase == "train":
        add("newton_schulz")
    return calls


def _gib(x: float) -> float:
    return round(x / 2 ** 30, 2)


def memory(cfg: ModelConfig, phase: str, tc, context: int, batch: int) -> Dict[str, float]:
    """GiB per device: bf16 weights split by tp (dense) and ep (routed experts), KV cache of `context` tokens for
    `batch` sequences (attention data parallel: the cache is not split); train: train/cluster.py's estimate."""
    if phase == "train":
        from .train.cluster import memory_estimate
        return {k: round(v, 2) for k, v in memory_estimate(cfg, tc).items()}
    from .info import kv_bytes_per_token, parameter_counts
    p = parameter_counts(cfg)
    par = tc.parallel
    experts = p["routed_experts"]
    dense = p["total_with_mtp"] - experts
    weights = 2 * (dense / par.tp + experts / par.ep)
    kv = kv_bytes_per_token(cfg)
    cache = batch * (context * kv["ascend_bf16"] + kv["window_bytes_bf16"])
    out = {"weights_bf16": _gib(weights), "kv_cache_bf16": _gib(cache)}
    out["total"] = round(sum(out.values()), 2)
    return out


def plan(cfg: ModelConfig, soc: str = "910b", cann: str = "8.5", tc=None, context: int = 4096,
         batch: int = 1) -> Dict:
    """The plan as a dict (what `--json` prints)."""
    from .ops import registry, vendor
    from .train.cluster import SOCS as SOC_TABLE
    from .train.loop import TrainConfig
    if soc not in SOC_TABLE:
        raise ValueError(f"unknown SoC {soc}: one of {', '.join(SOC_TABLE)}")
    tc = tc or TrainConfig.from_dict({"model": cfg.name, "seq_len": context, "batch_size": batch})
    shapes = registry.model_shapes(cfg)
    hbm = SOC_TABLE[soc]["hbm_gib"]
    out = {"config": cfg.name, "soc": soc, "soc_label": SOC_TABLE[soc]["label"], "cann": cann,
           "parallel": {k: getattr(tc.parallel, k) for k in ("dp", "tp", "ep", "pp")},
           "precision": "bf16 parameters and activations; fp32 islands: " + ", ".join(_islands()),
           "phases": {}}
    for phase in PHASES:
        t = registry.Target(device="Ascend", soc=soc, cann=cann, planning=True, training=phase == "train",
                            shapes=shapes)
        rows = []
        for op, n in _calls(cfg, phase).items():
            verdicts = registry.explain(op, t)
            chosen = next((v for v in verdicts if v.chosen), None)
            if chosen is None:
                raise registry.BackendError(f"plan: no backend of {op} runs on {soc} "
                                            f"({'; '.join(v.reason for v in verdicts)})")
            passed = [f"{v.backend.name}: {v.reason}" for v in verdicts
                      if not v.chosen and v.backend.priority > chosen.backend.priority and "Ascend" in v.backend.platforms]
            vend = [f"{c.vendor_op}" + (f" ({c.mindspore}, CANN >= {c.cann})" if c.mindspore else "") +
                    (" - used" if c.used else f" - not used: {c.why}") for c in vendor.candidates(op)]
            if not passed:
                passed = ["highest-priority backend for Ascend" if any(
                    b.platforms == ("Ascend",) for b in registry.backends(op)) else
                    "no AscendC kernel or vendor operator for this op: MindSpore composite"]
            rows.append({"op": op, "calls": n, "backend": chosen.backend.name,
                         "runs": chosen.backend.what or _default_what(chosen.backend),
                         "why": "; ".join(passed),
                         "vendor": vend, "dtypes": DTYPES.get(op, "")})
        mem = memory(cfg, phase, tc, context, batch)
        out["phases"][phase] = {"calls": rows, "memory_gib": mem, "hbm_gib": hbm,
                                "fits": mem["total"] <= hbm}
    return out


def _islands():
    from .precision import FP32_ISLANDS
    return FP32_ISLANDS


def _default_what(b) -> str:
    return {"composite": "MindSpore composite (ops.* / mint.* on aclnn kernels)"}.get(b.name, b.name)


def format_plan(p: Dict) -> str:
    par = " ".join(f"{k}={v}" for k, v in p["parallel"].items())
    lines = [f"plan: {p['config']} on {p['soc_label']}, CANN {p['cann']}, parallel {par}",
             f"precision: {p['precision']}"]
    for phase, ph in p["phases"].items():
        mem = ", ".join(f"{k} {v}" for k, v in ph["memory_gib"].items())
        lines.append("")
        lines.append(f"== {phase}: per-device memory GiB: {mem} (HBM {ph['hbm_gib']}"
                     f"{'' if ph['fits'] else ' - DOES NOT FIT: raise tp/ep/pp'})")
        lines.append(f"{'op':<22}{'calls':>6}  {'backend':<10}runs")
        for r in ph["calls"]:
            lines.append(f"{r['op']:<22}{r['calls']:>6}  {r['backend']:<10}{r['runs']}")
            lines.append(f"{'':<30}dtypes: {r['dtypes']}")
            lines.append(f"{'':<30}why: {r['why']}")
            for v in r["vendor"]:
                lines.append(f"{'':<30}vendor: {v}")
    lines.append("")
    lines.append("Nothing of this has run on an NPU yet; docs/ascend.md says what is verified on CPU.")
    return "\n".join(lines)
