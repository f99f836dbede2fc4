"""DeepSeek-V4.1 release format: the tensor inventory, random weights, and the per-tensor codecs.

Formats (docs/deepseek-v4.1.md, "Checkpoint format"): FP8 E4M3 Linear weights with one E8M0 scale per 32×32 block
(`fp8`), MXFP4 routed experts — two E2M1 codes per I8 byte, one E8M0 scale per 1×32 along the input (`fp4`), FP8
Engram tables with one E8M0 scale per 32 consecutive values of a row (`fp8_row`), BF16 and F32 for the rest.
Names are the release's (no `model.` prefix); the tied DSpark `embed`/`head` are absent.
"""
from __future__ import annotations

import math
import os
import zlib
from typing import Dict, Iterable, List, Optional

import numpy as np

from ascend_v4.config import ModelConfigV41
from . import formats as F
from .inventory import StoredEntry, TensorSpec, scale_name, stored_entries

BLOCK = 32                    # FP8 weight blocks 32×32; MXFP4 and Engram row scale groups 1×32
V41_FORMATS = ("fp8", "fp4", "fp8_row", "bf16", "f32")


def v41_inventory(cfg: ModelConfigV41) -> Dict[str, TensorSpec]:
    """{logical tensor name: TensorSpec(dequantised shape, format)} of a V4.1 release for `cfg`, in release order.
    cfg.dtype == 'bf16' (an unquantised V4.1 checkpoint) stores every quantised Linear as BF16."""
    D, hc = cfg.dim, cfg.hc_mult
    q8 = cfg.dtype != "bf16"
    lin = "fp8" if q8 else "bf16"
    routed = ("fp4" if cfg.expert_dtype == "fp4" else "fp8") if q8 else "bf16"
    inv: Dict[str, TensorSpec] = {}

    def add(name, shape, fmt):
        inv[name] = TensorSpec(tuple(int(d) for d in shape), fmt)

    def block(p, n_experts):
        for s in ("attn", "ffn"):
            add(f"{p}.hc_{s}_fn", (cfg.hc_mix_dim, hc * D), "f32")
            add(f"{p}.hc_{s}_base", (cfg.hc_mix_dim,), "f32")
            add(f"{p}.hc_{s}_scale", (3,), "f32")
            add(f"{p}.{s}_norm.weight", (D,), "bf16")
        add(f"{p}.attn.attn_sink", (cfg.n_heads,), "f32")
        add(f"{p}.attn.wq_a.weight", (cfg.q_lora_rank, D), lin)
        add(f"{p}.attn.q_norm.weight", (cfg.q_lora_rank,), "bf16")
        add(f"{p}.attn.wq_b.weight", (cfg.n_heads * cfg.head_dim, cfg.q_lora_rank), lin)
        add(f"{p}.attn.wkv.weight", (cfg.head_dim, D), lin)
        add(f"{p}.attn.kv_norm.weight", (cfg.head_dim,), "bf16")
        add(f"{p}.attn.wo_a.weight", (cfg.o_groups * cfg.o_lora_rank, cfg.n_heads * cfg.head_dim // cfg.o_groups), lin)
        add(f"{p}.attn.wo_b.weight", (D, cfg.o_groups * cfg.o_lora_rank), lin)
        add(f"{p}.ffn.gate.weight", (n_experts, D), "bf16")
        add(f"{p}.ffn.gate.bias", (n_experts,), "f32")
        if cfg.vision_n_layers:
            add(f"{p}.ffn.gate.bias_vl", (n_experts,), "f32")
        I = cfg.moe_inter_dim
        for e in range(n_experts):
            for w, shape in (("w1", (I, D)), ("w2", (D, I)), ("w3", (I, D))):
                add(f"{p}.ffn.experts.{e}.{w}.weight", shape, routed)
        if cfg.n_shared_experts:
            for w, shape in (("w1", (I, D)), ("w2", (D, I)), ("w3", (I, D))):
                add(f"{p}.ffn.shared_experts.{w}.weight", shape, lin)

    add("embed.weight", (cfg.vocab_size, D), "bf16")
    add("head.weight", (cfg.vocab_size, D), "bf16")
    add("norm.weight", (D,), "bf16")
    for i in range(cfg.n_layers):
        p = f"layers.{i}"
        block(p, cfg.n_routed_experts)
        if i in cfg.engram_layer_ids:
            rows = cfg.engram_num_embeddings[cfg.engram_layer_ids.index(i)]
            add(f"{p}.engram.embed.weight", (rows, cfg.engram_head_dim), "fp8_row" if q8 else "bf16")
            add(f"{p}.engram.wkv.weight", ((hc + 1) * D, cfg.engram_n_columns * cfg.engram_head_dim), lin)
            add(f"{p}.engram.q_weight", (hc, D), "bf16")
            add(f"{p}.engram.k_weight", (hc, D), "bf16")
        role = cfg.layer_role(i)
        if role == "full":
            add(f"{p}.attn.compressor.wkv.weight", (cfg.head_dim, D), "bf16")
            if cfg.ratio(i) > 1:
                add(f"{p}.attn.compressor.wgate.weight", (cfg.head_dim, D), "bf16")
            add(f"{p}.attn.compressor.norm.weight", (cfg.head_dim,), "bf16")
            add(f"{p}.attn.indexer.wk.weight", (cfg.index_head_dim, cfg.head_dim), "bf16")
            add(f"{p}.attn.indexer.k_norm.weight", (cfg.index_head_dim,), "bf16")
        if role in ("full", "reindex"):
            add(f"{p}.attn.indexer.wq_b.weight", (cfg.index_n_heads * cfg.index_head_dim, cfg.q_lora_rank), lin)
            add(f"{p}.attn.indexer.weights_proj.weight", (cfg.index_n_heads, D), "bf16")
    for k in range(cfg.n_mtp_layers):
        p = f"mtp.{k}"
        block(p, cfg.dspark_n_routed_experts)
        if k == 0:
            add(f"{p}.main_proj.weight", (D, len(cfg.dspark_target_layer_ids) * D), lin)
            add(f"{p}.main_norm.weight", (D,), "bf16")
        if k == cfg.n_mtp_layers - 1:
            add(f"{p}.norm.weight", (D,), "bf16")
            add(f"{p}.markov_head.embed.weight", (cfg.vocab_size, cfg.dspark_markov_rank), "bf16")
            add(f"{p}.markov_head.head.weight", (cfg.vocab_size, cfg.dspark_markov_rank), "bf16")
            add(f"{p}.confidence_head.proj.weight", (1, D + cfg.dspark_markov_rank), "bf16")
    if cfg.vision_n_layers:
        vd, vi, ps = cfg.vision_dim, cfg.vision_inter_dim, cfg.vision_patch_size
        for n in ("image_start", "image_end", "image_newline"):
            add(n, (D,), "bf16")
        for b in range(cfg.vision_n_layers):
            p = f"vision.blocks.{b}"
            add(f"{p}.attn.wqkv.weight", (3 * vd, vd), "bf16")
            add(f"{p}.attn.wqkv.bias", (3 * vd,), "bf16")
            add(f"{p}.attn.wo.weight", (vd, vd), "bf16")
            add(f"{p}.attn.wo.bias", (vd,), "bf16")
            add(f"{p}.mlp.w1.weight", (2 * vi, vd), "bf16")
            add(f"{p}.mlp.w2.weight", (vd, vi), "bf16")
            add(f"{p}.norm1.weight", (vd,), "bf16")
            add(f"{p}.norm2.weight", (vd,), "bf16")
        add("vision.patch_embed.proj.weight", (vd, 3, ps, ps), "bf16")
        add("vision.patch_embed.proj.bias", (vd,), "bf16")
        add("vision.norm.weight", (vd,), "bf16")
        add("aligner.w1.weight", (D, cfg.vision_downsample_ratio ** 2 * vd), "bf16")
        add("aligner.w1.bias", (D,), "bf16")
        add("aligner.w2.weight", (D, D), "bf16")
        add("aligner.w2.bias", (D,), "bf16")
    return inv


def v41_stored_entries(name: str, spec: TensorSpec) -> List[StoredEntry]:
    """The safetensors entries holding one logical tensor (weight + sibling `.scale` when quantised)."""
    return stored_entries(name, spec, fp8_block=BLOCK, formats=V41_FORMATS)


def v41_stored_inventory(cfg: ModelConfigV41) -> Dict[str, StoredEntry]:
    """Every safetensors entry of the release, keyed by entry name (what `info` counts)."""
    return {e.name: e for name, spec in v41_inventory(cfg).items() for e in v41_stored_entries(name, spec)}


# ------------------------------------------------------------------------------------ random weights ----
def _random_tensor(cfg: ModelConfigV41, name: str, spec: TensorSpec, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])   # a tensor depends only on (seed, name)
    shape = spec.shape
    normal = lambda std: rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    leaf = name.rsplit(".", 1)[-1]
    if name == "embed.weight" or name.endswith("engram.embed.weight") or name.endswith("markov_head.embed.weight"):
        return normal(0.02 if name == "embed.weight" else 0.5)
    if name.endswith("norm.weight") or leaf in ("q_weight", "k_weight"):
        return (1.0 + normal(0.02)).astype(np.float32)
    if leaf.startswith("hc_") and leaf.endswith("_fn"):
        return normal(0.1 / math.sqrt(shape[1]))
    if leaf.startswith("hc_") and leaf.endswith("_base"):
        return normal(0.1)
    if leaf.startswith("hc_") and leaf.endswith("_scale"):
        return rng.uniform(0.1, 1.0, shape).astype(np.float32)
    if leaf == "attn_sink":
        return normal(1.0)
    if leaf in ("bias", "bias_vl") or len(shape) == 1:
        return normal(0.01)
    fan_in = math.prod(shape[1:])
    return normal(1.0 / math.sqrt(fan_in))                # every linear: variance-preserving


def random_weights_v41(cfg: ModelConfigV41, seed: int = 0, names: Optional[Iterable[str]] = None
                       ) -> Dict[str, np.ndarray]:
    """Deterministic random logical float32 weights for every inventory tensor (release names)."""
    inv = v41_inventory(cfg)
    wanted = inv if names is None else {n: inv[n] for n in names}
    return {n: _random_tensor(cfg, n, spec, seed) for n, spec in wanted.items()}


# ------------------------------------------------------------------------------------ directory layout --
def v41_root_config(cfg: ModelConfigV41) -> dict:
    """The root config.json this port writes beside `inference/config.json` (which describes the model, as in the
    release): the HF identification and quantisation keys only. The release's nested `text_config` layout is not
    pinned (docs/deepseek-v4.1.md), so it is not invented here; every reader goes to inference/config.json."""
    root = {"architectures": ["DeepseekV41ForCausalLM"], "model_type": "deepseek_v41", "dtype": "bfloat16",
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "image_token_id": cfg.image_token_id}
    if cfg.dtype != "bf16":
        root["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                                       "weight_block_size": [BLOCK, BLOCK], "scale_fmt": "ue8m0"}
    return root


def release_token_map(ckpt_dir: str, cfg: ModelConfigV41) -> np.ndarray:
    """The Engram compressed-token map of a V4.1 directory, from its tokenizer.json (the serving revision's
    tokenizer, docs/deepseek-v4.1.md "Engram"). Its number of distinct ids must equal the config's
    engram_compressed_vocab_size (DeepSeek's code asserts the same); CheckpointError otherwise."""
    from ascend_v4.ops.engram.reference import compressed_token_map_from_tokenizer
    from .safetensors_io import CheckpointError
    path = os.path.join(os.fspath(ckpt_dir), "tokenizer.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{ckpt_dir}: no tokenizer.json; DeepSeek-V4.1's Engram hashes compressed token ids "
                              f"mapped through the release tokenizer - copy the release's tokenizer.json there")
    from tokenizers import Tokenizer
    tmap = compressed_token_map_from_tokenizer(Tokenizer.from_file(path))
    n = int(tmap.max()) + 1 if tmap.size else 0
    if n != cfg.engram_compressed_vocab_size:
        raise CheckpointError(f"{path}: its compressed token map has {n} distinct ids but the config's "
                              f"engram_compressed_vocab_size is {cfg.engram_compressed_vocab_size}; the tokenizer "
                              f"belongs to another model revision - use the one released with these weights")
    return tmap


def open_engram_tables(ckpt_dir: str, cfg: ModelConfigV41):
    """The Engram tables of a V4.1 directory, memory-mapped in place, as `ops.engram.host.HostEngramTables` (the
    host-resident tables the prefetcher gathers from): a release's FP8 rows with their E8M0 scales (decoded by this
    codec after the gather), or a single-rank conversion's INT8 rows with float32 group scales / BF16 rows."""
    import json

    from ascend_v4.ops.engram.host import HostEngramTables
    from .safetensors_io import INDEX_NAME, CheckpointError, SafeTensorFile
    ckpt_dir = os.fspath(ckpt_dir)
    index = os.path.join(ckpt_dir, INDEX_NAME)
    if os.path.isfile(index):
        with open(index, "r", encoding="utf-8") as f:
            where = json.load(f).get("weight_map", {})
    else:
        where = {}
    tables, scales = [], []
    for L in cfg.engram_layer_ids:
        name = f"layers.{L}.engram.embed.weight"
        fn = where.get(name, "model.safetensors")
        if not isinstance(fn, str) or "/" in fn or not os.path.isfile(os.path.join(ckpt_dir, fn)):
            raise CheckpointError(f"{ckpt_dir}: tensor '{name}' is not in one top-level shard (a multi-rank conversion "
                                  f"splits the tables); map the tables of the release or of a --tp 1 --ep 1 conversion")
        tables.append(SafeTensorFile(os.path.join(ckpt_dir, fn)).raw(name))
        found = None
        for sc in (scale_name(name), name + "_scale"):          # release E8M0 `.scale`; converted F32 `_scale`
            if sc in where or (not where and sc != name):
                shard = SafeTensorFile(os.path.join(ckpt_dir, where.get(sc, fn)))
                if sc in shard:
                    found = shard.raw(sc)
                    break
        scales.append(found)                                     # None: BF16 rows carry no scale
    if tables and tables[0].dtype == np.uint8:                   # release FP8: E4M3 codes, E8M0 scale codes
        return HostEngramTables(tables, scales, decode=lambda rows, s: F.dequant_fp8_block(rows, s, (1, BLOCK)))
    return HostEngramTables(tables, scales)
