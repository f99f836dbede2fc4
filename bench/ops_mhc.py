"""Benchmark of the mHC ops: hc_pre + hc_post (one V4 residual step, sublayer = identity), forward and
forward+backward, C++ kernel vs MindSpore composite vs NumPy (float32), D = 4096, hc = 4, in one run.

    GLOG_v=3 python bench/ops_mhc.py [--tokens 1 128 4096 65536] [--reps 5]

Reports median wall time (and process CPU time, which other jobs on a shared machine disturb less), speed-up of
cpp over composite and numpy, and the fraction of the machine's measured memcpy bandwidth reached (compulsory
bytes of the op's inputs and outputs / time / memcpy rate). Writes bench/results/ops_mhc.json after every
measurement. Each (backend, T) runs in its own process, so MindSpore's memory pool does not carry over.
Configurations whose estimated peak memory does not fit in the available RAM are not run and are reported as
skipped with the estimate (the composite's autodiff and NumPy keep many [T,hc,D] intermediates; at T=65536 the
cpp run switches to bfloat16 streams, which halves its footprint).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
HC, ITERS, EPS = 4, 20, 1e-6


# ------------------------------------------------------------------------------------------------- numpy
def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_forward(x, fn, scale, base):
    """float32 NumPy hc_pre then hc_post(y, x, post, comb); returns out and what the backward needs."""
    T, hc, D = x.shape
    K = hc * D
    v = x.reshape(T, K)
    r = 1.0 / np.sqrt(np.einsum("tk,tk->t", v, v) / K + EPS)
    raw = v @ fn.T
    mix = raw * r[:, None]
    svec = np.concatenate([np.full(hc, scale[0]), np.full(hc, scale[1]), np.full(hc * hc, scale[2])]).astype(np.float32)
    z = mix * svec + base
    spre, spost = _sig(z[:, :hc]), _sig(z[:, hc:2 * hc])
    pre, post = spre + EPS, 2 * spost
    c = z[:, 2 * hc:].reshape(T, hc, hc)
    c = np.exp(c - c.max(-1, keepdims=True))
    p = c / c.sum(-1, keepdims=True)
    c = p + EPS
    trace = []
    for it in range(ITERS):
        if it:
            den = c.sum(-1, keepdims=True) + EPS
            c = c / den
            trace.append((c, -1, den))
        den = c.sum(-2, keepdims=True) + EPS
        c = c / den
        trace.append((c, -2, den))
    comb = c
    y = np.einsum("ti,tid->td", pre, x)
    out = post[:, :, None] * y[:, None, :] + np.matmul(comb.transpose(0, 2, 1), x)
    return out, (v, r, raw, mix, svec, spre, spost, p, trace, pre, post, comb, y)


def np_backward(x, fn, scale, base, saved, gout):
    T, hc, D = x.shape
    K = hc * D
    v, r, raw, mix, svec, spre, spost, p, trace, pre, post, comb, y = saved
    # hc_post(f=y, residual=x)
    gy = np.einsum("tk,tkd->td", post, gout)
    gx = np.matmul(comb, gout)
    gpost = np.einsum("tkd,td->tk", gout, y)
    gcomb = np.matmul(x, gout.transpose(0, 2, 1))
    # hc_pre
    gpre = np.einsum("td,tid->ti", gy, x)
    gx += pre[:, :, None] * gy[:, None, :]
    g = gcomb
    for out, axis, den in reversed(trace):
        g = (g - (g * out).sum(axis, keepdims=True)) / den
    gc0 = p * (g - (g * p).sum(-1, keepdims=True))
    gz = np.concatenate([gpre * spre * (1 - spre), gpost * 2 * spost * (1 - spost), gc0.reshape(T, -1)], 1)
    gscale = np.array([(gz[:, :hc] * mix[:, :hc]).sum(), (gz[:, hc:2 * hc] * mix[:, hc:2 * hc]).sum(),
                       (gz[:, 2 * hc:] * mix[:, 2 * hc:]).sum()], np.float32)
    gbase = gz.sum(0)
    gmix = gz * svec
    graw = gmix * r[:, None]
    gr = (gmix * raw).sum(1)
    gv = graw @ fn - (gr * r ** 3 / K)[:, None] * v
    gfn = graw.T @ v
    return gx + gv.reshape(T, hc, D), gfn, gscale, gbase


# -------------------------------------------------------------------------------------------- helpers
def _touch(out):
    """Wait for a MindSpore result by reading one element of its first tensor (cheap, unlike asnumpy())."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out.reshape(-1)[:1].asnumpy()


