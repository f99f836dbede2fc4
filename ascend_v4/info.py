"""What a config amounts to: layer schedule, parameter counts (total / active per token), KV bytes per token."""
from __future__ import annotations

import math
from typing import Dict

from .config import ModelConfig


def layer_schedule(cfg: ModelConfig) -> list:
    rows = []
    for i in range(cfg.n_total_blocks):
        kind = cfg.layer_kind(i)
        name = f"layer {i}" if i < cfg.n_layers else f"mtp {i - cfg.n_layers}"
        router = "hash" if i < cfg.n_layers and cfg.is_hash_layer(i) else "topk"
        rows.append({"block": name, "kind": kind, "ratio": cfg.ratio(i), "router": router})
    return rows


def parameter_counts(cfg: ModelConfig) -> Dict[str, int]:
    """Logical (dequantised) element counts from the official inventory."""
    from .checkpoint.inventory import official_inventory
    inv = official_inventory(cfg)
    total = mtp = routed = 0
    per_expert = 0
    for name, spec in inv.items():
        n = math.prod(spec.shape)
        if name.startswith("mtp."):
            mtp += n
        else:
            total += n
            if ".ffn.experts." in name:
                routed += n
        if name.startswith("layers.0.ffn.experts.0."):
            per_expert += n
    unused = cfg.n_layers * (cfg.n_routed_experts - cfg.n_activated_experts) * per_expert
    # embedding rows are a lookup, not compute: the "active" figure DeepSeek quotes counts the head, not the table
    embed = cfg.vocab_size * cfg.dim
    return {"total": total, "total_with_mtp": total + mtp, "mtp": mtp, "routed_experts": routed,
            "active_per_token": total - unused, "active_per_token_excl_embed": total - unused - embed}


def kv_bytes_per_token(cfg: ModelConfig) -> Dict[str, float]:
    """Steady-state cache bytes per token of context (compressed entries + indexer keys; window is fixed).

    cuda_fp8: the release's layout (448 FP8 + 64 BF16 + scales per entry, FP4 indexer keys), docs/formats.md.
    ascend_bf16: what a BF16 port stores; ascend_int8: int8 non-RoPE dims + one fp32 scale per entry.
    """
    nope, rope, idx = cfg.nope_head_dim, cfg.rope_head_dim, cfg.index_head_dim
    fp8_entry = nope + 2 * rope + 8 * math.ceil(math.ceil(nope / 64) / 8)
    fp4_key = idx // 2 + idx // 32
    layouts = {
        "cuda_fp8": (fp8_entry, fp4_key),
        "ascend_bf16": (2 * cfg.head_dim, 2 * idx),
        "ascend_int8": (nope + 2 * rope + 4, idx + 4),
    }
    from .serve.cache import compressed_bytes_per_token
    out = {name: sum(compressed_bytes_per_token(cfg, entry, key).values()) for name, (entry, key) in layouts.items()}
    out["window_bytes_bf16"] = float(cfg.n_total_blocks * cfg.window_size * cfg.head_dim * 2)
    return out


def describe(cfg: ModelConfig) -> Dict:
    if cfg.version == "v4.1":
        return {"config": cfg.to_dict(), "version": cfg.version, "schedule": v41_schedule(cfg),
                "params": v41_parameter_counts(cfg), "kv_bytes_per_token": v41_kv_bytes_per_token(cfg)}
    return {"config": cfg.to_dict(), "schedule": layer_schedule(cfg), "params": parameter_counts(cfg),
            "kv_bytes_per_token": kv_bytes_per_token(cfg)}


