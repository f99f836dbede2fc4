"""Benchmark: DeepSeek-V4.1 DSpark speculative decoding vs plain greedy decoding in the serving engine.

    GLOG_v=3 python bench/decode_dspark.py [--config v4.1-tiny] [--batch 1] [--prompt 48] [--new 32] [--reps 3]
    GLOG_v=3 python bench/decode_dspark.py --quick

One Engine (graph mode, float32, Engram tables in host memory) built with dspark=True on random release-format
weights (ascend_v4.checkpoint.release_v41.random_weights_v41) runs the same prompts with generate(greedy) and
generate(greedy, speculative=True), repetitions interleaved so a noisy shared host slows both alike; medians
reported. Per mode: decode tokens/s (graph compiles excluded), steps, and for DSpark the acceptance rate (accepted
drafts / drafted tokens), tokens per verify step, and whether its tokens equal plain greedy decoding (they must).
The peer is plain greedy decoding of the same engine.

Random weights: an untrained drafter's drafts are almost never the target's tokens, so acceptance here is ~0 and
DSpark pays a draft, a (block + 1)-token verify and a rollback (host snapshot of the cache + a re-run of the
kept token) per emitted token — the overhead side of the trade. Acceptance of a trained drafter needs trained
weights (V4.1 training is not part of this bench). Writes bench/results/decode_dspark.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="v4.1-tiny")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=48)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="16 new tokens, 2 reps, results in bench/results/quick/")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.quick:
        a.new, a.reps = 16, 2
    if a.out is None:
        a.out = os.path.join(HERE, "results", *(("quick",) if a.quick else ()), "decode_dspark.json")
    return a


def main():
    a = parse()
    import numpy as np

    from ascend_v4.atomic import write_json
    from ascend_v4.checkpoint.release_v41 import random_weights_v41
    from ascend_v4.config import V41_PRESETS
    from ascend_v4.serve.engine import Engine
    cfg = V41_PRESETS[a.config].validate()
    weights = random_weights_v41(cfg, seed=0)
    rng = np.random.default_rng(0)
    prompts = []
    for _ in range(a.batch):
        ids = rng.integers(0, cfg.engram_compressed_vocab_size, a.prompt)
        prompts.append(np.where(ids == cfg.image_token_id, 0, ids))
    max_len = 64
    while max_len < a.prompt + a.new + cfg.dspark_block_size:
        max_len *= 2
    eng = Engine(cfg, weights, max_batch=a.batch, max_len=max_len, prefill_chunk=max(16, a.prompt),
                 ctx_min=min(256, max_len), threads=a.threads, dspark=True)
    runs = {"plain": [], "dspark": []}
    same = True
    for rep in range(a.reps + 1):                     # rep 0 compiles every graph (not timed)
        gens = {}
        for mode in ("plain", "dspark"):
            gens[mode] = eng.generate(prompts, max_new_tokens=a.new, eos_id=None, speculative=mode == "dspark",
                                      keep_logits=False)
            if rep:
                runs[mode].append(gens[mode].stats)
        same = same and bool(np.array_equal(gens["plain"].tokens, gens["dspark"].tokens))
    rows = []
    for mode, st in runs.items():
        tps = statistics.median(s["decode_tokens_per_s"] for s in st)
        row = {"mode": mode, "decode_tokens_per_s": tps, "steps": st[-1]["steps"],
               "generated_tokens": st[-1]["generated_tokens"]}
        if mode == "dspark":
            row["acceptance_rate"] = st[-1]["acceptance_rate"]
            row["tokens_per_step"] = (st[-1]["generated_tokens"] - a.batch) / max(st[-1]["steps"], 1)
            row["equals_plain_greedy"] = same
        rows.append(row)
    ratio = rows[1]["decode_tokens_per_s"] / rows[0]["decode_tokens_per_s"]
    print(f"{a.config}, batch {a.batch}, prompt {a.prompt}, {a.new} new tokens, block {cfg.dspark_block_size}, "
          f"median of {a.reps}")
    print(f"{'mode':<8} {'decode tok/s':>13} {'steps':>6} {'accept':>7} {'tok/step':>9}")
    for r in rows:
        print(f"{r['mode']:<8} {r['decode_tokens_per_s']:>13.1f} {r['steps']:>6} "
              f"{r.get('acceptance_rate', float('nan')):>7.1%} {r.get('tokens_per_step', 1.0):>9.2f}")
    print(f"DSpark / plain decode tokens/s: {ratio:.2f}x; tokens equal plain greedy: {same}")
    report = {"bench": "decode_dspark", "config": a.config, "batch": a.batch, "prompt": a.prompt, "new": a.new,
              "reps": a.reps, "block_size": cfg.dspark_block_size, "machine": platform.platform(),
              "cpus": os.cpu_count(), "load_average": list(os.getloadavg()), "weights": "random (untrained drafter)",
              "rows": rows, "dspark_over_plain": ratio, "equals_plain_greedy": same,
              "compile_seconds": {str(k): v for k, v in eng.compile_seconds.items()}}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    write_json(a.out, report, indent=2)
    print(f"wrote {a.out}")
    if not same:
        sys.exit("error: DSpark tokens differ from plain greedy decoding")


if __name__ == "__main__":
    main()
