"""`convert SRC DST`: release checkpoint -> Ascend layout (bf16 / w8a8 / w4a8, optional TP/EP ranks).

Order of work: validate the source (headers only) -> plan -> check the destination (fresh, resumable
or already complete) and the free disk space -> write the planned files on K workers (journaled) ->
write the small metadata files -> manifest.json last -> drop the `.convert-state` directory.

Converted directory:
    config.json                      ranks layout: our config (inference field names) + "conversion": {...};
                                     serving layout: the release's HF config with the ascend quantization section
    quant_model_description.json     serving layout, w8a8 / w4a8: tensor name -> W8A8_DYNAMIC | W4A8_DYNAMIC | FLOAT
    model.safetensors.index.json     world 1: HF index; world > 1: {"rank_indexes", "weight_map": name -> [files]}
    model-XXXXX-of-YYYYY.safetensors          (world size 1), or
    rankRRR/model-XXXXX-of-YYYYY.safetensors  + rankRRR/model.safetensors.index.json (world size > 1)
    param_name_map.json              release entry -> [{name, dtype, shape, rank, file, slice, role}]
    manifest.json                    sha256 + tensor inventory per file, command, library versions
    source/config.json               the release's config.json, verbatim
    source/model.safetensors.index.json   the release's index, verbatim (if it had one)
    source/source.json               the release's shard names, sizes and headers (verbatim) + aux files
    source/scales-XXXXX-of-YYYYY.safetensors  the release's E8M0 block scales, unchanged
    tokenizer files etc.             the release's other small top-level files, verbatim
"""
from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ascend_v4.checkpoint.safetensors_io import INDEX_NAME

from . import quantize as Q
from .errors import ConvertError
from .manifest import MANIFEST, NAME_MAP, build_manifest, read_manifest
from .plan import DEFAULT_SHARD_BYTES, PRECISIONS, SIDECAR_DIR, Plan, build_plan, name_map, rank_dir
from .sharding import Layout
from .source import CONVERSION_KEY, SourceLayout, layout_record, open_source
from .transform import SourceData, produce
from .writer import (STATE_DIR, Journal, free_bytes, fsync_dir, remove_tmp_files, run_jobs, write_bytes_atomic,
                     write_file, write_json_atomic)

SOURCE_RECORD = f"{SIDECAR_DIR}/source.json"
SOURCE_CONFIG = f"{SIDECAR_DIR}/config.json"
SOURCE_INDEX = f"{SIDECAR_DIR}/{INDEX_NAME}"
SOURCE_ROOT_CONFIG = f"{SIDECAR_DIR}/root_config.json"     # DeepSeek-V4.1: the release's nested root config.json
AUX_DIR = f"{SIDECAR_DIR}/files"
OUR_FILES = {"config.json", INDEX_NAME, MANIFEST, NAME_MAP, "quant_model_description.json"}
QSTATS = "quant_stats.jsonl"
META_SLACK_BYTES = 64 << 20


@dataclass
class Summary:
    dst: str
    files_written: int
    files_skipped: int
    bytes_in: int
    bytes_out: int
    already_complete: bool = False
    dir_layout: str = ""


class _ConvertJob:
    """Picklable per-file work: the plan and the source directory (data opened lazily per worker)."""

    def __init__(self, plan: Plan, dst: str):
        self.plan, self.dst = plan, dst
        self._src: Optional[SourceData] = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_src"] = None
        return d

    def write(self, i: int, progress) -> Tuple[str, int, dict]:
        if self._src is None:
            self._src = SourceData(self.plan.source)
        f = self.plan.files[i]
        stats: dict = {}
        sha, size = write_file(self.dst, i, f, lambda g: produce(g, self._src, progress, stats, self.plan.int4_group))
        return sha, size, stats

    def close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None


