"""Export the compiled forward as MINDIR (what MindSpore Lite / Ascend serving loads) or ONNX.

Shapes are static: one exported graph per (batch, length) bucket, logits [B, S, V] out. ONNX export needs a
converter for every primitive in the graph; MindSpore 2.10 has none for Rsqrt (RMSNorm), CumSum (MoE dispatch) and a
few others, so ONNX fails with the name of the missing converter — MINDIR is the supported path.
"""
from __future__ import annotations

import os
from typing import Dict

import numpy as np


class ExportError(ValueError):
    pass


def export(cfg, weights: Dict[str, np.ndarray], batch: int, seq: int, out_path: str, fmt: str = "MINDIR") -> str:
    import mindspore as ms
    from ascend_v4.model import Transformer
    from ascend_v4.weights import load_into

    fmt = fmt.upper()
    if fmt not in ("MINDIR", "ONNX"):
        raise ExportError(f"format must be MINDIR or ONNX, got {fmt}")
    if batch < 1 or seq < 1:
        raise ExportError("batch and seq must be >= 1")
    model = Transformer(cfg, max_seq_len=seq, with_mtp=False)
    model.set_train(False)
    load_into(model, weights)
    stem, ext = os.path.splitext(out_path)
    want = ".mindir" if fmt == "MINDIR" else ".onnx"
    if ext.lower() != want:
        raise ExportError(f"output for {fmt} must end in {want}, got {out_path}")
    tmp_stem = stem + ".partial"
    ids = ms.Tensor(np.zeros((batch, seq), np.int32))
    try:
        ms.export(model, ids, file_name=tmp_stem, file_format=fmt)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        for f in (tmp_stem + want,):
            if os.path.exists(f):
                os.remove(f)
        raise ExportError(f"{fmt} export failed: {str(e).strip().splitlines()[0]}") from None
    os.replace(tmp_stem + want, out_path)
    return out_path


def run_mindir(path: str, ids: np.ndarray) -> np.ndarray:
    """Load an exported MINDIR and run it (the round-trip check)."""
    import mindspore as ms
    from mindspore import nn
    net = nn.GraphCell(ms.load(path))
    return net(ms.Tensor(ids.astype(np.int32))).asnumpy()