def _human_count(n: float) -> str:
    """A parameter count as 1.23B / 4.56M / 7.8K."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else (f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K")


def format_describe(d: Dict) -> str:
    if d.get("version") == "v4.1":
        return format_describe_v41(d)
    cfg = d["config"]
    lines = [f"config '{cfg['name']}': dim {cfg['dim']}, {cfg['n_layers']} layers + {cfg['n_mtp_layers']} MTP, "
             f"{cfg['n_heads']} heads x {cfg['head_dim']}, vocab {cfg['vocab_size']}, "
             f"{cfg['n_routed_experts']} routed experts (top-{cfg['n_activated_experts']}) + {cfg['n_shared_experts']} shared"]
    kinds = {}
    for r in d["schedule"]:
        kinds.setdefault(r["kind"], []).append(r["block"].replace("layer ", ""))
    lines.append("layer schedule: " + "; ".join(f"{k} x{len(v)} [{', '.join(v)}]" for k, v in kinds.items()))
    lines.append("  " + " ".join({"SWA": "S", "CSA": "C", "HCA": "H"}[r["kind"]] for r in d["schedule"]) +
                 "   (S=sliding window, C=CSA ratio 4 + indexer, H=HCA)")
    hashed = [r["block"] for r in d["schedule"] if r["router"] == "hash"]
    lines.append(f"hash-routed layers: {', '.join(hashed) if hashed else 'none'}")
    p, n = d["params"], _human_count
    lines.append(f"parameters: total {n(p['total'])} (+{n(p['mtp'])} MTP), active per token "
                 f"{n(p['active_per_token'])} ({n(p['active_per_token_excl_embed'])} without the embedding table)")
    kv = d["kv_bytes_per_token"]
    lines.append(f"KV cache per token: {kv['cuda_fp8']:.0f} B (CUDA FP8 layout), {kv['ascend_int8']:.0f} B (Ascend INT8), "
                 f"{kv['ascend_bf16']:.0f} B (Ascend BF16); + fixed window state {kv['window_bytes_bf16'] / 2**20:.2f} MiB/sequence")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ memory guard ----------
def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else physical memory; ASCEND_V4_MEMORY_BYTES overrides."""
    import os
    env = os.environ.get("ASCEND_V4_MEMORY_BYTES")
    if env:
        return int(float(env))
    try:
        with open("/proc/meminfo", "r") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 1 << 62


def _human_bytes(n: float) -> str:
    for unit, k in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n:.0f} B"


def check_fits_in_memory(cfg: ModelConfig, what: str, bytes_per_param: float, alternative: str) -> int:
    """Refuse (ConfigError, one line) before materialising `cfg` in host memory when the estimate - every
    parameter incl. MTP times `bytes_per_param` - exceeds the available memory. Returns the estimate."""
    from .config import ConfigError
    need = int(parameter_counts(cfg)["total_with_mtp"] * bytes_per_param)
    have = available_memory_bytes()
    if need > have:
        raise ConfigError(f"{what} would hold about {_human_bytes(need)} in memory for config '{cfg.name}' "
                          f"({_human_bytes(have)} available); {alternative}")
    return need


# ------------------------------------------------------------------------------ converted directories ----
def _tensor_class(name: str) -> str:
    import re
    n = re.sub(r"\.\d+\.", ".N.", "." + name)[1:]
    if ".ffn.experts." in "." + name:
        return "routed experts"
    if ".shared_experts." in name:
        return "shared experts"
    if name.startswith(("embed.", "head.")):
        return name.split(".")[0]
    if ".engram.embed." in name:
        return "Engram tables"
    leaf = n.rsplit(".", 1)
    mod = leaf[0].split(".")[-1] if leaf[-1] in ("weight", "weight_scale", "weight_offset", "scale_bias",
                                                 "weight_scale_second", "weight_offset_second", "bias") else leaf[-1]
    if ".attn." in n:
        return "attention " + ("indexer " if ".indexer." in n else "compressor " if ".compressor." in n else "") + mod
    return "other " + mod if not mod.startswith("hc_") else "mHC"


def describe_converted(path: str) -> Dict:
    """Precision, layout, bytes, source hash and stored dtypes per tensor class of an `ascend-v4 convert` output."""
    import json
    import os
    with open(os.path.join(path, "config.json"), "r", encoding="utf-8") as f:
        conv = json.load(f)["conversion"]
    man_path = os.path.join(path, "manifest.json")
    man = None
    if os.path.isfile(man_path):
        with open(man_path, "r", encoding="utf-8") as f:
            man = json.load(f)
    classes: Dict[str, Dict[str, int]] = {}
    total = 0
    if man:
        for rel, rec in man["files"].items():
            total += int(rec.get("size", 0))
            if rel.startswith("source/"):
                continue
            for name, (dtype, shape) in rec.get("tensors", {}).items():
                c = classes.setdefault(_tensor_class(name), {})
                c[dtype] = c.get(dtype, 0) + 1
    errs = (man or {}).get("quant_relative_error", {})
    by: Dict[str, list] = {}
    for n, e in errs.items():
        by.setdefault(_tensor_class(n), []).append(e)
    return {"path": path, "precision": conv.get("precision"), "layout": conv.get("layout", "ranks"),
            "tp": conv.get("tp"), "ep": conv.get("ep"), "world_size": conv.get("world_size"),
            "int4_group": conv.get("int4_group"), "complete": man is not None, "bytes": total,
            "source_config_sha256": (man or {}).get("source", {}).get("config_sha256"),
            "source_bytes": (man or {}).get("source", {}).get("total_bytes"),
            "fingerprint": conv.get("fingerprint"), "dtypes_by_class": dict(sorted(classes.items())),
            "relative_error_by_class": {k: {"mean": sum(v) / len(v), "max": max(v), "tensors": len(v)}
                                        for k, v in sorted(by.items())}}


