"""`init_from`: start a run from existing weights (optimiser state fresh).

Sources (`open_source` picks the reader from the directory's contents; a new format plugs in there):
  * a release directory (config.json + model-*.safetensors: FP8 E4M3 / MXFP4 / BF16 / F32 / I64, or an unquantised
    BF16 release) - validated against the inventory of its config.json, each tensor dequantised on its own;
  * a converted directory (`ascend-v4 convert` output: config.json with a "conversion" block, BF16/W8A8/W4A8, any
    tp/ep layout) - each tensor reassembled from its rank shards and dequantised (int8/int4 as q·scale);
  * another run (a `train --out` directory -> its `latest`, or one ckpt-* directory): model.safetensors, float32.

Streaming: each rank walks only its own parameters (a pp stage holds its layers, an ep rank its experts), reads one
full tensor at a time, keeps its tensor-parallel slice (`ParallelContext.shard`) and drops the rest, so the peak
is one full tensor, never the model. The MTP block may be absent from the source (a release exported without MTP):
it then keeps its random init and the run says so.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Set

import numpy as np

from .state import TrainStateError, read_trainer_state

# ModelConfig fields that describe storage, not the architecture: a source may differ in them.
_STORAGE_FIELDS = ("name", "dtype", "expert_dtype", "scale_fmt", "n_mtp_layers")


def _finite(w: np.ndarray, error, what: str, problem: str) -> np.ndarray:
    """w, when its float values are all finite; else error("{what} has {count} {problem}")."""
    if w.dtype.kind == "f" and not np.isfinite(w).all():
        raise error(f"{what} has {int((~np.isfinite(w)).sum())} {problem}")
    return w


class WeightSource:
    """One tensor at a time, by official name, as float32 (int64 for tid2eid)."""
    kind = "?"

    def __init__(self, path: str, cfg):
        self.path, self.cfg = path, cfg

    def names(self) -> Set[str]:
        return set(self.inv)        # the readers that know their inventory (inv: {name: TensorSpec})

    def read(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ReleaseSource(WeightSource):
    kind = "release"

    def __init__(self, path: str):
        from ascend_v4.checkpoint import ShardedCheckpoint, load_official_weights
        from ascend_v4.checkpoint.official import release_layout
        from ascend_v4.config import MODEL_VERSIONS, ModelConfig
        cfg = ModelConfig.from_json(path, versions=MODEL_VERSIONS)
        load_official_weights(path, cfg, names=[])        # validates every entry's dtype and shape, decodes none
        super().__init__(path, cfg)
        # DeepSeek-V4 (128x128 FP8 blocks) or V4.1 (32x32, FP8 Engram rows): release_layout knows both
        self.inv, self.entries_of, self.fp8_block = release_layout(cfg)
        self.ck = ShardedCheckpoint(path)

    def read(self, name: str) -> np.ndarray:
        from ascend_v4.checkpoint import CheckpointError, decode_tensor
        spec = self.inv[name]
        w = decode_tensor(name, spec, {e.name: self.ck.raw(e.name) for e in self.entries_of(name, spec)},
                          self.fp8_block)
        return _finite(w, CheckpointError, f"{self.ck.file_of(name)}: tensor '{name}'",
                       "non-finite values after dequantisation; the file is corrupt")

    def close(self) -> None:
        self.ck.close()


class ConvertedSource(WeightSource):
    """The converted-directory reader (ascend_v4.convert.loader): rank shards reassembled, one tensor at a time."""
    kind = "converted"

    def __init__(self, path: str):
        from ascend_v4.config import ConfigError, ModelConfig
        from ascend_v4.convert.errors import ConvertError
        from ascend_v4.convert.loader import ConvertedData, converted_plan
        try:
            cfg = ModelConfig.from_json(path)
        except ConfigError as e:
            raise ConvertError(str(e)) from None
        super().__init__(path, cfg)
        self.plan = converted_plan(path)
        self.inv = self.plan.source.inventory
        self.data = ConvertedData(path, self.plan)

    def read(self, name: str) -> np.ndarray:
        from ascend_v4.convert.errors import ConvertError
        spec = self.inv[name]
        rows = spec.shape[0] if spec.shape else 1
        if spec.fmt == "i64":
            return np.array(self.data.rows(name, 0, rows), np.int64).reshape(spec.shape)
        w = np.array(self.data.rows_f32(name, 0, rows), np.float32).reshape(spec.shape)
        return _finite(w, ConvertError, f"{self.path}: tensor '{name}'",
                       "non-finite values; the directory is damaged - `ascend-v4 verify` it")

    def close(self) -> None:
        self.data.close()


class RunSource(WeightSource):
    """A training checkpoint's model.safetensors (float32, official names), read tensor by tensor."""
    kind = "run checkpoint"

    def __init__(self, path: str):
        from ascend_v4.config import MODEL_VERSIONS, ConfigError, ModelConfig
        from ascend_v4.checkpoint.safetensors_io import SafeTensorFile
        from .export import resolve_checkpoint
        ck = resolve_checkpoint(path)
        st = read_trainer_state(ck)
        try:
            cfg = ModelConfig.from_dict(st["model_config"], name=st["model_config"].get("name", "trained"),
                                        versions=MODEL_VERSIONS)
        except (KeyError, TypeError, AttributeError, ConfigError) as e:
            raise TrainStateError(f"{ck}/trainer_state.json: model_config is missing or invalid ({e})") from None
        super().__init__(ck, cfg)
        try:
            self.fh = SafeTensorFile(os.path.join(ck, "model.safetensors"))
        except ValueError as e:     # CheckpointError: a damaged or truncated file
            raise TrainStateError(f"{ck}/model.safetensors is unreadable ({e}); the checkpoint is damaged") from None
        self._names = set(self.fh.keys())

    def names(self) -> Set[str]:
        return set(self._names)

    def read(self, name: str) -> np.ndarray:
        return _finite(np.array(self.fh.raw(name)), TrainStateError, f"{self.path}/model.safetensors: '{name}'",
                       "NaN/Inf values; start from an earlier checkpoint")