def mem_available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 2 ** 20
    return 8.0


def timeit(fn, reps, budget_s=20.0, cpu=None):
    """Median wall time; with cpu=list also appends the median process CPU time (all threads), which other
    processes competing for the 2 cores disturb much less than wall time."""
    fn()                                   # warm-up (and graph compile)
    times, cpus = [], []
    t_end = time.perf_counter() + budget_s
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        if time.perf_counter() > t_end:
            break
    if cpu is not None:
        cpu.append(statistics.median(cpus))
    return statistics.median(times), len(times)


def memcpy_gbps() -> float:
    src = np.ones(2 ** 26, np.float32)     # 256 MiB
    dst = np.empty_like(src)
    best = min(timeit(lambda: np.copyto(dst, src), 5)[0] for _ in range(2))
    return 2 * src.nbytes / best / 1e9    # read + write


def compulsory_bytes(T, D, s, backward):
    """Bytes a perfectly fused hc_pre+hc_post must move: fwd reads x, fn and writes out (y stays on chip
    only in a fused pipeline, so we count it once out and once in); bwd reads x, gout and writes gx, gfn."""
    K = HC * D
    fwd = T * K * s + 24 * K * 4 + T * D * s * 2 + T * K * s + T * K * s
    if not backward:
        return fwd
    return fwd + T * K * s * 2 + T * K * s + 24 * K * 4 + T * D * s * 2