def format_converted(d: Dict) -> str:
    lines = [f"converted checkpoint {d['path']}: {d['precision']}, {d['layout']} layout"
             + (f", int4 group {d['int4_group']}" if d["precision"] == "w4a8" and d["layout"] == "serving" else "")
             + f", tp {d['tp']} ep {d['ep']} ({d['world_size']} rank{'s' if (d['world_size'] or 1) > 1 else ''})"
             + ("" if d["complete"] else "  [UNFINISHED: no manifest.json; rerun the convert command]"),
             f"size {_human_bytes(d['bytes'])} on disk (source {_human_bytes(d['source_bytes'] or 0)}); "
             f"source config sha256 {d['source_config_sha256']}"]
    lines.append("stored dtypes per tensor class:")
    for c, dt in d["dtypes_by_class"].items():
        err = d["relative_error_by_class"].get(c)
        e = f"   rel. error mean {err['mean']:.4f} max {err['max']:.4f}" if err else ""
        lines.append(f"  {c:<32} " + ", ".join(f"{k} x{v}" for k, v in sorted(dt.items())) + e)
    return "\n".join(lines)


# ===================================================================================== DeepSeek-V4.1 ==========
_BYTES = {"F32": 4, "BF16": 2, "F8_E4M3": 1, "F8_E8M0": 1, "I8": 1}


def v41_release_inventory(cfg) -> Dict[str, tuple]:
    """{tensor name: (shape, safetensors dtype)} of a V4.1 release checkpoint, names as released (tied DSpark
    embed/head absent, `wo_a` still FP8, vision tower included when vision_n_layers > 0): the codec's inventory
    (ascend_v4/checkpoint/release_v41.py; docs/deepseek-v4.1.md, "Checkpoint format")."""
    from .checkpoint.release_v41 import v41_stored_inventory
    return {e.name: (tuple(e.shape), e.dtype) for e in v41_stored_inventory(cfg).values()}


def _v41_group(name: str) -> str:
    if name.startswith(("vision.", "aligner.")):
        return "vision"
    if ".engram." in name:
        return "engram"
    return "dspark" if name.startswith("mtp.") else "backbone"


def v41_parameter_counts(cfg) -> Dict[str, int]:
    """Logical element counts (an FP4 byte holds two weights; scales are not parameters) and release bytes, per
    group: backbone (text model incl. embed/head), engram tables + their projections, dspark, vision."""
    out = {f"{g}{k}": 0 for g in ("backbone", "engram", "dspark", "vision") for k in ("", "_bytes")}
    tensors = 0
    for name, (shape, dt) in v41_release_inventory(cfg).items():
        g = _v41_group(name)
        n = math.prod(shape)
        tensors += 1
        out[g + "_bytes"] += n * _BYTES[dt]
        if not name.endswith(".scale"):
            out[g] += 2 * n if dt == "I8" else n
    active_expert = 3 * cfg.moe_inter_dim * cfg.dim
    unused = cfg.n_layers * (cfg.n_routed_experts - cfg.n_activated_experts) * active_expert
    out.update(tensors=tensors, release_bytes=sum(out[g + "_bytes"] for g in ("backbone", "engram", "dspark", "vision")),
               total=out["backbone"] + out["engram"],
               # per token: routed experts not chosen and the embedding / Engram table rows not read are not compute
               active_per_token=out["backbone"] - unused - cfg.vocab_size * cfg.dim
               + (out["engram"] - sum(cfg.engram_num_embeddings) * cfg.engram_head_dim))
    return out


