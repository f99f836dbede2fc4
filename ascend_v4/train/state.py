"""Training checkpoints: model + optimiser + schedule + data position + RNG, in safetensors + one small JSON.

Layout of OUT/ckpt-{step:08d}/: model.safetensors (official parameter names, fp32), optimizer.safetensors (the
optimiser's state Parameters by name), trainer_state.json (step, loader state, RNG, run config, versions).
A checkpoint directory is written under a temporary name and renamed when complete; `latest` names the newest.
Resume restores every byte of state, so N steps + save + resume M steps equals N+M uninterrupted steps.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Optional

import numpy as np

STATE_VERSION = 1


class TrainStateError(ValueError):
    pass


def _params(cell) -> Dict[str, "object"]:
    return {p.name: p for p in cell.get_parameters()}


def _save_tensors(path: str, params) -> None:
    from safetensors.numpy import save_file
    save_file({n: np.ascontiguousarray(p.asnumpy()) for n, p in sorted(params.items())}, path)


def _load_tensors(path: str, params, what: str) -> None:
    import mindspore as ms
    from safetensors.numpy import load_file
    try:
        data = load_file(path)
    except Exception as e:
        raise TrainStateError(f"{path}: unreadable {what} state ({e}); the checkpoint is damaged") from None
    missing = sorted(set(params) - set(data))
    extra = sorted(set(data) - set(params))
    if missing or extra:
        raise TrainStateError(f"{path}: {what} state does not fit this run (missing {missing[:3]}, unexpected "
                              f"{extra[:3]}); resume with the same config or start a new --out directory")
    for n, p in params.items():
        a = data[n]
        if tuple(p.shape) == () and a.size == 1:
            a = a.reshape(())                 # safetensors stores 0-d scalars (the step counter) as [1]
        if tuple(a.shape) != tuple(p.shape):
            raise TrainStateError(f"{path}: '{n}' has shape {a.shape}, this run has {tuple(p.shape)}")
        p.set_data(ms.Tensor(a).astype(p.dtype))


def save(out_dir: str, step: int, model, optimizer, trainer_state: Dict) -> str:
    final = os.path.join(out_dir, f"ckpt-{step:08d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    _save_tensors(os.path.join(tmp, "model.safetensors"), _params(model))
    opt_params = {n: p for n, p in _params(optimizer).items() if n not in _params(model)}
    _save_tensors(os.path.join(tmp, "optimizer.safetensors"), opt_params)
    with open(os.path.join(tmp, "trainer_state.json"), "w") as fh:
        json.dump(dict(trainer_state, step=step, version=STATE_VERSION), fh, indent=1, sort_keys=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest_tmp = os.path.join(out_dir, "latest.tmp")
    with open(latest_tmp, "w") as fh:
        fh.write(os.path.basename(final) + "\n")
    os.replace(latest_tmp, os.path.join(out_dir, "latest"))
    return final


def latest(out_dir: str) -> Optional[str]:
    p = os.path.join(out_dir, "latest")
    if not os.path.exists(p):
        return None
    name = open(p).read().strip()
    d = os.path.join(out_dir, name)
    if not os.path.isdir(d) or os.path.sep in name:
        raise TrainStateError(f"{p} names '{name}', which is not a checkpoint here; delete {p} to start fresh")
    return d


def load(ckpt_dir: str, model, optimizer) -> Dict:
    for f in ("model.safetensors", "optimizer.safetensors", "trainer_state.json"):
        if not os.path.exists(os.path.join(ckpt_dir, f)):
            raise TrainStateError(f"{ckpt_dir} lacks {f}: an incomplete or foreign checkpoint")
    try:
        with open(os.path.join(ckpt_dir, "trainer_state.json")) as fh:
            st = json.load(fh)
    except json.JSONDecodeError as e:
        raise TrainStateError(f"{ckpt_dir}/trainer_state.json is not valid JSON ({e})") from None
    if st.get("version") != STATE_VERSION:
        raise TrainStateError(f"{ckpt_dir}: state version {st.get('version')} != {STATE_VERSION}")
    _load_tensors(os.path.join(ckpt_dir, "model.safetensors"), _params(model), "model")
    opt_params = {n: p for n, p in _params(optimizer).items() if n not in _params(model)}
    _load_tensors(os.path.join(ckpt_dir, "optimizer.safetensors"), opt_params, "optimizer")
    return st
