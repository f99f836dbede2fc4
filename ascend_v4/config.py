"""ModelConfig: one dataclass for every DeepSeek-V4 size, read from either config.json flavour.

Field names follow DeepSeek's `inference/config.json` (`dim`, `n_layers`, ...); the HF root config
(`hidden_size`, `num_hidden_layers`, ...) is translated on load. One schema (`_INTS`, `_FLOATS`, `_CHOICES` and
the cross-field rules in `validate()`) checks every value's type, range and consistency when a config is loaded,
so a bad config fails with one readable line naming the key as the file spells it, before a graph is compiled.
Keys a config omits take the defaults of the reader DeepSeek ships for that flavour: DeepSeek's `ModelArgs`
(`inference/model.py`) for an inference-style config, the Flash release values (transformers'
`DeepseekV4Config`) for an HF root config. Unknown keys are warned about with the nearest known key.
See docs/reliability.md. DeepSeek-V4.1 configs are recognised by their keys and read by `ModelConfigV41` (the
same schema plus the V4.1 keys, docs/deepseek-v4.1.md); callers name the model kinds they run (`versions`), so
a V4-only path refuses V4.1 with one line instead of misreading it.
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
# Keys of ours an HF root config may carry (docs/numerics.md): the model.py revision and the indexer's numerics;
# "conversion" rides along in a `convert --layout serving` config.
_HF_OURS = {"revision", "indexer_fp4", "conversion"}
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

# Model kinds this module reads, and the ones the model / checkpoint / convert / serve / train paths run today.
# DeepSeek-V4.1 is read (and described by `ascend-v4 info`); every other path refuses it with one line.
MODEL_VERSIONS = ("v4", "v4.1")
RUNNABLE: Tuple[str, ...] = ("v4",)

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


def _coerce_numbers(cls, kw: dict) -> None:
    """In place: ints written as floats in JSON (1.0) become ints in int fields; ints in float fields become floats.
    Strings are not numbers (the validators reject them)."""
    for f in dataclasses.fields(cls):
        v = kw.get(f.name)
        if f.type == "int" and isinstance(v, float) and v.is_integer() and abs(v) <= _INT_MAX:
            kw[f.name] = int(v)
        elif f.type == "float" and _is_int(v):
            kw[f.name] = float(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def nearest_key(key: str, known) -> str:
    """' (did you mean 'x'?)' for the closest known key, or ''."""
    m = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{m[0]}'?)" if m else ""


def _checker(cfg, names: Optional[Mapping[str, str]]):
    """(n, need) for a validate(): n(field) is the key as the user's file spells it; need(ok, msg) raises."""
    def n(f: str) -> str:
        return names.get(f, f) if names else f

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(f"invalid config '{cfg.name}': {msg}")
    return n, need


