"""`ascend-v4 compare`: line two dumps up key by key (msprobe-style report) and gate them.

A gate never passes on data it cannot measure: a key present in only one dump, a shape mismatch, or a NaN/Inf
value fails it (exit 1) whatever the threshold, and a per-position median relative error above the threshold
fails it too. Unreadable input (not an .npz, strings, empty arrays) is a usage error (exit 2). See
docs/reliability.md.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np


class CompareError(ValueError):
    """A dump that cannot be compared at all (unreadable, non-numeric, empty)."""


def _per_position_rel(a: np.ndarray, b: np.ndarray, pos_dims: int = 2) -> np.ndarray:
    """Relative L2 error of each position's vector (the first `pos_dims` dims index positions)."""
    a = a.reshape(int(np.prod(a.shape[:pos_dims])), -1).astype(np.float64)
    b = b.reshape(a.shape).astype(np.float64)
    den = np.linalg.norm(b, axis=1)
    return np.linalg.norm(a - b, axis=1) / np.maximum(den, 1e-30)


def _numeric(x, key: str, side: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise CompareError(f"key '{key}' in {side} holds {x.dtype} data, not real numbers; dumps hold float arrays "
                           f"(rerun `ascend-v4 dump`)")
    if x.size == 0:
        raise CompareError(f"key '{key}' in {side} is an empty array {tuple(x.shape)}; nothing to compare")
    return x.astype(np.float64)


def compare_arrays(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> List[Dict]:
    """One row per common key: max abs, per-position median/p90 relative L2, cosine, top-1 agreement, and the
    count of non-finite values on each side. A shape mismatch gives a row with `error`."""
    rows = []
    for k in sorted(set(a) & set(b), key=_key_order):
        x, y = _numeric(a[k], k, "A"), _numeric(b[k], k, "B")
        if x.shape != y.shape:
            rows.append({"key": k, "error": f"shape mismatch: A {list(x.shape)} vs B {list(y.shape)}"})
            continue
        bad_a, bad_b = int(np.size(x) - np.isfinite(x).sum()), int(np.size(y) - np.isfinite(y).sum())
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            rel = _per_position_rel(x, y)
            den = np.linalg.norm(x) * np.linalg.norm(y)
            row = {"key": k, "shape": list(x.shape), "max_abs": float(np.max(np.abs(x - y))),
                   "median_rel": float(np.median(rel)), "p90_rel": float(np.percentile(rel, 90)),
                   "cosine": float(np.sum(x * y) / den) if den > 0 else float(np.array_equal(x, y)),
                   "nonfinite_a": bad_a, "nonfinite_b": bad_b}
            if k.endswith("logits") and x.ndim >= 1:
                row["top1_agree"] = float(np.mean(x.argmax(-1) == y.argmax(-1)))
        rows.append(row)
    return rows


def _key_order(k: str):
    if k == "embed":
        return (0, 0, "")
    if k.startswith("hidden_block") and k[len("hidden_block"):].isdigit():
        return (1, int(k[len("hidden_block"):]), "")
    return (2, 0, k)


def gate(rep: Dict, max_median_rel: Optional[float]) -> List[Dict]:
    """Failures in dump order, each {"key", "reason"}: missing keys, shape mismatches and non-finite values always;
    a median relative error above `max_median_rel` (or NaN) when a threshold is given."""
    if max_median_rel is not None and not (math.isfinite(max_median_rel) and max_median_rel >= 0):
        raise CompareError(f"--max-median-rel must be a finite number >= 0, got {max_median_rel}")
    out = []
    for r in rep["rows"]:
        if "error" in r:
            out.append({"key": r["key"], "reason": r["error"]})
        elif r["nonfinite_a"] or r["nonfinite_b"]:
            out.append({"key": r["key"], "reason": f"non-finite values (A {r['nonfinite_a']}, B {r['nonfinite_b']})"})
        elif max_median_rel is not None and not r["median_rel"] <= max_median_rel:      # NaN fails too
            out.append({"key": r["key"], "reason": f"median rel {r['median_rel']:.3e} > {max_median_rel:g}"})
    out += [{"key": k, "reason": "missing from B"} for k in rep["only_a"]]
    out += [{"key": k, "reason": "missing from A"} for k in rep["only_b"]]
    return sorted(out, key=lambda f: _key_order(f["key"]))      # a missing embed comes before a bad block


def format_compare(rows: List[Dict], only_a: List[str], only_b: List[str]) -> str:
    head = f"{'key':<18}{'max_abs':>11}{'median_rel':>12}{'p90_rel':>11}{'cosine':>12}{'top1':>8}"
    out = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            out.append(f"{r['key']:<18}  {r['error']}")
            continue
        top1 = f"{r['top1_agree']:.4f}" if "top1_agree" in r else ""
        bad = (f"  non-finite: A {r['nonfinite_a']}, B {r['nonfinite_b']}"
               if r.get("nonfinite_a") or r.get("nonfinite_b") else "")
        out.append(f"{r['key']:<18}{r['max_abs']:>11.3e}{r['median_rel']:>12.3e}{r['p90_rel']:>11.3e}"
                   f"{r['cosine']:>12.8f}{top1:>8}{bad}")
    if only_a:
        out.append(f"only in A: {', '.join(only_a)}")
    if only_b:
        out.append(f"only in B: {', '.join(only_b)}")
    return "\n".join(out)


def load_dump(path: str) -> Dict[str, np.ndarray]:
    """{key: array} of an .npz dump; never unpickles (object arrays are refused)."""
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise CompareError(f"{path} is a single .npy array, not an .npz dump of named arrays; rerun `ascend-v4 "
                               f"dump`")
        with z:
            return {k: z[k] for k in z.files}
    except CompareError:
        raise
    except FileNotFoundError:
        raise CompareError(f"dump {path} does not exist") from None
    except IsADirectoryError:
        raise CompareError(f"dump {path} is a directory; pass the .npz file `ascend-v4 dump --out` wrote") from None
    except Exception as e:
        raise CompareError(f"{path} is not a readable .npz dump ({type(e).__name__}: {str(e)[:120]}); "
                           f"rerun `ascend-v4 dump`") from None


def compare_files(path_a: str, path_b: str) -> Dict:
    a, b = load_dump(path_a), load_dump(path_b)
    rows = compare_arrays(a, b)
    if not rows:
        raise CompareError(f"{path_a} and {path_b} have no key in common; both should come from `ascend-v4 dump`")
    return {"a": path_a, "b": path_b, "rows": rows,
            "only_a": sorted(set(a) - set(b), key=_key_order), "only_b": sorted(set(b) - set(a), key=_key_order)}


def json_safe(obj):
    """NaN/Inf -> None so `--json` output is valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj
