"""ModelConfig: one dataclass for every DeepSeek-V4 size, read from either config.json flavour.

Field names follow DeepSeek's `inference/config.json` (`dim`, `n_layers`, ...); the HF root config
(`hidden_size`, `num_hidden_layers`, ...) is translated on load. One schema (`_INTS`, `_FLOATS`, `_CHOICES` and
the cross-field rules in `validate()`) checks every value's type, range and consistency when a config is loaded,
so a bad config fails with one readable line naming the key as the file spells it, before a graph is compiled.
Keys a config omits take the defaults of the reader DeepSeek ships for that flavour: DeepSeek's `ModelArgs`
(`inference/model.py`) for an inference-style config, the Flash release values (transformers'
`DeepseekV4Config`) for an HF root config. Unknown keys are warned about with the nearest known key.
See docs/reliability.md.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from .errors import Notice


class ConfigError(ValueError):
    """A config value that cannot describe a DeepSeek-V4 model."""


class ConfigWarning(Notice):
    """A config key that is ignored (unknown, or a runtime setting of another program)."""


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
             "norm_topk_prob": True, "hidden_act": "silu", "topk_method": "noaux_tc", "model_type": "deepseek_v4"}
# HF keys read elsewhere in this module (nested objects) or metadata that does not change the model.
_HF_NESTED = {"rope_scaling": {"type", "rope_type", "factor", "original_max_position_embeddings", "beta_fast",
                               "beta_slow"},
              "quantization_config": {"quant_method", "fmt", "scale_fmt", "activation_scheme", "weight_block_size",
                                      "expert_dtype"}}
_HF_METADATA = {"architectures", "attention_dropout", "initializer_range", "torch_dtype", "dtype",
                "transformers_version", "use_cache", "pad_token_id", "auto_map", "_name_or_path", "mlp_bias",
                "quantize"}                    # MindIE's precision tag in a `convert --layout serving` config
# Keys of ours an HF root config may carry (docs/numerics.md): the model.py revision and the indexer's numerics.
_HF_OURS = {"revision", "indexer_fp4"}
# Keys DeepSeek's ModelArgs reads that size the runtime, not the model; "conversion" is written by `convert`.
_INFERENCE_RUNTIME = {"max_batch_size", "max_seq_len", "scale_dtype", "conversion"}

# DeepSeek's `ModelArgs` defaults (inference/model.py): what an inference-style config.json gets for a key it
# omits. `expert_dtype` None there means "same as dtype" (FP8 experts); max_position_embeddings and the token
# ids are not ModelArgs keys and keep this module's defaults.
MODEL_ARGS_DEFAULTS: Dict[str, Any] = {
    "dtype": "fp8", "scale_fmt": "ue8m0", "expert_dtype": "fp8", "vocab_size": 129280, "dim": 4096,
    "moe_inter_dim": 4096, "n_layers": 7, "n_hash_layers": 0, "n_mtp_layers": 1, "n_heads": 64,
    "n_routed_experts": 8, "n_shared_experts": 1, "n_activated_experts": 2, "score_func": "sqrtsoftplus",
    "route_scale": 1.0, "swiglu_limit": 0.0, "q_lora_rank": 1024, "head_dim": 512, "rope_head_dim": 64,
    "norm_eps": 1e-6, "o_groups": 8, "o_lora_rank": 1024, "window_size": 128,
    "compress_ratios": (0, 0, 4, 128, 4, 128, 4, 0), "compress_rope_theta": 40000.0, "original_seq_len": 0,
    "rope_theta": 10000.0, "rope_factor": 40.0, "beta_fast": 32.0, "beta_slow": 1.0, "index_n_heads": 64,
    "index_head_dim": 128, "index_topk": 512, "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6,
}

# ----- the schema: every field's type and range --------------------------------------------------------------
_INT_MAX = 2 ** 31 - 1            # ids, offsets and sizes are int32 on the device
_INTS = {  # field -> smallest allowed value
    "vocab_size": 1, "dim": 1, "n_layers": 1, "n_mtp_layers": 0, "n_heads": 1, "head_dim": 1, "rope_head_dim": 2,
    "q_lora_rank": 1, "o_lora_rank": 1, "o_groups": 1, "window_size": 1, "original_seq_len": 0,
    "max_position_embeddings": 1, "index_n_heads": 1, "index_head_dim": 1, "index_topk": 1, "n_routed_experts": 1,
    "n_shared_experts": 0, "n_activated_experts": 1, "moe_inter_dim": 1, "n_hash_layers": 0, "hc_mult": 1,
    "hc_sinkhorn_iters": 1, "bos_token_id": 0, "eos_token_id": 0,
}
_FLOATS = {  # field -> (lower bound, bound included)
    "compress_rope_theta": (0.0, False), "rope_theta": (0.0, False), "rope_factor": (1.0, True),
    "beta_fast": (0.0, False), "beta_slow": (0.0, False), "route_scale": (0.0, False), "swiglu_limit": (0.0, True),
    "hc_eps": (0.0, True), "norm_eps": (0.0, False),
}
_CHOICES = {"score_func": ("sqrtsoftplus", "softmax", "sigmoid"), "dtype": ("fp8", "bf16"),
            "expert_dtype": ("fp4", "fp8"), "scale_fmt": ("ue8m0",)}


def _describe(v: Any) -> str:
    if isinstance(v, str):
        return f"the string {v!r}"
    if isinstance(v, bool):
        return f"the boolean {json.dumps(v)}"
    if v is None:
        return "null"
    if isinstance(v, (list, dict)):
        return f"a {'list' if isinstance(v, list) else 'object'} {json.dumps(v, default=str)[:40]}"
    return repr(v)


def _hint(v: Any) -> str:
    return " (write numbers without quotes)" if isinstance(v, str) else ""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def nearest_key(key: str, known) -> str:
    """' (did you mean 'x'?)' for the closest known key, or ''."""
    m = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{m[0]}'?)" if m else ""


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
    original_seq_len: int = 65536     # 0: no YaRN on the compressed layers
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
    def validate(self, names: Optional[Mapping[str, str]] = None) -> "ModelConfig":
        """Types and ranges of every field (the schema above), then the cross-field rules. `names` maps a field
        to the key the user's file spells it with, so the message names what to edit."""
        n = (lambda f: names.get(f, f)) if names else (lambda f: f)

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"invalid config '{self.name}': {msg}")

        for f, lo in _INTS.items():
            v = getattr(self, f)
            need(_is_int(v) and lo <= v <= _INT_MAX,
                 f"{n(f)} must be an integer in [{lo}, {_INT_MAX}], got {_describe(v)}{_hint(v)}")
        for f, (lo, closed) in _FLOATS.items():
            v = getattr(self, f)
            ok = _is_number(v) and math.isfinite(v) and (v >= lo if closed else v > lo)
            need(ok, f"{n(f)} must be a finite number {'>=' if closed else '>'} {lo:g}, got {_describe(v)}{_hint(v)}")
        for f, allowed in _CHOICES.items():
            v = getattr(self, f)
            need(isinstance(v, str) and v in allowed,
                 f"{n(f)} must be one of {', '.join(allowed)}, got {_describe(v)}")
        need(isinstance(self.name, str), f"name must be a string, got {_describe(self.name)}")
        cr = self.compress_ratios
        need(isinstance(cr, tuple), f"{n('compress_ratios')} must be a list of integers, got {_describe(cr)}")
        for i, r in enumerate(cr):
            need(_is_int(r) and (r == 0 or 2 <= r <= _INT_MAX),
                 f"{n('compress_ratios')}[{i}] must be 0 (sliding window only) or an integer ratio >= 2, "
                 f"got {_describe(r)}")
        need(len(cr) == self.n_total_blocks,
             f"{n('compress_ratios')} has {len(cr)} entries but {n('n_layers')} + {n('n_mtp_layers')} = "
             f"{self.n_total_blocks}; give one ratio per layer plus one per MTP block")
        need(self.n_shared_experts in (0, 1), f"{n('n_shared_experts')} must be 0 or 1, got {self.n_shared_experts}")
        need(self.rope_head_dim <= self.head_dim and self.rope_head_dim % 2 == 0,
             f"{n('rope_head_dim')} ({self.rope_head_dim}) must be even and <= {n('head_dim')} ({self.head_dim})")
        need(self.index_head_dim >= self.rope_head_dim,
             f"{n('index_head_dim')} ({self.index_head_dim}) must be >= {n('rope_head_dim')} ({self.rope_head_dim}): "
             f"the indexer applies RoPE to its last {self.rope_head_dim} dims")
        need(self.index_head_dim & (self.index_head_dim - 1) == 0,
             f"{n('index_head_dim')} ({self.index_head_dim}) must be a power of two (Hadamard rotation)")
        need(self.n_heads % self.o_groups == 0,
             f"{n('n_heads')} ({self.n_heads}) must be divisible by {n('o_groups')} ({self.o_groups})")
        need(self.n_activated_experts <= self.n_routed_experts,
             f"{n('n_activated_experts')} ({self.n_activated_experts}) exceeds {n('n_routed_experts')} "
             f"({self.n_routed_experts})")
        need(self.n_hash_layers <= self.n_layers,
             f"{n('n_hash_layers')} ({self.n_hash_layers}) must be between 0 and {n('n_layers')} ({self.n_layers})")
        if self.expert_dtype == "fp4" and self.dtype == "fp8":
            need(self.dim % 32 == 0 and self.moe_inter_dim % 32 == 0,
                 f"MXFP4 experts need {n('dim')} ({self.dim}) and {n('moe_inter_dim')} ({self.moe_inter_dim}) "
                 f"divisible by 32")
        need(self.beta_fast > self.beta_slow or self.original_seq_len == 0,
             f"{n('beta_fast')} ({self.beta_fast:g}) must exceed {n('beta_slow')} ({self.beta_slow:g}): YaRN ramps "
             f"between them")
        for f in ("bos_token_id", "eos_token_id"):
            need(getattr(self, f) < self.vocab_size,
                 f"{n(f)} ({getattr(self, f)}) must be below {n('vocab_size')} ({self.vocab_size})")
        need(isinstance(self.indexer_fp4, bool), f"{n('indexer_fp4')} must be true or false, got {_describe(self.indexer_fp4)}")
        need(self.revision in REVISIONS, f"{n('revision')} must be one of {', '.join(REVISIONS)}, got {_describe(self.revision)}")
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
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "torch_dtype": "bfloat16",
            "rope_scaling": None if self.original_seq_len == 0 else {
                "type": "yarn", "factor": self.rope_factor, "original_max_position_embeddings": self.original_seq_len,
                "beta_fast": self.beta_fast, "beta_slow": self.beta_slow},
        })
        if self.dtype == "fp8":     # a bf16 release has no quantization_config at all
            d["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": self.scale_fmt,
                                        "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
        return d

    @classmethod
    def known_keys(cls, hf: bool) -> set:
        """Every top-level key the reader of that flavour understands."""
        if hf:
            return set(_HF_KEYS) | set(_HF_FIXED) | set(_HF_NESTED) | _HF_METADATA | _HF_OURS
        return {f.name for f in dataclasses.fields(cls)} | _INFERENCE_RUNTIME

    @classmethod
    def from_dict(cls, raw: Dict[str, Any], name: str = "custom") -> "ModelConfig":
        """Read either flavour, check it against the schema, warn on unknown keys. Raises ConfigError."""
        if not isinstance(raw, dict):
            raise ConfigError(f"config '{name}' must be a JSON object of keys, got {_describe(raw)}")
        where = f"config '{name}'"
        hf = "hidden_size" in raw or "num_hidden_layers" in raw
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw: Dict[str, Any] = {}
        names: Dict[str, str] = {}
        if hf:
            names = {ours: hf_key for hf_key, ours in _HF_KEYS.items()}
            for hf_key, val in _HF_FIXED.items():
                if hf_key in raw and raw[hf_key] != val:
                    raise ConfigError(f"{where}: {hf_key} = {_describe(raw[hf_key])}, DeepSeek-V4 requires "
                                      f"{json.dumps(val)}")
            for hf_key, ours in _HF_KEYS.items():
                if hf_key in raw and raw[hf_key] is not None:
                    kw[ours] = raw[hf_key]
            kw.update(_read_rope_scaling(raw.get("rope_scaling"), where, names))
            kw.update(_read_quantization(raw.get("quantization_config"), where, names))
            if "expert_dtype" in raw and raw["expert_dtype"] is not None:
                kw["expert_dtype"] = raw["expert_dtype"]
            kw.setdefault("expert_dtype", "fp4")       # the release's routed experts are MXFP4 in every revision
            # our keys: the release's config.json does not say which model.py revision it was trained with (a
            # launch-revision checkpoint gets "revision": "launch" added; docs/numerics.md)
            for k in ("revision", "indexer_fp4"):
                if k in raw:
                    kw[k] = raw[k]
        else:                                          # inference/config.json flavour: DeepSeek's ModelArgs
            kw.update(MODEL_ARGS_DEFAULTS)
            for k, v in raw.items():
                if k in fields:
                    kw[k] = v
            if raw.get("expert_dtype", 0) is None:     # ModelArgs: None = experts in the linears' format
                kw["expert_dtype"] = "fp8"
            for k, allowed in (("scale_dtype", ("fp8",)), ("max_batch_size", None), ("max_seq_len", None)):
                if k in raw and not (raw[k] in allowed if allowed else _is_int(raw[k]) and raw[k] >= 1):
                    want = "fp8 (E8M0 scales, the release's format)" if allowed else "a positive integer"
                    raise ConfigError(f"{where}: {k} must be {want}, got {_describe(raw[k])}")
        unknown = sorted(k for k in raw if k not in cls.known_keys(hf))
        for k in unknown:
            other = cls.known_keys(not hf)
            tip = (f" ('{k}' is a key of the other config.json flavour; this file uses "
                   f"{'HF root' if hf else 'inference'} names)" if k in other else nearest_key(k, cls.known_keys(hf)))
            warnings.warn(f"{where}: unknown key '{k}' ignored{tip}", ConfigWarning, stacklevel=2)
        if "compress_ratios" in kw:
            cr = kw["compress_ratios"]
            if not isinstance(cr, (list, tuple)):
                raise ConfigError(f"invalid config '{name}': {names.get('compress_ratios', 'compress_ratios')} must "
                                  f"be a list of integers, one per layer and MTP block, got {_describe(cr)}")
            kw["compress_ratios"] = tuple(int(r) if isinstance(r, float) and r.is_integer() else r for r in cr)
        kw.setdefault("name", name)
        # Ints written as floats in JSON (1.0) are ints; ints in float fields are floats. Strings are not numbers.
        for f in dataclasses.fields(cls):
            v = kw.get(f.name)
            if f.type == "int" and isinstance(v, float) and v.is_integer() and abs(v) <= _INT_MAX:
                kw[f.name] = int(v)
            elif f.type == "float" and _is_int(v):
                kw[f.name] = float(v)
        return cls(**kw).validate(names)

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
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ConfigError(f"{path} is not valid JSON ({str(e)[:120]}); fix or re-download the file") from None
        return cls.from_dict(raw, name=os.path.basename(os.path.dirname(os.path.abspath(path))) or path)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw).validate()


