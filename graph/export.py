"""Export the compiled forward as MINDIR (what MindSpore Lite / Ascend serving loads) or ONNX.

Shapes are static: one exported graph per (batch, length) bucket, int64 ids [B, S] in (int32 accepted too),
logits [B, S, V] out. The model is built from the portable MindSpore composite backend of every op by default,
so the file holds only standard primitives (no Custom ops pointing at this machine's kernel libraries);
`backends="auto"` exports whatever the registry picks here (e.g. the CPU C++ kernels, not portable).
ONNX: MindSpore 2.10's ONNX exporter has no converter for Rsqrt (RMSNorm; the first primitive of the forward
it stops at), so the CLI does not offer ONNX; `export(..., fmt="ONNX")` tries and names the missing converter.
"""
from __future__ import annotations

import contextlib
import os
from typing import Dict

import numpy as np


class ExportError(ValueError):
    pass


@contextlib.contextmanager
def _pinned_backends(backends: str):
    """Pin every op to `backends` (registry env pin) while the model resolves its ops."""
    if backends == "auto":
        yield
        return
    old = os.environ.get("ASCEND_V4_BACKENDS")
    os.environ["ASCEND_V4_BACKENDS"] = f"*={backends}"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ASCEND_V4_BACKENDS", None)
        else:
            os.environ["ASCEND_V4_BACKENDS"] = old


def _build(cfg, weights, seq: int, backends: str):
    from ascend_v4.model import Transformer
    from ascend_v4.weights import load_into
    with _pinned_backends(backends):
        model = Transformer(cfg, max_seq_len=seq, with_mtp=False)
    model.set_train(False)
    load_into(model, weights)
    return model


def export(cfg, weights: Dict[str, np.ndarray], batch: int, seq: int, out_path: str, fmt: str = "MINDIR",
           backends: str = "composite") -> str:
    import mindspore as ms

    fmt = fmt.upper()
    if fmt not in ("MINDIR", "ONNX"):
        raise ExportError(f"format must be MINDIR or ONNX, got {fmt}")
    if batch < 1 or seq < 1:
        raise ExportError("batch and seq must be >= 1")
    stem, ext = os.path.splitext(out_path)
    want = ".mindir" if fmt == "MINDIR" else ".onnx"
    if ext.lower() != want:
        raise ExportError(f"output for {fmt} must end in {want}, got {out_path}")
    model = _build(cfg, weights, seq, backends)
    tmp_stem = stem + ".partial"
    ids = ms.Tensor(np.zeros((batch, seq), np.int64))
    try:
        ms.export(model, ids, file_name=tmp_stem, file_format=fmt)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        _rm(tmp_stem + want)
        raise ExportError(f"{fmt} export failed: {str(e).strip().splitlines()[0]}") from None
    os.replace(tmp_stem + want, out_path)
    return out_path


def _rm(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def run_mindir(path: str, ids: np.ndarray) -> np.ndarray:
    """Load an exported MINDIR and run it (the round-trip check); ids of any integer type."""
    import mindspore as ms
    from mindspore import nn
    net = nn.GraphCell(ms.load(path))
    return net(ms.Tensor(np.asarray(ids).astype(np.int64))).asnumpy()
