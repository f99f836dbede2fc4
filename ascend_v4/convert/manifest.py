"""manifest.json (what a converted directory contains, how it was made) and `verify`.

manifest.json:
    {"format": "ascend-v4 converted checkpoint", "version": 1, "fingerprint": <plan id>,
     "precision", "tp", "ep", "world_size", "command": "ascend-v4 convert ...",
     "versions": {python, numpy, ascend_v4, tqdm, click},
     "source": {"config_sha256", "total_bytes", "shards": [[file, size], ...]},
     "files": {relative path: {"sha256", "size", "tensors": {name: [dtype, shape]}}}}
`tensors` is given for every safetensors file. The manifest itself is written last, so a directory
without one is not a finished conversion. It holds no timestamps: an interrupted-and-resumed run
and an uninterrupted one with the same command produce the same manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from typing import Dict, List, Optional, Tuple

from ascend_v4.checkpoint.safetensors_io import CheckpointError, SafeTensorFile, ShardedCheckpoint
from ascend_v4.checkpoint.values import has_contract, value_problem

from .errors import ConvertError
from .plan import Plan

MANIFEST = "manifest.json"
NAME_MAP = "param_name_map.json"
FORMAT = "ascend-v4 converted checkpoint"


def library_versions() -> Dict[str, str]:
    import numpy
    v = {"python": platform.python_version(), "numpy": numpy.__version__}
    try:
        from ascend_v4 import __version__
        v["ascend_v4"] = __version__
    except ImportError:  # pragma: no cover
        pass
    from importlib import metadata
    for dist in ("tqdm", "click", "safetensors"):
        try:
            v[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            pass
    return v


def sha256_path(path: str) -> Tuple[str, int]:
    from .writer import sha256_file
    return sha256_file(path)


def build_manifest(plan: Plan, root: str, done: Dict[str, Tuple[str, int]], meta_files: List[str],
                   command: str) -> dict:
    files: Dict[str, dict] = {}
    for f in plan.files:
        sha, size = done[f.path]
        _, placed, _ = f.layout()
        files[f.path] = {"sha256": sha, "size": size,
                         "tensors": {e.name: [e.dtype, list(e.shape)] for e, _, _ in placed}}
    for rel in meta_files:
        sha, size = sha256_path(os.path.join(root, rel))
        files[rel] = {"sha256": sha, "size": size}
    src = plan.source
    return {
        "format": FORMAT,
        "version": 1,
        "fingerprint": plan.fingerprint,
        "precision": plan.precision,
        "tp": plan.layout.tp,
        "ep": plan.layout.ep,
        "world_size": plan.layout.world,
        "command": command,
        "versions": library_versions(),
        "source": {"config_sha256": hashlib.sha256(src.config_bytes).hexdigest(), "total_bytes": src.total_bytes(),
                   "shards": [[s.file, s.size] for s in src.shards]},
        "files": dict(sorted(files.items())),
    }


def read_manifest(root: str) -> Optional[dict]:
    p = os.path.join(root, MANIFEST)
    if not os.path.exists(p):
        return None
    try:
        with open(p, "r", encoding="utf-8") as f:
            m = json.load(f)
        if not isinstance(m, dict) or not isinstance(m.get("files"), dict):
            raise ValueError("no 'files' object")
        return m
    except (OSError, ValueError) as e:
        raise ConvertError(f"{p}: unreadable manifest ({e}); the directory is damaged - reconvert") from None


# ------------------------------------------------------------------------------ verify ------------
def _safe_rel(root: str, rel: str) -> Optional[str]:
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or "\\" in rel:
        return None
    norm = os.path.normpath(rel)
    if norm.startswith(".."):
        return None
    return os.path.join(root, norm)


def verify_dir(root: str, workers: int = 1, progress: Optional[bool] = None,
               source: Optional[str] = None) -> Tuple[List[str], dict]:
    """(problems, summary). Converted directory: re-hash every file against manifest.json and check
    every tensor against the plan rebuilt from config.json + the source record; official directory
    (no manifest, release config.json): check every tensor against the config's inventory. With `source`
    (the release the directory was converted from), a file whose hash does not match is regenerated from it
    and compared tensor by tensor, so the problem names the damaged tensors."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ConvertError(f"{root}: not a directory")
    man = read_manifest(root)
    if man is None:
        return _verify_official(root)
    problems: List[str] = []
    files = man["files"]
    # 1. hashes
    paths = []
    for rel, info in files.items():
        p = _safe_rel(root, rel)
        if p is None:
            problems.append(f"manifest lists '{rel}', which is not a path inside the directory")
            continue
        if not os.path.isfile(p):
            problems.append(f"{rel}: missing")
            continue
        if os.path.getsize(p) != info.get("size"):
            problems.append(f"{rel}: {os.path.getsize(p)} bytes, manifest says {info.get('size')}")
            continue
        paths.append((rel, p, info))
    hashes = _hash_all([p for _, p, _ in paths], [i.get("size", 0) for _, _, i in paths], workers, progress)
    damaged = []
    for (rel, p, info), got in zip(paths, hashes):
        if got != info.get("sha256"):
            problems.append(f"{rel}: sha256 {got[:16]}... does not match the manifest ({str(info.get('sha256'))[:16]}...)"
                            + ("" if source or not rel.endswith(".safetensors") else
                               "; rerun with --source RELEASE_DIR to name the damaged tensors"))
            damaged.append(rel)
    # 2. extra safetensors files
    for dirpath, _, fns in os.walk(root):
        for fn in fns:
            rel = os.path.relpath(os.path.join(dirpath, fn), root)
            if fn.endswith(".tmp"):
                problems.append(f"{rel}: leftover temporary file (an interrupted run?)")
            elif fn.endswith(".safetensors") and rel not in files:
                problems.append(f"{rel}: not listed in the manifest")
    # 3. tensors against the plan rebuilt from the config
    n_tensors = 0
    try:
        from .loader import converted_plan
        plan = converted_plan(root)
    except (ConvertError, CheckpointError) as e:
        problems.append(str(e))
        plan = None
    if plan is not None:
        for f in plan.files:
            p = os.path.join(root, f.path)
            if not os.path.isfile(p):
                if not any(x.startswith(f"{f.path}:") for x in problems):
                    problems.append(f"{f.path}: missing")
                continue
            try:
                st = SafeTensorFile(p)
            except CheckpointError as e:
                problems.append(str(e))
                continue
            want = {e.name: (e.dtype, tuple(e.shape)) for g in f.groups for e in g.entries}
            for name, (dt, shape) in want.items():
                if name not in st:
                    problems.append(f"{f.path}: tensor '{name}' is missing")
                elif st.meta(name) != (dt, shape):
                    got = st.meta(name)
                    problems.append(f"{f.path}: tensor '{name}' is {got[0]}{list(got[1])}, the config expects "
                                    f"{dt}{list(shape)}")
                else:
                    n_tensors += 1
                    if has_contract(name, dt):
                        bad = value_problem(name, dt, st.raw(name), plan.source.cfg.n_routed_experts)
                        if bad:
                            problems.append(f"{f.path}: {bad}")
            for name in st.keys():
                if name not in want:
                    problems.append(f"{f.path}: unexpected tensor '{name}'")
        problems += _check_indexes(root, plan)
        if source and damaged:
            problems += locate_damage(root, plan, man, [r for r in damaged if r.endswith(".safetensors")], source)
    return problems, {"files": len(files), "tensors": n_tensors, "kind": "converted",
                      "precision": man.get("precision"), "world_size": man.get("world_size")}