def v41_kv_bytes_per_token(cfg) -> Dict[str, float]:
    """Cache bytes per token of context: only kv-source layers store compressed KV and index keys (the others
    read them). release: FP4 payload + per-16 E4M3 scales for KV, FP4 + per-32 E8M0 scales for index keys (what
    the reference's QDQ implies for a deployment storing codes); ascend_bf16: the BF16 values."""
    from .serve.cache import KV_FORMATS, CacheLayout, compressed_bytes_per_token
    kv_fp4 = cfg.head_dim // 2 + cfg.head_dim // 16
    key_fp4 = cfg.index_head_dim // 2 + cfg.index_head_dim // 32
    out = {name: sum(compressed_bytes_per_token(cfg, entry, key).values()) for name, (entry, key) in
           (("release", (kv_fp4, key_fp4)), ("ascend_bf16", (2 * cfg.head_dim, 2 * cfg.index_head_dim)))}
    # window rings: every layer incl. DSpark, FP8 codes + one E8M0 scale per 32 values
    out["window_bytes_fp8"] = float(cfg.n_total_blocks * cfg.window_size * (cfg.head_dim + cfg.head_dim // 32))
    # the serving cache (generate --kv-format): bytes per token of context and window-ring bytes per sequence
    for fmt in KV_FORMATS:
        lay = CacheLayout(cfg, 1, 2 * cfg.window_size, kv_format=fmt)
        out[f"serve_{fmt}"] = lay.bytes_per_token()["total"]
        out[f"serve_{fmt}_rings"] = float(lay.ring_bytes_per_seq())
    return out


def v41_schedule(cfg) -> list:
    rows = []
    for i in range(cfg.n_total_blocks):
        main = i < cfg.n_layers
        rows.append({"block": f"layer {i}" if main else f"mtp {i - cfg.n_layers}", "ratio": cfg.ratio(i),
                     "role": cfg.layer_role(i) if main else "dspark", "kv_source": cfg.kv_source(i) if main else -1,
                     "index_source": cfg.index_source(i) if main else -1,
                     "engram": main and i in cfg.engram_layer_ids})
    return rows


def format_describe_v41(d: Dict) -> str:
    c, p, kv, n = d["config"], d["params"], d["kv_bytes_per_token"], _human_count
    sched = d["schedule"]
    sym = {"window": "S", "full": "F", "reindex": "R", "reuse": "u", "dspark": "D"}
    lines = [f"config '{c['name']}' (DeepSeek-V4.1): dim {c['dim']}, {c['n_layers']} layers + {c['n_mtp_layers']} "
             f"DSpark stages, {c['n_heads']} heads x {c['head_dim']}, vocab {c['vocab_size']}, "
             f"{c['n_routed_experts']} routed experts (top-{c['n_activated_experts']}) + {c['n_shared_experts']} shared",
             "layer roles: " + " ".join(sym[r["role"]] + (str(r["ratio"]) if r["ratio"] else "") for r in sched),
             "  (S=window only, F=own compressor+indexer, R=re-index inside the candidates, u=reuse, D=DSpark; "
             "digit = compression ratio)",
             f"kv sources {c['kv_source_layers']}, index sources {c['index_source_layers']}, candidate source "
             f"{c['candidate_source_layer']}; Engram before layers {c['engram_layer_ids']} "
             f"({sum(c['engram_num_embeddings']):,} table rows of {c['engram_head_dim']})",
             f"parameters: backbone {n(p['backbone'])} + Engram {n(p['engram'])} = {n(p['total'])} "
             f"(+{n(p['dspark'])} DSpark, +{n(p['vision'])} vision), active per token {n(p['active_per_token'])}",
             f"release: {p['tensors']:,} tensors, {p['release_bytes']:,} bytes (Engram {p['engram_bytes']:,})",
             f"KV cache per token: {kv['release']:.0f} B (release FP4 layout, kv sources only), "
             f"{kv['ascend_bf16']:.0f} B (BF16); + fixed window rings {kv['window_bytes_fp8'] / 2**20:.2f} MiB/sequence (FP8)",
             "serving cache (generate --kv-format) per token: " + ", ".join(
                 f"{f} {kv[f'serve_{f}']:.0f} B" for f in ("reference", "int8", "float32")) + "; window rings per "
             "sequence: " + ", ".join(f"{f} {kv[f'serve_{f}_rings'] / 2**20:.2f} MiB" for f in ("reference", "int8",
                                                                                              "float32")),
             "status: make-checkpoint, convert (bf16/w8a8/w4a8, ranks layout), dump (graph-mode Cells or the float64 "
             "golden), generate (--dspark --greedy: DSpark drafting), demo --model v4.1 and train (one process) take "
             "V4.1 (README 'DeepSeek-V4.1 (in progress)')"]
    return "\n".join(lines)
