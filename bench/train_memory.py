"""Peak memory and step time of the train step with the memory / precision switches, side by side in one run.

    python bench/train_memory.py                          # tiny and small, B=4 x S=256, 4 steps
    python bench/train_memory.py --configs small --batch 2 --seq 512

Modes (each trains in its own subprocess, so a peak RSS — ru_maxrss of that child, from os.wait4 — is its own):
  baseline       the default step (float32, activations kept for the backward)
  recompute      train `recompute: true`: MindSpore Cell.recompute() on every block
  bf16-emulated  train `precision: bf16-emulated` (float32 arithmetic rounded to bf16 at the Ascend bf16 points)
The peak includes graph compilation and the framework itself (MindSpore's import alone is ~0.4 GB); the step time is
the median of the steps after the first (which compiles). Every mode trains the same batches from the same weights,
so the first-step losses must agree (recompute: exactly). Writes bench/results/train_memory.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

MODES = {"baseline": {}, "recompute": {"recompute": True}, "bf16-emulated": {"precision": "bf16-emulated"}}


def child(cfg_name: str, mode: str, batch: int, seq: int, steps: int, out: str) -> None:
    import resource
    import time
    from ascend_v4.runtime import setup
    setup("CPU", "graph")
    from ascend_v4.train.loop import Trainer, TrainConfig
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tc = TrainConfig.from_dict(dict(model=cfg_name, seq_len=seq, batch_size=batch, steps=steps, warmup_steps=1,
                                    eval_every=10 ** 6, save_every=10 ** 6, tensorboard=False,
                                    data={"eval_fraction": 0.0}, **MODES[mode]))
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(tc, d)
        times, losses = [], []
        tr.save = lambda: None                   # no checkpoint I/O in the measurement
        for _ in range(steps):
            t0 = time.perf_counter()
            row = tr.run(tr.step + 1)[-1]
            times.append(time.perf_counter() - t0)
            losses.append(row["loss"])
    after = sorted(times[1:])
    with open(out, "w") as fh:
        json.dump({"losses": losses, "first_step_s": times[0], "step_s": after[len(after) // 2] if after else None,
                   "import_rss_mb": base_rss}, fh)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["tiny", "small"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.batch, a.seq, a.steps, a.child_out)
        return
    rows = []
    env = dict(os.environ, GLOG_v="3")
    for cfg in a.configs:
        for mode in a.modes:
            print(f"[{cfg} / {mode}] training {a.steps} steps of B={a.batch} x S={a.seq} ...", flush=True)
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
                out = fh.name
            p = subprocess.Popen([sys.executable, __file__, "--child", cfg, mode, "--child-out", out,
                                  "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps)], env=env,
                                 stdout=subprocess.DEVNULL)
            _, status, usage = os.wait4(p.pid, 0)
            if status != 0:
                raise SystemExit(f"error: the {cfg}/{mode} child failed (exit status {status})")
            with open(out) as fh:
                r = json.load(fh)
            os.unlink(out)
            r.update(config=cfg, mode=mode, peak_rss_mb=usage.ru_maxrss / 1024)
            rows.append(r)
    print(f"\n{'config':<7} {'mode':<14} {'peak RSS MB':>12} {'vs baseline':>12} {'step s':>8} {'vs base':>8} "
          f"{'first loss':>11}")
    for r in rows:
        b = next(x for x in rows if x["config"] == r["config"] and x["mode"] == "baseline") \
            if any(x["config"] == r["config"] and x["mode"] == "baseline" for x in rows) else r
        r["peak_rss_vs_baseline_mb"] = r["peak_rss_mb"] - b["peak_rss_mb"]
        r["step_vs_baseline"] = r["step_s"] / b["step_s"] if r["step_s"] and b["step_s"] else None
        print(f"{r['config']:<7} {r['mode']:<14} {r['peak_rss_mb']:>12.0f} {r['peak_rss_vs_baseline_mb']:>+12.0f} "
              f"{r['step_s']:>8.3f} {r['step_vs_baseline'] or 0:>8.2f} {r['losses'][0]:>11.5f}")
    res = {"batch": a.batch, "seq": a.seq, "steps": a.steps, "host": platform.node(), "cpus": os.cpu_count(),
           "rows": rows}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "train_memory.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(res, fh, indent=1)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
