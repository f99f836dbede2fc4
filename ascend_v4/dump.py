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


def _per_position_rel(a: np.ndarray, b: np.ndarray, pos_dims: int = 2) -> np.ndarray:
    """Relative L2 error of each position's vector (the first `pos_dims` dims index positions)."""
    a = a.reshape(int(np.prod(a.shape[:pos_dims])), -1).astype(np.float64)
    b = b.reshape(a.shape).astype(np.float64)
    den = np.linalg.norm(b, axis=1)
    return np.linalg.norm(a - b, axis=1) / np.maximum(den, 1e-30)


def compare_arrays(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> List[Dict]:
    """One row per common key: max abs, per-position median/p90 relative L2, cosine, top-1 agreement."""
    rows = []
    for k in sorted(set(a) & set(b), key=_key_order):
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        if x.shape != y.shape:
            rows.append({"key": k, "error": f"shape {x.shape} vs {y.shape}"})
            continue
        rel = _per_position_rel(x, y)
        den = np.linalg.norm(x) * np.linalg.norm(y)
        row = {"key": k, "shape": list(x.shape), "max_abs": float(np.max(np.abs(x - y))),
               "median_rel": float(np.median(rel)), "p90_rel": float(np.percentile(rel, 90)),
               "cosine": float(np.sum(x * y) / den) if den > 0 else float(np.array_equal(x, y))}
        if k.endswith("logits"):
            row["top1_agree"] = float(np.mean(x.argmax(-1) == y.argmax(-1)))
        rows.append(row)
    return rows


def _key_order(k: str):
    if k == "embed":
        return (0, 0)
    if k.startswith("hidden_block"):
        return (1, int(k[len("hidden_block"):]))
    return (2, k)


def format_compare(rows: List[Dict], only_a: List[str], only_b: List[str]) -> str:
    head = f"{'key':<18}{'max_abs':>11}{'median_rel':>12}{'p90_rel':>11}{'cosine':>12}{'top1':>8}"
    out = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            out.append(f"{r['key']:<18}  {r['error']}")
            continue
        top1 = f"{r['top1_agree']:.4f}" if "top1_agree" in r else ""
        out.append(f"{r['key']:<18}{r['max_abs']:>11.3e}{r['median_rel']:>12.3e}{r['p90_rel']:>11.3e}"
                   f"{r['cosine']:>12.8f}{top1:>8}")
    if only_a:
        out.append(f"only in A: {', '.join(only_a)}")
    if only_b:
        out.append(f"only in B: {', '.join(only_b)}")
    return "\n".join(out)


def load_dump(path: str) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DumpError(f"dump {path} does not exist") from None
    except Exception as e:
        raise DumpError(f"{path} is not a readable .npz dump ({type(e).__name__}: {e}); rerun `ascend-v4 dump`") from None


def compare_files(path_a: str, path_b: str) -> Dict:
    a, b = load_dump(path_a), load_dump(path_b)
    rows = compare_arrays(a, b)
    if not rows:
        raise DumpError(f"{path_a} and {path_b} have no key in common; both should come from `ascend-v4 dump`")
    return {"a": path_a, "b": path_b, "rows": rows,
            "only_a": sorted(set(a) - set(b)), "only_b": sorted(set(b) - set(a))}


def json_dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)


# ------------------------------------------------------------------------------ --quant-emulation --------
def dynamic_int8_linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """What a W8A8 / W4A8 matmul computes on the NPU: DynamicQuant of x per token (int8), the integer GEMM
    against the int weight (exact here: float64 sums of int8 x int products scaled by the weight's
    scales, i.e. x_q @ (q * s_w)^T), times the per-token scale, output rounded to BF16 (the kernels'
    output dtype)."""
    from .checkpoint.formats import bf16_round
    from .convert.quantize import dynamic_quant_int8
    q, s = dynamic_quant_int8(x)
    y = (q @ np.asarray(w, np.float64).T) * s
    return bf16_round(y.astype(np.float32)).astype(np.float64)


def quant_emulation_model(checkpoint: str, cfg, weights):
    """NumpyV4 whose quantised linears (those the converted directory stores as int8 / int4) run with per-token
    dynamic int8 activations; every other op as the float64 golden model."""
    from .convert.loader import is_converted, quantized_linears
    from .numpy_model import NumpyV4
    if not is_converted(checkpoint):
        raise DumpError(f"--quant-emulation needs a w8a8 / w4a8 directory from `ascend-v4 convert`; {checkpoint} "
                        f"is a release directory (its FP8 numerics: --mode official)")
    quantized = quantized_linears(checkpoint)
    if not quantized:
        raise DumpError(f"{checkpoint} stores no int8 / int4 weights (a bf16 conversion); --quant-emulation applies "
                        f"to w8a8 / w4a8 directories")

    class _QuantEmulation(NumpyV4):
        def _lin(self, x, name):
            if name in quantized:
                return dynamic_int8_linear(x, self.w[name])
            return super()._lin(x, name)

    m = _QuantEmulation(cfg, weights)
    m.quantized = quantized
    return m
