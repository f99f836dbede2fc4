"""The train YAML: every key with its type, default and meaning, in one place.

`TrainConfig.from_yaml` / `from_dict` check every key against this schema: an unknown key is named with the valid
keys at its level (and the section it belongs to when it is misplaced), every value is checked against its type
(YAML 1.1 reads `1e-3` as a string: a string that is a number is accepted where a number belongs; `seed: abc`,
`mtp: maybe` are refused), ranges are checked, and a mindformers-style YAML is refused with a table of the
equivalent keys. `ascend-v4 train --print-config` prints `default_yaml()`: the full default YAML with the comments
below, which is also the README's key table.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Dict, List, Optional

FREEZABLE = ("embed", "head", "router")
PRECISIONS = (None, "fp32", "bf16", "bf16-emulated")
PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


class TrainConfigError(ValueError):
    pass


def _doc(text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class ParallelConfig:
    dp: int = _doc("data-parallel replicas; each trains batch_size sequences (world = dp·tp·pp msrun workers)", 1)
    tp: int = _doc("tensor parallel: attention heads and expert FFN inner dims split over tp ranks", 1)
    ep: int = _doc("expert parallel (divides dp): routed experts split over ep data-parallel ranks", 1)
    pp: int = _doc("pipeline stages: the layers split into pp contiguous stages", 1)
    micro_batches: int = _doc("micro-batches per step (pipeline schedule; with pp = 1 gradient accumulation)", 1)
    optimizer_shard: bool = _doc("ZeRO-1: each dp rank keeps the optimiser state of, and updates, only its share "
                                 "of the parameters (whole tensors, balanced by size); the new weights are "
                                 "all-gathered, checkpoints stay unsharded", False)


@dataclass
class DataConfig:
    files: List[str] = _doc("text/jsonl files or directories; empty = the embedded demo corpus", factory=list)
    tokenizer: Optional[str] = _doc("tokenizer.json / sentencepiece model / directory; null = train a demo one",
                                    None)
    eval_fraction: float = _doc("documents held out of `files` for eval (0 = none; ignored with eval_files)", 0.05)
    eval_files: List[str] = _doc("held-out files evaluated instead of an eval_fraction split of `files`",
                                 factory=list)


@dataclass
class TrainConfig:
    model: Optional[str] = _doc("preset (tiny, small, v4-flash, v4-pro) or config.json path; null = init_from's "
                                "config, else tiny", None)
    init_from: Optional[str] = _doc("start from these weights (optimiser fresh): a release directory (FP8/MXFP4 "
                                    "or BF16), a converted directory, or a `train --out` run / ckpt-* directory",
                                    None)
    freeze: List[str] = _doc("parameters left untouched: any of embed, head, router (router also stops the "
                             "aux-loss-free bias)", factory=list)
    seed: int = _doc("random init and data order", 0)
    seq_len: int = _doc("tokens per training row", 64)
    batch_size: int = _doc("sequences per data-parallel rank per step", 4)
    steps: int = _doc("total optimiser steps (the LR schedule spans them)", 200)
    lr: float = _doc("peak learning rate: linear warm-up, then cosine to min_lr from decay_start", 1.0e-2)
    warmup_steps: int = _doc("linear warm-up steps", 20)
    min_lr: Optional[float] = _doc("final learning rate; null = lr/10", None)
    decay_start: Optional[int] = _doc("step where the cosine decay starts; null = right after warm-up", None)
    max_grad_norm: float = _doc("global gradient-norm clip", 1.0)
    adam_eps: float = _doc("AdamW epsilon (DeepSeek uses 1e-20; larger smooths near-zero gradients)", 1.0e-20)
    mtp: bool = _doc("train the MTP block: loss weight 0.3, 0.1 once LR decay starts", True)
    balance_alpha: float = _doc("sequence-wise balance loss weight", 1.0e-4)
    bias_update_speed: float = _doc("aux-loss-free router-bias update per step", 1.0e-3)
    moe_capacity_factor: Optional[float] = _doc("null = dropless MoE; e.g. 1.25 = capacity ceil(1.25·T·k/E), "
                                                "overflow dropped", None)
    eval_every: int = _doc("evaluate every N steps (and at the last step)", 50)
    eval_batches: int = _doc("batches per evaluation", 2)
    save_every: int = _doc("checkpoint every N steps (and at the last step)", 100)
    keep_last_n: Optional[int] = _doc("keep only the newest N checkpoints; null = keep all", None)
    tensorboard: bool = _doc("write TensorBoard event files to OUT/tensorboard", True)
    recompute: bool = _doc("activation recompute per block (MindSpore Cell.recompute on every main-model block): "
                           "the backward recomputes a block's activations instead of keeping them", False)
    precision: Optional[str] = _doc("null = the device's: bf16 on Ascend (bf16 weights and activations, fp32 "
                                    "master weights and islands), fp32 on CPU; fp32; bf16-emulated = CPU, fp32 "
                                    "arithmetic rounded to bf16 where Ascend stores bf16", None)
    data: DataConfig = _doc("training and evaluation data", factory=DataConfig)
    parallel: ParallelConfig = _doc("parallel layout (launch with msrun when dp·tp·pp > 1)", factory=ParallelConfig)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, raw: Dict, source: str = "config") -> "TrainConfig":
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise TrainConfigError(f"{source}: the top level must be a mapping of keys, got {type(raw).__name__}")
        _refuse_mindformers(raw, source)
        return _build(cls, raw, source, "").validate(source)

    @classmethod
    def from_yaml(cls, path: str) -> "TrainConfig":
        import yaml
        path = resolve_preset(path)
        try:
            with open(path) as fh:
                raw = yaml.safe_load(fh)
        except FileNotFoundError:
            raise TrainConfigError(f"train config {path} does not exist (shipped presets: "
                                   f"{', '.join(shipped_presets())})") from None
        except IsADirectoryError:
            raise TrainConfigError(f"train config {path} is a directory; pass a YAML file") from None
        except UnicodeDecodeError:
            raise TrainConfigError(f"{path} is not a text (UTF-8) YAML file") from None
        except yaml.YAMLError as e:
            raise TrainConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
        return cls.from_dict(raw, path)

    def validate(self, source: str = "config") -> "TrainConfig":
        def need(ok, msg):
            if not ok:
                raise TrainConfigError(f"{source}: {msg}")
        for k in ("seq_len", "batch_size", "steps", "eval_batches", "save_every", "eval_every"):
            v = getattr(self, k)
            need(isinstance(v, int) and v >= 1, f"{k} must be a positive integer, got {v!r}")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.warmup_steps <= self.steps, f"warmup_steps ({self.warmup_steps}) must lie in [0, steps]")
        need(self.min_lr is None or 0 <= self.min_lr <= self.lr, f"min_lr must lie in [0, lr], got {self.min_lr}")
        need(self.decay_start is None or self.warmup_steps <= self.decay_start <= self.steps,
             f"decay_start must be null or lie in [warmup_steps, steps] = [{self.warmup_steps}, {self.steps}], "
             f"got {self.decay_start}")
        need(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        need(self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps}")
        need(self.balance_alpha >= 0, f"balance_alpha must be >= 0, got {self.balance_alpha}")
        need(self.bias_update_speed >= 0, f"bias_update_speed must be >= 0, got {self.bias_update_speed}")
        need(self.moe_capacity_factor is None or self.moe_capacity_factor > 0,
             f"moe_capacity_factor must be null (dropless) or > 0, got {self.moe_capacity_factor!r}")
        need(self.keep_last_n is None or self.keep_last_n >= 1, f"keep_last_n must be null or >= 1, got "
                                                                 f"{self.keep_last_n}")
        need(self.precision in PRECISIONS, f"precision must be one of {', '.join(map(str, PRECISIONS))}, got "
                                           f"{self.precision!r}")
        bad = [f for f in self.freeze if f not in FREEZABLE]
        need(not bad, f"freeze: unknown part(s) {bad}; valid: {', '.join(FREEZABLE)}")
        need(0 <= self.data.eval_fraction < 1, f"data.eval_fraction must lie in [0, 1), got {self.data.eval_fraction}")
        p = self.parallel
        for k in ("dp", "tp", "ep", "pp", "micro_batches"):
            need(getattr(p, k) >= 1, f"parallel.{k} must be a positive integer, got {getattr(p, k)}")
        return self

    def model_spec(self) -> str:
        """What load_config / the init_from source should build: the model key, else init_from's config, else tiny."""
        return self.model or "tiny"

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------ typed loading
def _hints(cls) -> Dict[str, object]:
    return typing.get_type_hints(cls)