def _check_ints(cfg, table: Mapping[str, int], n, need) -> None:
    """Every field of `table` an integer in [its lower bound, _INT_MAX]."""
    for f, lo in table.items():
        v = getattr(cfg, f)
        need(_is_int(v) and lo <= v <= _INT_MAX,
             f"{n(f)} must be an integer in [{lo}, {_INT_MAX}], got {_describe(v)}{_hint(v)}")


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

    version = "v4"                # model kind; ModelConfigV41 (below) says "v4.1"
    _MIN_RATIO = 2                # V4 compresses by 4 or 128; V4.1 also by 1 and 2

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
        n, need = _checker(self, names)
        _check_ints(self, _INTS, n, need)
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
        lo = self._MIN_RATIO
        for i, r in enumerate(cr):
            need(_is_int(r) and (r == 0 or lo <= r <= _INT_MAX),
                 f"{n('compress_ratios')}[{i}] must be 0 (sliding window only) or an integer ratio >= {lo}, "
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
    def from_dict(cls, raw: Dict[str, Any], name: str = "custom", versions: Tuple[str, ...] = RUNNABLE
                  ) -> "ModelConfig":
        """Read either flavour, check it against the schema, warn on unknown keys. Raises ConfigError.
        A DeepSeek-V4.1 config (recognised by its keys) is read by ModelConfigV41; `versions` lists the model
        kinds the caller can run, anything else is refused with one line saying what does read it."""
        if not isinstance(raw, dict):
            raise ConfigError(f"config '{name}' must be a JSON object of keys, got {_describe(raw)}")
        kind = model_version(raw)
        if kind not in versions:
            raise ConfigError(_unsupported_version(name, kind))
        if kind == "v4.1" and not issubclass(cls, ModelConfigV41):
            return ModelConfigV41.from_dict(raw, name=name, versions=versions)
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
        _coerce_numbers(cls, kw)
        return cls(**kw).validate(names)

    @classmethod
    def from_json(cls, path: str, versions: Tuple[str, ...] = RUNNABLE) -> "ModelConfig":
        """A config.json path or a directory holding one. A DeepSeek-V4.1 release directory's root config.json
        is the nested HF file (vision + text); the model is described by its flat `inference/config.json`
        (what DeepSeek's reference reads), which is read instead (or `inference_config.json` beside it)."""
        name = os.path.basename(os.path.abspath(path if os.path.isdir(path) else os.path.dirname(path))) or path
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        raw = _read_json(path)
        if _is_v41_root(raw):
            flat = [p for p in (os.path.join(os.path.dirname(path), "inference", "config.json"),
                                os.path.join(os.path.dirname(path), "inference_config.json")) if os.path.exists(p)]
            if not flat:
                raise ConfigError(_v41_root_message(path))
            path, raw = flat[0], _read_json(flat[0])
        return cls.from_dict(raw, name=name, versions=versions)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw).validate()


def _read_json(path: str) -> Any:
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"no config at {path}: pass a checkpoint directory with config.json or a preset name "
                          f"({', '.join(PRESETS)})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{path} is not valid JSON ({str(e)[:120]}); fix or re-download the file") from None


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


def load_config(spec: Union[str, Mapping[str, Any]], source: str = "config",
                versions: Tuple[str, ...] = RUNNABLE) -> ModelConfig:
    """A preset name, a config.json path, a checkpoint directory holding config.json, or a mapping of config keys
    (a train YAML's `model:` section; `source` names it in errors). Every path checks the same schema.
    `versions`: the model kinds the caller runs (default: what the model paths run today); others are refused."""
    if isinstance(spec, Mapping):
        return ModelConfig.from_dict(dict(spec), name=source, versions=versions)
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{source}: a model must be a preset name ({', '.join(PRESETS)}), a config.json path or "
                          f"a mapping of config keys, got {_describe(spec)}")
    preset = PRESETS.get(spec) or V41_PRESETS.get(spec)
    if preset is not None:
        if preset.version not in versions:
            raise ConfigError(_unsupported_version(spec, preset.version))
        return preset.validate()
    if os.path.exists(spec):
        return ModelConfig.from_json(spec, versions=versions)
    names = list(PRESETS) + list(V41_PRESETS)
    raise ConfigError(f"'{spec}' is neither a preset ({', '.join(names)}) nor an existing config path"
                      f"{nearest_key(spec, names)}")


# ===================================================================================== DeepSeek-V4.1 ==========
# V4.1-Flash's inference/config.json (DeepSeek's `ModelArgs` reads it as is): the V4 keys minus n_hash_layers and
# scale_fmt, plus CSA-v2 sharing (kv/index sources, the two-level indexer), Engram, DSpark and vision. The
# release values are the defaults of keys a V4.1 config omits. See docs/deepseek-v4.1.md.
_V41_ONLY = ("kv_source_layers", "index_source_layers", "candidate_source_layer", "candidate_topk_blocks",
             "candidate_block_size", "engram_layer_ids", "engram_vocab_size", "engram_num_embeddings",
             "engram_max_ngram_size", "engram_pad_id", "engram_compressed_vocab_size", "engram_n_heads",
             "engram_head_dim", "dspark_block_size", "dspark_noise_token_id", "dspark_target_layer_ids",
             "dspark_markov_rank", "dspark_n_routed_experts", "dspark_n_activated_experts", "vision_n_layers",
             "vision_dim", "vision_n_heads", "vision_inter_dim", "vision_patch_size", "vision_downsample_ratio",
             "vision_max_n_token", "vision_min_pixels", "vision_max_wh_ratio", "vision_rope_theta", "image_token_id")
