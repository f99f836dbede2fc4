"""`ascend-v4 export-official CKPT OUT [--dtype fp8|bf16]`: trained weights -> an official DeepSeek-V4 release dir.

CKPT is a `ascend-v4 train --out` directory (its `latest` checkpoint is exported) or one `ckpt-XXXXXXXX` directory in
it. OUT receives what the official release ships (docs/formats.md), written by the checkpoint package's release writer
(`ascend_v4.checkpoint.write_official_checkpoint`, the codec path of `make-checkpoint` and the converter):

* `config.json` (HF root flavour), `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`, official
  tensor names, dtypes per the release: `--dtype fp8` (default) = FP8 E4M3 linears with E8M0 128x128 block scales,
  routed experts MXFP4 (int8-packed E2M1 + E8M0 1x32 scales; FP8 if the model config says expert_dtype fp8), BF16
  embedding/head/norms/router/compressors/indexer weights_proj, FP32 mHC/sinks/ape/router bias, I64 tid2eid;
  `--dtype bf16` = every linear in BF16 (an unquantised release, no quantization_config, no .scale tensors).
* the MTP block (`mtp.0.*`) when the run trained it; a run with `mtp: false` has no MTP weights and is exported as a
  model without MTP layers (num_nextn_predict_layers 0 in config.json).
* the run's tokenizer: `tokenizer.json` (+ `tokenizer_config.json`) when it trained with one, or the sentencepiece
  model as `tokenizer.model` (+ a `tokenizer_config.json` naming its special tokens). `load_tokenizer(OUT)` reads it.

The trained model keeps float32 masters; quantising them is lossy (FP8 ~3 mantissa bits per element, MXFP4 ~1), the
command prints the worst relative error per format. Everything is written into a hidden temporary directory next to
OUT and renamed into place when complete: OUT either does not exist or holds the whole export.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Optional, Tuple

import numpy as np

from ascend_v4.atomic import atomic_dir

from .state import STATE_VERSION, TrainStateError

DTYPES = ("fp8", "bf16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


# ------------------------------------------------------------------------------------------------ reading
def resolve_checkpoint(path: str) -> str:
    """The ckpt-* directory named by `path` (a run directory -> its `latest`)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TrainStateError(f"{path} does not exist; pass a `train --out` directory or one of its ckpt-* directories")
    if not os.path.isdir(path):
        raise TrainStateError(f"{path} is a file; pass a `train --out` directory or one of its ckpt-* directories")
    if any(os.path.exists(os.path.join(path, f)) for f in ("trainer_state.json", "model.safetensors")):
        return path
    if os.path.exists(os.path.join(path, "latest")):
        from .state import latest
        return latest(path)
    ckpts = sorted(n for n in os.listdir(path) if n.startswith("ckpt-") and not n.endswith(".tmp"))
    if ckpts:
        raise TrainStateError(f"{path} has no `latest` file (an interrupted save?); pass one of its checkpoints, "
                              f"e.g. {os.path.join(path, ckpts[-1])}")
    raise TrainStateError(f"{path} is neither a training run (no `latest`) nor a checkpoint (no trainer_state.json)")


def read_trained(ckpt_dir: str):
    """(ModelConfig of the exported model, {official name: float32 / int64 array}, trainer_state dict)."""
    from ascend_v4.checkpoint import official_inventory
    from ascend_v4.config import ConfigError, ModelConfig
    for f in ("model.safetensors", "trainer_state.json"):
        if not os.path.isfile(os.path.join(ckpt_dir, f)):
            raise TrainStateError(f"{ckpt_dir} lacks {f}: an incomplete or foreign checkpoint")
    try:
        with open(os.path.join(ckpt_dir, "trainer_state.json")) as fh:
            st = json.load(fh)
    except (OSError, ValueError) as e:
        raise TrainStateError(f"{ckpt_dir}/trainer_state.json is not valid JSON ({e}); the checkpoint is "
                              f"damaged") from None
    if not isinstance(st, dict) or st.get("version") != STATE_VERSION:
        raise TrainStateError(f"{ckpt_dir}: trainer state version {st.get('version') if isinstance(st, dict) else '?'} "
                              f"!= {STATE_VERSION}; not a checkpoint of this trainer")
    try:
        cfg = ModelConfig.from_dict(st["model_config"], name=st["model_config"].get("name", "trained"))
    except (KeyError, TypeError, AttributeError, ConfigError) as e:
        raise TrainStateError(f"{ckpt_dir}/trainer_state.json: model_config is missing or invalid ({e})") from None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    path = os.path.join(ckpt_dir, "model.safetensors")
    try:
        raw = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise TrainStateError(f"{path}: unreadable ({str(e).splitlines()[0]}); the checkpoint is damaged") from None
    if cfg.n_mtp_layers and not any(n.startswith("mtp.") for n in raw):
        # trained with mtp: false -> the exported model has no MTP layers
        cfg = cfg.replace(n_mtp_layers=0, compress_ratios=tuple(cfg.compress_ratios[:cfg.n_layers]))
    inv = official_inventory(cfg)
    missing = sorted(set(inv) - set(raw))
    extra = sorted(set(raw) - set(inv))
    if missing or extra:
        raise TrainStateError(f"{path} does not hold the '{cfg.name}' model of its trainer_state.json (missing "
                              f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {extra[:3]}"
                              f"{'...' if len(extra) > 3 else ''}); the checkpoint is damaged or foreign")
    weights: Dict[str, np.ndarray] = {}
    for name, spec in inv.items():
        a = raw[name]
        if tuple(a.shape) != spec.shape:
            raise TrainStateError(f"{path}: '{name}' has shape {tuple(a.shape)}, the config needs {spec.shape}")
        if spec.fmt == "i64":
            if not np.issubdtype(a.dtype, np.integer):
                raise TrainStateError(f"{path}: '{name}' must be integer, got {a.dtype}")
            weights[name] = a.astype(np.int64)
            continue
        if not np.issubdtype(a.dtype, np.floating):
            raise TrainStateError(f"{path}: '{name}' must be floating point, got {a.dtype}")
        a = a.astype(np.float32)
        bad = int(np.sum(~np.isfinite(a)))
        if bad:
            raise TrainStateError(f"{path}: '{name}' has {bad} NaN/Inf values; export an earlier checkpoint")
        weights[name] = a
    return cfg, weights, st


