"""Official-format checkpoints: random weights, writer and loader (docs/formats.md).

The writer quantises logical float32 weights per the inventory (FP8 128x128 blocks, MXFP4 1x32,
BF16 RNE, F32, I64), shards them HF-style and publishes the directory atomically. The loader
validates a directory against the inventory of its config and dequantises to float32 (i64 stays
int64). Only safetensors and JSON are ever parsed - never pickles.
"""
from __future__ import annotations

import math
import os
import warnings
import zlib
from typing import Dict, Iterable, List, Mapping, Optional

import numpy as np

from ascend_v4.config import MODEL_VERSIONS, ModelConfig
from . import formats as F
from .inventory import FP4_BLOCK, FP8_BLOCK, StoredEntry, TensorSpec, official_inventory, scale_name, stored_entries
from ..atomic import atomic_dir, write_json
from .values import value_problem
from .safetensors_io import (INDEX_NAME, STORAGE_DTYPES, CheckpointError, ShardedCheckpoint,
                             write_safetensors)

DEFAULT_SHARD_BYTES = 5 * 1000 ** 3


# ------------------------------------------------------------------------------ random weights ----
def _rng(seed: int, name: str) -> np.random.Generator:
    # Per-tensor streams: a tensor's values depend only on (seed, name), not on which others exist.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _random_tensor(cfg: ModelConfig, name: str, spec: TensorSpec, seed: int) -> np.ndarray:
    rng = _rng(seed, name)
    shape = spec.shape
    normal = lambda std: (rng.standard_normal(shape, dtype=np.float32) * np.float32(std))
    leaf = name.rsplit(".", 1)[-1]
    if spec.fmt == "i64":                                  # tid2eid: k distinct experts per token
        keys = rng.random((shape[0], cfg.n_routed_experts))
        return np.argsort(keys, axis=1)[:, : shape[1]].astype(np.int64)
    if name == "embed.weight":
        return normal(0.02)
    if name.endswith("norm.weight"):                       # every RMSNorm weight
        return (1.0 + normal(0.02)).astype(np.float32)
    if "hc_" in leaf and leaf.endswith("_fn"):
        return normal(0.1 / math.sqrt(shape[1]))           # mix entries ~ N(0, 0.1^2)
    if "hc_" in leaf and leaf.endswith("_base"):
        return normal(0.1)
    if "hc_" in leaf and leaf.endswith("_scale"):
        return rng.uniform(0.1, 1.0, shape).astype(np.float32)
    if leaf == "attn_sink":
        return normal(1.0)
    if leaf == "ape":
        return normal(0.02)
    if leaf == "bias":
        return normal(0.01)
    if len(shape) == 2:                                     # every linear: variance-preserving
        return normal(1.0 / math.sqrt(shape[1]))
    raise AssertionError(f"no random init rule for {name} {spec}")


def random_weights(cfg: ModelConfig, seed: int = 0, names: Optional[Iterable[str]] = None) -> Dict[str, np.ndarray]:
    """Deterministic random logical weights (float32, tid2eid int64) for every inventory tensor."""
    if getattr(cfg, "version", "v4") == "v4.1":
        from .release_v41 import random_weights_v41
        return random_weights_v41(cfg, seed, names)
    inv = official_inventory(cfg)
    wanted = inv if names is None else {n: inv[n] for n in names}
    return {n: _random_tensor(cfg, n, spec, seed) for n, spec in wanted.items()}


# ------------------------------------------------------------------------------ quantise ----------
def encode_tensor(name: str, spec: TensorSpec, w: np.ndarray, fp8_block: int = FP8_BLOCK) -> Dict[str, tuple]:
    """Logical tensor -> {entry name: (dtype tag, raw storage array)}. fp8_block: V4 128, V4.1 32; `fp8_row`
    (V4.1 Engram tables) is E4M3 with one E8M0 scale per 32 consecutive values of a row."""
    if spec.fmt in ("fp8", "fp8_row"):
        q, s = F.quant_fp8_block(w, fp8_block if spec.fmt == "fp8" else (1, FP4_BLOCK))
        return {name: ("F8_E4M3", q), scale_name(name): ("F8_E8M0", s)}
    if spec.fmt == "fp4":
        q, s = F.quant_mxfp4(w, FP4_BLOCK)
        return {name: ("I8", q), scale_name(name): ("F8_E8M0", s)}
    if spec.fmt == "bf16":
        return {name: ("BF16", F.bf16_encode(w))}
    if spec.fmt == "f32":
        return {name: ("F32", np.asarray(w, np.float32))}
    if spec.fmt == "i64":
        return {name: ("I64", np.asarray(w, np.int64))}
    raise ValueError(f"{name}: unknown format {spec.fmt!r}")


