"""ModelConfig: one dataclass for every DeepSeek-V4 size, read from either config.json flavour.

Field names follow DeepSeek's `inference/config.json` (`dim`, `n_layers`, ...); the HF root config
(`hidden_size`, `num_hidden_layers`, ...) is translated on load. `validate()` rejects impossible
geometry with one readable line each, so a bad config fails before a graph is compiled.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple


class ConfigError(ValueError):
    """A config value that cannot describe a DeepSeek-V4 model."""


REVISIONS = ("current", "launch")


# HF root config.json key -> inference-style field.
_HF_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "dim",
    "num_hidden_layers": "n_layers",
    "num_nextn_predict_layers": "n_mtp_layers",
    "num_attention_heads": "n_heads",
    "head_dim": "head_dim",
    "qk_rope_head_dim": "rope_head_dim",
    "q_lora_rank": "q_lora_rank",
    "o_lora_rank": "o_lora_rank",
    "o_groups": "o_groups",
    "sliding_window": "window_size",
    "compress_ratios": "compress_ratios",
    "compress_rope_theta": "compress_rope_theta",
    "rope_theta": "rope_theta",
    "index_n_heads": "index_n_heads",
    "index_head_dim": "index_head_dim",
    "index_topk": "index_topk",
    "n_routed_experts": "n_routed_experts",
    "n_shared_experts": "n_shared_experts",
    "num_experts_per_tok": "n_activated_experts",
    "moe_intermediate_size": "moe_inter_dim",
    "num_hash_layers": "n_hash_layers",
    "scoring_func": "score_func",
    "routed_scaling_factor": "route_scale",
    "swiglu_limit": "swiglu_limit",
    "hc_mult": "hc_mult",
    "hc_sinkhorn_iters": "hc_sinkhorn_iters",
    "hc_eps": "hc_eps",
    "rms_norm_eps": "norm_eps",
    "expert_dtype": "expert_dtype",
    "max_position_embeddings": "max_position_embeddings",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
}
# HF keys that are fixed for V4 and only checked, never stored.
_HF_FIXED = {"num_key_value_heads": 1, "tie_word_embeddings": False, "attention_bias": False,
             "norm_topk_prob": True}


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 129280
    dim: int = 4096
    n_layers: int = 43
    n_mtp_layers: int = 1
    n_heads: int = 64
    head_dim: int = 512
    rope_head_dim: int = 64
    q_lora_rank: int = 1024
    o_lora_rank: int = 1024
    o_groups: int = 8
    window_size: int = 128
    compress_ratios: Tuple[int, ...] = ()
    compress_rope_theta: float = 160000.0
    rope_theta: float = 10000.0
    rope_factor: float = 16.0
    original_seq_len: int = 65536
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    max_position_embeddings: int = 1048576
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 512
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    n_activated_experts: int = 6
    moe_inter_dim: int = 2048
    n_hash_layers: int = 3
    score_func: str = "sqrtsoftplus"
    route_scale: float = 1.5
    swiglu_limit: float = 10.0
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    norm_eps: float = 1e-6
    dtype: str = "fp8"            # weight format of the release: fp8 linears
    expert_dtype: str = "fp4"     # routed experts: fp4 (MXFP4) or fp8
    scale_fmt: str = "ue8m0"
    bos_token_id: int = 0
    eos_token_id: int = 1
    # Numerics of the trained model (docs/numerics.md). indexer_fp4: the lightning indexer scores Hadamard-rotated,
    # FP4-quantised q/k as DeepSeek's indexer does (False: exact scores). revision: "current" clamps the shared
    # expert's SwiGLU like the routed ones; "launch" (the first V4-Flash release) leaves the shared expert unclamped.
    indexer_fp4: bool = True
    revision: str = "current"
    name: str = "custom"

    # ----- derived geometry -------------------------------------------------------------
    @property
    def nope_head_dim(self) -> int:
        return self.head_dim - self.rope_head_dim

    @property
    def hc_mix_dim(self) -> int:
        """Rows of hc_*_fn: pre (hc) + post (hc) + comb (hc*hc)."""
        return (2 + self.hc_mult) * self.hc_mult

    @property
    def n_total_blocks(self) -> int:
        return self.n_layers + self.n_mtp_layers

    def ratio(self, layer_id: int) -> int:
        """Compression ratio of main layer `layer_id` (0..n_layers-1) or MTP block n_layers+j."""
        return self.compress_ratios[layer_id]

    def layer_kind(self, layer_id: int) -> str:
        r = self.ratio(layer_id)
        return "SWA" if r == 0 else ("CSA" if r == 4 else "HCA")

    def is_hash_layer(self, layer_id: int) -> bool:
        return layer_id < self.n_hash_layers

    # ----- validation -------------------------------------------------------------------
    def validate(self) -> "ModelConfig":
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"invalid config '{self.name}': {msg}")

        for f in ("vocab_size", "dim", "n_layers", "n_heads", "head_dim", "q_lora_rank", "o_lora_rank",
                  "o_groups", "window_size", "n_routed_experts", "n_activated_experts", "moe_inter_dim",
                  "hc_mult", "hc_sinkhorn_iters", "index_n_heads", "index_head_dim", "index_topk"):
            v = getattr(self, f)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"{f} must be a positive integer, got {v!r}")
        need(self.n_mtp_layers >= 0, f"n_mtp_layers must be >= 0, got {self.n_mtp_layers}")
        need(self.n_shared_experts in (0, 1), f"n_shared_experts must be 0 or 1, got {self.n_shared_experts}")
        need(len(self.compress_ratios) == self.n_total_blocks,
             f"compress_ratios has {len(self.compress_ratios)} entries but n_layers + n_mtp_layers = "
             f"{self.n_total_blocks}; give one ratio per layer plus one per MTP block")
        for i, r in enumerate(self.compress_ratios):
            need(isinstance(r, int) and r >= 0, f"compress_ratios[{i}] = {r!r} must be an integer >= 0")
            need(r in (0, 1) or r >= 2, f"compress_ratios[{i}] = {r}")
        need(0 < self.rope_head_dim <= self.head_dim and self.rope_head_dim % 2 == 0,
             f"rope_head_dim ({self.rope_head_dim}) must be even and <= head_dim ({self.head_dim})")
        need(self.index_head_dim >= self.rope_head_dim,
             f"index_head_dim ({self.index_head_dim}) must be >= rope_head_dim ({self.rope_head_dim}): "
             f"the indexer applies RoPE to its last {self.rope_head_dim} dims")
        need(self.index_head_dim & (self.index_head_dim - 1) == 0,
             f"index_head_dim ({self.index_head_dim}) must be a power of two (Hadamard rotation)")
        need(self.n_heads % self.o_groups == 0,
             f"n_heads ({self.n_heads}) must be divisible by o_groups ({self.o_groups})")
        need(self.n_activated_experts <= self.n_routed_experts,
             f"n_activated_experts ({self.n_activated_experts}) exceeds n_routed_experts ({self.n_routed_experts})")
        need(0 <= self.n_hash_layers <= self.n_layers,
             f"n_hash_layers ({self.n_hash_layers}) must be between 0 and n_layers ({self.n_layers})")
        need(self.score_func in ("sqrtsoftplus", "softmax", "sigmoid"),
             f"score_func '{self.score_func}' is not one of sqrtsoftplus, softmax, sigmoid")
        need(self.expert_dtype in ("fp4", "fp8"), f"expert_dtype '{self.expert_dtype}' must be fp4 or fp8")
        need(self.dtype in ("fp8", "bf16"), f"dtype '{self.dtype}' must be fp8 or bf16")
        if self.expert_dtype == "fp4":
            need(self.dim % 32 == 0 and self.moe_inter_dim % 32 == 0,
                 f"MXFP4 experts need dim ({self.dim}) and moe_inter_dim ({self.moe_inter_dim}) divisible by 32")
        need(self.route_scale > 0, f"route_scale must be > 0, got {self.route_scale}")
        need(self.swiglu_limit >= 0, f"swiglu_limit must be >= 0 (0 disables), got {self.swiglu_limit}")
        need(self.norm_eps > 0 and self.hc_eps >= 0, "norm_eps must be > 0 and hc_eps >= 0")
        need(self.rope_factor >= 1 and self.original_seq_len > 0, "rope_factor must be >= 1, original_seq_len > 0")
        need(isinstance(self.indexer_fp4, bool), f"indexer_fp4 must be true or false, got {self.indexer_fp4!r}")
        need(self.revision in REVISIONS, f"revision '{self.revision}' must be one of {', '.join(REVISIONS)}")
        return self

    @property
    def shared_expert_clamp(self) -> bool:
        """Whether the shared expert's SwiGLU is clamped at swiglu_limit (current revision) or not (launch)."""
        return self.revision != "launch"

    # ----- I/O -------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["compress_ratios"] = list(self.compress_ratios)
        return d

    def to_inference_json(self) -> Dict[str, Any]:
        d = self.to_dict()
        d.pop("name")
        return d

    def to_hf_json(self) -> Dict[str, Any]:
        """The official root config.json for this geometry."""
        d = {hf: getattr(self, ours) for hf, ours in _HF_KEYS.items()}
        d["compress_ratios"] = list(self.compress_ratios)
        d.update(_HF_FIXED)
        if self.revision != "current":      # the current revision is what a config with expert_dtype means
            d["revision"] = self.revision
        d.update({
            "architectures": ["DeepseekV4ForCausalLM"],
            "model_type": "deepseek_v4",
            "hidden_act": "silu",
            "topk_method": "noaux_tc",
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "torch_dtype": "bfloat16",
            "rope_scaling": {"type": "yarn", "factor": self.rope_factor,
                             "original_max_position_embeddings": self.original_seq_len,
                             "beta_fast": self.beta_fast, "beta_slow": self.beta_slow},
        })
        if self.dtype == "fp8":     # a bf16 release has no quantization_config at all
            d["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": self.scale_fmt,
                                        "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
        return d

    @classmethod
    def from_dict(cls, raw: Dict[str, Any], name: str = "custom") -> "ModelConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"config '{name}' must be a JSON object, got {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        kw: Dict[str, Any] = {}
        if "hidden_size" in raw or "num_hidden_layers" in raw:          # HF root flavour
            for hf, val in _HF_FIXED.items():
                if hf in raw and raw[hf] != val:
                    raise ConfigError(f"config '{name}': {hf} = {raw[hf]!r}, DeepSeek-V4 requires {val!r}")
            for hf, ours in _HF_KEYS.items():
                if hf in raw and raw[hf] is not None:
                    kw[ours] = raw[hf]
            rs = raw.get("rope_scaling") or {}
            if rs:
                kw["rope_factor"] = rs.get("factor", cls.rope_factor)
                kw["original_seq_len"] = rs.get("original_max_position_embeddings", cls.original_seq_len)
                kw["beta_fast"] = rs.get("beta_fast", cls.beta_fast)
                kw["beta_slow"] = rs.get("beta_slow", cls.beta_slow)
            qc = raw.get("quantization_config")
            kw["dtype"] = "fp8" if qc else "bf16"
            if qc and qc.get("scale_fmt"):
                kw["scale_fmt"] = qc["scale_fmt"]
            if "expert_dtype" not in kw:
                kw["expert_dtype"] = "fp4"
            # our keys (the release's config.json does not say which model.py revision it was trained with:
            # a launch-revision checkpoint gets "revision": "launch" added; docs/numerics.md)
            for k in ("revision", "indexer_fp4"):
                if k in raw:
                    kw[k] = raw[k]
        else:                                                            # inference/config.json flavour
            for k, v in raw.items():
                if k in known:
                    kw[k] = v
        if "compress_ratios" in kw:
            kw["compress_ratios"] = tuple(int(r) for r in kw["compress_ratios"])
        kw.setdefault("name", name)
        # Ints written as floats in JSON (e.g. 1.0) are accepted; strings are not.
        for f in dataclasses.fields(cls):
            if f.name in kw and f.type == "int" and isinstance(kw[f.name], float) and kw[f.name].is_integer():
                kw[f.name] = int(kw[f.name])
        try:
            cfg = cls(**kw)
        except TypeError as e:  # pragma: no cover - dataclass arity errors
            raise ConfigError(f"config '{name}': {e}") from None
        return cfg.validate()

    @classmethod
    def from_json(cls, path: str) -> "ModelConfig":
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        try:
            with open(path, "r", encoding="utf-8") as fh:
                raw = json.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"no config at {path}: pass a checkpoint directory with config.json or a preset name "
                              f"({', '.join(PRESETS)})") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); fix or re-download the file") from None
        return cls.from_dict(raw, name=os.path.basename(os.path.dirname(os.path.abspath(path))) or path)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw).validate()