def open_source(path: str) -> WeightSource:
    """The reader for `path`: a run / ckpt-* directory, a converted directory or a release directory."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise TrainStateError(f"init_from: {path} is not a directory; pass a release directory, a converted "
                              f"directory or a `train --out` run")
    if any(os.path.exists(os.path.join(path, f)) for f in ("latest", "trainer_state.json", "model.safetensors")):
        return RunSource(path)
    if not os.path.exists(os.path.join(path, "config.json")):
        raise TrainStateError(f"init_from: {path} has neither config.json (release / converted) nor latest or "
                              f"trainer_state.json (a training run)")
    from ascend_v4.convert.loader import is_converted
    if is_converted(path):
        return ConvertedSource(path)
    return ReleaseSource(path)


def source_config(path: str):
    """The ModelConfig of an init_from source (what `model: null` trains)."""
    src = open_source(path)
    try:
        return src.cfg
    finally:
        src.close()


def check_architecture(src_cfg, cfg) -> None:
    a = {k: v for k, v in src_cfg.to_dict().items() if k not in _STORAGE_FIELDS}
    b = {k: v for k, v in cfg.to_dict().items() if k not in _STORAGE_FIELDS}
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        shown = ", ".join(f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in diff[:4])
        raise TrainStateError(f"init_from: the source's model differs from the run's ({shown}); set `model:` to "
                              f"null (train the source's config) or to a config of the same shape")


def load_initial_weights(model, cfg, path: str, parallel=None, log: Callable[[str], None] = print,
                         on_read: Optional[Callable[[str], None]] = None) -> Dict:
    """Copy this rank's parameters of `model` from source `path`, one tensor at a time (see the module docstring).
    Returns {"kind", "path", "loaded", "random": [names kept at their random init]}."""
    import mindspore as ms
    src = open_source(path)
    try:
        check_architecture(src.cfg, cfg)
        have = src.names()
        params = list(model.get_parameters())
        missing = [p.name for p in params if p.name not in have]
        not_mtp = [n for n in missing if not n.startswith("mtp.")]
        if not_mtp:
            raise TrainStateError(f"init_from: {src.path} lacks {len(not_mtp)} tensor(s) of this model "
                                  f"({', '.join(not_mtp[:3])}); it was written for a different config")
        loaded = 0
        for p in params:
            if p.name not in have:
                continue
            if on_read is not None:
                on_read(p.name)
            a = src.read(p.name)
            if parallel is not None and parallel.sharded:
                a = parallel.shard(p.name, a)
            if tuple(a.shape) != tuple(p.shape):
                raise TrainStateError(f"init_from: '{p.name}' has shape {tuple(a.shape)} in {src.path}, this run "
                                      f"has {tuple(p.shape)}")
            if np.issubdtype(a.dtype, np.integer):
                a = a.astype(np.int32)
            p.set_data(ms.Tensor(a).astype(p.dtype))
            loaded += 1
        if missing:
            log(f"init_from: {src.path} has no MTP weights; the MTP block ({len(missing)} tensors) starts random")
        return {"kind": src.kind, "path": src.path, "loaded": loaded, "random": missing}
    finally:
        src.close()


def freeze_parameters(model, parts: List[str]) -> List[str]:
    """Mark the parameters of `parts` (embed, head, router) requires_grad=False, so the optimiser leaves them
    alone (param_groups.classify puts them in the frozen group). Returns the frozen names."""
    def hit(name: str) -> bool:
        leaf = name.split(".")
        return (("embed" in parts and name == "embed.weight")
                or ("head" in parts and name == "head.weight")
                or ("router" in parts and len(leaf) >= 3 and leaf[-3:-1] == ["ffn", "gate"]
                    and leaf[-1] in ("weight", "bias")))
    names = []
    for p in model.get_parameters():
        if hit(p.name):
            p.requires_grad = False
            names.append(p.name)
    return names