def decode_tensor(name: str, spec: TensorSpec, raw: Mapping[str, np.ndarray], fp8_block: int = FP8_BLOCK
                  ) -> np.ndarray:
    """{entry name: raw storage array} -> logical float32 (int64 for i64); fp8_block as encode_tensor."""
    if spec.fmt in ("fp8", "fp8_row"):
        return F.dequant_fp8_block(raw[name], raw[scale_name(name)],
                                   fp8_block if spec.fmt == "fp8" else (1, FP4_BLOCK))
    if spec.fmt == "fp4":
        return F.dequant_mxfp4(raw[name], raw[scale_name(name)], FP4_BLOCK)
    if spec.fmt == "bf16":
        return F.bf16_decode(raw[name])
    if spec.fmt == "f32":
        return np.array(raw[name], np.float32)
    if spec.fmt == "i64":
        return np.array(raw[name], np.int64)
    raise ValueError(f"{name}: unknown format {spec.fmt!r}")


def release_layout(cfg: ModelConfig):
    """(logical inventory, stored_entries function, FP8 weight block) of `cfg`'s release format: DeepSeek-V4
    (128×128 FP8 blocks) or DeepSeek-V4.1 (32×32, FP8 Engram tables; ascend_v4/checkpoint/release_v41.py)."""
    if getattr(cfg, "version", "v4") == "v4.1":
        from .release_v41 import BLOCK, v41_inventory, v41_stored_entries
        return v41_inventory(cfg), v41_stored_entries, BLOCK
    return official_inventory(cfg), stored_entries, FP8_BLOCK


def _entry_bytes(e: StoredEntry) -> int:
    return math.prod(e.shape) * STORAGE_DTYPES[e.dtype].itemsize


def _check_weights(cfg: ModelConfig, inv: Dict[str, TensorSpec], weights: Mapping[str, np.ndarray]) -> None:
    problems: List[str] = []
    for n in inv:
        if n not in weights:
            problems.append(f"missing {n}")
        elif tuple(np.shape(weights[n])) != inv[n].shape:
            problems.append(f"{n} has shape {tuple(np.shape(weights[n]))}, expected {inv[n].shape}")
    problems += [f"unexpected {n}" for n in weights if n not in inv]
    if problems:
        raise CheckpointError(f"weights do not match the '{cfg.name}' inventory ({len(problems)} problems): "
                              + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))