def _fields(cls) -> List[str]:
    return [f.name for f in dataclasses.fields(cls)]


_SECTIONS = {"data": DataConfig, "parallel": ParallelConfig}


def _where(key: str, prefix: str) -> Optional[str]:
    """The section a misplaced key belongs to ('' = top level), else None."""
    if prefix and key in _fields(TrainConfig):
        return ""
    for sec, sc in _SECTIONS.items():
        if sec != prefix.rstrip(".") and key in _fields(sc):
            return sec
    return None


def _build(cls, raw: Dict, source: str, prefix: str):
    valid = _fields(cls)
    for key in raw:
        if key in valid:
            continue
        name = f"{prefix}{key}"
        home = _where(str(key), prefix)
        level = f"under {prefix.rstrip('.')}" if prefix else "at the top level"
        if home is not None:
            to = f"under {home}" if home else "at the top level"
            raise TrainConfigError(f"{source}: '{name}' is misplaced: it belongs {to}, not {level}")
        near = difflib.get_close_matches(str(key), valid, n=1)
        hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
        raise TrainConfigError(f"{source}: unknown key '{name}'{hint}; valid keys {level}: {', '.join(valid)}")
    hints = _hints(cls)
    kw = {}
    for key, value in raw.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise TrainConfigError(f"{source}: '{prefix}{key}' must be a mapping of keys "
                                       f"({', '.join(_fields(tp))}), got {value!r}")
            kw[key] = _build(tp, value, source, f"{prefix}{key}.")
        else:
            kw[key] = coerce(value, tp, f"{source}: {prefix}{key}")
    return cls(**kw)