# ------------------------------------------------------------------------------------------------- main
def measure(name, T, D, dtype, reps, run_all):
    """One (backend, T) measurement; runs in its own process (see main) so memory pools do not accumulate."""
    K = HC * D
    rng = np.random.default_rng(0)
    x32 = rng.standard_normal((T, HC, D), dtype=np.float32)
    fn = rng.standard_normal((24, K), dtype=np.float32) * 0.02
    scale = np.array([0.8, 0.6, 1.2], np.float32)
    base = (rng.standard_normal(24) * 0.3).astype(np.float32)
    if name == "numpy":
        f_fwd = lambda: np_forward(x32, fn, scale, base)  # noqa: E731

        def f_all():
            out, saved = np_forward(x32, fn, scale, base)
            return np_backward(x32, fn, scale, base, saved, np.ones_like(out))
    else:
        import mindspore as ms
        ms.set_device("CPU")
        from ascend_v4.ops.mhc import composite, cpp
        mod = cpp if name == "cpp" else composite

        def fwd(x, fn, scale, base):
            y, p, c = mod.hc_pre(x, fn, scale, base, ITERS, EPS, EPS)
            return mod.hc_post(y, x, p, c)

        def loss(x, fn, scale, base):
            return fwd(x, fn, scale, base).sum()

        jfwd, jall = ms.jit(fwd), ms.jit(ms.value_and_grad(loss, grad_position=(0, 1, 2, 3)))
        ins = (ms.Tensor(x32, ms.bfloat16 if dtype == "bfloat16" else ms.float32), ms.Tensor(fn),
               ms.Tensor(scale), ms.Tensor(base))
        del x32
        f_fwd = lambda: _touch(jfwd(*ins))  # noqa: E731
        f_all = lambda: _touch(jall(*ins))  # noqa: E731
    cpu = []
    row = {}
    t_fwd, n1 = timeit(f_fwd, reps, cpu=cpu)
    row.update(fwd_ms=t_fwd * 1e3, fwd_cpu_ms=cpu[0] * 1e3, reps=n1)
    if run_all:
        t_all, _ = timeit(f_all, reps, cpu=cpu)
        row.update(fwd_bwd_ms=t_all * 1e3, fwd_bwd_cpu_ms=cpu[1] * 1e3)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 128, 4096, 65536])
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="T = 1 and 128 only, fewest reps")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "ops_mhc.json"))
    ap.add_argument("--worker", nargs=5, metavar=("BACKEND", "T", "D", "DTYPE", "ALL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.reps = [1, 128], 2
    if args.worker:
        name, T, D, dtype, run_all = args.worker
        reps = args.reps if int(T) >= 4096 else max(args.reps, 20)
        print(json.dumps(measure(name, int(T), int(D), dtype, reps, run_all == "1")))
        return 0

    sys.path.insert(0, os.path.dirname(HERE))
    from ops.build import library_path
    have_cpp = os.path.exists(library_path("mhc"))
    if not have_cpp:
        print("cpp library not built: python ops/build.py mhc", file=sys.stderr)
    D = args.dim
    K = HC * D
    bw = memcpy_gbps()
    print(f"memcpy: {bw:.1f} GB/s (read+write), {os.cpu_count()} cores, available RAM {mem_available_gb():.1f} GB, "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    for T in args.tokens:
        big = T * K * 4 / 2 ** 30                        # GB of one float32 [T, hc, D] tensor
        # peak estimates in units of [T, hc, D] float32 tensors, (forward, forward+backward); rough, measured
        # order of magnitude: the composite's autodiff and NumPy keep many [T, hc, D] temporaries.
        need = {"cpp": (2.5, 7), "composite": (6, 16), "numpy": (5, 10)}
        for name in ["cpp", "composite", "numpy"]:
            if name == "cpp" and not have_cpp:
                continue
            avail = mem_available_gb() * 0.7
            dtype = "float32"
            est_f, est_a = (n * big for n in need[name])
            if name == "cpp" and est_a > avail:
                dtype, est_f, est_a = "bfloat16", est_f / 2, est_a / 2   # bf16 streams halve the footprint
            if est_f > avail:
                rows.append(dict(T=T, D=D, backend=name, dtype=dtype, skipped=f"needs ~{est_f:.0f} GB, "
                                 f"{avail:.0f} GB usable"))
                print(f"T={T:>6} {name:<9} skipped: needs ~{est_f:.0f} GB of RAM ({avail:.0f} GB usable)")
                continue
            run_all = est_a <= avail
            cmd = [sys.executable, os.path.abspath(__file__), "--reps", str(args.reps), "--worker", name, str(T),
                   str(D), dtype, "1" if run_all else "0"]
            res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, GLOG_v="3"))
            if res.returncode != 0:
                why = "killed (out of memory?)" if res.returncode < 0 else res.stderr.strip().splitlines()[-1:]
                rows.append(dict(T=T, D=D, backend=name, dtype=dtype, skipped=f"worker failed: {why}"))
                print(f"T={T:>6} {name:<9} failed: {why}")
                continue
            row = dict(T=T, D=D, backend=name, dtype=dtype, **json.loads(res.stdout.strip().splitlines()[-1]))
            s = 2 if dtype == "bfloat16" else 4
            row["fwd_gbps"] = compulsory_bytes(T, D, s, False) / row["fwd_ms"] * 1e3 / 1e9
            row["fwd_bw_frac"] = row["fwd_gbps"] / bw
            if run_all:
                row["fwd_bwd_gbps"] = compulsory_bytes(T, D, s, True) / row["fwd_bwd_ms"] * 1e3 / 1e9
                row["fwd_bwd_bw_frac"] = row["fwd_bwd_gbps"] / bw
            else:
                row["fwd_bwd_skipped"] = f"needs ~{est_a:.0f} GB, {avail:.0f} GB usable"
            rows.append(row)
            all_txt = (f"fwd+bwd {row['fwd_bwd_ms']:10.2f} ms ({row['fwd_bwd_bw_frac']:.0%} of memcpy)" if run_all
                       else f"fwd+bwd skipped ({row['fwd_bwd_skipped']})")
            print(f"T={T:>6} {name:<9} {dtype:<8} fwd {row['fwd_ms']:10.2f} ms ({row['fwd_bw_frac']:.0%} of memcpy)  "
                  + all_txt, flush=True)
            _write(args.out, bw, rows)

    # speed-ups of cpp over the others, same T
    table = []
    head = (f"{'T':>6} {'backend':<9} {'dtype':<8} {'fwd ms':>10} {'fwd+bwd ms':>11} {'(cpu ms)':>10} {'fwd BW':>7} "
            f"{'all BW':>7} {'x comp fwd':>10} {'x comp all':>10} {'(cpu)':>6} {'x np all':>8}")
    table.append(head)
    table.append("-" * len(head))
    for r in rows:
        if "skipped" in r:
            table.append(f"{r['T']:>6} {r['backend']:<9} {r['dtype']:<8} skipped ({r['skipped']})")
            continue
        ref = {o["backend"]: o for o in rows if o["T"] == r["T"] and "skipped" not in o}
        sp = ["", "", "", ""]
        if r["backend"] == "cpp":
            if "composite" in ref:
                r["speedup_vs_composite_fwd"] = ref["composite"]["fwd_ms"] / r["fwd_ms"]
                sp[0] = f"{r['speedup_vs_composite_fwd']:.1f}x"
                if "fwd_bwd_ms" in ref["composite"] and "fwd_bwd_ms" in r:
                    r["speedup_vs_composite_fwd_bwd"] = ref["composite"]["fwd_bwd_ms"] / r["fwd_bwd_ms"]
                    r["cpu_speedup_vs_composite_fwd_bwd"] = ref["composite"]["fwd_bwd_cpu_ms"] / r["fwd_bwd_cpu_ms"]
                    sp[1] = f"{r['speedup_vs_composite_fwd_bwd']:.1f}x"
                    sp[3] = f"{r['cpu_speedup_vs_composite_fwd_bwd']:.1f}x"
            if "numpy" in ref and "fwd_bwd_ms" in ref["numpy"] and "fwd_bwd_ms" in r:
                r["speedup_vs_numpy_fwd_bwd"] = ref["numpy"]["fwd_bwd_ms"] / r["fwd_bwd_ms"]
                sp[2] = f"{r['speedup_vs_numpy_fwd_bwd']:.1f}x"
        fb = f"{r['fwd_bwd_ms']:>11.2f}" if "fwd_bwd_ms" in r else f"{'skipped':>11}"
        fbc = f"{r['fwd_bwd_cpu_ms']:>10.1f}" if "fwd_bwd_ms" in r else f"{'-':>10}"
        fbf = f"{r['fwd_bwd_bw_frac']:>7.0%}" if "fwd_bwd_ms" in r else f"{'-':>7}"
        table.append(f"{r['T']:>6} {r['backend']:<9} {r['dtype']:<8} {r['fwd_ms']:>10.2f} {fb} {fbc} "
                     f"{r['fwd_bw_frac']:>7.0%} {fbf} {sp[0]:>10} {sp[1]:>10} {sp[3]:>6} {sp[2]:>8}")
    print("\n".join(table))
    _write(args.out, bw, rows, table)
    print(f"wrote {args.out}")
    return 0


def _write(path, bw, rows, table=None):
    """Rewritten after every measurement, so a run stopped by the OOM killer still leaves its numbers."""
    result = dict(op="hc_pre+hc_post", hc=HC, iters=ITERS, memcpy_gbps=bw, machine=platform.machine(),
                  cores=os.cpu_count(), omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                  load_average=os.getloadavg(), rows=rows, table=table,
                  note="fwd = hc_pre then hc_post(y, x, post, comb); fwd+bwd = value_and_grad of out.sum() w.r.t. "
                       "x, fn, scale, base; BW = compulsory bytes / time as a fraction of measured memcpy; "
                       "times are medians on a shared 2-core machine (see load_average)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    from ascend_v4.atomic import write_json   # here: importing ascend_v4 sets OMP env for the peers
    write_json(path, result, indent=1)


if __name__ == "__main__":
    sys.exit(main())