def conversion_block(plan: Plan) -> dict:
    lay = plan.layout
    E = plan.source.cfg.n_routed_experts
    if plan.dir_layout == "serving":
        return serving_block(plan)
    return {
        "format": "ascend-v4 converted checkpoint",
        "version": 1,
        "precision": plan.precision,
        "tp": lay.tp,
        "ep": lay.ep,
        "world_size": lay.world,
        "rank_layout": "tp_rank = rank % tp, ep_rank = rank % ep; rank files in rankRRR/ when world_size > 1",
        "experts_per_rank": E // lay.ep,
        "local_experts": {str(r): [lay.local_experts(r, E).start, lay.local_experts(r, E).stop] for r in range(lay.world)},
        "shard_bytes": plan.shard_bytes,
        "int8": ("symmetric per output channel: `<name>` I8 [out, in], `<name>_scale` F32 [out], w = q * scale; "
                 "activations: dynamic per-token int8" if plan.precision != "bf16" else None),
        "int4": (f"routed experts, values {Q.INT4_QMIN}..{Q.INT4_QMAX}, one scale per group of "
                 f"{plan.int4_group or 'all'} input columns (clip ratio searched per group): `<name>` I8 [out, in/2] "
                 f"({Q.INT4_NIBBLE_ORDER}), `<name>_scale` F32 [out, in/group]" if plan.precision == "w4a8" else None),
        "int4_group": plan.int4_group if plan.precision == "w4a8" else None,
        **({"engram_dtype": plan.engram_dtype,
            "engram": ("`<table>` I8 [rows, d], `<table>_scale` F32 [rows, d/32]: symmetric per 32 values of a row, "
                       "w = q * scale" if plan.engram_dtype == "int8" else "BF16, exact")} if plan.engram_dtype else {}),
        "source_dtype": plan.source.cfg.dtype,
        "source_expert_dtype": plan.source.cfg.expert_dtype,
        "fingerprint": plan.fingerprint,
    }


def serving_block(plan: Plan) -> dict:
    from .serving import describe_formats
    return {"format": "ascend-v4 converted checkpoint", "version": 1, "layout": "serving", "precision": plan.precision,
            "tp": 1, "ep": 1, "world_size": 1, "shard_bytes": plan.shard_bytes, "int4_group": plan.int4_group,
            **describe_formats(plan), "source_dtype": plan.source.cfg.dtype,
            "source_expert_dtype": plan.source.cfg.expert_dtype, "fingerprint": plan.fingerprint}


def expected_indexes(plan: Plan) -> Dict[str, Dict[str, object]]:
    """index file -> {tensor name: file} (per-rank indexes map to the file name inside the rank dir)."""
    lay = plan.layout
    out: Dict[str, Dict[str, object]] = {}
    if lay.world == 1:
        out[INDEX_NAME] = {e.name: f.path for f in plan.rank_files for g in f.groups for e in g.entries}
        return out
    top: Dict[str, List[str]] = {}
    for r in range(lay.world):
        d = rank_dir(lay, r)
        wm = {}
        for f in plan.rank_files:
            if f.rank != r:
                continue
            for g in f.groups:
                for e in g.entries:
                    wm[e.name] = os.path.basename(f.path)
                    top.setdefault(e.name, []).append(f.path)
        out[f"{d}/{INDEX_NAME}"] = wm
    out[INDEX_NAME] = top
    return out


