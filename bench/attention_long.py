"""Long-context attention on CPU: one CSA layer and one HCA layer (our C++ kernels) vs dense causal MQA.

    python bench/attention_long.py                          # S = 4K, 16K, 64K, 128K, heads scaled to 8 (see below)
    python bench/attention_long.py --heads 64 --index-heads 64 --seqs 4096     # V4-Flash heads, one length

Shapes (V4-Flash): attention 64 heads x 512 (shared KV, MQA), window 128, CSA ratio 4 with the lightning
indexer 64 heads x 128 and top-512, HCA ratio 128. B = 1, float32 (the CPU precision).

What is timed, per S (each measurement in a fresh subprocess, so peak memory is its own):
  csa   = lightning_indexer (streaming top-512 over the S/4 entries) + sparse_attention (window + 512 selected)
  hca   = hca_attention (window + every visible entry; no [S, S/128] index list is built)
  dense = causal MQA over all S tokens, same kernel machinery (online softmax, O(H·D) per thread).
          For long S the dense run is *sampled*: every `stride`-th query row is computed (row t sees all
          (t+1)·stride keys), and the time is multiplied by stride. Each query's cost is linear in its position,
          so uniform sampling estimates the full time without bias; the report says which rows were sampled.
The compressor is linear in S (one matmul per token plus a pooling of ratio tokens) and is not in the layer
timing; its entries are random inputs here.

Time = CPU seconds of all threads (time.process_time): the 2 cores of this machine are shared with other
processes, which stretches wall time (also recorded) but not the work. Peak memory = VmHWM growth during the call
(Linux /proc, reset via clear_refs) plus the inputs' bytes.
Heads: all work is linear in the head count, and 64 heads at 128K would take hours on this 2-core CPU, so
the default run scales the attention heads and the indexer heads down to 8 and says so in the output.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
D, DI, WINDOW, TOPK = 512, 128, 128, 512


sys.path.insert(0, os.path.join(ROOT, "tests"))         # the peak-memory helper lives with the tests
from peak_memory import peak_bytes as _hwm, reset_peak as _clear_peak  # noqa: E402


def _measure(fn):
    """(result, wall s, CPU s of all threads, peak-RSS growth bytes). CPU seconds are the comparison metric: the
    2 cores are shared with other processes, which stretches wall time but not the work done."""
    _clear_peak()
    base = _hwm()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    dt, dc = time.perf_counter() - t, time.process_time() - c
    return out, dt, dc, max(0, _hwm() - base)


def worker(kind: str, S: int, H: int, HI: int, stride: int, threads: int) -> dict:
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms
    ms.set_device("CPU")
    from ascend_v4.ops.attention import cpp
    from ascend_v4.ops.attention.reference import window_indices
    if not cpp.available():
        raise SystemExit("build the kernels first: python ops/build.py attention")
    rng = np.random.default_rng(0)
    scale = D ** -0.5

    def randn(*shape):
        return ms.Tensor(rng.standard_normal(shape, dtype=np.float32))

    sink = ms.Tensor(np.zeros(H, np.float32))
    res = {"kind": kind, "S": S, "heads": H, "index_heads": HI, "threads": threads}
    # warm-up at a tiny size: kernel library load, op compilation
    q0, kv0 = randn(1, 256, H, D), randn(1, 320, D)
    w0 = ms.Tensor(np.ascontiguousarray(window_indices(256, WINDOW)[None]))
    if kind == "csa":
        n = S // 4
        cpp.lightning_indexer(randn(1, 256, HI, DI), randn(1, 64, DI), randn(1, 256, HI), 4, TOPK).asnumpy()
        cpp.sparse_attention(q0, kv0, sink, w0, ms.Tensor(np.full((1, 256, 8), -1, np.int32)), scale).asnumpy()
        q, kv = randn(1, S, H, D), randn(1, S + n, D)
        qi, ki, wi = randn(1, S, HI, DI), randn(1, n, DI), ms.Tensor(rng.random((1, S, HI), dtype=np.float32))
        win = ms.Tensor(np.ascontiguousarray(window_indices(S, WINDOW)[None]))
        inputs = [q, kv, qi, ki, wi, win]
        idx, ti, ci, mi = _measure(lambda: cpp.lightning_indexer(qi, ki, wi, 4, TOPK).asnumpy())
        cmp = ms.Tensor(np.where(idx >= 0, idx + S, -1).astype(np.int32))
        _, ta, ca, ma = _measure(lambda: cpp.sparse_attention(q, kv, sink, win, cmp, scale).asnumpy())
        res.update(indexer_wall_s=ti, attention_wall_s=ta, wall_s=ti + ta, indexer_s=ci, attention_s=ca,
                   time_s=ci + ca, peak_growth_bytes=max(mi, ma), index_list_bytes=int(idx.nbytes + S * WINDOW * 4))
        inputs.append(cmp)
    elif kind == "hca":
        n = S // 128
        cpp.hca_attention(q0, kv0, sink, w0, 128, scale).asnumpy()
        q, kv = randn(1, S, H, D), randn(1, S + n, D)
        win = ms.Tensor(np.ascontiguousarray(window_indices(S, WINDOW)[None]))
        inputs = [q, kv, win]
        _, t, c, m = _measure(lambda: cpp.hca_attention(q, kv, sink, win, 128, scale).asnumpy())
        res.update(wall_s=t, time_s=c, peak_growth_bytes=m, index_list_bytes=int(S * WINDOW * 4))
    elif kind == "dense":
        cpp.dense_causal_attention(q0, kv0, sink, scale).asnumpy()
        rows = S // stride
        q, kv = randn(1, rows, H, D), randn(1, S, D)
        inputs = [q, kv]
        _, t, c, m = _measure(lambda: cpp.dense_causal_attention(q, kv, sink, scale, stride).asnumpy())
        res.update(wall_s=t * stride, time_s=c * stride, measured_cpu_s=c, sampled_rows=rows, stride=stride,
                   peak_growth_bytes=m,
                   # a full-size run holds q and out for all S rows
                   full_q_bytes=int(S * H * D * 4))
    else:
        raise SystemExit(f"unknown kind {kind}")
    res["input_bytes"] = int(sum(x.nbytes for x in inputs))
    if kind == "dense":
        res["input_bytes"] += res["full_q_bytes"] - int(inputs[0].nbytes)
    res["peak_bytes"] = res["input_bytes"] + res["peak_growth_bytes"]
    return res


def kv_cache_bytes_per_token():
    """Steady-state compressed KV per token for V4-Flash (21 CSA + 20 HCA layers), in our layouts vs the release's (docs/formats.md)."""
    csa, hca = 21, 20
    out = {}
    for name, main, idx in (("float32 (what these CPU kernels read)", D * 4, DI * 4),
                            ("bfloat16", D * 2, DI * 2),
                            ("spec QAT storage: 448 FP8 + 64 BF16 + 8 B scales; indexer 64 B FP4 + 4 B", 584, 68)):
        out[name] = csa * (main + idx) / 4 + hca * main / 128
    return out


