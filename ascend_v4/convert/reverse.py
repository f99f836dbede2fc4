"""`convert DST HF_OUT --to-official`: a converted directory back to the release format.

Every release shard is rewritten with its original header bytes (kept in source/source.json), so
names, order, offsets and metadata are identical; config.json, the index and the auxiliary files
are restored verbatim. Tensor data:
* FP8 / MXFP4 weights are re-encoded onto the release's own E8M0 block scales (kept unchanged in
  source/scales-*.safetensors): `quant_fp8_block(w, scale=...)` / `quant_mxfp4(w, scale=...)`.
  From a bf16 conversion w is exactly the release's dequantised value, so every code comes back
  bit for bit - for any source, including blocks whose encoding our own quantisers would not pick
  (FP8/MXFP4 encodings are not unique). From w8a8 / w4a8 the int-rounded values are re-encoded
  (the release's layout, not its bytes).
* the release's E8M0 scale entries are copied from the sidecar;
* BF16 / FP32 / int64 tensors are copied (BF16 ones quantised to int8 in w8a8 are re-rounded).
The output is written and journaled like a conversion (tmp + rename, resumable, K workers).
"""
from __future__ import annotations

import os
import shutil
from typing import Dict, List, Optional, Tuple

import numpy as np

from ascend_v4.checkpoint import formats as F
from ascend_v4.checkpoint.inventory import scale_name
from ascend_v4.checkpoint.safetensors_io import INDEX_NAME

from .errors import ConvertError
from .loader import SOURCE_CONFIG, SOURCE_INDEX, SOURCE_ROOT_CONFIG, ConvertedData, converted_plan
from .manifest import read_manifest
from .plan import QUANTISED_FORMATS, DestEntry, Group, OutFile, Plan
from .run import Summary
from .writer import (STATE_DIR, Journal, free_bytes, fsync_dir, remove_tmp_files, run_jobs, write_bytes_atomic,
                     write_file)

CHUNK_ELEMS = 1 << 18


def _official_files(plan: Plan) -> List[Tuple[OutFile, bytes, list, int]]:
    """One OutFile per release shard, with its verbatim header and entry offsets."""
    src = plan.source
    out = []
    for i, sh in enumerate(src.shards):
        groups = []
        placed = []
        for n in sh.names:
            e = src.entries[n]
            g = Group(n, "official", None, None, [DestEntry(n, e.dtype, e.shape)], e.nbytes)
            groups.append(g)
            placed.append((g.entries[0], g, e.offset))
        out.append((OutFile(sh.file, None, groups), sh.header, placed, sh.size))
    return out


