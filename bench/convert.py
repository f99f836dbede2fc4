"""Benchmark `ascend-v4 convert` on one V4-Flash layer at its real shapes plus the embeddings.

What it does (all in a temporary directory, removed at the end):
1. writes a release-format checkpoint with V4-Flash geometry, 1 CSA layer (256 routed MXFP4 experts,
   D = 4096, FP8 attention/shared expert, BF16 embed/head, FP32 hc/sinks) - random but valid codes;
2. measures the machine's raw read rate of those same files (page cache dropped for them first
   with posix_fadvise, then one sequential reader);
3. converts them with `python -m ascend_v4.convert.cli convert --workers K` to bf16 and to w8a8,
   each from a cold page cache, sampling the RSS / PSS of the whole process tree;
4. repeats with 2 layers, so the cost of one more layer (steady state) is separated from the
   fixed part (embeddings, start-up), and extrapolates the full V4-Flash / V4-Pro conversion:
       T(model) = T(1 layer) + (release bytes of model - release bytes of the 1-layer source) / R,
       R = (bytes(2 layers) - bytes(1 layer)) / (T(2 layers) - T(1 layer));
   peak memory: the measured peak (it does not depend on the number of layers by construction)
   plus the growth of the plan (tensor table) built for the full inventory, measured here;
5. prints a table and writes bench/results/convert.json.

Usage: python bench/convert.py [--workers 2] [--experts 256] [--no-two-layers] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc

os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from ascend_v4.atomic import write_json  # noqa: E402
from ascend_v4.checkpoint.inventory import official_inventory, stored_entries  # noqa: E402
from ascend_v4.checkpoint.safetensors_io import INDEX_NAME, STORAGE_DTYPES  # noqa: E402
from ascend_v4.config import PRESETS  # noqa: E402

GB = 1e9
SHARD_BYTES = int(3.5e9)          # the release's shards are ~3.5 GB (160 GB / 46)


# ------------------------------------------------------------------------------ source -------------
def layer_config(n_layers: int, n_experts: int):
    ratios = tuple([4, 128] * n_layers)[:n_layers]
    return PRESETS["v4-flash"].replace(name=f"flash-{n_layers}L", n_layers=n_layers, n_mtp_layers=0,
                                       compress_ratios=ratios, n_hash_layers=0, n_routed_experts=n_experts,
                                       n_activated_experts=min(6, n_experts))


def _entries(cfg):
    out = []
    for name, spec in official_inventory(cfg).items():
        out += stored_entries(name, spec)
    return out


def _nbytes(e) -> int:
    return math.prod(e.shape) * STORAGE_DTYPES[e.dtype].itemsize


def _random_raw(e, rng, is_fp4_scale: bool) -> np.ndarray:
    if e.dtype == "F8_E4M3":
        a = rng.integers(0, 256, e.shape, dtype=np.uint8)
        a[(a & 0x7F) == 0x7F] -= 1                          # no NaN codes
        return a
    if e.dtype == "F8_E8M0":
        lo, hi = (117, 123) if is_fp4_scale else (115, 121)
        return rng.integers(lo, hi, e.shape, dtype=np.uint8)
    if e.dtype == "I8":
        return rng.integers(0, 256, e.shape, dtype=np.uint8).view(np.int8)
    if e.dtype == "BF16":
        bits = rng.integers(0x3C00, 0x3D80, e.shape, dtype=np.uint16)
        return bits | (rng.integers(0, 2, e.shape, dtype=np.uint16) << np.uint16(15))
    if e.dtype == "F32":
        return (rng.standard_normal(e.shape) * 0.05).astype(np.float32)
    if e.dtype == "I64":
        return rng.integers(0, 256, e.shape).astype(np.int64)
    raise AssertionError(e.dtype)


def write_source(cfg, out_dir: str, seed: int = 0) -> int:
    """Release-format directory streamed tensor by tensor (never a whole shard in memory)."""
    os.makedirs(out_dir)
    ents = _entries(cfg)
    fp4_scales = {e.name for e in ents if e.dtype == "F8_E8M0" and ".experts." in e.name}
    shards, cur, used = [], [], 0
    for e in ents:
        if cur and used + _nbytes(e) > SHARD_BYTES:
            shards.append(cur)
            cur, used = [], 0
        cur.append(e)
        used += _nbytes(e)
    shards.append(cur)
    rng = np.random.default_rng(seed)
    weight_map, total = {}, 0
    for i, sh in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for e in sh:
            header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [off, off + _nbytes(e)]}
            off += _nbytes(e)
            weight_map[e.name] = fn
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        with open(os.path.join(out_dir, fn), "wb") as f:
            f.write(len(blob).to_bytes(8, "little") + blob)
            for e in sh:
                rows = e.shape[0]
                step = max(1, (64 << 20) // max(1, _nbytes(e) // rows))
                for a in range(0, rows, step):
                    sub = type(e)(e.name, e.dtype, (min(rows, a + step) - a,) + tuple(e.shape[1:]))
                    f.write(np.ascontiguousarray(_random_raw(sub, rng, e.name in fp4_scales)).tobytes())
            f.flush()
            os.fsync(f.fileno())
        total += off
    with open(os.path.join(out_dir, INDEX_NAME), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg.to_hf_json(), f, indent=2)
    return sum(os.path.getsize(os.path.join(out_dir, x)) for x in os.listdir(out_dir))


# ------------------------------------------------------------------------------ measurements -------
def drop_cache(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_under(d):
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs)


def raw_read_rate(paths) -> dict:
    drop_cache(paths)
    buf = bytearray(8 << 20)
    t0 = time.perf_counter()
    n = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                n += k
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    warm = time.perf_counter() - t0
    return {"bytes": n, "cold_s": cold, "cold_GBps": n / cold / GB, "warm_GBps": n / warm / GB}


def run_convert(src: str, dst: str, precision: str, workers: int) -> dict:
    import psutil
    drop_cache(files_under(src))
    cmd = [sys.executable, "-m", "ascend_v4.convert.cli", "convert", src, dst, "--dtype", precision,
           "--workers", str(workers), "--no-progress"]
    env = dict(os.environ, GLOG_v="3")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    root = psutil.Process(p.pid)
    peak_rss_proc = peak_rss_tree = peak_pss_tree = 0
    last_pss = 0.0
    while p.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            rss = []
            for q in procs:
                try:
                    rss.append(q.memory_info().rss)
                except psutil.Error:
                    pass
            if rss:
                peak_rss_proc = max(peak_rss_proc, max(rss))
                peak_rss_tree = max(peak_rss_tree, sum(rss))
            if time.perf_counter() - last_pss > 0.25:
                last_pss = time.perf_counter()
                pss = 0
                for q in procs:
                    try:
                        pss += q.memory_full_info().pss
                    except (psutil.Error, AttributeError):
                        pass
                peak_pss_tree = max(peak_pss_tree, pss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if p.returncode != 0:
        raise SystemExit(f"conversion failed ({p.returncode}): {err.strip()[-2000:]}")
    out_bytes = sum(os.path.getsize(f) for f in files_under(dst))
    return {"precision": precision, "wall_s": wall, "cpu_s": cpu, "user_s": ru1.ru_utime - ru0.ru_utime,
            "sys_s": ru1.ru_stime - ru0.ru_stime, "loadavg_1m": [load0, os.getloadavg()[0]],
            "out_bytes": out_bytes, "peak_rss_process": peak_rss_proc,
            "peak_rss_tree": peak_rss_tree, "peak_pss_tree": peak_pss_tree, "stdout": out.strip()}


# ------------------------------------------------------------------------------ extrapolation ------
def release_bytes(cfg) -> int:
    return sum(_nbytes(e) for e in _entries(cfg))


def plan_footprint(cfg, precision: str) -> dict:
    """Build the plan of the full model from a metadata-only layout; its size and memory."""
    from ascend_v4.convert.plan import build_plan
    from ascend_v4.convert.sharding import Layout
    from ascend_v4.convert.source import SourceLayout, SrcEntry, SrcShard
    ents = _entries(cfg)
    entries, shards, used, names = {}, [], 0, []
    for e in ents:
        nb = _nbytes(e)
        if names and used + nb > SHARD_BYTES:
            shards.append(SrcShard(f"model-{len(shards) + 1:05d}.safetensors", used, b"", names))
            names, used = [], 0
        entries[e.name] = SrcEntry(e.dtype, tuple(e.shape), len(shards), used, nb)
        names.append(e.name)
        used += nb
    shards.append(SrcShard(f"model-{len(shards) + 1:05d}.safetensors", used, b"", names))
    layout = SourceLayout(cfg, json.dumps(cfg.to_hf_json()).encode(), None, shards, entries)
    tracemalloc.start()
    t0 = time.perf_counter()
    plan = build_plan(layout, precision, Layout(1, 1))
    for f in plan.files:
        f.layout()
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"release_bytes": sum(s.size for s in shards), "release_tensors": len(entries), "out_bytes": plan.total_size(),
            "out_files": len(plan.files), "plan_build_s": dt, "plan_peak_bytes": peak}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--no-two-layers", action="store_true")
    ap.add_argument("--precisions", default="bf16,w8a8")
    ap.add_argument("--workdir", default=None, help="where to put the temporary checkpoints (default: $TMPDIR)")
    ap.add_argument("--quick", action="store_true", help="8 experts, one layer, w8a8 only (~2.3 GB written)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "convert.json"))
    args = ap.parse_args()
    if args.quick:
        args.experts, args.no_two_layers, args.precisions = 8, True, "w8a8"
    precisions = args.precisions.split(",")
    work = tempfile.mkdtemp(prefix="ascend_v4_bench_convert_", dir=args.workdir)
    res = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                       "platform": platform.platform()},
           "workers": args.workers, "experts": args.experts, "runs": {}}
    try:
        for n_layers in ([1] if args.no_two_layers else [1, 2]):
            cfg = layer_config(n_layers, args.experts)
            src = os.path.join(work, f"src{n_layers}")
            t0 = time.perf_counter()
            size = write_source(cfg, src)
            print(f"[{n_layers} layer] wrote release-format source: {size / GB:.2f} GB in {time.perf_counter() - t0:.0f} s",
                  flush=True)
            raw = raw_read_rate(files_under(src))
            print(f"[{n_layers} layer] raw read: cold {raw['cold_GBps']:.2f} GB/s, page cache {raw['warm_GBps']:.2f} GB/s",
                  flush=True)
            run = {"source_bytes": size, "raw_read": raw, "convert": {}}
            for prec in precisions:
                dst = os.path.join(work, f"out{n_layers}_{prec}")
                r = run_convert(src, dst, prec, args.workers)
                r["in_GBps"] = size / r["wall_s"] / GB
                r["out_GBps"] = r["out_bytes"] / r["wall_s"] / GB
                r["ratio_to_raw_read"] = r["in_GBps"] / raw["cold_GBps"]
                # what the run would take with the K cores to itself: CPU-bound part spread over K workers,
                # never faster than reading the input cold
                r["unshared_est_s"] = max(r["cpu_s"] / args.workers, raw["cold_s"])
                r["unshared_in_GBps"] = size / r["unshared_est_s"] / GB
                r["unshared_ratio_to_raw_read"] = r["unshared_in_GBps"] / raw["cold_GBps"]
                run["convert"][prec] = r
                print(f"[{n_layers} layer] {prec}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU (load avg "
                      f"{r['loadavg_1m'][0]:.1f}), in {r['in_GBps']:.3f} GB/s, out "
                      f"{r['out_GBps']:.3f} GB/s, ratio {r['ratio_to_raw_read']:.2f}, peak RSS/process "
                      f"{r['peak_rss_process'] / 2**20:.0f} MiB, tree PSS {r['peak_pss_tree'] / 2**20:.0f} MiB", flush=True)
                shutil.rmtree(dst)
            res["runs"][f"{n_layers}_layer"] = run
            shutil.rmtree(src)
        res["extrapolation"] = extrapolate(res, precisions)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_json(args.out, res, indent=2)
    print_table(res, precisions)
    print(f"wrote {args.out}")


def extrapolate(res, precisions) -> dict:
    one = res["runs"]["1_layer"]
    two = res["runs"].get("2_layer")
    out = {"method": ("T(model) = T(1 layer) + (release bytes of model - release bytes of the 1-layer source) / R, "
                      "R = marginal input rate of one more layer (2-layer run minus 1-layer run); "
                      "without the 2-layer run R = the 1-layer run's overall input rate. Peak memory = measured peak "
                      "(independent of layer count by construction) + plan-table growth measured for the full "
                      "inventory. Assumes the same disk and 2 workers; ignores page-cache effects of a "
                      "model larger than RAM.")}
    for model in ("v4-flash", "v4-pro"):
        cfg = PRESETS[model]
        m = {}
        for prec in precisions:
            r1 = one["convert"][prec]
            if two is not None:
                r2 = two["convert"][prec]
                db = two["source_bytes"] - one["source_bytes"]
                dt = max(1e-9, r2["wall_s"] - r1["wall_s"])
                rate = db / dt
                cpu_per_byte = max(1e-12, r2["cpu_s"] - r1["cpu_s"]) / db
            else:
                rate = one["source_bytes"] / r1["wall_s"]
                cpu_per_byte = r1["cpu_s"] / one["source_bytes"]
            fp = plan_footprint(cfg, prec)
            t = r1["wall_s"] + (fp["release_bytes"] - one["source_bytes"]) / rate
            t_cpu = (r1["cpu_s"] + (fp["release_bytes"] - one["source_bytes"]) * cpu_per_byte) / res["workers"]
            t_io = fp["release_bytes"] / (one["raw_read"]["cold_GBps"] * GB)
            base = one["convert"][prec]
            m[prec] = {"release_GB": fp["release_bytes"] / GB, "release_tensors": fp["release_tensors"],
                       "out_GB": fp["out_bytes"] / GB, "out_files": fp["out_files"],
                       "marginal_in_GBps": rate / GB, "est_hours": t / 3600,
                       "cpu_s_per_GB": cpu_per_byte * GB,
                       "est_hours_unshared": max(t_cpu, t_io) / 3600,
                       "plan_build_s": fp["plan_build_s"], "plan_MiB": fp["plan_peak_bytes"] / 2 ** 20,
                       "est_peak_rss_process_MiB": (base["peak_rss_process"] + fp["plan_peak_bytes"]) / 2 ** 20,
                       "est_peak_pss_tree_MiB": (base["peak_pss_tree"] + fp["plan_peak_bytes"]) / 2 ** 20}
        out[model] = m
    return out


def print_table(res, precisions) -> None:
    print()
    print(f"{'run':<10}{'dtype':<6}{'in GB':>8}{'out GB':>8}{'wall s':>8}{'CPU s':>7}{'in GB/s':>9}{'out GB/s':>9}"
          f"{'raw GB/s':>9}{'ratio':>7}{'unshared':>9}{'RSS/proc MiB':>13}{'PSS tree MiB':>13}")
    for key, run in res["runs"].items():
        for prec in precisions:
            r = run["convert"][prec]
            print(f"{key:<10}{prec:<6}{run['source_bytes'] / GB:>8.2f}{r['out_bytes'] / GB:>8.2f}{r['wall_s']:>8.1f}"
                  f"{r['cpu_s']:>7.1f}{r['in_GBps']:>9.3f}{r['out_GBps']:>9.3f}{run['raw_read']['cold_GBps']:>9.2f}"
                  f"{r['ratio_to_raw_read']:>7.2f}{r['unshared_ratio_to_raw_read']:>9.2f}"
                  f"{r['peak_rss_process'] / 2**20:>13.0f}{r['peak_pss_tree'] / 2**20:>13.0f}")
    ex = res["extrapolation"]
    print()
    print(f"{'model':<10}{'dtype':<6}{'release GB':>11}{'out GB':>9}{'files':>7}{'R GB/s':>8}{'est. h':>8}"
          f"{'h unshared':>11}{'plan MiB':>9}{'est. RSS/proc MiB':>18}")
    for model in ("v4-flash", "v4-pro"):
        for prec in precisions:
            m = ex[model][prec]
            print(f"{model:<10}{prec:<6}{m['release_GB']:>11.1f}{m['out_GB']:>9.1f}{m['out_files']:>7}"
                  f"{m['marginal_in_GBps']:>8.3f}{m['est_hours']:>8.2f}{m['est_hours_unshared']:>11.2f}{m['plan_MiB']:>9.0f}"
                  f"{m['est_peak_rss_process_MiB']:>18.0f}")
    print(ex["method"])
    print("ratio = input GB/s / cold raw read GB/s of the same files; 'unshared' = the same with the wall time "
          "replaced by max(CPU s / workers, cold read s), i.e. on 2 cores not shared with other jobs")


if __name__ == "__main__":
    main()