def coerce(value, tp, what: str):
    """`value` as type `tp` (int, float, bool, str, Optional[...], List[str]) or a TrainConfigError naming `what`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return coerce(value, inner, what)
    if origin in (list, List):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TrainConfigError(f"{what} must be a list of strings, got {value!r}")
        return list(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TrainConfigError(f"{what} must be true or false, got {value!r}")
    if tp is str:
        if isinstance(value, str) and value:
            return value
        raise TrainConfigError(f"{what} must be a non-empty string, got {value!r}")
    if tp in (int, float):
        num = value
        if isinstance(value, str):            # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                num = float(value.strip())
            except ValueError:
                num = None
        if isinstance(num, bool) or not isinstance(num, (int, float)) or not math.isfinite(num):
            kind = "an integer" if tp is int else "a number"
            raise TrainConfigError(f"{what} must be {kind}, got {value!r}")
        if tp is int:
            if float(num) != int(num):
                raise TrainConfigError(f"{what} must be an integer, got {value!r}")
            return int(num)
        return float(num)
    raise TypeError(f"internal: no coercion for {tp}")  # pragma: no cover


# ------------------------------------------------------------------------------------------------ mindformers
# mindformers run_*.yaml keys -> ours; a YAML with any of the distinctive top-level keys is refused with this table.
MINDFORMERS_EQUIVALENTS = (
    ("parallel_config.data_parallel", "parallel.dp"),
    ("parallel_config.model_parallel", "parallel.tp"),
    ("parallel_config.expert_parallel", "parallel.ep"),
    ("parallel_config.pipeline_stage", "parallel.pp"),
    ("parallel_config.micro_batch_num", "parallel.micro_batches"),
    ("parallel.enable_parallel_optimizer", "parallel.optimizer_shard"),
    ("runner_config.batch_size", "batch_size (per data-parallel rank)"),
    ("runner_config.epochs / sink_size", "steps (optimiser steps, not epochs)"),
    ("model.model_config.seq_length", "seq_len"),
    ("model.model_config.*", "model: a preset name or a config.json path"),
    ("lr_schedule.learning_rate", "lr"),
    ("lr_schedule.warmup_steps / warmup_ratio", "warmup_steps"),
    ("lr_schedule.lr_end", "min_lr"),
    ("optimizer.eps", "adam_eps"),
    ("moe_config.capacity_factor", "moe_capacity_factor (null = dropless)"),
    ("moe_config.aux_loss_factor", "balance_alpha"),
    ("load_checkpoint", "init_from"),
    ("output_dir", "the --out option"),
    ("train_dataset.data_loader.dataset_dir", "data.files"),
    ("context.* / use_parallel / run_mode", "not needed: msrun and the launcher set the device and mode"),
)
_MINDFORMERS_KEYS = ("parallel_config", "runner_config", "context", "run_mode", "use_parallel", "trainer",
                     "lr_schedule", "train_dataset", "train_dataset_task", "runner_wrapper", "moe_config",
                     "recompute_config", "load_checkpoint", "callbacks", "output_dir", "optimizer")


def _refuse_mindformers(raw: Dict, source: str) -> None:
    hits = [k for k in _MINDFORMERS_KEYS if k in raw]
    if isinstance(raw.get("model"), dict) and "model_config" in raw["model"]:
        hits.append("model.model_config")
    if not hits:
        return
    width = max(len(a) for a, _ in MINDFORMERS_EQUIVALENTS)
    table = "\n".join(f"  {a:<{width}}  ->  {b}" for a, b in MINDFORMERS_EQUIVALENTS)
    raise TrainConfigError(f"{source} is a mindformers-style YAML ({', '.join(hits)}); ascend-v4 train has its own "
                           f"keys - rewrite it with these equivalents (`ascend-v4 train --print-config` prints "
                           f"every key with its default):\n{table}")


# ------------------------------------------------------------------------------------------------ documentation
def _yaml_value(v) -> str:
    import yaml
    return yaml.safe_dump(v, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def default_yaml() -> str:
    """The full default train YAML, one commented line per key (what --print-config prints)."""
    lines = ["# ascend-v4 train --config run.yaml: every key, its default and meaning (all keys optional)"]

    def emit(cls, obj, indent):
        for f in dataclasses.fields(cls):
            v = getattr(obj, f.name)
            pad = "  " * indent
            if dataclasses.is_dataclass(v):
                lines.append(f"{pad + f.name + ':':<30}# {f.metadata['doc']}")
                emit(type(v), v, indent + 1)
                continue
            left = f"{pad}{f.name}: {_yaml_value(v)}"
            lines.append(f"{left:<30}# {f.metadata['doc']}")
    emit(TrainConfig, TrainConfig(), 0)
    return "\n".join(lines) + "\n"


def key_table() -> List[tuple]:
    """(key, default, meaning) rows for the README."""
    rows = []

    def walk(cls, obj, prefix):
        for f in dataclasses.fields(cls):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(type(v), v, f"{prefix}{f.name}.")
            else:
                rows.append((f"{prefix}{f.name}", _yaml_value(v), f.metadata["doc"]))
    walk(TrainConfig, TrainConfig(), "")
    return rows


def shipped_presets() -> List[str]:
    return sorted(n for n in os.listdir(PRESET_DIR) if n.endswith(".yaml")) if os.path.isdir(PRESET_DIR) else []


def resolve_preset(path: str) -> str:
    """A path that does not exist but names a shipped preset (finetune.yaml) resolves to the packaged file."""
    if not os.path.exists(path) and os.path.basename(path) == path and path in shipped_presets():
        return os.path.join(PRESET_DIR, path)
    return path