_V41_GONE = ("n_hash_layers", "scale_fmt")      # V4 keys V4.1's ModelArgs no longer has
_V41_INTS = {
    "candidate_topk_blocks": 1, "candidate_block_size": 1, "engram_vocab_size": 2, "engram_max_ngram_size": 2,
    "engram_pad_id": 0, "engram_compressed_vocab_size": 1, "engram_n_heads": 1, "engram_head_dim": 1,
    "dspark_block_size": 2, "dspark_noise_token_id": 0, "dspark_markov_rank": 1, "dspark_n_routed_experts": 1,
    "dspark_n_activated_experts": 1, "vision_n_layers": 0, "vision_dim": 1, "vision_n_heads": 1,
    "vision_inter_dim": 1, "vision_patch_size": 1, "vision_downsample_ratio": 1, "vision_max_n_token": 1,
    "vision_min_pixels": 1, "image_token_id": 0,
}
_V41_LISTS = ("kv_source_layers", "index_source_layers", "engram_layer_ids", "engram_num_embeddings",
              "dspark_target_layer_ids")


def model_version(raw: Any) -> str:
    """'v4.1' for a DeepSeek-V4.1 config (flat inference keys, or the nested HF root), else 'v4'."""
    if not isinstance(raw, dict):
        return "v4"
    return "v4.1" if _is_v41_root(raw) or any(k in raw for k in _V41_ONLY) else "v4"


def _is_v41_root(raw: Any) -> bool:
    return isinstance(raw, dict) and (str(raw.get("model_type", "")).startswith("deepseek_v41")
                                      or "DeepseekV41ForCausalLM" in (raw.get("architectures") or ())
                                      or isinstance(raw.get("text_config"), dict))


def _v41_root_message(path: str) -> str:
    d = os.path.dirname(os.path.abspath(path))
    return (f"{path} is DeepSeek-V4.1's nested HF root config; the model is described by the release's flat "
            f"inference/config.json: put it at {os.path.join(d, 'inference', 'config.json')} (as released) "
            f"and pass the directory again")


def _unsupported_version(name: str, kind: str) -> str:
    if kind == "v4.1":
        return (f"config '{name}' is DeepSeek-V4.1, which this command does not run yet (V4.1 runs in info, "
                f"make-checkpoint, dump, generate, demo --model v4.1, convert and verify; see the README section "
                f"'DeepSeek-V4.1 (in progress)')")
    return f"config '{name}' is DeepSeek-V4, but this path runs only {', '.join(RUNNABLE)}"