def _check_nested(obj: Any, key: str, where: str) -> None:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: {key} must be an object or null, got {_describe(obj)}")
    for k in sorted(set(obj) - _HF_NESTED[key]):
        warnings.warn(f"{where}: unknown key '{key}.{k}' ignored{nearest_key(k, _HF_NESTED[key])}", ConfigWarning,
                      stacklevel=3)


def _read_rope_scaling(rs: Any, where: str, names: Dict[str, str]) -> Dict[str, Any]:
    """HF `rope_scaling` -> YaRN fields. Absent/null: no YaRN (original_seq_len 0), as DeepSeek's ModelArgs."""
    names.update({"rope_factor": "rope_scaling.factor", "beta_fast": "rope_scaling.beta_fast",
                  "beta_slow": "rope_scaling.beta_slow",
                  "original_seq_len": "rope_scaling.original_max_position_embeddings"})
    if rs is None:
        return {"original_seq_len": 0}
    _check_nested(rs, "rope_scaling", where)
    kind = rs.get("type", rs.get("rope_type"))
    if kind != "yarn":
        raise ConfigError(f"{where}: rope_scaling.type must be \"yarn\" (DeepSeek-V4's only RoPE scaling), got "
                          f"{_describe(kind)}; or set rope_scaling to null for no scaling")
    out = {}
    for src, ours in (("factor", "rope_factor"), ("original_max_position_embeddings", "original_seq_len"),
                      ("beta_fast", "beta_fast"), ("beta_slow", "beta_slow")):
        if src in rs:
            out[ours] = rs[src]
    return out


