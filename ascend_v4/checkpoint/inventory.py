"""The exact tensor list of an official-format DeepSeek-V4 checkpoint for any ModelConfig (docs/formats.md).

`official_inventory(cfg)` maps each *logical* tensor name (`layers.3.attn.wq_a.weight`) to its
dequantised shape and storage format; `stored_entries` expands one logical tensor into the
safetensors entries that hold it (weight + sibling `.scale` for quantised linears).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Tuple

from ascend_v4.config import ModelConfig

FP8_BLOCK = 128
FP4_BLOCK = 32
FORMATS = ("fp8", "fp4", "bf16", "f32", "i64")


class TensorSpec(NamedTuple):
    shape: Tuple[int, ...]   # logical (dequantised) shape
    fmt: str                 # one of FORMATS


class StoredEntry(NamedTuple):
    name: str
    dtype: str               # safetensors dtype tag
    shape: Tuple[int, ...]


def scale_name(weight_name: str) -> str:
    """`x.weight` -> `x.scale` (the release's sibling scale, not V3's `weight_scale_inv`)."""
    assert weight_name.endswith(".weight"), weight_name
    return weight_name[: -len("weight")] + "scale"


def stored_entries(name: str, spec: TensorSpec, fp8_block: int = FP8_BLOCK,
                   formats: Tuple[str, ...] = FORMATS) -> List[StoredEntry]:
    """The safetensors entries holding one logical tensor (weight + sibling `.scale` when quantised): FP8 weights
    with fp8_block × fp8_block scale blocks (V4 128, V4.1 32), MXFP4 weights two codes a byte with 1×32 scale groups,
    FP8 rows (V4.1's Engram tables) with 1×32 groups; `formats` are the ones the release holds."""
    shape = tuple(spec.shape)
    if spec.fmt not in formats:
        raise ValueError(f"unknown tensor format {spec.fmt!r} for {name}; expected one of {formats}")
    if spec.fmt == "fp8":
        out, inp = shape
        return [StoredEntry(name, "F8_E4M3", shape),
                StoredEntry(scale_name(name), "F8_E8M0", (-(-out // fp8_block), -(-inp // fp8_block)))]
    if spec.fmt == "fp4":
        out, inp = shape
        return [StoredEntry(name, "I8", (out, inp // 2)),
                StoredEntry(scale_name(name), "F8_E8M0", (out, inp // FP4_BLOCK))]
    if spec.fmt == "fp8_row":
        rows, d = shape
        return [StoredEntry(name, "F8_E4M3", shape), StoredEntry(scale_name(name), "F8_E8M0", (rows, d // FP4_BLOCK))]
    return [StoredEntry(name, {"bf16": "BF16", "f32": "F32", "i64": "I64"}[spec.fmt], shape)]


def _block(inv: Dict[str, TensorSpec], cfg: ModelConfig, prefix: str, layer_id: int, lin: str, expert: str) -> None:
    """One transformer block (main layer or MTP block) with its layer-id-dependent parts."""
    D, hc, mix = cfg.dim, cfg.hc_mult, cfg.hc_mix_dim
    hd, H = cfg.head_dim, cfg.n_heads
    E, inter = cfg.n_routed_experts, cfg.moe_inter_dim

    def add(name: str, shape, fmt: str) -> None:
        inv[prefix + name] = TensorSpec(tuple(int(d) for d in shape), fmt)

    add("attn_norm.weight", [D], "bf16")
    add("ffn_norm.weight", [D], "bf16")
    for sub in ("attn", "ffn"):
        add(f"hc_{sub}_fn", [mix, hc * D], "f32")
        add(f"hc_{sub}_base", [mix], "f32")
        add(f"hc_{sub}_scale", [3], "f32")

    add("attn.wq_a.weight", [cfg.q_lora_rank, D], lin)
    add("attn.q_norm.weight", [cfg.q_lora_rank], "bf16")
    add("attn.wq_b.weight", [H * hd, cfg.q_lora_rank], lin)
    add("attn.wkv.weight", [hd, D], lin)
    add("attn.kv_norm.weight", [hd], "bf16")
    add("attn.wo_a.weight", [cfg.o_groups * cfg.o_lora_rank, H * hd // cfg.o_groups], lin)
    add("attn.wo_b.weight", [D, cfg.o_groups * cfg.o_lora_rank], lin)
    add("attn.attn_sink", [H], "f32")

    ratio = cfg.ratio(layer_id)
    if ratio == 4:        # CSA: overlapping compressor (2x channels) + lightning indexer
        ihd = cfg.index_head_dim
        add("attn.compressor.wkv.weight", [2 * hd, D], "bf16")
        add("attn.compressor.wgate.weight", [2 * hd, D], "bf16")
        add("attn.compressor.ape", [ratio, 2 * hd], "f32")
        add("attn.compressor.norm.weight", [hd], "bf16")
        add("attn.indexer.wq_b.weight", [cfg.index_n_heads * ihd, cfg.q_lora_rank], lin)
        add("attn.indexer.weights_proj.weight", [cfg.index_n_heads, D], "bf16")
        add("attn.indexer.compressor.wkv.weight", [2 * ihd, D], "bf16")
        add("attn.indexer.compressor.wgate.weight", [2 * ihd, D], "bf16")
        add("attn.indexer.compressor.ape", [ratio, 2 * ihd], "f32")
        add("attn.indexer.compressor.norm.weight", [ihd], "bf16")
    elif ratio > 0:       # HCA: plain compressor
        add("attn.compressor.wkv.weight", [hd, D], "bf16")
        add("attn.compressor.wgate.weight", [hd, D], "bf16")
        add("attn.compressor.ape", [ratio, hd], "f32")
        add("attn.compressor.norm.weight", [hd], "bf16")

    add("ffn.gate.weight", [E, D], "bf16")
    if cfg.is_hash_layer(layer_id):
        add("ffn.gate.tid2eid", [cfg.vocab_size, cfg.n_activated_experts], "i64")
    else:
        add("ffn.gate.bias", [E], "f32")
    for e in range(E):
        add(f"ffn.experts.{e}.w1.weight", [inter, D], expert)
        add(f"ffn.experts.{e}.w2.weight", [D, inter], expert)
        add(f"ffn.experts.{e}.w3.weight", [inter, D], expert)
    if cfg.n_shared_experts:
        si = inter * cfg.n_shared_experts
        add("ffn.shared_experts.w1.weight", [si, D], lin)
        add("ffn.shared_experts.w2.weight", [D, si], lin)
        add("ffn.shared_experts.w3.weight", [si, D], lin)


def official_inventory(cfg: ModelConfig) -> Dict[str, TensorSpec]:
    """Every logical tensor of the official checkpoint for `cfg`, in checkpoint order.

    cfg.dtype == 'bf16' (an unquantised release) turns every quantised linear into bf16.
    """
    if cfg.dtype == "bf16":
        lin = expert = "bf16"
    else:
        lin, expert = "fp8", ("fp4" if cfg.expert_dtype == "fp4" else "fp8")
    D, hc = cfg.dim, cfg.hc_mult
    inv: Dict[str, TensorSpec] = {"embed.weight": TensorSpec((cfg.vocab_size, D), "bf16")}
    for L in range(cfg.n_layers):
        _block(inv, cfg, f"layers.{L}.", L, lin, expert)
    for j in range(cfg.n_mtp_layers):
        p = f"mtp.{j}."
        _block(inv, cfg, p, cfg.n_layers + j, lin, expert)
        inv[p + "e_proj.weight"] = TensorSpec((D, D), lin)
        inv[p + "h_proj.weight"] = TensorSpec((D, D), lin)
        for n in ("enorm", "hnorm", "norm"):
            inv[p + n + ".weight"] = TensorSpec((D,), "bf16")
        inv[p + "hc_head_fn"] = TensorSpec((hc, hc * D), "f32")
        inv[p + "hc_head_base"] = TensorSpec((hc,), "f32")
        inv[p + "hc_head_scale"] = TensorSpec((1,), "f32")
    inv["norm.weight"] = TensorSpec((D,), "bf16")
    inv["head.weight"] = TensorSpec((cfg.vocab_size, D), "bf16")
    inv["hc_head_fn"] = TensorSpec((hc, hc * D), "f32")
    inv["hc_head_base"] = TensorSpec((hc,), "f32")
    inv["hc_head_scale"] = TensorSpec((1,), "f32")
    return inv


def stored_inventory(cfg: ModelConfig) -> Dict[str, StoredEntry]:
    """All safetensors entries of the checkpoint, keyed by entry name."""
    return {e.name: e for name, spec in official_inventory(cfg).items() for e in stored_entries(name, spec)}