def _fmt_bytes(b):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", default="4096,16384,65536,131072")
    ap.add_argument("--heads", type=int, default=8, help="attention heads (V4-Flash: 64)")
    ap.add_argument("--index-heads", type=int, default=8, help="indexer heads (V4-Flash: 64)")
    ap.add_argument("--dense-rows", type=int, default=1024, help="max query rows the dense run computes")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--quick", action="store_true", help="S = 4K and 8K only")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "attention_long.json"))
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "S"), help=argparse.SUPPRESS)
    ap.add_argument("--stride", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a.heads, a.index_heads, a.stride, a.threads)))
        return 0
    seqs = [4096, 8192] if a.quick else [int(s) for s in a.seqs.split(",")]
    env = dict(os.environ, GLOG_v="3", OMP_NUM_THREADS=str(a.threads), PYTHONPATH=ROOT)
    rows = []
    print(f"heads {a.heads} (V4-Flash 64), indexer heads {a.index_heads} (64), head dim {D}, indexer dim {DI}, "
          f"window {WINDOW}, top-{TOPK}, threads {a.threads}, load average {os.getloadavg()[0]:.1f}", flush=True)
    for S in seqs:
        for kind in ("csa", "hca", "dense"):
            stride = max(1, S // a.dense_rows) if kind == "dense" else 1
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, str(S), "--heads", str(a.heads),
                   "--index-heads", str(a.index_heads), "--stride", str(stride), "--threads", str(a.threads)]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if p.returncode:
                print(p.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"worker {kind} S={S} failed")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            rows.append(r)
            extra = f" (indexer {r['indexer_s']:.2f} + attention {r['attention_s']:.2f} cpu-s)" if kind == "csa" else ""
            extra += f" (sampled {r['sampled_rows']} rows, x{r['stride']})" if kind == "dense" and r["stride"] > 1 else ""
            print(f"S={S:>6} {kind:<5} {r['time_s']:9.2f} cpu-s (wall {r['wall_s']:8.2f} s) "
                  f"{1e6 * r['time_s'] / S:9.1f} cpu-us/token  "
                  f"peak {_fmt_bytes(r['peak_bytes']):>10} (growth {_fmt_bytes(r['peak_growth_bytes'])}){extra}",
                  flush=True)
    by = {(r["kind"], r["S"]): r for r in rows}
    print("\nGrowth with S of CPU time (exponent k in time ~ S^k between consecutive lengths; flat per token = 1):")
    summary = {}
    for kind in ("csa", "hca", "dense"):
        ks = [r["S"] for r in rows if r["kind"] == kind]
        exps = [math.log(by[(kind, s2)]["time_s"] / by[(kind, s1)]["time_s"]) / math.log(s2 / s1)
                for s1, s2 in zip(ks, ks[1:])]
        summary[kind] = exps
        print(f"  {kind:<5} " + "  ".join(f"{s1 // 1024}K->{s2 // 1024}K: {e:.2f}" for (s1, s2), e in
                                         zip(zip(ks, ks[1:]), exps)))
    print("\nSpeed-up vs dense (CPU seconds, same heads):")
    for S in seqs:
        d = by[("dense", S)]["time_s"]
        print(f"  S={S:>6}: CSA {d / by[('csa', S)]['time_s']:6.1f}x   HCA {d / by[('hca', S)]['time_s']:6.1f}x   "
              f"(CSA attention alone {d / by[('csa', S)]['attention_s']:6.1f}x)")
    kvb = kv_cache_bytes_per_token()
    print("\nCompressed KV cache per token, V4-Flash (21 CSA + 20 HCA layers; the release's CUDA layout: 3,514 B/token):")
    for k, v in kvb.items():
        print(f"  {v:8.0f} B/token  {k}")
    print(f"  + raw window per layer: {WINDOW} x {D} values (constant, {WINDOW * D * 4 // 1024} KiB/layer in float32)")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    from ascend_v4.atomic import write_json   # here: importing ascend_v4 sets OMP env for the peers
    write_json(a.out, {"config": vars(a) | {"worker": None}, "rows": rows, "growth_exponents": summary,
                       "kv_cache_bytes_per_token": kvb, "load_average": os.getloadavg()}, indent=1)
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
