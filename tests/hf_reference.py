"""Independent reference model for cross-checking: HF transformers' DeepseekV4ForCausalLM in float32 on CPU.

Our parameters use the OFFICIAL DeepSeek checkpoint names (`embed.weight`, `layers.{L}.attn.wq_a.weight`,
`layers.{L}.ffn.experts.{e}.w1.weight`, `mtp.0.e_proj.weight`, ...; docs/formats.md), dequantised to float32
(`tid2eid` int64). This module maps them onto transformers' module tree (the same renames transformers' own
`conversion_mapping.py["deepseek_v4"]` performs when it loads an official checkpoint) and runs a full,
cache-free forward that returns logits for every position.

Public API
    official_inventory(cfg)                      -> {official name: (shape, np.dtype)}   (derived from the spec)
    random_official_weights(cfg, seed)           -> {official name: np.ndarray}          (small, well-conditioned)
    hf_config(cfg)                               -> DeepseekV4Config
    build_hf_model(cfg, weights, ...)            -> DeepseekV4ForCausalLM (eval, fp32, CPU; `.mtp` attached)
    hf_logits(cfg, weights, tokens, ...)         -> np.float32 [B, S, V]
    hf_hidden(cfg, weights, tokens, ...)         -> {probe name: np.ndarray}  (per-block 4-stream states etc.)
    hf_mtp_logits(cfg, weights, tokens, ...)     -> np.float32 [B, S, V]     (MTP block assembled from HF parts)
    HFReference(cfg, weights, ...)               -> build once, call .logits / .hidden / .mtp_logits many times

Options (all keyword-only, all default to plain transformers behaviour):
    spec_fixes     False | True | iterable of fix names. Patches transformers towards the DeepSeek reference
                   (`inference/model.py`) where transformers deviates. Known fixes (see
                   docs/transformers-v4-differences.md):
                     "kv_fp8_sim"       FP8-E4M3 fake-quant (block 64, power-of-two scales) of the non-RoPE dims of
                                        the window KV and of the main compressed KV (reference `act_quant(..., 64)`).
                     "indexer_fp4_sim"  Hadamard rotation + FP4-E2M1 fake-quant (block 32, power-of-two scales) of the
                                        indexer queries and indexer compressed keys (reference `rotate_activation` +
                                        `fp4_act_quant`).
                   True = all of them. MTP is not a "fix": transformers has no MTP at all; the harness always
                   assembles it from transformers' own block classes (see `HFMTPBlock`).
    deterministic_topk  False | True. The lightning indexer's top-k on exactly tied scores (frequent: a score is
                   exactly 0 whenever ReLU kills every head) is implementation-defined in torch.topk and even
                   depends on the sequence length. True re-selects with a stable sort: higher score first, ties ->
                   lower compressed-entry index first; unreachable picks -> -1 exactly as before.
"""
from __future__ import annotations

import logging as _pylogging
import math
import re
from contextlib import contextmanager
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import torch
from torch import nn

from ascend_v4.config import ModelConfig

from transformers import DeepseekV4Config, DeepseekV4ForCausalLM
from transformers.masking_utils import create_sliding_window_causal_mask
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as hfm

SPEC_FIXES = ("kv_fp8_sim", "indexer_fp4_sim")

_SWA, _CSA, _HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"