# ------------------------------------------------------------------------------ writer ------------
def write_official_checkpoint(cfg: ModelConfig, weights: Mapping[str, np.ndarray], out_dir: str,
                              max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                              overwrite: bool = False) -> Dict[str, np.ndarray]:
    """Quantise `weights` per the inventory and write an HF-style official checkpoint to `out_dir`.

    Shards `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json` + `config.json` are
    written into a hidden sibling temp directory which is renamed to `out_dir` only when complete,
    so a crash never leaves a directory that looks like a checkpoint. A weight and its scale always
    share a shard. Returns the dequantised weights as stored (what a loader will see).
    """
    inv, entries_of, fp8_block = release_layout(cfg)
    _check_weights(cfg, inv, weights)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not overwrite:
        raise CheckpointError(f"{out_dir}: already exists; pass overwrite=True or choose a new directory")

    # Plan shards up front (sizes follow from shapes) so every file name knows N.
    shards: List[List[str]] = [[]]
    used = 0
    for name, spec in inv.items():
        size = sum(_entry_bytes(e) for e in entries_of(name, spec))
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    n = len(shards)
    fname = lambda i: f"model-{i + 1:05d}-of-{n:05d}.safetensors"

    stored: Dict[str, np.ndarray] = {}
    weight_map: Dict[str, str] = {}
    total = 0
    with atomic_dir(out_dir) as tmp:          # the directory appears complete or not at all
        for i, names in enumerate(shards):
            entries: Dict[str, tuple] = {}
            for name in names:
                enc = encode_tensor(name, inv[name], weights[name], fp8_block)
                stored[name] = decode_tensor(name, inv[name], {k: v[1] for k, v in enc.items()}, fp8_block)
                entries.update(enc)
            write_safetensors(os.path.join(tmp, fname(i)), entries, metadata={"format": "pt"})
            for k, (_, arr) in entries.items():
                weight_map[k] = fname(i)
                total += arr.nbytes
        write_json(os.path.join(tmp, INDEX_NAME),
                   {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
        if getattr(cfg, "version", "v4") == "v4.1":
            from .release_v41 import v41_root_config
            write_json(os.path.join(tmp, "config.json"), v41_root_config(cfg))
            os.makedirs(os.path.join(tmp, "inference"))
            write_json(os.path.join(tmp, "inference", "config.json"), cfg.to_inference_json())
        else:
            hf = cfg.to_hf_json()
            if cfg.dtype == "bf16":       # to_hf_json always adds it, and its presence means "fp8" on load
                hf.pop("quantization_config", None)
            write_json(os.path.join(tmp, "config.json"), hf)
    return stored


# ------------------------------------------------------------------------------ loader ------------
def is_mtp_shared_copy(name: str) -> bool:
    """A release tensor the official converter drops: an `mtp.*` copy of the embedding (name contains `emb`) or of
    the LM head (ends with `head.weight`); the MTP block uses the main model's."""
    return name.startswith("mtp.") and ("emb" in name or name.endswith("head.weight"))


def load_official_weights(ckpt_dir: str, cfg: Optional[ModelConfig] = None, names: Optional[Iterable[str]] = None,
                          allow_extra: bool = False) -> Dict[str, np.ndarray]:
    """Validate `ckpt_dir` against the inventory of `cfg` (default: its config.json) and dequantise.

    Every entry of the inventory must be present with the right dtype and shape; entries outside it
    are an error unless allow_extra=True. `names` limits which logical tensors are decoded (all are
    still validated). Floating results must be finite.
    """
    if cfg is None:
        cfg = ModelConfig.from_json(os.fspath(ckpt_dir), versions=MODEL_VERSIONS)
    ck = ShardedCheckpoint(ckpt_dir)
    inv, entries_of, fp8_block = release_layout(cfg)
    expected: Dict[str, StoredEntry] = {e.name: e for n, s in inv.items() for e in entries_of(n, s)}
    problems: List[str] = []
    for k, e in expected.items():
        if k not in ck:
            problems.append(f"missing {k}")
            continue
        dt, shape = ck.meta(k)
        if (dt, shape) != (e.dtype, e.shape):
            problems.append(f"{k} is {dt}{list(shape)}, expected {e.dtype}{list(e.shape)}")
    copies = [k for k in ck.keys() if k not in expected and is_mtp_shared_copy(k)]
    if copies:   # the official converter drops these too; the MTP block shares the main embedding and head
        warnings.warn(f"{ck.dir}: skipping {len(copies)} MTP copies of the shared embedding/head "
                      f"({', '.join(copies[:3])}{', ...' if len(copies) > 3 else ''})", stacklevel=2)
    if not allow_extra:
        problems += [f"unexpected {k}" for k in ck.keys() if k not in expected and k not in copies]
    if problems:
        raise CheckpointError(f"{ck.dir}: does not match the '{cfg.name}' inventory ({len(problems)} problems): "
                              + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
                              + " - check that config.json belongs to these weights")
    wanted = list(inv) if names is None else list(names)
    unknown = [n for n in wanted if n not in inv]
    if unknown:
        raise CheckpointError(f"{ck.dir}: requested tensors not in the inventory: {unknown[:5]}")
    out: Dict[str, np.ndarray] = {}
    try:
        for n in wanted:
            spec = inv[n]
            raw = {e.name: ck.raw(e.name) for e in entries_of(n, spec)}
            for e in entries_of(n, spec):
                bad = value_problem(e.name, e.dtype, raw[e.name], cfg.n_routed_experts)
                if bad:
                    raise CheckpointError(f"{ck.file_of(e.name)}: {bad}")
            w = decode_tensor(n, spec, raw, fp8_block)
            if w.dtype.kind == "f" and not np.isfinite(w).all():
                raise CheckpointError(f"{ck.file_of(n)}: tensor '{n}' has {int((~np.isfinite(w)).sum())} "
                                      f"non-finite values after dequantisation; the file is corrupt")
            out[n] = w
    finally:
        ck.close()
    return out