def _check_indexes(root: str, plan: Plan) -> List[str]:
    """Every tensor an index names is in the file it names, and every planned tensor is indexed."""
    from .run import expected_indexes
    problems = []
    for rel, want in expected_indexes(plan).items():
        p = os.path.join(root, rel)
        try:
            with open(p, "r", encoding="utf-8") as f:
                wm = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append(f"{rel}: unreadable index ({type(e).__name__})")
            continue
        for name, fn in want.items():
            if name not in wm:
                problems.append(f"{rel}: tensor '{name}' is not in the index")
            elif wm[name] != fn:
                problems.append(f"{rel}: tensor '{name}' maps to {wm[name]!r}, expected {fn!r}")
        for name in wm:
            if name not in want:
                problems.append(f"{rel}: lists '{name}', which the conversion does not have")
    return problems


def _hash_all(paths: List[str], sizes: List[int], workers: int, progress: Optional[bool]) -> List[str]:
    from .writer import _make_bar, sha256_file
    bar = _make_bar(sum(sizes), "verify", progress)
    try:
        if workers <= 1 or len(paths) <= 1:
            return [sha256_file(p, bar.update)[0] for p in paths]
        import multiprocessing as mp
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        out = [""] * len(paths)
        with ctx.Pool(min(workers, len(paths))) as pool:
            for i, h in pool.imap_unordered(_hash_one, list(enumerate(paths))):
                out[i] = h
                bar.update(sizes[i])
        return out
    finally:
        bar.close()


