"""Benchmark: what Engram costs a step when its tables live in host memory, with and without prefetch.

    GLOG_v=3 python bench/engram_prefetch.py [--rows 524288] [--tokens 32 512] [--blocks 12] [--width 1024]

Two Engram tables (INT8 rows of 256 + per-32 float32 scales, the converted format) of about --rows rows each
(the exact sum of the bucket primes of a layout scaled down from V4.1's 384M rows) are hashed and gathered by the
real code (`NgramHashState` with the C++ hash when built, `HostEngramTables`, `EngramPrefetcher`). A step is simulated as --blocks float32
GEMMs [tokens, width] x [width, width] (BLAS releases the GIL, as a device step leaves the host free), with the
Engram read before block 1 and block blocks//2 (V4.1: before 1 and 14 of 40). In one run, on the same ids:

  none        compute only (the peer every overhead is relative to)
  sync        hash + gather + decode inline at the Engram layer
  next-step   the rows of step t+1 gathered on a background thread while step t computes (chunked prefill,
              teacher-forced training, draft verification: the ids are known a step ahead)
  same-step   submitted when the step starts, picked up before block 1 (plain decode: the ids are sampled at the
              end of the previous step, so only block 0 overlaps the first layer's gather)
  next-int8   as next-step, but the INT8 rows + scales are shipped as stored and dequantised by the step
              (`engram_dequant`; on Ascend a small device op): a quarter of the bytes, no host decode

Reported per mode and token count: median step ms, Engram overhead vs `none`, and for the prefetch modes the time
steps spent waiting for a buffer, the overlap fraction (1 − wait / background wall time; negative when the
thread was not even scheduled in time) and the host CPU the background work costs relative to the step's own CPU
time (thread CPU clocks, which other jobs disturb less than wall time). Goal: overhead <= 3% and
no waiting in next-step mode. CPU only: there is no host-to-device copy here; on Ascend the finished buffer is the
source of one H2D copy (not measured). The machine's load average is recorded: on a shared host the
background thread competes with other jobs for cores, which shows up as overhead even when it never blocks. Writes bench/results/engram_prefetch.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

# The simulated device step is one BLAS thread; the host's other cores are what the prefetch thread uses (on
# Ascend the step runs on the NPU and the host cores are free). Set before numpy loads BLAS.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

from ascend_v4.atomic import write_json  # noqa: E402
from ascend_v4.ops.engram import cpp  # noqa: E402
from ascend_v4.ops.engram.host import EngramPrefetcher, HostEngramTables, dequant_group_int8  # noqa: E402
from ascend_v4.ops.engram.reference import NgramHashState, engram_primes  # noqa: E402

D_ROW, GROUP, HEADS, NGRAM, LAYERS = 256, 32, 8, 4, (1, 14)


def make_tables(rows_target: int, rng):
    vocab = max(2, rows_target // ((NGRAM - 1) * HEADS))
    sizes = [int(p.sum()) for p in engram_primes(len(LAYERS), vocab, NGRAM, HEADS)]
    q = [rng.integers(-127, 128, (n, D_ROW), dtype=np.int8) for n in sizes]
    s = [rng.random((n, D_ROW // GROUP), dtype=np.float32) * 0.01 for n in sizes]
    return vocab, sizes, HostEngramTables(q, s)


def new_state(vocab, batch):
    return NgramHashState(batch, LAYERS, vocab, NGRAM, HEADS, pad_id=2, compressed_vocab_size=99092,
                          hash_fn=cpp.ngram_hash_cpp)      # the C++ hash when built, else the NumPy reference


def run_mode(mode, ids, tables, vocab, weights, x0):
    """Median step seconds and (wait, background) seconds per step."""
    n_steps, blocks = ids.shape[0], len(weights)
    eng = {1, blocks // 2}
    state = new_state(vocab, ids.shape[1])
    raw = mode == "next-int8"
    pf = EngramPrefetcher(tables, state, decode_on_host=not raw) if mode != "none" and mode != "sync" else None
    times, cpu, sink = [], [], 0.0
    nxt = pf.submit(ids[0]) if mode in ("next-step", "next-int8") else None
    for t in range(n_steps):
        t0, c0 = time.perf_counter(), time.thread_time()
        if mode in ("next-step", "next-int8"):
            cur, nxt = nxt, (pf.submit(ids[t + 1]) if t + 1 < n_steps else None)
        elif mode == "same-step":
            cur = pf.submit(ids[t])
        x, got = x0, None
        for b, w in enumerate(weights):
            if b in eng and mode != "none":
                if got is None:
                    if raw:     # the "device" dequantises the shipped INT8 rows (here: the step's own thread)
                        got = [dequant_group_int8(r, s) for r, s in pf.result(cur).rows]
                    elif pf is not None:
                        got = pf.result(cur).rows
                    else:
                        h = state(ids[t])
                        got = [tables.gather(k, h[:, :, k]) for k in range(len(LAYERS))]
                sink += float(got[0 if b == 1 else 1][0, 0, 0])        # the step consumes the rows
            x = np.tanh(x @ w)
        times.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    extra = {"step_cpu_ms": 1e3 * statistics.median(cpu[1:])}
    if pf is not None:
        pf.close()
        extra = {"wait_ms_per_step": 1e3 * pf.wait_seconds / n_steps,
                 "background_ms_per_step": 1e3 * pf.gather_seconds / n_steps,
                 "background_cpu_ms_per_step": 1e3 * pf.gather_cpu_seconds / n_steps,
                 "overlap_fraction": 1.0 - pf.wait_seconds / max(pf.gather_seconds, 1e-12)}
    return statistics.median(times[1:]), extra, sink


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=524288, help="rows per Engram table (V4.1: 384M)")
    ap.add_argument("--tokens", type=int, nargs="+", default=[32, 512], help="tokens per step (batch x chunk)")
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--quick", action="store_true", help="65536 rows, 32 tokens, 6 steps")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "engram_prefetch.json"))
    a = ap.parse_args()
    if a.quick:
        a.rows, a.tokens, a.steps = 65536, [32], 6
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    vocab, sizes, tables = make_tables(a.rows, rng)
    print(f"tables: {sizes} rows x {D_ROW} int8 (+ scales), {sum(sizes) * (D_ROW + 4 * D_ROW // GROUP) / 2**20:.0f} "
          f"MiB in host memory, built in {time.perf_counter() - t0:.1f} s", flush=True)
    weights = [(rng.standard_normal((a.width, a.width)) / np.sqrt(a.width)).astype(np.float32)
               for _ in range(a.blocks)]
    rows = []
    for T in a.tokens:
        B = min(T, 32)
        ids = rng.integers(0, 99092, (a.steps, B, T // B))
        x0 = rng.standard_normal((T, a.width)).astype(np.float32)
        res, res_cpu = {}, float("nan")          # "none" runs first and sets both
        for mode in ("none", "sync", "next-step", "same-step", "next-int8"):
            sec, extra, _ = run_mode(mode, ids, tables, vocab, weights, x0)
            res[mode] = sec
            row = {"tokens": T, "mode": mode, "step_ms": 1e3 * sec,
                   "engram_overhead": sec / res["none"] - 1.0 if mode != "none" else 0.0, **extra}
            if "background_cpu_ms_per_step" in extra:   # host CPU the prefetch costs, relative to the step's compute
                row["engram_cpu_fraction"] = extra["background_cpu_ms_per_step"] / res_cpu
            if mode == "none":
                res_cpu = extra["step_cpu_ms"]
            rows.append(row)
            print(f"  T={T:<5} {mode:<10} step {1e3 * sec:8.2f} ms  overhead {100 * row['engram_overhead']:6.2f}%"
                  + (f"  wait {extra['wait_ms_per_step']:.3f} ms/step, background {extra['background_ms_per_step']:.2f}"
                     f" ms/step ({extra['background_cpu_ms_per_step']:.2f} CPU), overlap "
                     f"{100 * extra['overlap_fraction']:.1f}%" if "wait_ms_per_step" in extra else ""), flush=True)
    head = (f"{'tokens':>6} {'mode':<10} {'step ms':>9} {'overhead':>9} {'wait ms':>8} {'overlap':>8} "
            f"{'engram CPU/step CPU':>20}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['tokens']:>6} {r['mode']:<10} {r['step_ms']:>9.2f} {100 * r['engram_overhead']:>8.2f}%"
              + (f" {r['wait_ms_per_step']:>8.3f} {100 * r['overlap_fraction']:>7.1f}% {100 * r['engram_cpu_fraction']:>19.2f}%"
                 if "wait_ms_per_step" in r else ""))
    out = {"bench": "engram_prefetch", "machine": platform.platform(), "cpus": os.cpu_count(),
           "load_average": os.getloadavg(),
           "table_rows": sizes, "row_bytes": D_ROW, "blocks": a.blocks, "width": a.width, "steps": a.steps,
           "goal": "engram_overhead <= 0.03 and no wait in the next-step modes", "rows": rows}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    write_json(a.out, out, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
