"""Put a {official name: array} dict into a Transformer, checking that names, shapes and dtypes line up."""
from __future__ import annotations

from typing import Dict, Iterable

import numpy as np
import mindspore as ms


class WeightError(ValueError):
    """Weights that do not fit the model built from the config."""


def _summary(names: Iterable[str], n: int = 5) -> str:
    names = sorted(names)
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def load_into(model, weights: Dict[str, np.ndarray], strict: bool = True) -> None:
    """Copy every parameter of `model` from `weights` (float arrays; tid2eid integer).

    strict: every model parameter must be given and every given tensor must be used (MTP weights may be
    absent when the model was built with with_mtp=False, and are then ignored).
    """
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
