"""Weights for every command: `load_checkpoint` reads any checkpoint directory into {official name: array};
`load_into` puts such a dict into a Transformer, checking that names, shapes and dtypes line up."""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, Optional, Tuple

import numpy as np


class WeightError(ValueError):
    """Weights that do not fit the model built from the config."""


def _summary(names: Iterable[str], n: int = 5) -> str:
    names = sorted(names)
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def checkpoint_kind(path: str) -> str:
    """release | converted | training-run | training-checkpoint, or a WeightError naming what is missing."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    cfg = os.path.join(path, "config.json")
    if os.path.isfile(cfg):
        try:
            with open(cfg, "r", encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, ValueError):
            return "release"                       # load_config reports the broken file with its own message
        return "converted" if isinstance(raw, dict) and isinstance(raw.get("conversion"), dict) else "release"
    names = os.listdir(path)
    if os.path.basename(os.path.normpath(path)).startswith("ckpt-") and "model.safetensors" in names:
        return "training-checkpoint"
    if any(n.startswith("ckpt-") for n in names) or "metrics.jsonl" in names:
        return "training-run"
    raise WeightError(f"{path} has no config.json: pass a release directory, an `ascend-v4 convert` output or "
                      f"a `train --out` run directory")


def _refuse_training(path: str, kind: str) -> None:
    if kind.startswith("training"):
        raise WeightError(f"{path} is a training {'run' if kind == 'training-run' else 'checkpoint'} (optimizer "
                          f"state, fp32 master weights), not a model directory; export it first: "
                          f"`ascend-v4 export-official {path} OUT_DIR [--dtype bf16]`, then pass OUT_DIR")


def checkpoint_config(path: str, versions: Optional[Tuple[str, ...]] = None) -> "ModelConfig":  # noqa: F821
    """The model config of any directory load_checkpoint reads, without reading weights. versions: the model
    kinds the caller runs (default config.RUNNABLE; MODEL_VERSIONS to read DeepSeek-V4.1 too)."""
    kind = checkpoint_kind(path)
    _refuse_training(path, kind)
    from .config import RUNNABLE, ConfigError, load_config
    versions = versions or RUNNABLE
    if kind == "converted":
        from .convert import converted_plan
        cfg = converted_plan(path).source.cfg
        if cfg.version not in versions:
            raise ConfigError(f"{path} is a converted {cfg.version} checkpoint, which this command does not run "
                              f"(it runs {', '.join(versions)})")
        return cfg
    return load_config(path, versions=versions)


def load_checkpoint(path: str, names: Optional[Iterable[str]] = None, versions: Optional[Tuple[str, ...]] = None
                    ) -> Tuple["ModelConfig", Dict[str, np.ndarray]]:  # noqa: F821
    """The one loader behind dump, generate, export (and train's init_from): (ModelConfig, {official name:
    float32 array; tid2eid int64}) from

    * a release directory (FP8 / MXFP4 / BF16 / FP32, dequantised exactly),
    * any `ascend-v4 convert` output: bf16 / w8a8 / w4a8, serving or ranks layout, any tp/ep (rank shards
      are gathered on read; int weights come back as q * scale),
    * a training run (`train --out`, or one of its ckpt-* directories) is refused with the command that
      turns it into a release directory (`ascend-v4 export-official RUN OUT`).

    A DeepSeek-V4.1 release directory (32×32 FP8, MXFP4 experts, FP8 Engram tables) is read when `versions`
    includes "v4.1" (the paths that run V4.1 pass config.MODEL_VERSIONS). names: only these tensors (all when None)."""
    kind = checkpoint_kind(path)
    _refuse_training(path, kind)
    if names is None:                    # every weight as float32: refuse up front what cannot fit
        from .info import check_fits_in_memory
        check_fits_in_memory(checkpoint_config(path, versions), f"loading {path} (float32 weights)", 4.0,
                             f"`ascend-v4 info {path}` and `ascend-v4 verify {path}` inspect it without loading; "
                             f"running it needs a host with that much memory")
    if kind == "converted":
        from .convert import load_converted
        return load_converted(path, names)
    from .checkpoint import load_official_weights
    cfg = checkpoint_config(path, versions)
    return cfg, load_official_weights(path, cfg, names=names)


def load_into(model, weights: Dict[str, np.ndarray], strict: bool = True) -> None:
    """Copy every parameter of `model` from `weights` (float arrays; tid2eid integer).

    strict: every model parameter must be given and every given tensor must be used (MTP weights may be
    absent when the model was built with with_mtp=False, and are then ignored).
    """
    import mindspore as ms
    params = {p.name: p for p in model.get_parameters()}
    missing = [n for n in params if n not in weights]
    extra = [n for n in weights if n not in params and not (n.startswith("mtp.") and not model.with_mtp)]
    if strict and (missing or extra):
        parts = []
        if missing:
            parts.append(f"{len(missing)} model parameters missing from the checkpoint: {_summary(missing)}")
        if extra:
            parts.append(f"{len(extra)} checkpoint tensors the model does not have: {_summary(extra)}")
        raise WeightError("; ".join(parts) + " — the checkpoint was written for a different config")
    for name, p in params.items():
        if name not in weights:
            continue
        arr = np.asarray(weights[name])
        if tuple(arr.shape) != tuple(p.shape):
            raise WeightError(f"tensor '{name}' has shape {tuple(arr.shape)}, the model expects {tuple(p.shape)}")
        if p.dtype in (ms.int32, ms.int64):
            if not np.issubdtype(arr.dtype, np.integer):
                raise WeightError(f"tensor '{name}' must be integer, got {arr.dtype}")
            arr = arr.astype(np.int32)       # checkpoints store tid2eid as int64; the op takes int32
        else:
            if not np.issubdtype(arr.dtype, np.floating):
                raise WeightError(f"tensor '{name}' must be floating point, got {arr.dtype}")
            if not np.all(np.isfinite(arr)):
                raise WeightError(f"tensor '{name}' has {int(np.sum(~np.isfinite(arr)))} NaN/Inf values")
            arr = arr.astype(np.float32)
        p.set_data(ms.Tensor(arr).astype(p.dtype))
