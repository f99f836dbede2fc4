"""Training checkpoints: model + optimiser + schedule + data position + RNG, in safetensors + one small JSON.

Layout of OUT/ckpt-{step:08d}/: model.safetensors (official parameter names, fp32), optimizer.safetensors (the
optimiser's state Parameters by name), trainer_state.json (step, loader state, RNG, run config, versions).
A checkpoint directory is written under a temporary name and renamed when complete; `latest` names the newest.
Resume restores every byte of state, so N steps + save + resume M steps equals N+M uninterrupted steps.

Tensor / expert parallel runs (a ParallelContext whose ranks hold slices): every rank calls `save`, the slices of
the model AND of the optimiser state (Muon momentum, Adam moments: elementwise, sliced like their parameter) are
gathered to the full official tensors, and rank 0 writes the same single-file layout as a one-process run. So a
tp/ep checkpoint loads anywhere (one process, another layout), and `load` slices the full tensors for this rank:
resume is exact for the same layout. ZeRO-1 (parallel.optimizer_shard): each rank holds the optimiser state of the
parameters it owns; `save` gathers it to the unsharded layout first and `load` keeps each rank's own entries, so
a checkpoint resumes under any dp, sharded or not. Pipeline stages (pp > 1) are merged the same way (ParallelContext.
gather_stages), and each stage loads only its own layers' tensors.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import numpy as np

STATE_VERSION = 1


class TrainStateError(ValueError):
    pass


def _params(cell) -> Dict[str, "object"]:
    return {p.name: p for p in cell.get_parameters()}


def _save_tensors(path: str, arrays: Dict[str, np.ndarray]) -> None:
    # the project's one safetensors stack (a full disk is an OSError the CLI reports)
    from ascend_v4.checkpoint.safetensors_io import save_arrays
    save_arrays(path, arrays)


def _load_tensors(path: str, params, what: str, parallel=None, n_experts=0, stage_keep=None,
                  expected_names=None) -> None:
    """Fill `params` from the file, which must hold exactly `expected_names` (default: the params' names; a ZeRO-1
    rank holds a subset of the state it checks for) as full tensors."""
    import mindspore as ms
    from ascend_v4.checkpoint.safetensors_io import load_arrays
    try:
        data = load_arrays(path)
    except (OSError, ValueError) as e:
        raise TrainStateError(f"{path}: unreadable {what} state ({e}); the checkpoint is damaged") from None
    if stage_keep is not None:          # a pipeline stage takes its own layers' tensors
        data = {n: a for n, a in data.items() if stage_keep(n)}
    expected = set(params if expected_names is None else expected_names)
    if parallel is not None and parallel.sharded:
        expected = set(parallel.full_names(expected, n_experts))
    missing = sorted(expected - set(data))
    extra = sorted(set(data) - expected)
    if missing or extra:
        raise TrainStateError(f"{path}: {what} state does not fit this run (missing {missing[:3]}, unexpected "
                              f"{extra[:3]}); resume with the same config or start a new --out directory")
    if parallel is not None and parallel.sharded:
        data = parallel.shard_weights(data, params)
    for n, p in params.items():       # a ZeRO-1 rank takes only its own parameters' state
        a = data[n]
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise TrainStateError(f"{path}: {what} tensor '{n}' has {int((~np.isfinite(a)).sum())} NaN/Inf values; "
                                  f"resume from an earlier checkpoint (point {os.path.dirname(os.path.dirname(path))}"
                                  f"/latest at it) or start a new --out directory")
        if tuple(p.shape) == () and a.size == 1:
            a = a.reshape(())                 # a 0-d scalar (the step counter) may be stored as [1]
        if tuple(a.shape) != tuple(p.shape):
            raise TrainStateError(f"{path}: '{n}' has shape {a.shape}, this run has {tuple(p.shape)}")
        p.set_data(ms.Tensor(a).astype(p.dtype))


def save(out_dir: str, step: int, model, optimizer, trainer_state: Dict, parallel=None, extra=None) -> str:
    """Write OUT/ckpt-{step}. With a ParallelContext every rank must call it (the full tensors are gathered
    collectively); only rank 0 writes. extra(dir): writes more state into the checkpoint before it is swapped in
    (DeepSeek-V4.1's host-resident Engram tables, train/v41.py)."""
    final = os.path.join(out_dir, f"ckpt-{step:08d}")
    model_t = {n: p.asnumpy() for n, p in _params(model).items()}
    opt_t = {n: p.asnumpy() for n, p in _params(optimizer).items() if n not in model_t}
    if getattr(optimizer, "shard", None) is not None:     # ZeRO-1: every owner's state, unsharded layout
        opt_t = optimizer.shard.gather_state(opt_t, optimizer.state_specs)
    if parallel is not None and parallel.sharded:
        model_t, opt_t = parallel.gather_full(model_t), parallel.gather_full(opt_t)
    if parallel is not None and parallel.pp > 1:
        model_t, opt_t = parallel.gather_stages(model_t), parallel.gather_stages(opt_t)
    if parallel is not None and parallel.rank != 0:
        return final
    from ascend_v4.atomic import atomic_dir, write_bytes
    with atomic_dir(final) as tmp:               # a failed save (full disk, kill) leaves no half checkpoint behind
        _save_tensors(os.path.join(tmp, "model.safetensors"), model_t)
        _save_tensors(os.path.join(tmp, "optimizer.safetensors"), opt_t)
        write_bytes(os.path.join(tmp, "trainer_state.json"),
                    json.dumps(dict(trainer_state, step=step, version=STATE_VERSION), indent=1,
                               sort_keys=True).encode("utf-8"))
        if extra is not None:
            extra(tmp)
    write_bytes(os.path.join(out_dir, "latest"), (os.path.basename(final) + "\n").encode("utf-8"))
    return final


def read_trainer_state(ck: str) -> Dict:
    """trainer_state.json of checkpoint `ck`, checked for what a resume reads, or a TrainStateError saying it is
    damaged."""
    p = os.path.join(ck, "trainer_state.json")
    try:
        with open(p) as fh:
            st = json.load(fh)
    except FileNotFoundError:
        raise TrainStateError(f"{ck} lacks trainer_state.json: an incomplete or foreign checkpoint") from None
    except (OSError, ValueError) as e:
        raise TrainStateError(f"{p} is not valid JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(st, dict) or st.get("version") != STATE_VERSION:
        got = st.get("version") if isinstance(st, dict) else type(st).__name__
        raise TrainStateError(f"{p}: state version {got!r} != {STATE_VERSION}; the checkpoint is damaged or not "
                              f"from this trainer")
    problems = []
    if not isinstance(st.get("step"), int) or isinstance(st.get("step"), bool) or st["step"] < 0:
        problems.append(f"step {st.get('step')!r} is not a non-negative integer")
    for k in ("data", "train_config", "model_config"):
        if not isinstance(st.get(k), dict):
            problems.append(f"'{k}' is {'missing' if k not in st else 'not an object'}")
    if problems:
        raise TrainStateError(f"{p}: {'; '.join(problems)}; the checkpoint is damaged - resume from an earlier one "
                              f"or start a new --out directory")
    return st


def checkpoints(out_dir: str) -> List[str]:
    """The complete ckpt-* directories of a run, oldest first."""
    if not os.path.isdir(out_dir):
        return []
    return [os.path.join(out_dir, n) for n in sorted(os.listdir(out_dir))
            if n.startswith("ckpt-") and not n.endswith(".tmp") and os.path.isdir(os.path.join(out_dir, n))]


def latest(out_dir: str) -> Optional[str]:
    p = os.path.join(out_dir, "latest")
    if not os.path.exists(p):
        return None
    with open(p, errors="replace") as fh:
        name = fh.read().strip()
    d = os.path.join(out_dir, name)
    if not os.path.isdir(d) or os.path.sep in name:
        raise TrainStateError(f"{p} names '{name}', which is not a checkpoint here; delete {p} to start fresh")
    return d


def load(ckpt_dir: str, model, optimizer, parallel=None) -> Dict:
    """Restore a checkpoint into model and optimizer; with a ParallelContext each rank takes its slices of the
    full tensors."""
    for f in ("model.safetensors", "optimizer.safetensors", "trainer_state.json"):
        if not os.path.exists(os.path.join(ckpt_dir, f)):
            raise TrainStateError(f"{ckpt_dir} lacks {f}: an incomplete or foreign checkpoint")
    st = read_trainer_state(ckpt_dir)
    n_experts = 0
    if hasattr(model, "cfg"):
        from ascend_v4.parallel import routed_experts_of
        n_experts = routed_experts_of(model.cfg)
    keep = None
    if parallel is not None and parallel.pp > 1:
        from ascend_v4.parallel import stages_holding
        n_layers, pp, me, cfg = model.cfg.n_layers, parallel.pp, parallel.pp_rank, model.cfg
        mtp = model.with_mtp or getattr(model, "with_dspark", False)          # the last stage's embedding copy
        keep = lambda name: me in stages_holding(name, n_layers, pp, mtp, cfg)     # noqa: E731
    _load_tensors(os.path.join(ckpt_dir, "model.safetensors"), _params(model), "model", parallel, n_experts, keep)
    opt_params = {n: p for n, p in _params(optimizer).items() if n not in _params(model)}
    zero = getattr(optimizer, "shard", None) is not None
    _load_tensors(os.path.join(ckpt_dir, "optimizer.safetensors"), opt_params, "optimizer", parallel, n_experts,
                  keep, expected_names=list(optimizer.state_specs) if zero else None)
    return st