def _read_quantization(qc: Any, where: str, names: Dict[str, str]) -> Dict[str, Any]:
    """HF `quantization_config` -> dtype / scale_fmt / expert_dtype. Absent/null: an unquantised BF16 release."""
    names.update({"scale_fmt": "quantization_config.scale_fmt", "dtype": "quantization_config"})
    if qc is None:
        return {"dtype": "bf16"}
    _check_nested(qc, "quantization_config", where)
    if qc.get("quant_method") == "ascend":
        # `convert --layout serving` output (msModelSlim/vllm-ascend convention): the precision of each tensor is in
        # quant_model_description.json and the converter's manifest; the geometry here is the release's.
        return {"dtype": "bf16"}
    fixed = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    for k, want in fixed.items():
        if k in qc and qc[k] != want:
            raise ConfigError(f"{where}: quantization_config.{k} = {_describe(qc[k])} is not supported; "
                              f"DeepSeek-V4 releases use {json.dumps(want)} (FP8 E4M3 in 128x128 blocks)")
    out: Dict[str, Any] = {"dtype": "fp8"}
    if "scale_fmt" in qc:
        out["scale_fmt"] = qc["scale_fmt"]
    if qc.get("expert_dtype") is not None:     # transformers moves expert_dtype here
        out["expert_dtype"] = qc["expert_dtype"]
    return out


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


def load_config(spec: Union[str, Mapping[str, Any]], source: str = "config") -> ModelConfig:
    """A preset name, a config.json path, a checkpoint directory holding config.json, or a mapping of config keys
    (a train YAML's `model:` section; `source` names it in errors). Every path checks the same schema."""
    if isinstance(spec, Mapping):
        return ModelConfig.from_dict(dict(spec), name=source)
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{source}: a model must be a preset name ({', '.join(PRESETS)}), a config.json path or "
                          f"a mapping of config keys, got {_describe(spec)}")
    if spec in PRESETS:
        return PRESETS[spec].validate()
    if os.path.exists(spec):
        return ModelConfig.from_json(spec)
    raise ConfigError(f"'{spec}' is neither a preset ({', '.join(PRESETS)}) nor an existing config path"
                      f"{nearest_key(spec, PRESETS)}")