def _hash_one(item):
    from .writer import sha256_file
    i, p = item
    return i, sha256_file(p)[0]


def _verify_official(root: str) -> Tuple[List[str], dict]:
    from .source import open_source
    from .writer import STATE_DIR
    state = os.path.join(root, STATE_DIR)
    if os.path.isdir(state):                 # a conversion killed before it wrote config.json / manifest.json
        try:
            with open(os.path.join(state, "command"), encoding="utf-8") as f:
                cmd = f" (`{f.read().strip()}`)"
        except OSError:
            cmd = ""
        return [f"{root}: unfinished conversion: rerun the same convert command{cmd}"], {}
    try:
        layout = open_source(root)
    except (ConvertError, CheckpointError) as e:
        msg = str(e)
        if "already a converted checkpoint" in msg:
            return [f"{root}: no {MANIFEST}; the conversion did not finish - rerun the same convert command"], {}
        return [msg], {"kind": "official"}
    problems = []
    ck = ShardedCheckpoint(root)
    try:
        for name, e in layout.entries.items():
            if has_contract(name, e.dtype):
                bad = value_problem(name, e.dtype, ck.raw(name), layout.cfg.n_routed_experts)
                if bad:
                    problems.append(f"{ck.file_of(name)}: {bad}")
    finally:
        ck.close()
    return problems, {"files": len(layout.shards), "tensors": len(layout.entries), "kind": "official"}


def locate_damage(root: str, plan: Plan, man: dict, rels: List[str], source: str) -> List[str]:
    """Name the tensors (or the header) whose bytes differ from a fresh, deterministic conversion of `source`."""
    import tempfile
    from .source import open_source
    from .transform import SourceData, produce
    from .writer import write_file
    try:
        layout = open_source(source)
    except (ConvertError, CheckpointError) as e:
        return [f"--source {source}: {e}"]
    rec = man.get("source") or {}
    if (hashlib.sha256(layout.config_bytes).hexdigest() != rec.get("config_sha256")
            or [[s.file, s.size] for s in layout.shards] != rec.get("shards")):
        return [f"--source {source} is not the release {root} was converted from (config or shard sizes differ)"]
    out, data = [], SourceData(layout)
    files = man.get("files", {})
    intact = sorted((f for f in plan.files if f.path not in rels and f.path in files), key=lambda f: f.size)
    try:
        with tempfile.TemporaryDirectory(prefix="ascend_v4_verify_") as tmp:
            if intact:      # same config and shard sizes is not enough: one intact file must come out identical
                sha, _ = write_file(tmp, 0, intact[0], lambda g: produce(g, data, lambda n: None))
                os.remove(os.path.join(tmp, intact[0].path))
                if sha != files[intact[0].path].get("sha256"):
                    return [f"--source {source} is not the release {root} was converted from (its weights differ)"]
            for rel in rels:
                f = next((f for f in plan.files if f.path == rel), None)
                if f is None:
                    continue
                write_file(tmp, 0, f, lambda g: produce(g, data, lambda n: None))
                header, placed, _ = f.layout()
                spans = [("the safetensors header", 0, len(header))]
                spans += [(f"tensor '{e.name}'", off, off + e.nbytes) for e, _, off in placed]
                bad = [what for what, a, b in spans if _differs(os.path.join(root, rel), os.path.join(tmp, rel), a, b)]
                out += [f"{rel}: {what} differs from a fresh conversion of {source}" for what in bad]
                os.remove(os.path.join(tmp, rel))
    finally:
        data.close()
    return out


def _differs(p: str, q: str, a: int, b: int, chunk: int = 64 << 20) -> bool:
    with open(p, "rb") as f, open(q, "rb") as g:
        f.seek(a)
        g.seek(a)
        while a < b:
            n = min(chunk, b - a)
            if f.read(n) != g.read(n):
                return True
            a += n
    return False