class _ReverseJob:
    def __init__(self, plan: Plan, root: str, out_dir: str, files):
        self.plan, self.root, self.out_dir, self.files = plan, root, out_dir, files
        self._data: Optional[ConvertedData] = None
        inv = plan.source.inventory
        self.scale_of: Dict[str, str] = {scale_name(n): n for n, s in inv.items() if s.fmt in QUANTISED_FORMATS}

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_data"] = None
        return d

    def write(self, i: int, progress) -> Tuple[str, int]:
        if self._data is None:
            self._data = ConvertedData(self.root, self.plan)
        out, header, placed, size = self.files[i]
        return write_file(self.out_dir, i, out, lambda g: self._produce(g, progress), header, placed, size)

    def close(self) -> None:
        if self._data is not None:
            self._data.close()
            self._data = None

    def _sidecar_rows(self, sname: str, a: int, b: int) -> np.ndarray:
        (f, g), = self.plan.groups_of(sname)
        e = g.entries[0]
        return self._data.entry_rows(f, e.name, e.dtype, e.shape, a, b)

    def _produce(self, g: Group, progress):
        name = g.source
        ent = g.entries[0]
        inv = self.plan.source.inventory
        if name in self.scale_of:                                   # release E8M0 scale: unchanged
            arr = self._sidecar_rows(name, 0, ent.shape[0])
            progress(arr.nbytes)
            yield 0, 0, arr
            return
        spec = inv[name]
        rows = spec.shape[0] if spec.shape else 1
        data = self._data
        kind = data.kind(name)
        row_elems = int(np.prod(spec.shape[1:])) if len(spec.shape) > 1 else 1
        step = max(1, CHUNK_ELEMS // max(1, row_elems))
        blk = self.plan.source.fp8_block                            # V4 128, V4.1 32
        if spec.fmt == "fp8":
            step = max(blk, step // blk * blk)
        out_row = ent.nbytes // rows if rows else 0
        for a in range(0, rows, step):
            b = min(rows, a + step)
            if spec.fmt == "fp8":
                s = self._sidecar_rows(scale_name(name), a // blk, -(-b // blk))
                w = data.rows_f32(name, a, b)
                arr, _ = _checked(name, lambda: F.quant_fp8_block(w, blk, scale=np.array(s)))
            elif spec.fmt == "fp8_row":                            # V4.1 Engram rows, 1×32 scales
                s = self._sidecar_rows(scale_name(name), a, b)
                w = data.rows_f32(name, a, b)
                arr, _ = _checked(name, lambda: F.quant_fp8_block(w, (1, 32), scale=np.array(s)))
            elif spec.fmt == "fp4":
                s = self._sidecar_rows(scale_name(name), a, b)
                w = data.rows_f32(name, a, b)
                arr, _ = _checked(name, lambda: F.quant_mxfp4(w, scale=np.array(s)))
            elif spec.fmt == "bf16" and kind in ("int8", "int4", "int8g"):
                arr = F.bf16_encode(data.rows_f32(name, a, b))
            else:
                arr = data.rows(name, a, b)
            progress((b - a) * out_row)
            yield 0, (a * out_row), arr


def _checked(name, fn):
    try:
        return fn()
    except ValueError as e:
        raise ConvertError(f"tensor '{name}': cannot re-encode to the release format ({e})") from None


def to_official(conv_dir: str, out_dir: str, workers: int = 1, progress: Optional[bool] = None, log=None) -> Summary:
    conv_dir, out_dir = os.fspath(conv_dir), os.fspath(out_dir)
    if not os.path.isdir(conv_dir):
        raise ConvertError(f"{conv_dir}: converted checkpoint directory does not exist")
    if read_manifest(conv_dir) is None:
        raise ConvertError(f"{conv_dir}: no manifest.json - not a finished conversion; rerun the convert command first")
    plan = converted_plan(conv_dir)
    if workers < 1:
        raise ConvertError(f"--workers must be >= 1, got {workers}")
    fp = plan.fingerprint + "-to-official"
    state = os.path.join(out_dir, STATE_DIR)
    mode = "fresh"
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ConvertError(f"{out_dir}: exists and is not a directory")
        if os.path.isdir(state):
            try:
                with open(os.path.join(state, "plan.id")) as f:
                    ok = f.read().strip() == fp
            except OSError:
                ok = False
            if not ok:
                raise ConvertError(f"{out_dir}: holds an unfinished export of another checkpoint; choose a new directory")
            mode = "resume"
        elif os.listdir(out_dir):
            raise ConvertError(f"{out_dir}: exists and is not empty; choose a new directory for the release-format copy")
    files = _official_files(plan)
    dirs = sorted({os.path.dirname(f[0].path) for f in files} | {""})
    journal = Journal(state)
    done = journal.resume(out_dir, dirs) if mode == "resume" else {}
    todo = [i for i, f in enumerate(files) if f[0].path not in done]
    need = sum(files[i][3] for i in todo) + (16 << 20)
    free = free_bytes(out_dir)
    if need > free:
        raise ConvertError(f"not enough disk space for {out_dir}: needs {need / 1e9:.2f} GB, {free / 1e9:.2f} GB free")
    os.makedirs(state, exist_ok=True)
    if mode == "fresh":
        write_bytes_atomic(os.path.join(state, "plan.id"), (fp + "\n").encode())
    if log:
        log(f"{'resuming' if mode == 'resume' else 'writing'} release format {conv_dir} -> {out_dir}: "
            f"{len(files)} shards, {sum(f[3] for f in files) / 1e9:.2f} GB")
    job = _ReverseJob(plan, conv_dir, out_dir, files)

    def on_done(i, res):
        journal.add(files[i][0].path, *res)
        done[files[i][0].path] = res

    order = sorted(todo, key=lambda i: (-files[i][3], i))
    try:
        run_jobs(job, order, {i: files[i][3] for i in order}, workers, on_done, desc="to-official", progress=progress,
                 cleanup=lambda: remove_tmp_files(out_dir, dirs))
    finally:
        job.close()
    with open(os.path.join(conv_dir, SOURCE_CONFIG), "rb") as f:
        cfg_bytes = f.read()
    if os.path.exists(os.path.join(conv_dir, SOURCE_ROOT_CONFIG)):   # V4.1: nested root + flat inference config
        with open(os.path.join(conv_dir, SOURCE_ROOT_CONFIG), "rb") as f:
            write_bytes_atomic(os.path.join(out_dir, "config.json"), f.read())
        os.makedirs(os.path.join(out_dir, "inference"), exist_ok=True)
        write_bytes_atomic(os.path.join(out_dir, "inference", "config.json"), cfg_bytes)
    else:
        write_bytes_atomic(os.path.join(out_dir, "config.json"), cfg_bytes)
    if os.path.exists(os.path.join(conv_dir, SOURCE_INDEX)):
        with open(os.path.join(conv_dir, SOURCE_INDEX), "rb") as f:
            write_bytes_atomic(os.path.join(out_dir, INDEX_NAME), f.read())
    import json
    with open(os.path.join(conv_dir, "source", "source.json"), "r", encoding="utf-8") as f:
        rec = json.load(f)
    for aux in rec.get("aux_files", []):
        with open(os.path.join(conv_dir, aux["stored"]), "rb") as f:
            write_bytes_atomic(os.path.join(out_dir, aux["name"]), f.read())
    shutil.rmtree(state, ignore_errors=True)
    fsync_dir(out_dir)
    return Summary(out_dir, len(todo), len(files) - len(todo), plan.total_size(), sum(f[3] for f in files))