@dataclass(frozen=True)
class ModelConfigV41(ModelConfig):
    """DeepSeek-V4.1: every V4 field (same names and schema) plus the V4.1 keys. Defaults are V4.1-Flash's."""
    dim: int = 5120
    n_layers: int = 40
    n_mtp_layers: int = 3
    q_lora_rank: int = 1280
    n_routed_experts: int = 384
    moe_inter_dim: int = 2304
    n_hash_layers: int = 0
    norm_eps: float = 1e-20
    index_n_heads: int = 32
    kv_source_layers: Tuple[int, ...] = (2, 8, 14, 20)
    index_source_layers: Tuple[int, ...] = (2, 8, 14, 20, 24, 28, 32, 36)
    candidate_source_layer: int = 20          # < 0: no level-1 candidate mask
    candidate_topk_blocks: int = 2048
    candidate_block_size: int = 8
    engram_layer_ids: Tuple[int, ...] = (1, 14)
    engram_vocab_size: int = 16000000
    engram_num_embeddings: Tuple[int, ...] = (384006168, 384016682)
    engram_max_ngram_size: int = 4
    engram_pad_id: int = 2
    engram_compressed_vocab_size: int = 99092
    engram_n_heads: int = 8
    engram_head_dim: int = 256
    dspark_block_size: int = 5
    dspark_noise_token_id: int = 128799
    dspark_target_layer_ids: Tuple[int, ...] = (37, 38, 39)
    dspark_markov_rank: int = 256
    dspark_n_routed_experts: int = 128
    dspark_n_activated_experts: int = 3
    vision_n_layers: int = 32
    vision_dim: int = 1024
    vision_n_heads: int = 16
    vision_inter_dim: int = 2816
    vision_patch_size: int = 14
    vision_downsample_ratio: int = 3
    vision_max_n_token: int = 1024
    vision_min_pixels: int = 295936
    vision_max_wh_ratio: Optional[float] = None
    vision_rope_theta: float = 10000.0
    image_token_id: int = 129264
    gate_temp: float = 1.0                    # ModelArgs field not in the JSON: router logit divisor

    version = "v4.1"
    _MIN_RATIO = 1

    # ----- layer roles (CSA-v2 sharing) ---------------------------------------------------
    @property
    def engram_n_columns(self) -> int:
        """Hash columns per Engram layer: (max_ngram − 1) n-gram sizes × heads."""
        return (self.engram_max_ngram_size - 1) * self.engram_n_heads

    def layer_kind(self, layer_id: int) -> str:
        r = self.ratio(layer_id)
        return "SWA" if r == 0 else f"C{r}"

    def kv_source(self, layer_id: int) -> int:
        """The layer whose compressed-KV cache layer `layer_id` reads (itself for a source), −1 for window-only."""
        if self.ratio(layer_id) == 0:
            return -1
        return max((s for s in self.kv_source_layers if s <= layer_id), default=-1)

    def index_source(self, layer_id: int) -> int:
        """The layer whose top-k layer `layer_id` uses (itself for an index source), −1 for window-only."""
        if self.ratio(layer_id) == 0:
            return -1
        return max((s for s in self.index_source_layers if s <= layer_id), default=-1)

    def layer_role(self, layer_id: int) -> str:
        """window / full (own compressor + indexer) / reindex (own indexer inside the candidates) / reuse."""
        if self.ratio(layer_id) == 0:
            return "window"
        if layer_id in self.kv_source_layers:
            return "full"
        return "reindex" if layer_id in self.index_source_layers else "reuse"

    # ----- validation ---------------------------------------------------------------------
    def validate(self, names: Optional[Mapping[str, str]] = None) -> "ModelConfigV41":
        super().validate(names)
        n, need = _checker(self, names)
        _check_ints(self, _V41_INTS, n, need)
        need(_is_int(self.candidate_source_layer), f"{n('candidate_source_layer')} must be an integer (< 0 disables "
             f"the candidate level), got {_describe(self.candidate_source_layer)}")
        for f in ("vision_rope_theta", "gate_temp"):
            v = getattr(self, f)
            need(_is_number(v) and math.isfinite(v) and v > 0, f"{n(f)} must be a finite number > 0, got {_describe(v)}")
        v = self.vision_max_wh_ratio
        need(v is None or (_is_number(v) and math.isfinite(v) and v > 0),
             f"{n('vision_max_wh_ratio')} must be null or a number > 0, got {_describe(v)}")
        L, T = self.n_layers, self.n_total_blocks
        for f in _V41_LISTS:
            v = getattr(self, f)
            need(isinstance(v, tuple) and all(_is_int(x) and x >= 0 for x in v),
                 f"{n(f)} must be a list of non-negative integers, got {_describe(v)}")
        for f in ("kv_source_layers", "index_source_layers", "engram_layer_ids", "dspark_target_layer_ids"):
            v = getattr(self, f)
            need(list(v) == sorted(set(v)) and all(x < L for x in v),
                 f"{n(f)} must list distinct backbone layer ids in ascending order, each < {n('n_layers')} ({L}), "
                 f"got {list(v)}")
        need(self.n_hash_layers == 0, f"{n('n_hash_layers')} is a DeepSeek-V4 key; V4.1 has no hash-routed layers")
        need(all(self.ratio(i) == 0 for i in range(L, T)),
             f"{n('compress_ratios')}: the {self.n_mtp_layers} DSpark stages (entries {L}..{T - 1}) must be 0 "
             f"(window-only attention), got {list(self.compress_ratios[L:])}")
        for s in self.kv_source_layers:
            need(self.ratio(s) > 0, f"{n('kv_source_layers')}: layer {s} has ratio 0 and cannot compress KV")
        for i in range(L):
            if self.ratio(i) == 0:
                continue
            src = self.kv_source(i)
            need(src >= 0 and self.ratio(src) == self.ratio(i),
                 f"layer {i} (ratio {self.ratio(i)}) has no kv source of its ratio at or before it: "
                 f"{n('kv_source_layers')} must start every run of ratio-{self.ratio(i)} layers (got {list(self.kv_source_layers)})")
            need(self.index_source(i) >= src,
                 f"layer {i} would reuse the top-k of layer {self.index_source(i)}, which lies before its kv source "
                 f"{src}: every kv source must also be in {n('index_source_layers')}")
        for s in self.index_source_layers:
            need(self.ratio(s) > 0, f"{n('index_source_layers')}: layer {s} has ratio 0 and has nothing to index")
        c = self.candidate_source_layer
        need(c < 0 or c in self.index_source_layers,
             f"{n('candidate_source_layer')} ({c}) must be one of {n('index_source_layers')} or negative")
        need(self.index_n_heads * self.index_head_dim > 0 and self.index_head_dim <= self.head_dim,
             f"{n('index_head_dim')} ({self.index_head_dim}) must not exceed {n('head_dim')} ({self.head_dim})")
        need(len(self.engram_num_embeddings) == len(self.engram_layer_ids),
             f"{n('engram_num_embeddings')} has {len(self.engram_num_embeddings)} entries but "
             f"{n('engram_layer_ids')} has {len(self.engram_layer_ids)}; give one table size per Engram layer")
        if self.engram_layer_ids:
            from .ops.engram.reference import engram_primes
            primes = engram_primes(len(self.engram_layer_ids), self.engram_vocab_size,
                                   self.engram_max_ngram_size, self.engram_n_heads)
            sums = [int(p.sum()) for p in primes]
            need(sums == list(self.engram_num_embeddings),
                 f"{n('engram_num_embeddings')} {list(self.engram_num_embeddings)} must equal the sums of each "
                 f"layer's bucket primes above {n('engram_vocab_size')} ({self.engram_vocab_size}): {sums}")
            need(self.dtype != "fp8" or self.engram_head_dim % 32 == 0,
                 f"{n('engram_head_dim')} ({self.engram_head_dim}) must be a multiple of 32: FP8 Engram rows carry "
                 f"one E8M0 scale per 32 values")
            for f in ("engram_pad_id", "image_token_id", "dspark_noise_token_id"):
                need(getattr(self, f) < self.vocab_size,
                     f"{n(f)} ({getattr(self, f)}) must be below {n('vocab_size')} ({self.vocab_size})")
        need(self.dspark_n_activated_experts <= self.dspark_n_routed_experts,
             f"{n('dspark_n_activated_experts')} ({self.dspark_n_activated_experts}) exceeds "
             f"{n('dspark_n_routed_experts')} ({self.dspark_n_routed_experts})")
        need(not self.n_mtp_layers or len(self.dspark_target_layer_ids) > 0,
             f"{n('dspark_target_layer_ids')} must name the layers feeding the {self.n_mtp_layers} DSpark stages")
        return self

    # ----- I/O ------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        for f in ("compress_ratios",) + _V41_LISTS:
            d[f] = list(d[f])
        return d

    def to_inference_json(self) -> Dict[str, Any]:
        """The release's flat inference/config.json (what DeepSeek's V4.1 ModelArgs accepts as is)."""
        d = self.to_dict()
        for k in ("name", "gate_temp", "max_position_embeddings", "bos_token_id", "eos_token_id") + _V41_GONE:
            d.pop(k)
        # our keys (docs/numerics.md) only where they differ from what the release means
        if d["revision"] == "current":
            d.pop("revision")
        if d["indexer_fp4"]:
            d.pop("indexer_fp4")
        return d

    def to_hf_json(self) -> Dict[str, Any]:
        raise ConfigError("DeepSeek-V4.1's nested HF root config.json is not written by this port (its layout is "
                          "not pinned); write the flat inference/config.json (to_inference_json) instead")

    @classmethod
    def known_keys(cls, hf: bool) -> set:
        return {f.name for f in dataclasses.fields(cls)} - set(_V41_GONE) | _INFERENCE_RUNTIME

    @classmethod
    def from_dict(cls, raw: Dict[str, Any], name: str = "custom", versions: Tuple[str, ...] = RUNNABLE
                  ) -> "ModelConfigV41":
        """Read V4.1's flat inference/config.json. Raises ConfigError."""
        if not isinstance(raw, dict):
            raise ConfigError(f"config '{name}' must be a JSON object of keys, got {_describe(raw)}")
        if "v4.1" not in versions:
            raise ConfigError(_unsupported_version(name, "v4.1"))
        where = f"config '{name}'"
        if _is_v41_root(raw):
            raise ConfigError(f"{where}: " + _v41_root_message("config.json").split(" is ", 1)[1])
        fields = {f.name for f in dataclasses.fields(cls)}
        known = cls.known_keys(False)
        kw: Dict[str, Any] = {k: v for k, v in raw.items() if k in fields and k not in _V41_GONE}
        for k in sorted(k for k in raw if k not in known):
            tip = (" (a DeepSeek-V4 key that V4.1 dropped)" if k in _V41_GONE else nearest_key(k, known))
            warnings.warn(f"{where}: unknown key '{k}' ignored{tip}", ConfigWarning, stacklevel=2)
        for k in ("max_batch_size", "max_seq_len"):
            if k in raw and not (_is_int(raw[k]) and raw[k] >= 1):
                raise ConfigError(f"{where}: {k} must be a positive integer, got {_describe(raw[k])}")
        for f in ("compress_ratios",) + _V41_LISTS:
            if f in kw:
                v = kw[f]
                if not isinstance(v, (list, tuple)):
                    raise ConfigError(f"invalid config '{name}': {f} must be a list of integers, got {_describe(v)}")
                kw[f] = tuple(int(x) if isinstance(x, float) and x.is_integer() else x for x in v)
        if raw.get("expert_dtype", 0) is None:
            kw["expert_dtype"] = "fp8"
        kw.setdefault("name", name)
        _coerce_numbers(cls, kw)
        return cls(**kw).validate()