def _write_metadata(plan: Plan, dst: str) -> List[str]:
    """Small files, each atomically. Returns their relative paths (for the manifest)."""
    src = plan.source
    lay = plan.layout
    written: List[str] = []

    def put_json(rel, obj, indent=1):
        write_json_atomic(os.path.join(dst, rel), obj, indent)
        written.append(rel)

    if plan.dir_layout == "serving":
        from .serving import DESCRIPTION, quant_description, serving_config
        cfg = serving_config(plan)
        cfg[CONVERSION_KEY] = conversion_block(plan)
        put_json("config.json", cfg, indent=2)
        if plan.precision != "bf16":
            put_json(DESCRIPTION, quant_description(plan), indent=1)
    else:
        cfg = src.cfg.to_inference_json()
        cfg[CONVERSION_KEY] = conversion_block(plan)
        put_json("config.json", cfg, indent=2)
    sizes = {f.path: sum(e.nbytes for g in f.groups for e in g.entries) for f in plan.rank_files}
    for rel, wm in expected_indexes(plan).items():
        if lay.world == 1:
            put_json(rel, {"metadata": {"total_size": sum(sizes.values())}, "weight_map": dict(sorted(wm.items()))})
        elif rel == INDEX_NAME:
            put_json(rel, {"metadata": {"total_size": sum(sizes.values()), "world_size": lay.world, "tp": lay.tp,
                                        "ep": lay.ep, "format": "ascend-v4 ranked"},
                           "rank_indexes": [f"{rank_dir(lay, r)}/{INDEX_NAME}" for r in range(lay.world)],
                           "weight_map": dict(sorted(wm.items()))})
        else:
            r = int(rel.split("/")[0][4:])
            put_json(rel, {"metadata": {"total_size": sum(s for p, s in sizes.items()
                                                          if p.startswith(rank_dir(lay, r) + "/")),
                                        "rank": r, "world_size": lay.world},
                           "weight_map": dict(sorted(wm.items()))})
    put_json(NAME_MAP, name_map(plan), indent=None)
    rec = layout_record(src)
    aux = []
    for fn in src.aux_files:
        stored = fn if fn not in OUR_FILES and not fn.startswith(SIDECAR_DIR) else f"{AUX_DIR}/{fn}"
        with open(os.path.join(src.root, fn), "rb") as fh:
            write_bytes_atomic(os.path.join(dst, stored), fh.read())
        written.append(stored)
        aux.append({"name": fn, "stored": stored})
    rec["aux_files"] = aux
    put_json(SOURCE_RECORD, rec, indent=None)
    write_bytes_atomic(os.path.join(dst, SOURCE_CONFIG), src.config_bytes)
    written.append(SOURCE_CONFIG)
    root_cfg = os.path.join(src.root, "config.json")
    if getattr(src.cfg, "version", "v4") == "v4.1" and os.path.isfile(root_cfg):
        # V4.1's model config is the flat inference/config.json (SOURCE_CONFIG); keep the nested root for --to-official
        with open(root_cfg, "rb") as fh:
            write_bytes_atomic(os.path.join(dst, SOURCE_ROOT_CONFIG), fh.read())
        written.append(SOURCE_ROOT_CONFIG)
    if src.index_bytes is not None:
        write_bytes_atomic(os.path.join(dst, SOURCE_INDEX), src.index_bytes)
        written.append(SOURCE_INDEX)
    return written


def _load_qstats(state: str) -> dict:
    """Per-tensor error sums of the files a killed run finished (lines written with the journal)."""
    import json
    out = {}
    try:
        with open(os.path.join(state, QSTATS), "r", encoding="utf-8") as f:
            for line in f:
                try:
                    out.update(json.loads(line)["stats"])
                except (ValueError, KeyError, TypeError):
                    continue
    except OSError:
        pass
    return out