# ------------------------------------------------------------------------------------------------------------
# Official tensor inventory (the release's, generalised to any ModelConfig) and random weights
# ------------------------------------------------------------------------------------------------------------
def _block_inventory(cfg: ModelConfig, prefix: str, block_id: int) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    D, H, hd, hc = cfg.dim, cfg.n_heads, cfg.head_dim, cfg.hc_mult
    mix, I, E = cfg.hc_mix_dim, cfg.moe_inter_dim, cfg.n_routed_experts
    G, R = cfg.o_groups, cfg.o_lora_rank
    inv: Dict[str, Tuple[Tuple[int, ...], np.dtype]] = {}

    def add(name, shape, dt=f32):
        inv[f"{prefix}.{name}"] = (tuple(int(s) for s in shape), dt)

    add("attn_norm.weight", (D,))
    add("ffn_norm.weight", (D,))
    for site in ("attn", "ffn"):
        add(f"hc_{site}_fn", (mix, hc * D))
        add(f"hc_{site}_base", (mix,))
        add(f"hc_{site}_scale", (3,))
    add("attn.wq_a.weight", (cfg.q_lora_rank, D))
    add("attn.q_norm.weight", (cfg.q_lora_rank,))
    add("attn.wq_b.weight", (H * hd, cfg.q_lora_rank))
    add("attn.wkv.weight", (hd, D))
    add("attn.kv_norm.weight", (hd,))
    add("attn.wo_a.weight", (G * R, H * hd // G))
    add("attn.wo_b.weight", (D, G * R))
    add("attn.attn_sink", (H,))
    ratio = cfg.compress_ratios[block_id]
    if ratio:
        coff = 2 if ratio == 4 else 1
        add("attn.compressor.wkv.weight", (coff * hd, D))
        add("attn.compressor.wgate.weight", (coff * hd, D))
        add("attn.compressor.ape", (ratio, coff * hd))
        add("attn.compressor.norm.weight", (hd,))
        if ratio == 4:
            dI, nI = cfg.index_head_dim, cfg.index_n_heads
            add("attn.indexer.wq_b.weight", (nI * dI, cfg.q_lora_rank))
            add("attn.indexer.weights_proj.weight", (nI, D))
            add("attn.indexer.compressor.wkv.weight", (2 * dI, D))
            add("attn.indexer.compressor.wgate.weight", (2 * dI, D))
            add("attn.indexer.compressor.ape", (4, 2 * dI))
            add("attn.indexer.compressor.norm.weight", (dI,))
    add("ffn.gate.weight", (E, D))
    if block_id < cfg.n_layers and cfg.is_hash_layer(block_id):
        add("ffn.gate.tid2eid", (cfg.vocab_size, cfg.n_activated_experts), i64)
    else:
        add("ffn.gate.bias", (E,))
    for e in range(E):
        add(f"ffn.experts.{e}.w1.weight", (I, D))
        add(f"ffn.experts.{e}.w3.weight", (I, D))
        add(f"ffn.experts.{e}.w2.weight", (D, I))
    if cfg.n_shared_experts:
        add("ffn.shared_experts.w1.weight", (I, D))
        add("ffn.shared_experts.w3.weight", (I, D))
        add("ffn.shared_experts.w2.weight", (D, I))
    return inv


def official_inventory(cfg: ModelConfig) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    """Every tensor of an official (dequantised) checkpoint for `cfg`: name -> (shape, dtype). No `.scale` tensors."""
    f32 = np.dtype(np.float32)
    D, hc, V = cfg.dim, cfg.hc_mult, cfg.vocab_size
    inv: Dict[str, Tuple[Tuple[int, ...], np.dtype]] = {
        "embed.weight": ((V, D), f32),
        "head.weight": ((V, D), f32),
        "norm.weight": ((D,), f32),
        "hc_head_fn": ((hc, hc * D), f32),
        "hc_head_base": ((hc,), f32),
        "hc_head_scale": ((1,), f32),
    }
    for L in range(cfg.n_layers):
        inv.update(_block_inventory(cfg, f"layers.{L}", L))
    for j in range(cfg.n_mtp_layers):
        p = f"mtp.{j}"
        inv.update(_block_inventory(cfg, p, cfg.n_layers + j))
        for n in ("e_proj", "h_proj"):
            inv[f"{p}.{n}.weight"] = ((D, D), f32)
        for n in ("enorm", "hnorm", "norm"):
            inv[f"{p}.{n}.weight"] = ((D,), f32)
        inv[f"{p}.hc_head_fn"] = ((hc, hc * D), f32)
        inv[f"{p}.hc_head_base"] = ((hc,), f32)
        inv[f"{p}.hc_head_scale"] = ((1,), f32)
    return inv


def random_official_weights(cfg: ModelConfig, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random float32 weights under official names, scaled so every sub-computation is O(1) and non-degenerate
    (hc coefficients away from saturation, non-trivial Sinkhorn, ape / sinks / router bias that matter)."""
    rng = np.random.default_rng(seed)
    out: Dict[str, np.ndarray] = {}
    k = cfg.n_activated_experts
    for name, (shape, dt) in official_inventory(cfg).items():
        if dt == np.int64:  # tid2eid: k distinct experts per token id
            out[name] = np.stack([rng.permutation(cfg.n_routed_experts)[:k] for _ in range(shape[0])]).astype(np.int64)
            continue
        if name.endswith("norm.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name == "embed.weight":
            a = rng.standard_normal(shape)
        elif re.search(r"hc_(attn|ffn|head)_fn$", name):
            a = rng.standard_normal(shape) / math.sqrt(shape[1])
        elif re.search(r"hc_(attn|ffn|head)_scale$", name):
            a = 0.5 + 0.5 * rng.random(shape)
        elif re.search(r"hc_(attn|ffn|head)_base$", name):
            a = 0.5 * rng.standard_normal(shape)
        elif name.endswith(".ape"):
            a = 0.5 * rng.standard_normal(shape)
        elif name.endswith("attn_sink"):
            a = rng.standard_normal(shape)
        elif name.endswith("gate.bias"):
            a = 0.1 * rng.standard_normal(shape)
        elif len(shape) == 2:  # plain linear [out, in]
            a = rng.standard_normal(shape) / math.sqrt(shape[1])
        else:  # pragma: no cover - inventory has no other kinds
            raise AssertionError(f"no init rule for {name}")
        out[name] = a.astype(np.float32)
    return out


# ------------------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------------------
def _layer_type(ratio: int) -> str:
    # Reference (`inference/model.py` Attention/Compressor): overlap and indexer iff ratio == 4; any other
    # non-zero ratio is a dense non-overlapping compressed layer (HCA).
    if ratio == 0:
        return _SWA
    return _CSA if ratio == 4 else _HCA


@contextmanager
def _quiet_transformers():
    lg = _pylogging.getLogger("transformers")
    old = lg.level
    lg.setLevel(_pylogging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(old)


# DeepseekV4Config argument <- ModelConfig field: the values transformers takes as they are, and the float ones.
_HF_AS_IS = {
    "vocab_size": "vocab_size", "hidden_size": "dim", "moe_intermediate_size": "moe_inter_dim",
    "num_attention_heads": "n_heads", "head_dim": "head_dim", "q_lora_rank": "q_lora_rank",
    "num_experts_per_tok": "n_activated_experts", "n_routed_experts": "n_routed_experts",
    "n_shared_experts": "n_shared_experts", "scoring_func": "score_func",
    "max_position_embeddings": "max_position_embeddings", "hc_mult": "hc_mult", "hc_sinkhorn_iters": "hc_sinkhorn_iters",
    "sliding_window": "window_size", "o_groups": "o_groups", "o_lora_rank": "o_lora_rank",
    "index_n_heads": "index_n_heads", "index_head_dim": "index_head_dim", "index_topk": "index_topk",
    "num_nextn_predict_layers": "n_mtp_layers", "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
}
_HF_FLOAT = {
    "routed_scaling_factor": "route_scale", "rope_theta": "rope_theta", "compress_rope_theta": "compress_rope_theta",
    "hc_eps": "hc_eps", "swiglu_limit": "swiglu_limit", "rms_norm_eps": "norm_eps",
}


def hf_config(cfg: ModelConfig, *, include_mtp_layers: bool = False) -> DeepseekV4Config:
    """DeepseekV4Config for `cfg`. Passes explicit `layer_types` + `compress_rates` (transformers' legacy
    `compress_ratios` path only knows 0/4/128 and raises KeyError for e.g. 16). With include_mtp_layers the
    MTP blocks are appended as extra layers (used only to construct the harness's MTP decoder layers)."""
    cfg.validate()
    n_blocks = cfg.n_layers + (cfg.n_mtp_layers if include_mtp_layers else 0)
    ratios = list(cfg.compress_ratios[:n_blocks])
    hca = sorted({r for r in ratios if r not in (0, 4)})
    if len(hca) > 1:
        raise NotImplementedError(f"transformers keeps one compress rate per layer type; HCA ratios {hca} differ")
    if cfg.n_shared_experts != 1:
        raise NotImplementedError("transformers always builds exactly one shared expert (n_shared_experts must be 1)")
    if cfg.score_func not in ("sqrtsoftplus", "sigmoid"):
        # transformers renormalises the top-k weights for every score function; the reference skips the
        # renormalisation for softmax, so softmax routing would silently differ.
        raise NotImplementedError(f"score_func {cfg.score_func!r} is not reproduced faithfully by transformers")
    layer_types = [_layer_type(r) for r in ratios]
    mlp_layer_types = ["hash_moe" if (i < cfg.n_layers and cfg.is_hash_layer(i)) else "moe" for i in range(n_blocks)]
    with _quiet_transformers():
        c = DeepseekV4Config(
            **{hf: getattr(cfg, ours) for hf, ours in _HF_AS_IS.items()},
            **{hf: float(getattr(cfg, ours)) for hf, ours in _HF_FLOAT.items()},
            num_hidden_layers=n_blocks,
            num_key_value_heads=1,
            norm_topk_prob=True,
            layer_types=layer_types,
            compress_rates={_CSA: 4, _HCA: hca[0] if hca else 128},
            mlp_layer_types=mlp_layer_types,
            partial_rotary_factor=cfg.rope_head_dim / cfg.head_dim,
            rope_parameters={"rope_type": "yarn", "factor": float(cfg.rope_factor),
                             "original_max_position_embeddings": int(cfg.original_seq_len),
                             "beta_fast": float(cfg.beta_fast), "beta_slow": float(cfg.beta_slow)},
            tie_word_embeddings=False,
            attn_implementation="eager",
            experts_implementation="eager",
        )
    if c.qk_rope_head_dim != cfg.rope_head_dim:
        raise NotImplementedError(f"rope_head_dim {cfg.rope_head_dim} / head_dim {cfg.head_dim} is not representable "
                                  f"as transformers' partial_rotary_factor (got {c.qk_rope_head_dim})")
    if cfg.swiglu_limit <= 0:
        # reference: limit 0 disables the clamp; transformers would clamp to [-0, 0]
        raise NotImplementedError("swiglu_limit <= 0 (clamp disabled) is not supported by transformers")
    return c


# ------------------------------------------------------------------------------------------------------------
# MTP block assembled from transformers' own parts (transformers drops `mtp.*` on load)
# ------------------------------------------------------------------------------------------------------------
class HFMTPBlock(nn.Module):
    """Reference `MTPBlock`: e = enorm(embed(ids)); h = hnorm(H) per stream;
    X = e_proj(e) broadcast + h_proj(h); X = Block(X); logits = head(norm(hc_head(X))).
    `block` is a transformers DeepseekV4DecoderLayer with layer id n_layers + j."""

    def __init__(self, mtp_config: DeepseekV4Config, layer_idx: int):
        super().__init__()
        D, eps = mtp_config.hidden_size, mtp_config.rms_norm_eps
        self.layer_idx = layer_idx
        self.e_proj = nn.Linear(D, D, bias=False)
        self.h_proj = nn.Linear(D, D, bias=False)
        self.enorm = hfm.DeepseekV4RMSNorm(D, eps=eps)
        self.hnorm = hfm.DeepseekV4RMSNorm(D, eps=eps)
        self.norm = hfm.DeepseekV4RMSNorm(D, eps=eps)
        self.block = hfm.DeepseekV4DecoderLayer(mtp_config, layer_idx)
        self.hc_head = hfm.DeepseekV4HyperHead(mtp_config)
        self._mtp_config = mtp_config

    def forward(self, h_streams: torch.Tensor, input_ids: torch.Tensor, embed: nn.Module, lm_head: nn.Module,
                rotary_emb: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
        B, S = input_ids.shape
        e = self.enorm(embed(input_ids))
        x = self.e_proj(e).unsqueeze(2) + self.h_proj(self.hnorm(h_streams))
        position_ids = torch.arange(S, device=input_ids.device).unsqueeze(0)
        mask = create_sliding_window_causal_mask(config=self._mtp_config, inputs_embeds=e, attention_mask=None,
                                                 cache=None, position_ids=position_ids)
        pe = {"main": rotary_emb(e, position_ids=position_ids, layer_type="main"),
              "compress": rotary_emb(e, position_ids=position_ids, layer_type="compress")}
        x = self.block(x, position_embeddings=pe, position_ids=position_ids, attention_mask=mask,
                       input_ids=input_ids, cache=None)
        return lm_head(self.norm(self.hc_head(x))), x


# ------------------------------------------------------------------------------------------------------------
# Name mapping official -> transformers (mirrors transformers/conversion_mapping.py["deepseek_v4"])
# ------------------------------------------------------------------------------------------------------------
_GLOBAL_MAP = {
    "embed.weight": "model.embed_tokens.weight",
    "head.weight": "lm_head.weight",
    "norm.weight": "model.norm.weight",
    "hc_head_fn": "model.hc_head.hc_fn",
    "hc_head_base": "model.hc_head.hc_base",
    "hc_head_scale": "model.hc_head.hc_scale",
}

# suffix inside a block (after "layers.{L}." / "mtp.{j}.") -> suffix inside the transformers DecoderLayer
_BLOCK_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "hc_attn_fn": "attn_hc.fn",
    "hc_attn_base": "attn_hc.base",
    "hc_attn_scale": "attn_hc.scale",
    "hc_ffn_fn": "ffn_hc.fn",
    "hc_ffn_base": "ffn_hc.base",
    "hc_ffn_scale": "ffn_hc.scale",
    "attn.wq_a.weight": "self_attn.q_a_proj.weight",
    "attn.q_norm.weight": "self_attn.q_a_norm.weight",
    "attn.wq_b.weight": "self_attn.q_b_proj.weight",
    "attn.wkv.weight": "self_attn.kv_proj.weight",
    "attn.kv_norm.weight": "self_attn.kv_norm.weight",
    # wo_a: official [o_groups*o_lora_rank, n_heads*head_dim/o_groups], group-major rows == transformers'
    # DeepseekV4GroupedLinear weight, viewed as [n_groups, o_lora_rank, in_per_group]. No permutation.
    "attn.wo_a.weight": "self_attn.o_a_proj.weight",
    "attn.wo_b.weight": "self_attn.o_b_proj.weight",
    "attn.attn_sink": "self_attn.sinks",
    # compressor wkv/wgate/ape keep their [b-half | a-half] column order: transformers' CSA compressor reads
    # [..., :head_dim] as the previous-block ("b") series and [..., head_dim:] as the current-block ("a") series,
    # exactly the reference overlap_transform. No split/permutation needed.
    "attn.compressor.wkv.weight": "self_attn.compressor.kv_proj.weight",
    "attn.compressor.wgate.weight": "self_attn.compressor.gate_proj.weight",
    "attn.compressor.ape": "self_attn.compressor.position_bias",
    "attn.compressor.norm.weight": "self_attn.compressor.kv_norm.weight",
    "attn.indexer.wq_b.weight": "self_attn.compressor.indexer.q_b_proj.weight",
    "attn.indexer.weights_proj.weight": "self_attn.compressor.indexer.scorer.weights_proj.weight",
    "attn.indexer.compressor.wkv.weight": "self_attn.compressor.indexer.kv_proj.weight",
    "attn.indexer.compressor.wgate.weight": "self_attn.compressor.indexer.gate_proj.weight",
    "attn.indexer.compressor.ape": "self_attn.compressor.indexer.position_bias",
    "attn.indexer.compressor.norm.weight": "self_attn.compressor.indexer.kv_norm.weight",
    "ffn.gate.weight": "mlp.gate.weight",
    "ffn.gate.bias": "mlp.gate.e_score_correction_bias",
    "ffn.gate.tid2eid": "mlp.gate.tid2eid",
    "ffn.shared_experts.w1.weight": "mlp.shared_experts.gate_proj.weight",
    "ffn.shared_experts.w3.weight": "mlp.shared_experts.up_proj.weight",
    "ffn.shared_experts.w2.weight": "mlp.shared_experts.down_proj.weight",
}

_MTP_EXTRA_MAP = {
    "e_proj.weight": "e_proj.weight",
    "h_proj.weight": "h_proj.weight",
    "enorm.weight": "enorm.weight",
    "hnorm.weight": "hnorm.weight",
    "norm.weight": "norm.weight",
    "hc_head_fn": "hc_head.hc_fn",
    "hc_head_base": "hc_head.hc_base",
    "hc_head_scale": "hc_head.hc_scale",
}

_EXPERT_RE = re.compile(r"^ffn\.experts\.(\d+)\.(w[123])\.weight$")


def map_official_name(name: str) -> Tuple[str, Optional[Tuple[int, str]]]:
    """official name -> (transformers name, None) or, for routed experts, (transformers packed name, (expert, w)).
    Raises KeyError for names transformers/this harness has no place for."""
    if name in _GLOBAL_MAP:
        return _GLOBAL_MAP[name], None
    m = re.match(r"^(layers)\.(\d+)\.(.+)$", name) or re.match(r"^(mtp)\.(\d+)\.(.+)$", name)
    if not m:
        raise KeyError(name)
    kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
    hf_prefix = f"model.layers.{idx}." if kind == "layers" else f"mtp.{idx}.block."
    if kind == "mtp" and rest in _MTP_EXTRA_MAP:
        return f"mtp.{idx}.{_MTP_EXTRA_MAP[rest]}", None
    if rest in _BLOCK_MAP:
        return hf_prefix + _BLOCK_MAP[rest], None
    em = _EXPERT_RE.match(rest)
    if em:
        e, w = int(em.group(1)), em.group(2)
        target = "mlp.experts.down_proj" if w == "w2" else "mlp.experts.gate_up_proj"
        return hf_prefix + target, (e, w)
    raise KeyError(name)


def _to_tensor(name: str, a: np.ndarray) -> torch.Tensor:
    a = np.asarray(a)
    if name.endswith("tid2eid"):
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{name}: expected an integer array, got {a.dtype}")
        return torch.from_numpy(np.ascontiguousarray(a.astype(np.int64)))
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name}: expected a float array (dequantised), got {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a.astype(np.float32)))


def convert_official_weights(cfg: ModelConfig, weights: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    """Official name dict -> transformers state-dict entries (incl. the harness's `mtp.{j}.*`).
    Every official tensor must map somewhere (KeyError otherwise); experts are packed exactly like transformers'
    WeightConverter(MergeModulelist(dim=0), Concatenate(dim=1)): gate_up_proj[e] = cat([w1_e, w3_e], dim=0)
    (gate first — DeepseekV4Experts._apply_gate chunks [gate | up]), down_proj[e] = w2_e."""
    out: Dict[str, torch.Tensor] = {}
    experts: Dict[str, Dict[Tuple[int, str], torch.Tensor]] = {}
    unmapped = []
    for name in sorted(weights):
        if name.endswith(".scale") and not re.search(r"hc_(attn|ffn|head)_scale$", name):
            raise ValueError(f"{name}: quantisation scales are not accepted; pass dequantised float32 weights")
        try:
            hf_name, ew = map_official_name(name)
        except KeyError:
            unmapped.append(name)
            continue
        t = _to_tensor(name, weights[name])
        if ew is None:
            if hf_name in out:
                raise AssertionError(f"two official tensors map to {hf_name}")
            out[hf_name] = t
        else:
            experts.setdefault(hf_name, {})[ew] = t
    if unmapped:
        raise KeyError(f"{len(unmapped)} official tensors have no transformers counterpart: {unmapped[:8]}")
    E = cfg.n_routed_experts
    for hf_name, parts in experts.items():
        if hf_name.endswith("gate_up_proj"):
            need = [(e, w) for e in range(E) for w in ("w1", "w3")]
        else:
            need = [(e, "w2") for e in range(E)]
        missing = [k for k in need if k not in parts]
        extra = sorted(set(parts) - set(need))
        if missing or extra:
            raise KeyError(f"{hf_name}: missing experts {missing[:6]} / unexpected {extra[:6]}")
        if hf_name.endswith("gate_up_proj"):
            out[hf_name] = torch.stack([torch.cat([parts[(e, "w1")], parts[(e, "w3")]], dim=0) for e in range(E)])
        else:
            out[hf_name] = torch.stack([parts[(e, "w2")] for e in range(E)])
    return out


# ------------------------------------------------------------------------------------------------------------
# Spec fixes: fake-quant simulations the reference performs and transformers does not
# ------------------------------------------------------------------------------------------------------------
_FP8_MAX, _FP4_MAX = 448.0, 6.0
_FP4_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float32)


def _pow2_ceil(x: torch.Tensor) -> torch.Tensor:
    return torch.exp2(torch.ceil(torch.log2(x)))


def _blocks(x: torch.Tensor, block: int) -> Tuple[torch.Tensor, int]:
    n = x.shape[-1]
    pad = (-n) % block  # a trailing partial block (only for toy geometries) is quantised on its own amax
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.unflatten(-1, (-1, block)), n


def fp8_fake_quant(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Reference act_quant(x, block, "ue8m0", inplace=True): per block of the last dim, scale = 2^ceil(log2(amax/448))
    (amax floored at 1e-4), q = clamp(x/scale, +-448) rounded to E4M3 (RNE), returns q*scale in x's dtype."""
    xb, n = _blocks(x.float(), block)
    amax = xb.abs().amax(dim=-1, keepdim=True).clamp_min(1e-4)
    scale = _pow2_ceil(amax / _FP8_MAX)
    q = (xb / scale).clamp(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn).float()
    return (q * scale).flatten(-2)[..., :n].to(x.dtype)


def _round_e2m1(y: torch.Tensor) -> torch.Tensor:
    """Round |y| <= 6 to the nearest E2M1 value (0, .5, 1, 1.5, 2, 3, 4, 6), ties to even mantissa."""
    a = y.abs()
    grid = _FP4_GRID.to(a.device)
    mids = (grid[1:] + grid[:-1]) / 2                   # 0.25 0.75 1.25 1.75 2.5 3.5 5
    lower_is_even = torch.tensor([True, False, True, False, True, False, True], device=a.device)
    idx = torch.bucketize(a, mids)                      # = number of mids strictly below a (a tie rounds down)
    k = idx.clamp(max=len(mids) - 1)
    tie_odd = (idx < len(mids)) & (a == mids[k]) & ~lower_is_even[k]
    return torch.sign(y) * grid[idx + tie_odd.long()]


def fp4_fake_quant(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """Reference fp4_act_quant(x, block, inplace=True): scale = 2^ceil(log2(amax/6)) (amax floored at 6*2^-126),
    q = clamp(x/scale, +-6) rounded to E2M1 (RNE), returns q*scale."""
    xb, n = _blocks(x.float(), block)
    amax = xb.abs().amax(dim=-1, keepdim=True).clamp_min(6.0 * 2.0 ** -126)
    scale = _pow2_ceil(amax / _FP4_MAX)
    q = _round_e2m1((xb / scale).clamp(-_FP4_MAX, _FP4_MAX))
    return (q * scale).flatten(-2)[..., :n].to(x.dtype)


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """Normalised Walsh-Hadamard transform over the last dim (Sylvester order, scale d^-1/2) = fast_hadamard_transform."""
    d = x.shape[-1]
    if d & (d - 1):
        raise ValueError(f"Hadamard size {d} is not a power of two")
    Hm = torch.ones(1, 1, dtype=torch.float64)
    while Hm.shape[0] < d:
        Hm = torch.cat([torch.cat([Hm, Hm], 1), torch.cat([Hm, -Hm], 1)], 0)
    return (x.double() @ Hm * d ** -0.5).to(x.dtype)


def _install_spec_fixes(model: nn.Module, cfg: ModelConfig, fixes: Set[str]) -> List:
    handles = []
    nope = cfg.head_dim - cfg.rope_head_dim
    if "kv_fp8_sim" in fixes:
        def kv_hook(mod, args, out):
            # kv_norm output precedes RoPE in transformers; RoPE touches only the last rope dims, so quantising the
            # first `nope` dims here equals the reference order (norm -> RoPE -> act_quant(kv[..., :-rd])).
            return torch.cat([fp8_fake_quant(out[..., :nope], 64), out[..., nope:]], dim=-1)
        for name, mod in model.named_modules():
            if name.endswith("self_attn.kv_norm") or name.endswith("self_attn.compressor.kv_norm"):
                handles.append(mod.register_forward_hook(kv_hook))
    if "indexer_fp4_sim" in fixes:
        def scorer_pre_hook(mod, args):
            q, kv, hidden = args  # q, kv both after RoPE (reference: RoPE -> Hadamard -> FP4 for q and indexer K)
            return fp4_fake_quant(hadamard(q), 32), fp4_fake_quant(hadamard(kv), 32), hidden
        for name, mod in model.named_modules():
            if isinstance(mod, hfm.DeepseekV4IndexerScorer):
                handles.append(mod.register_forward_pre_hook(scorer_pre_hook))
    return handles


def _install_deterministic_topk(model: nn.Module) -> List:
    """Replace the indexer's torch.topk picks by a stable selection (score desc, then entry index asc)."""
    handles = []
    for mod in model.modules():
        if not isinstance(mod, hfm.DeepseekV4Indexer):
            continue
        store: Dict[str, torch.Tensor] = {}

        def scorer_hook(m, args, out, store=store):
            store["scores"] = out

        def indexer_hook(m, args, kwargs, out, store=store):
            scores = store.pop("scores")                                   # [B, S, T] before masking
            position_ids = args[2] if len(args) > 2 else kwargs["position_ids"]
            T = scores.shape[-1]
            if T == 0:
                return out
            thr = (position_ids + 1) // m.compress_rate                      # [B|1, S]
            ent = torch.arange(T, device=scores.device)
            s = scores.masked_fill(ent.view(1, 1, -1) >= thr.unsqueeze(-1), float("-inf"))
            order = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., : out.shape[-1]]
            return torch.where(order >= thr.unsqueeze(-1), torch.full_like(order, -1), order)

        handles.append(mod.scorer.register_forward_hook(scorer_hook))
        handles.append(mod.register_forward_hook(indexer_hook, with_kwargs=True))
    return handles


def _parse_fixes(spec_fixes) -> Set[str]:
    if spec_fixes is True:
        return set(SPEC_FIXES)
    if not spec_fixes:
        return set()
    if isinstance(spec_fixes, str):
        spec_fixes = [spec_fixes]
    fixes = set(spec_fixes)
    bad = fixes - set(SPEC_FIXES)
    if bad:
        raise ValueError(f"unknown spec fixes {sorted(bad)}; known: {SPEC_FIXES}")
    return fixes


# ------------------------------------------------------------------------------------------------------------
# Build
# ------------------------------------------------------------------------------------------------------------
def build_hf_model(cfg: ModelConfig, weights: Dict[str, np.ndarray], *, spec_fixes=False,
                   deterministic_topk: bool = False, require_complete: bool = True) -> DeepseekV4ForCausalLM:
    """transformers DeepseekV4ForCausalLM (float32, eval, CPU) holding `weights` (official names).

    Asserts: every official tensor is consumed (KeyError), every transformers parameter/persistent buffer
    (and the harness MTP blocks) is set exactly once with the right shape (all parameters are NaN-poisoned
    before loading and checked afterwards), and — with require_complete — that `weights` holds exactly
    `official_inventory(cfg)`. The MTP blocks live in `model.mtp` (nn.ModuleList of HFMTPBlock)."""
    fixes = _parse_fixes(spec_fixes)
    if require_complete:
        inv = official_inventory(cfg)
        missing = sorted(set(inv) - set(weights))
        extra = sorted(set(weights) - set(inv))
        if missing or extra:
            raise KeyError(f"weights do not match official_inventory({cfg.name}): missing {missing[:8]} "
                           f"({len(missing)}), unexpected {extra[:8]} ({len(extra)})")
        for n, (shape, _) in inv.items():
            if tuple(np.shape(weights[n])) != shape:
                raise ValueError(f"{n}: shape {tuple(np.shape(weights[n]))}, official {shape}")

    config = hf_config(cfg)
    # construction draws random inits (all overwritten below); keep the caller's torch RNG state untouched
    with _quiet_transformers(), torch.random.fork_rng(devices=[]):
        model = DeepseekV4ForCausalLM(config)
        if cfg.n_mtp_layers:
            mtp_config = hf_config(cfg, include_mtp_layers=True)
            model.mtp = nn.ModuleList([HFMTPBlock(mtp_config, cfg.n_layers + j) for j in range(cfg.n_mtp_layers)])
    model = model.to(torch.float32).eval().requires_grad_(False)

    sd = model.state_dict()
    # poison: anything not overwritten below turns the output into NaN and fails the completeness check
    with torch.no_grad():
        for t in sd.values():
            if t.is_floating_point():
                t.fill_(float("nan"))
            else:
                t.fill_(-1)

    converted = convert_official_weights(cfg, weights)
    unknown = sorted(set(converted) - set(sd))
    if unknown:
        raise KeyError(f"mapped names missing from the transformers model: {unknown[:8]}")
    with torch.no_grad():
        for name, t in converted.items():
            dst = sd[name]
            if tuple(dst.shape) != tuple(t.shape):
                raise ValueError(f"{name}: transformers shape {tuple(dst.shape)} != converted {tuple(t.shape)}")
            if dst.dtype != t.dtype:
                raise TypeError(f"{name}: transformers dtype {dst.dtype} != {t.dtype}")
            dst.copy_(t)
    not_set = sorted(set(sd) - set(converted))
    if not_set:
        raise KeyError(f"{len(not_set)} transformers parameters/buffers were not set from the weights: {not_set[:8]}")
    for name, t in model.state_dict().items():
        if t.is_floating_point() and torch.isnan(t).any():
            raise AssertionError(f"{name} still holds NaN after loading (NaN in the input weights?)")
    for name, t in sd.items():
        if name.endswith("tid2eid") and (t.min() < 0 or t.max() >= cfg.n_routed_experts):
            raise ValueError(f"{name}: expert ids outside [0, {cfg.n_routed_experts})")

    model._ascend_handles = _install_spec_fixes(model, cfg, fixes)
    if deterministic_topk:
        model._ascend_handles += _install_deterministic_topk(model)
    model._ascend_spec_fixes = frozenset(fixes)
    return model


# ------------------------------------------------------------------------------------------------------------
# Run
# ------------------------------------------------------------------------------------------------------------
def _tokens(cfg: ModelConfig, tokens) -> torch.Tensor:
    t = np.asarray(tokens)
    if t.ndim != 2 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"tokens must be an integer array [B, S], got {t.dtype} {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= cfg.vocab_size):
        raise ValueError(f"token ids outside [0, {cfg.vocab_size})")
    return torch.from_numpy(t.astype(np.int64))


class HFReference:
    """Build once, query many times."""

    def __init__(self, cfg: ModelConfig, weights: Dict[str, np.ndarray], *, spec_fixes=False,
                 deterministic_topk: bool = False):
        self.cfg = cfg
        self.model = build_hf_model(cfg, weights, spec_fixes=spec_fixes, deterministic_topk=deterministic_topk)

    @torch.no_grad()
    def logits(self, tokens) -> np.ndarray:
        ids = _tokens(self.cfg, tokens)
        out = self.model(input_ids=ids, use_cache=False, logits_to_keep=0)
        return out.logits.float().numpy()

    @torch.no_grad()
    def final_streams(self, tokens) -> torch.Tensor:
        """Output of the last main block, [B, S, hc, D] (the MTP block's `h` input)."""
        got = {}
        h = self.model.model.layers[-1].register_forward_hook(lambda m, a, o: got.__setitem__("h", o))
        try:
            self.model(input_ids=_tokens(self.cfg, tokens), use_cache=False)
        finally:
            h.remove()
        return got["h"]

    @torch.no_grad()
    def hidden(self, tokens) -> Dict[str, np.ndarray]:
        """Probes named after the official modules:
          embed [B,S,D]; layers.{L}.in / .mid / .out [B,S,hc,D] (block input, after the attention sublayer's
          hc_post, block output); layers.{L}.attn.x / .attn.out / .ffn.x / .ffn.out [B,S,D] (sublayer input after
          attn_norm/ffn_norm, sublayer output); layers.{L}.hc_attn.post / .comb / .hc_ffn.* ([B,S,hc], [B,S,hc,hc]);
          layers.{L}.ffn.gate.indices / .weights [B*S,k] (sorted by expert id); layers.{L}.attn.indexer.topk
          [B,S,k] (CSA only); hc_head [B,S,D]; norm [B,S,D]; logits [B,S,V]."""
        model, got, hs = self.model, {}, []

        def put(name, t):
            got[name] = t.detach().float().clone()

        hs.append(model.model.embed_tokens.register_forward_hook(lambda m, a, o: put("embed", o)))
        for L, layer in enumerate(model.model.layers):
            p = f"layers.{L}"
            hs.append(layer.register_forward_pre_hook(lambda m, a, p=p: put(f"{p}.in", a[0])))
            hs.append(layer.register_forward_hook(lambda m, a, o, p=p: put(f"{p}.out", o)))
            hs.append(layer.self_attn.register_forward_pre_hook(lambda m, a, p=p: put(f"{p}.attn.x", a[0])))
            hs.append(layer.self_attn.register_forward_hook(lambda m, a, o, p=p: put(f"{p}.attn.out", o[0])))
            hs.append(layer.ffn_hc.register_forward_pre_hook(lambda m, a, p=p: put(f"{p}.mid", a[0])))
            hs.append(layer.mlp.register_forward_pre_hook(lambda m, a, p=p: put(f"{p}.ffn.x", a[0])))
            hs.append(layer.mlp.register_forward_hook(lambda m, a, o, p=p: put(f"{p}.ffn.out", o)))
            for site, hc in (("hc_attn", layer.attn_hc), ("hc_ffn", layer.ffn_hc)):
                def hc_hook(m, a, o, p=p, site=site):
                    put(f"{p}.{site}.post", o[0])
                    put(f"{p}.{site}.comb", o[1])
                hs.append(hc.register_forward_hook(hc_hook))

            def gate_hook(m, a, o, p=p):
                idx, w = o[2], o[1]
                order = torch.argsort(idx, dim=-1)
                got[f"{p}.ffn.gate.indices"] = torch.gather(idx, -1, order).clone()
                got[f"{p}.ffn.gate.weights"] = torch.gather(w, -1, order).float().clone()
            hs.append(layer.mlp.gate.register_forward_hook(gate_hook))
            comp = layer.self_attn.compressor
            if comp is not None and hasattr(comp, "indexer"):
                hs.append(comp.indexer.register_forward_hook(
                    lambda m, a, o, p=p: got.__setitem__(f"{p}.attn.indexer.topk", o.clone())))
        hs.append(model.model.hc_head.register_forward_hook(lambda m, a, o: put("hc_head", o)))
        hs.append(model.model.norm.register_forward_hook(lambda m, a, o: put("norm", o)))
        try:
            out = model(input_ids=_tokens(self.cfg, tokens), use_cache=False)
        finally:
            for h in hs:
                h.remove()
        got["logits"] = out.logits.float()
        return {k: v.numpy() for k, v in got.items()}

    @torch.no_grad()
    def mtp_logits(self, tokens, mtp_ids=None, h_main=None, depth: int = 0, align: str = "same") -> np.ndarray:
        """MTP block `depth` like the reference `MTPBlock.forward(h, start_pos=0, input_ids)`.

        align="same" (default): h = h_main (default: the main model's last-block streams for `tokens`), ids =
            mtp_ids (default: `tokens`) -- ids and h aligned position by position, exactly as the caller of the
            reference passes them. Output [B, S, V].
        align="next": the training pairing h_t with token t+1 -- h = main streams[:, :-1], ids = tokens[:, 1:]
            (mtp_ids / h_main must then be None). Output [B, S-1, V]; the block sees positions 0..S-2."""
        if not self.cfg.n_mtp_layers:
            raise ValueError("config has no MTP layers")
        if align == "next":
            if mtp_ids is not None or h_main is not None:
                raise ValueError('align="next" derives ids and h from `tokens`')
            h = self.final_streams(tokens)[:, :-1]
            ids = _tokens(self.cfg, np.asarray(tokens)[:, 1:])
        elif align == "same":
            ids = _tokens(self.cfg, tokens if mtp_ids is None else mtp_ids)
            h = (self.final_streams(tokens) if h_main is None
                 else torch.as_tensor(np.asarray(h_main), dtype=torch.float32))
        else:
            raise ValueError(f'align must be "same" or "next", got {align!r}')
        if tuple(h.shape) != (*ids.shape, self.cfg.hc_mult, self.cfg.dim):
            raise ValueError(f"h_main shape {tuple(h.shape)} does not match ids {tuple(ids.shape)}")
        m = self.model
        logits, _ = m.mtp[depth](h.contiguous(), ids, m.model.embed_tokens, m.lm_head, m.model.rotary_emb)
        return logits.float().numpy()


def hf_logits(cfg: ModelConfig, weights: Dict[str, np.ndarray], tokens: np.ndarray, **opts) -> np.ndarray:
    """Full cache-free forward; float32 logits for every position, [B, S, V]."""
    return HFReference(cfg, weights, **opts).logits(tokens)


def hf_hidden(cfg: ModelConfig, weights: Dict[str, np.ndarray], tokens: np.ndarray, **opts) -> Dict[str, np.ndarray]:
    """Per-block probes (see HFReference.hidden)."""
    return HFReference(cfg, weights, **opts).hidden(tokens)


def hf_mtp_logits(cfg: ModelConfig, weights: Dict[str, np.ndarray], tokens: np.ndarray, mtp_ids=None, h_main=None,
                  align: str = "same", **opts) -> np.ndarray:
    """MTP logits (see HFReference.mtp_logits)."""
    return HFReference(cfg, weights, **opts).mtp_logits(tokens, mtp_ids=mtp_ids, h_main=h_main, align=align)


__all__ = [
    "SPEC_FIXES", "official_inventory", "random_official_weights", "hf_config", "map_official_name",
    "convert_official_weights", "build_hf_model", "HFReference", "HFMTPBlock", "hf_logits", "hf_hidden",
    "hf_mtp_logits", "fp8_fake_quant", "fp4_fake_quant", "hadamard",
]