def _flash_ratios() -> Tuple[int, ...]:
    return tuple([0, 0] + [4, 128] * 20 + [4] + [0])


def _pro_ratios() -> Tuple[int, ...]:
    return tuple([128, 128] + [4, 128] * 29 + [4] + [0])


PRESETS: Dict[str, ModelConfig] = {
    "v4-flash": ModelConfig(name="v4-flash", compress_ratios=_flash_ratios()),
    "v4-pro": ModelConfig(name="v4-pro", dim=7168, n_layers=61, n_heads=128, q_lora_rank=1536, o_groups=16,
                          index_topk=1024, n_routed_experts=384, moe_inter_dim=3072, route_scale=2.5,
                          compress_ratios=_pro_ratios()),
    # Tiny: every layer kind (SWA, CSA with overlap + indexer, HCA) and hash routing, small enough that a graph
    # compiles in seconds. Window 16 and HCA ratio 16 so 64-token tests cross window and block boundaries.
    "tiny": ModelConfig(name="tiny", vocab_size=512, dim=64, n_layers=4, n_mtp_layers=1, n_heads=4, head_dim=32,
                        rope_head_dim=16, q_lora_rank=32, o_lora_rank=16, o_groups=2, window_size=16,
                        compress_ratios=(0, 4, 16, 4, 0), index_n_heads=4, index_head_dim=32, index_topk=4,
                        n_routed_experts=8, n_activated_experts=2, moe_inter_dim=32, n_hash_layers=1,
                        original_seq_len=64, max_position_embeddings=4096),
    # Small: Flash's real head geometry (512-d shared KV, 64 rope dims, 128-d indexer, window 128, ratios 4/128)
    # at a width that runs on a laptop CPU.
    "small": ModelConfig(name="small", vocab_size=2048, dim=256, n_layers=4, n_mtp_layers=1, n_heads=8,
                         head_dim=512, rope_head_dim=64, q_lora_rank=128, o_lora_rank=128, o_groups=2,
                         window_size=128, compress_ratios=(0, 4, 128, 4, 0), index_n_heads=8, index_head_dim=128,
                         index_topk=64, n_routed_experts=16, n_activated_experts=4, moe_inter_dim=128,
                         n_hash_layers=1, original_seq_len=4096, max_position_embeddings=65536),
}


def load_config(spec: str) -> ModelConfig:
    """A preset name, a config.json path, or a checkpoint directory holding config.json."""
    if spec in PRESETS:
        return PRESETS[spec].validate()
    if os.path.exists(spec):
        return ModelConfig.from_json(spec)
    raise ConfigError(f"'{spec}' is neither a preset ({', '.join(PRESETS)}) nor an existing config path")