def _add_qstats(state: str, rel: str, stats: dict) -> None:
    import json
    with open(os.path.join(state, QSTATS), "a", encoding="utf-8") as f:
        f.write(json.dumps({"file": rel, "stats": stats}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def quant_errors(qstats: dict) -> Dict[str, float]:
    """{tensor: ||w - w_q|| / ||w||} (w: the release's weight as BF16 holds it exactly)."""
    import math
    sums: Dict[str, List[float]] = {}
    for k, (e, r) in qstats.items():                 # "name#p": the rows of TP part p (dim-0 split)
        acc = sums.setdefault(k.split("#", 1)[0], [0.0, 0.0])
        acc[0] += e
        acc[1] += r
    return {n: (math.sqrt(e / r) if r > 0 else 0.0) for n, (e, r) in sorted(sums.items())}


def tensor_class(name: str) -> str:
    from .sharding import module_of, routed_expert_index
    if routed_expert_index(name) is not None:
        return "routed experts"
    if ".shared_experts." in name:
        return "shared experts"
    if ".engram.embed." in name:
        return "Engram tables"
    return "attention " + module_of(name)


def format_quant_errors(errs: Dict[str, float]) -> str:
    by: Dict[str, List[float]] = {}
    for n, e in errs.items():
        by.setdefault(tensor_class(n), []).append(e)
    rows = [f"  {k:<24} {len(v):>6} tensors  mean {sum(v) / len(v):.4f}  max {max(v):.4f}" for k, v in sorted(by.items())]
    return "relative weight error ||w - w_q|| / ||w|| per tensor (all in manifest.json):\n" + "\n".join(rows)


def parse_size(text) -> int:
    """'2GB', '500MB', '1.5GiB', '123' -> bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().replace(" ", "")
    units = {"KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3, "TIB": 1024 ** 4,
             "KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3, "TB": 1000 ** 4, "K": 1000, "M": 1000 ** 2,
             "G": 1000 ** 3, "B": 1}
    for u in sorted(units, key=len, reverse=True):
        if s.endswith(u):
            num = s[: -len(u)]
            break
    else:
        u, num = "B", s
    try:
        v = int(float(num) * units[u])      # inf/nan -> OverflowError/ValueError
    except (ValueError, OverflowError):
        raise ConvertError(f"--shard-size {text!r} is not a size like 2GB, 500MB or 1073741824") from None
    if v < 1:
        raise ConvertError(f"--shard-size {text!r} must be positive")
    return v


def _fmt(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def default_command(src, dst, precision, tp, ep, workers, shard_bytes, engram_dtype=None) -> str:
    args = ["ascend-v4", "convert", src, dst, "--dtype", precision]
    if engram_dtype:
        args += ["--engram-dtype", engram_dtype]
    if tp != 1:
        args += ["--tp", str(tp)]
    if ep != 1:
        args += ["--ep", str(ep)]
    args += ["--workers", str(workers)]
    if shard_bytes != DEFAULT_SHARD_BYTES:
        args += ["--shard-size", str(shard_bytes)]
    return shlex.join(args)


def _prepare_destination(dst: str, plan: Plan) -> Optional[str]:
    """'fresh' | 'resume' | None (already complete). Raises when DST holds something else."""
    state = os.path.join(dst, STATE_DIR)
    if not os.path.exists(dst):
        return "fresh"
    if not os.path.isdir(dst):
        raise ConvertError(f"{dst}: exists and is not a directory")
    if os.path.isdir(state):
        try:
            with open(os.path.join(state, "plan.id"), "r") as f:
                fp = f.read().strip()
        except OSError:
            fp = ""
        if fp != plan.fingerprint:
            raise ConvertError(f"{dst}: holds an unfinished conversion with other options or another source; rerun "
                               f"that command to finish it, or choose a new destination")
        return "resume"
    man = read_manifest(dst)
    if man is not None:
        if man.get("fingerprint") == plan.fingerprint:
            return None
        raise ConvertError(f"{dst}: already holds a finished conversion with other options "
                           f"({man.get('precision')}, tp {man.get('tp')}, ep {man.get('ep')}); choose a new destination")
    if os.listdir(dst):
        raise ConvertError(f"{dst}: exists, is not empty and holds no conversion to resume; choose a new destination")
    return "fresh"


def convert_checkpoint(src: str, dst: str, precision: str = "bf16", tp: int = 1, ep: int = 1, workers: int = 1,
                       shard_bytes: int = DEFAULT_SHARD_BYTES, progress: Optional[bool] = None,
                       command: Optional[str] = None, log=None, layout: Optional[str] = None,
                       int4_group="32", engram_dtype: Optional[str] = None) -> Summary:
    """Convert a release-format checkpoint directory. Resumable: rerun the same call after a crash.

    layout: "serving" (default for w8a8 / w4a8: what vllm-ascend and MindIE load, unsharded) or "ranks"
    (default for bf16: our tp/ep rank shards). int4_group: serving w4a8 expert group size (docs in FORMAT.md).
    engram_dtype (DeepSeek-V4.1): the Engram tables as "int8" (per 32 values) or "bf16"; default follows precision."""
    src, dst = os.fspath(src), os.fspath(dst)
    if precision not in PRECISIONS:
        raise ConvertError(f"--dtype {precision!r} is not one of {', '.join(PRECISIONS)}")
    if workers < 1:
        raise ConvertError(f"--workers must be >= 1, got {workers}")
    lay = Layout(tp, ep)
    dir_layout = layout
    layout: SourceLayout = open_source(src)
    plan = build_plan(layout, precision, lay, shard_bytes, dir_layout=dir_layout, int4_group=int4_group,
                      engram_dtype=engram_dtype)
    if os.path.abspath(dst) == os.path.abspath(src) or os.path.abspath(dst).startswith(os.path.abspath(src) + os.sep):
        raise ConvertError(f"{dst}: the destination must not be the source directory or inside it")
    if command is None:
        command = default_command(src, dst, precision, tp, ep, workers, shard_bytes, engram_dtype)
    mode = _prepare_destination(dst, plan)
    if mode is None:
        if log:
            log(f"{dst}: already a complete conversion of this source with these options (verify with "
                f"`ascend-v4 verify {dst}`)")
        return Summary(dst, 0, len(plan.files), 0, 0, already_complete=True)

    state = os.path.join(dst, STATE_DIR)
    dirs = sorted({os.path.dirname(f.path) for f in plan.files} | {"", SIDECAR_DIR})
    journal = Journal(state)
    qstats = _load_qstats(state) if mode == "resume" else {}
    done = journal.resume(dst, dirs) if mode == "resume" else {}
    todo = [i for i, f in enumerate(plan.files) if f.path not in done]
    need = sum(plan.files[i].size for i in todo)
    free = free_bytes(dst)
    if need + META_SLACK_BYTES > free:
        raise ConvertError(f"not enough disk space for {dst}: the conversion needs {_fmt(need)} more "
                           f"({_fmt(plan.total_size())} in all) plus a {_fmt(META_SLACK_BYTES)} margin, "
                           f"{_fmt(free)} is free; free space or choose another destination")
    os.makedirs(state, exist_ok=True)
    if mode == "fresh":
        write_bytes_atomic(os.path.join(state, "plan.id"), (plan.fingerprint + "\n").encode())
        write_bytes_atomic(os.path.join(state, "command"), (command + "\n").encode())
    fsync_dir(dst)
    if log:
        log(f"{'resuming' if mode == 'resume' else 'converting'} {src} -> {dst}: {precision}, {plan.dir_layout} layout, tp {lay.tp}, ep {lay.ep}"
            f" ({lay.world} rank{'s' if lay.world > 1 else ''}), {len(plan.files)} files, {_fmt(plan.total_size())}"
            + (f"; {len(done)} already done" if done else ""))

    order = sorted(todo, key=lambda i: (-plan.files[i].size, i))        # largest first: less tail
    job = _ConvertJob(plan, dst)

    def on_done(i, res):
        sha, size, stats = res
        if stats:
            _add_qstats(state, plan.files[i].path, stats)
            qstats.update(stats)
        journal.add(plan.files[i].path, sha, size)
        done[plan.files[i].path] = (sha, size)

    try:
        run_jobs(job, order, {i: plan.files[i].read_bytes for i in order}, workers, on_done, desc="convert",
                 progress=progress, cleanup=lambda: remove_tmp_files(dst, dirs))
    finally:
        job.close()
    meta = _write_metadata(plan, dst)
    man = build_manifest(plan, dst, done, meta, command)
    errs = quant_errors(qstats)
    if errs:
        man["quant_relative_error"] = errs
        if log:
            log(format_quant_errors(errs))
    write_json_atomic(os.path.join(dst, MANIFEST), man)
    shutil.rmtree(state, ignore_errors=True)
    fsync_dir(dst)
    return Summary(dst, len(todo), len(plan.files) - len(todo), layout.total_bytes(),
                   sum(v[1] for v in done.values()), dir_layout=plan.dir_layout)
