"""Reading converted directories back: the plan they were written with, reassembly of TP/EP rank
shards, and dequantisation to float32 for the CPU model / `dump`.

`load_converted(dir)` -> (ModelConfig, {release logical name: float32 array}); `tid2eid` stays int64.
int8 / int4 weights come back as q * scale (float32), BF16 exactly. Names and shapes are those of
`load_official_weights`, so either result feeds the model loader unchanged.
`load_any_checkpoint(path)` picks the right loader by looking at config.json.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from ascend_v4.checkpoint.safetensors_io import INDEX_NAME, SafeTensorFile
from ascend_v4.checkpoint.values import value_problem
from ascend_v4.config import ModelConfig

from . import quantize as Q
from .errors import ConvertError
from .plan import Group, OutFile, Plan, build_plan
from .sharding import Layout
from .source import CONVERSION_KEY, MappedReader, layout_from_record

SOURCE_RECORD = "source/source.json"
SOURCE_CONFIG = "source/config.json"
SOURCE_INDEX = f"source/{INDEX_NAME}"
SOURCE_ROOT_CONFIG = "source/root_config.json"     # DeepSeek-V4.1: the release's nested root config.json (run.py)


def read_conversion(root: str) -> Optional[dict]:
    """The "conversion" block of DIR/config.json, or None for a release-format directory."""
    p = os.path.join(root, "config.json")
    try:
        with open(p, "r", encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"{p}: missing; pass a checkpoint directory") from None
    except (OSError, ValueError) as e:
        raise ConvertError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConvertError(f"{p}: must be a JSON object")
    conv = raw.get(CONVERSION_KEY)
    if conv is not None and not isinstance(conv, dict):
        raise ConvertError(f"{p}: '{CONVERSION_KEY}' must be an object")
    return conv


def converted_plan(root: str) -> Plan:
    """Rebuild the exact plan a converted directory was written with (from config.json + source/)."""
    root = os.fspath(root)
    conv = read_conversion(root)
    if conv is None:
        raise ConvertError(f"{root}: config.json has no '{CONVERSION_KEY}' block; not a converted checkpoint")
    try:
        with open(os.path.join(root, SOURCE_RECORD), "r", encoding="utf-8") as f:
            rec = json.load(f)
        with open(os.path.join(root, SOURCE_CONFIG), "rb") as f:
            cfg_bytes = f.read()
        idx = None
        if rec.get("has_index"):
            with open(os.path.join(root, SOURCE_INDEX), "rb") as f:
                idx = f.read()
    except (OSError, ValueError) as e:
        raise ConvertError(f"{root}: the source record ({SOURCE_RECORD}, {SOURCE_CONFIG}) is missing or damaged "
                           f"({type(e).__name__}: {e}); reconvert") from None
    layout = layout_from_record(rec, cfg_bytes, idx, os.path.join(root, SOURCE_RECORD))
    try:
        plan = build_plan(layout, conv["precision"], Layout(int(conv["tp"]), int(conv["ep"])), int(conv["shard_bytes"]),
                          dir_layout=conv.get("layout", "ranks"), int4_group=conv.get("int4_group") or 0,
                          engram_dtype=conv.get("engram_dtype"))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ConvertError):
            raise
        raise ConvertError(f"{root}/config.json: conversion block is damaged ({type(e).__name__}: {e})") from None
    if conv.get("fingerprint") not in (None, plan.fingerprint):
        raise ConvertError(f"{root}: config.json and {SOURCE_RECORD} describe different conversions; reconvert")
    return plan


class ConvertedData:
    """Reassembled row access to a converted directory's tensors, by release logical name."""

    def __init__(self, root: str, plan: Plan):
        self.root, self.plan = root, plan
        self.reader = MappedReader()
        self._files: Dict[str, SafeTensorFile] = {}

    def close(self) -> None:
        self.reader.close()
        self._files.clear()

    # -- raw entry access ----------------------------------------------------------------------
    def _st(self, f: OutFile) -> SafeTensorFile:
        st = self._files.get(f.path)
        if st is None:
            p = os.path.join(self.root, f.path)
            if not os.path.isfile(p):
                raise ConvertError(f"{p}: missing; the conversion is incomplete - rerun it, or `ascend-v4 verify` it")
            st = SafeTensorFile(p)
            self._files[f.path] = st
        return st

    def entry_rows(self, f: OutFile, name: str, dtype: str, shape, a: int, b: int) -> np.ndarray:
        st = self._st(f)
        if name not in st:
            raise ConvertError(f"{st.path}: tensor '{name}' is missing; `ascend-v4 verify` the directory")
        got = st.meta(name)
        if got != (dtype, tuple(shape)):
            raise ConvertError(f"{st.path}: tensor '{name}' is {got[0]}{list(got[1])}, expected {dtype}{list(shape)}")
        _, _, begin, _ = st._entry(name)
        return self.reader.rows(st.path, st.data_start + begin, dtype, tuple(shape), a, b)

    def _parts(self, name: str) -> List[Tuple[OutFile, Group]]:
        gs = self.plan.groups_of(name)
        if not gs:
            raise ConvertError(f"internal: no planned output for '{name}'")
        f0, g0 = gs[0]
        if g0.split is None:
            return [(f0, g0)]
        parts: Dict[int, Tuple[OutFile, Group]] = {}
        for f, g in gs:
            parts.setdefault(g.split[1], (f, g))
        return [parts[p] for p in range(g0.split[2])]

    def kind(self, name: str) -> str:
        return self.plan.groups_of(name)[0][1].kind

    def rows(self, name: str, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of logical tensor `name`, full width: the stored array for copy / bf16 kinds
        (uint16 bits for BF16), float32 values for int8 / int4."""
        parts = self._parts(name)
        g0 = parts[0][1]
        if g0.split is None:
            return self._group_rows(parts[0], a, b)
        dim = g0.split[0]
        if dim == 1:
            return np.concatenate([self._group_rows(p, a, b) for p in parts], axis=1)
        n_local = g0.entries[0].shape[0]
        chunks = []
        for p, part in enumerate(parts):
            lo, hi = p * n_local, (p + 1) * n_local
            s, e = max(a, lo), min(b, hi)
            if s < e:
                chunks.append(self._group_rows(part, s - lo, e - lo))
        return np.concatenate(chunks, axis=0) if len(chunks) != 1 else chunks[0]

    def _group_rows(self, fg: Tuple[OutFile, Group], a: int, b: int) -> np.ndarray:
        f, g = fg
        w = g.entries[0]
        if g.kind in ("copy", "bf16", "src_scale"):
            return self.entry_rows(f, w.name, w.dtype, w.shape, a, b)
        if g.kind in ("int8s", "int4s", "int8x"):
            return self._serving_rows(f, g, a, b)
        sc = g.entries[1]
        q = self.entry_rows(f, w.name, w.dtype, w.shape, a, b)
        s = self.entry_rows(f, sc.name, sc.dtype, sc.shape, a, b)   # a dim-1 split carries the full row scale
        if g.kind == "int8g":                                        # per group of G values of a row
            return Q.dequant_int8(q.reshape(-1, q.shape[1] // s.shape[1]), s.reshape(-1)).reshape(q.shape)
        return Q.dequant_int4(q, s) if g.kind == "int4" else Q.dequant_int8(q, s)

    def _serving_rows(self, f: OutFile, g: Group, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of a serving-layout linear, dequantised: q * weight_scale * weight_scale_second."""
        ents = {e.name.rsplit(".", 1)[-1]: e for e in g.entries}

        def get(k, r0, r1):
            e = ents[k]
            return self.entry_rows(f, e.name, e.dtype, e.shape, r0, r1)
        if g.kind == "int4s":
            a0, b1 = a - a % 2, b + b % 2
            q = Q.unpack_int4_out(get("weight", a0 // 2, b1 // 2))[a - a0: a - a0 + (b - a)]
        else:
            q = get("weight", a, b)
        s = np.array(get("weight_scale", a, b), np.float32)
        if "weight_scale_second" in ents:
            s = s * get("weight_scale_second", a, b)
        o, i = q.shape
        return (q.astype(np.float32).reshape(o, s.shape[1], i // s.shape[1]) * s[..., None]).reshape(o, i)

    def rows_f32(self, name: str, a: int, b: int) -> np.ndarray:
        arr = self.rows(name, a, b)
        k = self.kind(name)
        if k in ("int8", "int4", "int8s", "int4s", "int8x", "int8g"):
            return arr
        if arr.dtype == np.uint16:                                       # BF16 bits
            return Q.bf16_to_f32(arr)
        return np.array(arr, np.float32)


def load_converted(root: str, names: Optional[Iterable[str]] = None) -> Tuple[ModelConfig, Dict[str, np.ndarray]]:
    """(config, {logical name: float32 array}) from a converted directory (all ranks reassembled)."""
    root = os.fspath(root)
    plan = converted_plan(root)
    cfg = plan.source.cfg                     # the top config.json may be the HF one (serving layout)
    inv = plan.source.inventory
    wanted = list(inv) if names is None else list(names)
    unknown = [n for n in wanted if n not in inv]
    if unknown:
        raise ConvertError(f"{root}: requested tensors not in the inventory: {unknown[:5]}")
    data = ConvertedData(root, plan)
    out: Dict[str, np.ndarray] = {}
    try:
        for n in wanted:
            spec = inv[n]
            rows = spec.shape[0] if spec.shape else 1
            if spec.fmt == "i64":
                out[n] = np.array(data.rows(n, 0, rows), np.int64).reshape(spec.shape)
                bad = value_problem(n, "I64", out[n], cfg.n_routed_experts)
                if bad:
                    raise ConvertError(f"{root}: {bad} - `ascend-v4 verify` it")
                continue
            w = np.array(data.rows_f32(n, 0, rows), np.float32).reshape(spec.shape)
            if not np.isfinite(w).all():
                raise ConvertError(f"{root}: tensor '{n}' has {int((~np.isfinite(w)).sum())} non-finite values; "
                                   f"the directory is damaged - `ascend-v4 verify` it")
            out[n] = w
    finally:
        data.close()
    return cfg, out


def quantized_linears(root: str) -> Dict[str, str]:
    """{logical weight name: "int8" | "int4"} of the linears a converted directory stores as integers (the
    matmuls an NPU runs as W8A8 / W4A8 with per-token dynamic int8 activations)."""
    plan = converted_plan(os.fspath(root))
    out = {}
    for f in plan.rank_files:
        for g in f.groups:
            if g.kind in ("int8", "int8s", "int8x"):
                out[g.source] = "int8"
            elif g.kind in ("int4", "int4s"):
                out[g.source] = "int4"
    return out


def is_converted(path: str) -> bool:
    return read_conversion(path) is not None


def load_any_checkpoint(path: str) -> Tuple[ModelConfig, Dict[str, np.ndarray]]:
    """(config, float32 weights) from any checkpoint directory: ascend_v4.weights.load_checkpoint."""
    from ascend_v4.weights import load_checkpoint
    return load_checkpoint(path)
