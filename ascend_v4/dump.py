"""Parity tools: dump the named activations of a forward pass, compare two dumps (msprobe-style report)."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, List, Optional

import numpy as np

DUMP_KEYS_DOC = ("embed [B,S,D]; hidden_block{i} [B,S,hc,D] (the streams after block i); logits [B,S,V]; "
                 "mtp_logits [B,S-1,V] with --mtp")


class DumpError(ValueError):
    pass


from .compare import compare_arrays, compare_files, format_compare, load_dump  # noqa: E402,F401  (moved)


def load_tokens(path: str) -> np.ndarray:
    try:
        ids = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DumpError(f"token file {path} does not exist") from None
    except (ValueError, OSError) as e:
        raise DumpError(f"{path} is not a readable .npy array ({e}); save tokens with numpy.save") from None
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise DumpError(f"{path}: tokens must be an integer [batch, seq] array, got {ids.dtype} {ids.shape}")
    if ids.size == 0:
        raise DumpError(f"{path}: the token array is empty")
    return ids.astype(np.int64)


def save_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """Atomic: a killed run never leaves a complete-looking dump."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=d)
    os.close(fd)
    try:
        np.savez(tmp, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def json_dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)