# ------------------------------------------------------------------------------------------------ tokenizer
def _tokenizer_files(ckpt_dir: str, st: Dict) -> Tuple[Dict[str, str], Optional[str]]:
    """({release file name: source path}, warning or None) for the run's tokenizer."""
    data = (st.get("train_config") or {}).get("data") or {}
    given = data.get("tokenizer")
    run_dir = os.path.dirname(os.path.abspath(ckpt_dir))
    if not given:                           # the default tokenizer Trainer trained into RUN/tokenizer/
        d = os.path.join(run_dir, "tokenizer")
        models = sorted(n for n in os.listdir(d) if n.endswith(".model")) if os.path.isdir(d) else []
        if len(models) == 1:
            return {"tokenizer.model": os.path.join(d, models[0])}, None
        return {}, (f"the run's default tokenizer is not in {d} (found {len(models)} .model files); exported without "
                    f"a tokenizer")
    p = given if os.path.isabs(given) else os.path.abspath(given)
    if not os.path.exists(p) and not os.path.isabs(given):
        p = os.path.join(run_dir, given)
    if os.path.isdir(p):                    # the order load_tokenizer uses: tokenizer.json, tokenizer.model, one .model
        models = sorted(n for n in os.listdir(p) if n.endswith(".model"))
        if os.path.isfile(os.path.join(p, "tokenizer.json")):
            p = os.path.join(p, "tokenizer.json")
        elif "tokenizer.model" in models or len(models) == 1:
            p = os.path.join(p, "tokenizer.model" if "tokenizer.model" in models else models[0])
    if not os.path.isfile(p):
        return {}, f"the run's tokenizer {given} was not found; exported without a tokenizer"
    if p.endswith(".json"):
        out = {"tokenizer.json": p}
        side = os.path.join(os.path.dirname(p), "tokenizer_config.json")
        if os.path.isfile(side):
            out["tokenizer_config.json"] = side
        return out, None
    return {"tokenizer.model": p}, None


def _write_tokenizer(files: Dict[str, str], dst: str, cfg) -> None:
    for name, src in files.items():
        shutil.copyfile(src, os.path.join(dst, name))
    if "tokenizer.model" in files and "tokenizer_config.json" not in files:
        from .tokenizer import SentencePieceTokenizer
        tok = SentencePieceTokenizer(files["tokenizer.model"])
        conf = {"bos_token": tok.id_to_piece(tok.bos_id), "eos_token": tok.id_to_piece(tok.eos_id),
                "model_max_length": cfg.max_position_embeddings}
        if tok.pad_id >= 0:
            conf["pad_token"] = tok.id_to_piece(tok.pad_id)
        with open(os.path.join(dst, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
            json.dump(conf, fh, indent=2, ensure_ascii=False)
            fh.write("\n")


# ------------------------------------------------------------------------------------------------ export
def _errors(cfg, weights, stored) -> Dict[str, float]:
    """Worst relative Frobenius error ||stored - trained|| / ||trained|| per storage format."""
    from ascend_v4.checkpoint import official_inventory
    worst: Dict[str, float] = {}
    for name, spec in official_inventory(cfg).items():
        if spec.fmt in ("f32", "i64"):
            continue
        a = weights[name].astype(np.float64)
        d = np.linalg.norm(stored[name].astype(np.float64) - a) / max(np.linalg.norm(a), 1e-30)
        worst[spec.fmt] = max(worst.get(spec.fmt, 0.0), float(d))
    return worst


def export_official(ckpt: str, out_dir: str, dtype: str = "fp8") -> Dict:
    """Export checkpoint `ckpt` (run dir or ckpt-* dir) to the release format in `out_dir`; returns a summary
    (paths, step, tensor count, bytes, tokenizer files, worst relative quantisation error per format, warning)."""
    from ascend_v4.checkpoint import load_official_weights, write_official_checkpoint
    if dtype not in DTYPES:
        raise TrainStateError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new directory")
    ckpt_dir = resolve_checkpoint(ckpt)
    cfg, weights, st = read_trained(ckpt_dir)
    cfg = cfg.replace(dtype=dtype)
    tok_files, warning = _tokenizer_files(ckpt_dir, st)
    with atomic_dir(out_dir) as stage:               # OUT appears with weights, config and tokenizer, or not at all
        stored = write_official_checkpoint(cfg, weights, stage, overwrite=True)    # stage: empty, ours
        _write_tokenizer(tok_files, stage, cfg)
        load_official_weights(stage, names=[])      # re-read every header: names, dtypes, shapes vs the inventory
    errs = _errors(cfg, weights, stored)
    summary = {"checkpoint": ckpt_dir, "out": out_dir, "dtype": dtype, "step": int(st.get("step", -1)),
               "config": cfg.name, "mtp_layers": cfg.n_mtp_layers, "tensors": len(weights),
               "bytes": sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir)
                            if f.endswith(".safetensors")),
               "tokenizer": sorted(n for n in os.listdir(out_dir) if n in TOKENIZER_FILES),
               "max_rel_error": errs, "warning": warning}
    return summary