def _v41_flash_ratios() -> Tuple[int, ...]:
    return tuple([0, 0] + [2] * 18 + [1] * 20 + [0] * 3)


# Kept apart from PRESETS (the models every V4 path runs); load_config finds both.
V41_PRESETS: Dict[str, ModelConfig] = {}
V41_PRESETS["v4.1-flash"] = ModelConfigV41(name="v4.1-flash", compress_ratios=_v41_flash_ratios())
# Tiny V4.1: every feature at test scale — window-only layers, two ratio-2 groups (source 2 → 3, source 4 → 5),
# a ratio-1 group (source 6) with the candidate source 6 and a Reindex layer 8 (9 reuses it), Engram before
# layers 1 and 4 (4 is also a kv source, as 14 in Flash), 3 DSpark stages fed by layers 7–9. Engram buckets are
# primes above 1000 (6 columns per layer); its compressed vocabulary is a test map's size.
V41_PRESETS["v4.1-tiny"] = ModelConfigV41(
    name="v4.1-tiny", vocab_size=512, dim=64, n_layers=10, n_mtp_layers=3, n_heads=4, head_dim=32, rope_head_dim=16,
    q_lora_rank=32, o_lora_rank=16, o_groups=2, window_size=16, compress_ratios=(0, 0, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0),
    index_n_heads=4, index_head_dim=32, index_topk=4, n_routed_experts=8, n_activated_experts=2, moe_inter_dim=32,
    original_seq_len=64, kv_source_layers=(2, 4, 6), index_source_layers=(2, 4, 6, 8),
    candidate_source_layer=6, candidate_topk_blocks=2, candidate_block_size=4, engram_layer_ids=(1, 4),
    engram_vocab_size=1000, engram_num_embeddings=(6126, 6332), engram_n_heads=2, engram_head_dim=32,
    engram_compressed_vocab_size=300, dspark_block_size=3, dspark_noise_token_id=509, dspark_target_layer_ids=(7, 8, 9),
    dspark_markov_rank=8, dspark_n_routed_experts=4, dspark_n_activated_experts=2, vision_n_layers=0,
    image_token_id=510)
