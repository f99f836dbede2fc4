"""Benchmark of one V4-Flash-shaped MoE layer on CPU: C++ (cpp backend) vs MindSpore composite vs naive per-expert
loops, same run, with the machine's fp32 matmul rate and memory bandwidth measured in the same process.

    GLOG_v=3 python bench/ops_moe.py [--tokens 128 2048 16384] [--reps 3] [--resident N]

Shape: D = 4096, 256 routed experts, top-6, inter 2048 (V4-Flash), sqrt-softplus router over all 256 experts.
Experts are scaled down because memory demands it: the 256 experts' fp32 weights are 256 x 3 x 2048 x 4096 x 4 B =
25.8 GB, more than the host's RAM. The bench instantiates R resident experts (default: as many as fit in the
available memory, at most 64 = one rank's share with expert parallelism 4) and runs exactly what an EP rank runs:
all T tokens are routed over 256 experts, the rows that land on the R local experts are dispatched, computed and
combined. Per-expert GEMM shapes (rows per expert ~ T*6/256) are therefore those of the full layer; only the
number of experts is R instead of 256 (the full layer does 256/R times the expert work).

Paths, per T:
  cpp dropless   moe_gating_topk -> moe_init_routing (dropless, active_num = local rows) -> grouped_expert_ffn
                 (GEMM1 w1|w3 + clamped SwiGLU epilogue + GEMM2, rows grouped by expert) -> moe_finalize_routing
  cpp capacity   the model's training layout: moe_dispatch [R, C, D] (C = ceil(1.25 T k / 256)) -> expert_ffn
                 (padding rows skipped) -> moe_combine
  composite cap. the same three ops as MindSpore composites (one_hot/cumsum dispatch, bmm over [R, C, D], gather)
  composite dropless (only where [R, rows, D] padding fits in memory)
  naive-ms       DeepSeek-reference-style loop over experts in MindSpore PyNative (nonzero rows, gather, 3 matmuls,
                 SwiGLU, tensor_scatter_add); data-dependent shapes, so not in graph mode
All other MindSpore paths run under ms.jit (graph mode, what the model uses): in PyNative the wait for an
asynchronous op partly busy-spins the Python thread, which on a 2-core host costs the kernels about half a core.
  naive-numpy    the same loop in NumPy (OpenBLAS GEMMs): the per-expert BLAS baseline
Threads: every path uses all cores (OpenMP for cpp, MindSpore's pool set to the core count, OpenBLAS for NumPy).
Reported: median/min wall time per path, speed-ups, expert-GEMM GFLOP/s (2·rows·3·D·I flops, best stage time) as a
fraction of the measured fp32 matmul rate (numpy 2048^3 best-of-5, all cores, the best of the start of the run and
right before/after that T's C++ timing: the host may be shared), weight-streaming GB/s vs measured memcpy bandwidth
(small T is memory-bound: each expert's 96 MB of weights serve ~3 rows), and dispatch+combine as a fraction of the
layer time, and the same expert fraction per CPU-second of this process (flops / process CPU time, ours vs
numpy's matmul), which a loaded shared host distorts far less than wall time. Writes bench/results/ops_moe.json.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

D, I, E_ROUTE, K, LIMIT, SCALE, CF = 4096, 2048, 256, 6, 10.0, 1.5, 1.25
EXPERT_BYTES = 3 * D * I * 4


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 << 30


def timeit(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "runs": len(ts)}


def machine_rates():
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    b = a.copy()
    a @ b
    t = min(_t(lambda: a @ b) for _ in range(5))
    big = np.ones(256 << 20 >> 2, np.float32)          # 256 MB
    dst = np.empty_like(big)
    np.copyto(dst, big)
    tc = min(_t(lambda: np.copyto(dst, big)) for _ in range(5))
    return {"numpy_matmul_2048_gflops": 2 * 2048 ** 3 / t / 1e9, "memcpy_gbs": 2 * big.nbytes / tc / 1e9}


def cpu_rate():
    """numpy 2048^3 fp32 matmul GFLOP per CPU-second of this process (best of 5)."""
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    b = a.copy()
    a @ b
    best = math.inf
    for _ in range(5):
        c = time.process_time()
        a @ b
        best = min(best, time.process_time() - c)
    return 2 * 2048 ** 3 / best / 1e9


def _t(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 2048, 16384])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--resident", type=int, default=0, help="resident experts (0: as many as fit, <= 64)")
    ap.add_argument("--quick", action="store_true",
                    help="T = 2048 only (48 rows per expert, the goal's row), 2 reps, 8 resident experts")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "ops_moe.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.reps, args.resident = [2048], 2, args.resident or 8

    import mindspore as ms
    from mindspore import ops
    ms.set_device("CPU")
    # MindSpore's CPU kernel pool defaults to 25 threads; on a small host that oversubscribes the cores the OpenMP
    # (C++) and OpenBLAS (NumPy) paths use. One pool thread per core for every path.
    ms.device_context.cpu.op_tuning.threads_num(os.cpu_count())
    from ascend_v4.ops.moe import composite, cpp
    assert cpp.available(), "build the C++ kernels first: python ops/build.py moe"
    import ctypes
    isa = "avx512" if ctypes.CDLL(cpp.LIB).MoeCpuIsaIsAvx512() else "avx2"

    avail = mem_available()
    # the NumPy weights + the copy MindSpore's built-in kernels make in their memory pool (+ headroom) + ~5 GiB of
    # activations and pool caching at T=16384
    R = args.resident or int(max(4, min(64, (avail - (5 << 30)) // (3 * EXPERT_BYTES))))
    R = 1 << int(math.log2(R))                           # 4, 8, 16, 32, 64: divides 256
    print(f"MemAvailable {avail / 2**30:.1f} GiB -> {R} resident experts ({R * EXPERT_BYTES / 2**30:.1f} GiB fp32 "
          f"weights); micro-kernel {isa}; threads {os.cpu_count()}", flush=True)
    rates = machine_rates()
    print(f"machine: numpy fp32 matmul {rates['numpy_matmul_2048_gflops']:.0f} GFLOP/s, memcpy "
          f"{rates['memcpy_gbs']:.1f} GB/s", flush=True)

    rng = np.random.default_rng(0)
    w1 = (rng.random((R, I, D), dtype=np.float32) - 0.5) * (2 * math.sqrt(3.0 / D))
    w3 = (rng.random((R, I, D), dtype=np.float32) - 0.5) * (2 * math.sqrt(3.0 / D))
    w2 = (rng.random((R, D, I), dtype=np.float32) - 0.5) * (2 * math.sqrt(3.0 / I))
    gate = (rng.standard_normal((E_ROUTE, D), dtype=np.float32) / math.sqrt(D)).astype(np.float32)
    W1, W2, W3 = ms.from_numpy(w1), ms.from_numpy(w2), ms.from_numpy(w3)
    results = {"config": {"D": D, "inter": I, "routed_experts": E_ROUTE, "topk": K, "resident_experts": R,
                          "capacity_factor": CF, "isa": isa, "host": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "mem_available_gib": round(avail / 2 ** 30, 1)},
               "machine": rates, "runs": []}

    for T in args.tokens:
        x = rng.standard_normal((T, D), dtype=np.float32)
        X = ms.Tensor(x)
        wts, ids, _ = cpp.moe_gating_topk(ms.ops.matmul(X, ms.Tensor(gate).T), None, K, norm_type=2,
                                          routed_scaling_factor=SCALE)
        ids_np = ids.asnumpy()
        local = ids_np < R                                # this rank's experts: [0, R)
        rows = int(local.sum())
        if rows == 0:
            print(f"T={T}: no rows on the {R} resident experts, skipped")
            continue
        C = max(1, min(T, math.ceil(CF * T * K / E_ROUTE)))
        flops = 2.0 * rows * 3 * D * I
        reps = args.reps if T <= 2048 else max(1, args.reps - 1)
        run = {"tokens": T, "local_rows": rows, "rows_per_expert": rows / R, "capacity": C, "paths": {}}
        print(f"\nT={T}: {rows} rows on {R} experts ({rows / R:.1f}/expert), capacity {C}", flush=True)

        def sync(t=None):   # PyNative may run ops asynchronously: fetch one element of the last result
            if t is not None:
                t.reshape(-1)[:1].asnumpy()

        # Every MindSpore path runs in graph mode (ms.jit), as the model does: in PyNative, waiting for an
        # asynchronous op partly busy-spins the main thread, which on a small host steals a core from the kernel.
        G = ms.Tensor(gate)

        @ms.jit
        def route_fn(x, g):
            logits = ops.matmul(x, g.swapaxes(0, 1))
            return cpp.moe_gating_topk(logits, None, K, norm_type=2, routed_scaling_factor=SCALE)

        def route():
            sync(route_fn(X, G)[0])
        run["route_s"] = timeit(route, reps)["median_s"]

        # ---------------- cpp dropless, stage by stage
        stage = {}

        @ms.jit
        def dispatch_fn(x, i):
            return cpp.moe_init_routing(x, i, rows, 0, R, 0, 1)

        @ms.jit
        def experts_fn(ex, a, b, c, cum):
            return cpp.grouped_expert_ffn(ex, a, b, c, cum, LIMIT)

        @ms.jit
        def combine_fn(h, w, row):
            return cpp.moe_finalize_routing(h, w, row)

        def cpp_dropless():
            t0 = time.perf_counter()
            ex, row, cum, _ = dispatch_fn(X, ids)
            sync(ex)
            t1, c1 = time.perf_counter(), time.process_time()
            h = experts_fn(ex, W1, W2, W3, cum)
            sync(h)
            t2, c2 = time.perf_counter(), time.process_time()
            stage.setdefault("experts_cpu", []).append(c2 - c1)
            y = combine_fn(h, wts, row)
            sync(y)
            t3 = time.perf_counter()
            stage.setdefault("dispatch", []).append(t1 - t0)
            stage.setdefault("experts", []).append(t2 - t1)
            stage.setdefault("combine", []).append(t3 - t2)
            return y
        local_rate = machine_rates()["numpy_matmul_2048_gflops"]      # the host is shared: measure next to it
        r = timeit(cpp_dropless, reps)
        local_rate = max(local_rate, machine_rates()["numpy_matmul_2048_gflops"])
        y_cpp = cpp_dropless().asnumpy()
        st = {k: min(v) for k, v in stage.items()}
        r.update({f"{k}_s": v for k, v in st.items()})
        r["numpy_matmul_gflops_here"] = local_rate
        # Load-robust view (the host is shared): flops per CPU-second of this process, ours vs numpy's matmul.
        np_cpu = cpu_rate()
        r["expert_gflops_per_cpu_s"] = flops / st["experts_cpu"] / 1e9
        r["numpy_matmul_gflops_per_cpu_s"] = np_cpu
        r["expert_frac_of_matmul_rate_cpu_time"] = r["expert_gflops_per_cpu_s"] / np_cpu
        r["expert_gflops"] = flops / st["experts"] / 1e9
        r["expert_frac_of_matmul_rate"] = r["expert_gflops"] / max(local_rate, rates["numpy_matmul_2048_gflops"])
        r["weight_stream_gbs"] = R * EXPERT_BYTES / st["experts"] / 1e9
        r["dispatch_combine_frac"] = (st["dispatch"] + st["combine"]) / (st["dispatch"] + st["experts"] + st["combine"])
        run["paths"]["cpp_dropless"] = r

        # ---------------- cpp capacity (model's drop/pad training layout)
        @ms.jit
        def cpp_capacity_fn(x, i, a, b, c, w):
            ex, slot = cpp.moe_dispatch(x, i, R, C)
            return cpp.moe_combine(cpp.expert_ffn(ex, a, b, c, LIMIT), w, slot), slot

        def cpp_capacity():
            y, slot = cpp_capacity_fn(X, ids, W1, W2, W3, wts)
            sync(y)
            return y, slot
        run["paths"]["cpp_capacity"] = timeit(cpp_capacity, reps)
        y_cap, slot = cpp_capacity()
        run["dropped_at_capacity"] = int((slot.asnumpy()[local] < 0).sum())
        y_cap = y_cap.asnumpy()

        # ---------------- composite capacity
        @ms.jit
        def comp_capacity_fn(x, i, a, b, c, w):
            ex, sl = composite.moe_dispatch(x, i, R, C)
            return composite.moe_combine(composite.expert_ffn(ex, a, b, c, LIMIT), w, sl)

        def comp_capacity():
            y = comp_capacity_fn(X, ids, W1, W2, W3, wts)
            sync(y)
            return y
        run["paths"]["composite_capacity"] = timeit(comp_capacity, reps)
        y_ccap = comp_capacity().asnumpy()

        # ---------------- composite dropless where its [R, rows, D] padding fits
        pad_bytes = R * rows * (2 * D + 3 * I) * 4
        if pad_bytes < mem_available() - (2 << 30):
            @ms.jit
            def comp_dropless_fn(x, i, a, b, c, w):
                ex, row, cum, _ = composite.moe_init_routing(x, i, rows, 0, R, 0, 1)
                return composite.moe_finalize_routing(composite.grouped_expert_ffn(ex, a, b, c, cum, LIMIT), w, row)

            def comp_dropless():
                y = comp_dropless_fn(X, ids, W1, W2, W3, wts)
                sync(y)
                return y
            run["paths"]["composite_dropless"] = timeit(comp_dropless, max(1, reps - 1))
        else:
            run["paths"]["composite_dropless"] = {"skipped": f"padding needs {pad_bytes / 2**30:.1f} GiB"}

        # ---------------- naive per-expert loop, MindSpore PyNative
        w_np = wts.asnumpy()
        mm_nt = ops.MatMul(transpose_b=True)              # x @ wᵀ as nn.Linear does, no transposed copy

        def expert_rows():      # (expert, its tokens, their top-k slots) for every resident expert with tokens
            for e in range(R):
                t, k = np.nonzero(ids_np == e)
                if t.size:
                    yield e, t, k

        def naive_ms():
            out = ops.zeros((T, D), ms.float32)
            for e, t, k in expert_rows():
                ti = ms.Tensor(t.astype(np.int32))
                xe = ops.gather(X, ti, 0)
                g = mm_nt(xe, W1[e])
                u = ops.clamp(mm_nt(xe, W3[e]), -LIMIT, LIMIT)
                g = ops.minimum(g, LIMIT)
                h = mm_nt(g * ops.sigmoid(g) * u, W2[e]) * ms.Tensor(w_np[t, k][:, None])
                out = ops.tensor_scatter_add(out, ti.reshape(-1, 1), h)
            sync(out)
            return out
        run["paths"]["naive_ms"] = timeit(naive_ms, max(1, reps - 1))
        y_naive = naive_ms().asnumpy()

        # ---------------- naive per-expert loop, NumPy / OpenBLAS
        def naive_np():
            out = np.zeros((T, D), np.float32)
            for e, t, k in expert_rows():
                xe = x[t]
                g = np.minimum(xe @ w1[e].T, LIMIT)
                u = np.clip(xe @ w3[e].T, -LIMIT, LIMIT)
                np.add.at(out, t, (g / (1 + np.exp(-g)) * u) @ w2[e].T * w_np[t, k][:, None])
            return out
        run["paths"]["naive_numpy"] = timeit(naive_np, max(1, reps - 1))

        # ---------------- agreement (all dropless paths compute the same thing)
        scale = float(np.abs(y_naive).max()) + 1e-12
        run["max_rel_diff_cpp_vs_naive"] = float(np.abs(y_cpp - y_naive).max() / scale)
        run["max_rel_diff_cap_cpp_vs_composite"] = float(np.abs(y_cap - y_ccap).max() / scale)

        base = run["paths"]["cpp_dropless"]["median_s"]
        for name, p in run["paths"].items():
            if "median_s" in p:
                p["speedup_of_cpp_dropless"] = p["median_s"] / base
        results["runs"].append(run)
        _print_run(run, rates)
        X = ids = wts = None      # the closures above hold them: drop the tensors before the next T
        import gc
        gc.collect()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    from ascend_v4.atomic import write_json   # here: importing ascend_v4 sets OMP env for the peers
    write_json(args.out, results, indent=1)
    print(f"\nwrote {args.out}")


def _print_run(run, rates):
    c = run["paths"]["cpp_dropless"]
    print(f"  route (router GEMM + gating, all paths): {run['route_s'] * 1e3:.1f} ms")
    print(f"  cpp dropless: dispatch {c['dispatch_s'] * 1e3:.1f} ms, experts {c['experts_s'] * 1e3:.1f} ms "
          f"({c['expert_gflops']:.0f} GFLOP/s = {100 * c['expert_frac_of_matmul_rate']:.0f}% of numpy matmul "
          f"{max(c['numpy_matmul_gflops_here'], rates['numpy_matmul_2048_gflops']):.0f}; weights streamed {c['weight_stream_gbs']:.1f} GB/s vs memcpy "
          f"{rates['memcpy_gbs']:.1f}), combine {c['combine_s'] * 1e3:.1f} ms; dispatch+combine = "
          f"{100 * c['dispatch_combine_frac']:.1f}% of the layer")
    print(f"  per CPU-second (load-robust): experts {c['expert_gflops_per_cpu_s']:.0f} GFLOP/cpu-s = "
          f"{100 * c['expert_frac_of_matmul_rate_cpu_time']:.0f}% of numpy matmul "
          f"{c['numpy_matmul_gflops_per_cpu_s']:.0f}")
    for name, p in run["paths"].items():
        if "median_s" in p:
            print(f"  {name:<20} median {p['median_s'] * 1e3:9.1f} ms  min {p['min_s'] * 1e3:9.1f} ms  "
                  f"x{p['speedup_of_cpp_dropless']:.2f} of cpp dropless")
        else:
            print(f"  {name:<20} {p}")
    print(f"  dropped at capacity {run['capacity']}: {run['dropped_at_capacity']} of {run['local_rows']} rows; "
          f"max rel diff cpp vs naive {run['max_rel_diff_cpp_vs_naive']:.1e}", flush=True)


if __name__ == "__main__":
    main()
