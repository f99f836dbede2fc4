"""`ascend-v4 plot RUN [RUN...] --out loss.png`: the curves of one or more runs' metrics.jsonl (matplotlib).

Four panels: training loss (solid) with eval loss (markers), learning rate, gradient norm (before clipping), and the
expert load balance (max/mean tokens per expert) of every routed layer - one line per layer for one run, the
mean over layers per run when several runs are compared. The image is written to a temporary name and renamed.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

from ..atomic import atomic_write
from .state import TrainStateError


def read_metrics(run: str) -> List[Dict]:
    """The step rows of a run directory's (or a file's) metrics.jsonl; a torn last line is skipped."""
    path = os.path.join(run, "metrics.jsonl") if os.path.isdir(run) else run
    if not os.path.isfile(path):
        raise TrainStateError(f"{run}: no metrics.jsonl; pass a `train --out` directory or a metrics.jsonl file")
    rows = []
    with open(path, errors="replace") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    if not rows:
        raise TrainStateError(f"{path} holds no step rows yet")
    by_step = {r["step"]: r for r in rows}        # a re-run step (old metrics) keeps its latest value
    return [by_step[s] for s in sorted(by_step)]


def plot_runs(runs: List[str], out_path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {run: read_metrics(run) for run in runs}
    labels = {run: os.path.basename(os.path.normpath(run)) or run for run in runs}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (ax_loss, ax_lr), (ax_g, ax_bal) = axes
    for run, rows in data.items():
        steps = [r["step"] for r in rows]
        line, = ax_loss.plot(steps, [r.get("loss") for r in rows], label=f"{labels[run]} loss")
        ev = [(r["step"], r["eval_loss"]) for r in rows if isinstance(r.get("eval_loss"), (int, float))]
        if ev:
            ax_loss.plot(*zip(*ev), "o--", color=line.get_color(), label=f"{labels[run]} eval")
        ax_lr.plot(steps, [r.get("lr") for r in rows], label=labels[run])
        ax_g.plot(steps, [r.get("grad_norm") for r in rows], label=labels[run])
        per_layer = [r.get("expert_imbalance_layers") for r in rows]
        if len(runs) == 1 and all(isinstance(v, list) and v for v in per_layer):
            for i in range(min(len(v) for v in per_layer)):
                ax_bal.plot(steps, [v[i] for v in per_layer], label=f"routed layer {i}")
        else:
            ax_bal.plot(steps, [r.get("expert_imbalance") for r in rows], label=f"{labels[run]} (mean of layers)")
    for ax, title, ylabel in ((ax_loss, "loss", "cross entropy"), (ax_lr, "learning rate", "lr"),
                              (ax_g, "gradient norm", "|g| (before clipping)"),
                              (ax_bal, "expert load balance", "max / mean expert load")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_path = os.fspath(out_path)
    ext = os.path.splitext(out_path)[1]
    fmt = (ext[1:] or "png").lower()
    try:
        with atomic_write(out_path, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=110)
    except ValueError as e:
        raise TrainStateError(f"--out {out_path}: cannot write this image format ({e}); use .png, .svg or .pdf") \
            from None
    finally:
        plt.close(fig)
    n = sum(len(r) for r in data.values())
    return f"wrote {out_path}: {len(runs)} run(s), {n} steps"
