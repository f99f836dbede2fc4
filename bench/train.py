"""Training throughput and memory on CPU: our graph-mode train step vs transformers' DeepseekV4ForCausalLM + AdamW.

    python bench/train.py                        # tiny and small, B=4 x S=128, 2 interleaved repetitions
    python bench/train.py --quick                # tiny only, B=2 x S=64, 1 repetition, 3 measured steps
    python bench/train.py --configs small --batch 2 --seq 256 --steps 10 --reps 3

Each side trains in its own subprocess, so the peak RSS of a run (ru_maxrss of that child, from os.wait4) is its own;
the children get the same thread count (MindSpore's CPU pool via ascend_v4.runtime.setup, OMP_NUM_THREADS for our C++
kernels, torch.set_num_threads). Repetitions alternate the order (ours, transformers / transformers, ours) so a noisy
shared machine slows both alike. Both sides start from the same random official-format weights (router biases zeroed,
as `ascend-v4 train` does) and consume the same token batches in the same order: real text from the embedded corpus
packed by the project's loader, each row treated as one sequence (no document masking: transformers has none).

What each side computes per step (identical forward geometry and weights, float32):
  ours          ascend_v4.train Trainer's compiled TrainStep (one ms.jit graph): next-token CE + depth-1 MTP CE
                (weight 0.3) + sequence-wise balance loss, backward, global-norm clipping (1.0), Muon (Newton-Schulz,
                per matrix) + AdamW, aux-loss-free router-bias update.
  transformers  DeepseekV4ForCausalLM (eager) forward, next-token CE on the logits, backward, clip_grad_norm_(1.0),
                torch.optim.AdamW. transformers has no MTP module (its forward drops the `mtp.*` weights), adds no
                balance loss by default (output_router_logits=False) and has no bias balancer; AdamW does no
                Newton-Schulz. So ours does strictly more work per token (one extra block + head for MTP).
                --no-mtp turns our MTP off for a like-for-like model.
Also (unless --no-phases) where a step goes: forward, forward+backward and the optimiser update in ms — ours from
each part compiled separately after the measured steps, transformers timed inside its steps (clip + AdamW).
Reported: compile time (first step, includes graph compilation for ours / first-call warm-up for transformers)
separately from the steady-state step time (median over the measured steps of all repetitions, after --warmup
steps), tokens/s = B*S / median step, tokens per CPU-second (process CPU time of all threads; far less
sensitive than wall time to other processes on a shared machine), peak RSS and the RSS right after the imports
(framework baseline), the ratios ours/transformers, and the first-step LM loss of both (same weights and tokens).
transformers as shipped differs from ours where the indexer's top-k is a real choice (index_topk below the visible
compressed entries: tiny, not small): it scores exactly instead of DeepSeek's Hadamard + FP4 q/k, and takes
torch.topk's order among exactly tied scores. So the transformers worker also reports the first loss with the
harness's FP4 simulation and ties to the lower id (hf_matched_lm_loss, untimed): that one must agree with ours.
Writes bench/results/train.json (atomically) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2, help="steps after the first (compile) step not timed")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per repetition")
    ap.add_argument("--reps", type=int, default=2, help="repetitions per side (separate processes, order alternates)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--no-mtp", action="store_true", help="train ours without the MTP block (like transformers)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed per child process")
    ap.add_argument("--no-phases", dest="phases", action="store_false",
                    help="skip the per-part timing (forward / forward+backward / optimiser) after the measured steps")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny only, B=2 x S=64, 1 rep, 1+3 steps")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "train.json"))
    # internal: one side in a child process
    ap.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.configs, a.batch, a.seq, a.warmup, a.steps, a.reps = "tiny", 2, 64, 1, 3, 1
    for k in ("batch", "seq", "steps", "reps", "threads"):
        if getattr(a, k) < 1:
            ap.error(f"--{k} must be >= 1")
    if a.warmup < 0:
        ap.error("--warmup must be >= 0")
    return a


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0      # Linux: KiB


def _weights(cfg):
    """The run's initial weights: random official-format tensors, router biases zeroed (as Trainer does)."""
    import numpy as np
    from ascend_v4.checkpoint import random_weights
    w = random_weights(cfg, seed=0)
    for n in w:
        if n.endswith("ffn.gate.bias"):
            w[n] = np.zeros_like(w[n])
    return w


# ------------------------------------------------------------------------------------------------ workers
def worker_ours(a) -> dict:
    import numpy as np
    from ascend_v4.runtime import setup
    setup("CPU", "graph", a.threads)
    import mindspore  # noqa: F401
    rss_import = _rss_mb()
    from ascend_v4.train.loop import TrainConfig, Trainer
    batches = dict(np.load(a.data))
    n_steps = batches["input_ids"].shape[0]
    B, S = batches["input_ids"].shape[1:]
    run_dir = tempfile.mkdtemp(prefix="bench_train_ours_")
    try:
        tc = TrainConfig.from_dict(dict(model=a.config, seq_len=int(S), batch_size=int(B), steps=n_steps, lr=a.lr,
                                        warmup_steps=0, eval_every=10 ** 6, save_every=10 ** 6, mtp=not a.no_mtp,
                                        data={"eval_fraction": 0.0}))
        tr = Trainer(tc, run_dir)       # initial weights: random_weights(cfg, seed 0), biases zeroed = _weights()
        rss_built = _rss_mb()
        times, cpu, losses = [], [], []
        for i in range(n_steps):
            b = {k: v[i] for k, v in batches.items()}
            m = b["loss_mask"].astype(np.float64)
            same = b["segment_ids"][:, :-1] == b["segment_ids"][:, 1:]
            mtp_w = float(tr.schedule.mtp_weight_at(i + 1)) if tc.mtp else 0.0
            t0, c0 = time.perf_counter(), time.process_time()
            out = [float(o.asnumpy()) for o in tr.step_fn(b, mtp_w, max(m.sum(), 1.0),
                                                          max((m[:, 1:] * same).sum(), 1.0))]
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            losses.append({"loss": out[0], "lm": out[1], "mtp": out[2], "balance": out[3], "grad_norm": out[4]})
            if not np.isfinite(out[0]):
                raise FloatingPointError(f"ours: loss {out[0]} at step {i + 1}")
        peak_train = _rss_mb()          # before the phase graphs, which add their own compiled memory
        phases = _phases_ours(tr, {k: v[-1] for k, v in batches.items()}, tc.mtp) if a.phases else None
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    from ascend_v4 import ops as v4ops
    return {"times": times, "cpu_times": cpu, "losses": losses, "rss_after_import_mb": rss_import,
            "rss_after_build_mb": rss_built, "backends": v4ops.selected(), "mtp": not a.no_mtp, "phases": phases,
            "peak_rss_train_mb": peak_train}


def _phases_ours(tr, b, mtp, calls=3) -> dict:
    """Median ms of the train step's parts, each compiled on its own after the measured steps (the fused step
    overlaps nothing on CPU, so the parts add up to roughly one step): the loss forward, forward + backward
    (value_and_grad), and the optimiser update (clip excluded) applied to fixed gradients."""
    import numpy as np
    import mindspore as ms
    T = ms.Tensor
    m = b["loss_mask"].astype(np.float64)
    same = b["segment_ids"][:, :-1] == b["segment_ids"][:, 1:]
    args = (T(b["input_ids"].astype(np.int32)), T(b["targets"].astype(np.int32)),
            T(b["segment_ids"].astype(np.int32)), T(b["loss_mask"].astype(np.float32)),
            T(np.float32(0.3 if mtp else 0.0)), T(np.float32(max(m.sum(), 1.0))),
            T(np.float32(max((m[:, 1:] * same).sum(), 1.0))))
    fwd = ms.jit(tr.loss_net)
    grad = ms.jit(ms.value_and_grad(tr.loss_net, None, tr.opt.parameters, has_aux=True))
    grads = ms.mutable(tuple(grad(*args)[1]))

    def update(g):
        return tr.opt(g)

    upd = ms.jit(update)
    probe = tr.opt.parameters[0]

    def run_fwd():
        fwd(*args)[0].asnumpy()

    def run_grad():
        grad(*args)[0][0].asnumpy()

    def run_upd():
        upd(grads)
        probe.asnumpy()          # waits for the update

    out = {}
    for name, fn in (("forward", run_fwd), ("forward_backward", run_grad), ("optimizer", run_upd)):
        fn()                     # compile
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            ts.append(1e3 * (time.perf_counter() - t0))
        out[name] = statistics.median(ts)
    return out


def worker_hf(a) -> dict:
    import numpy as np
    import torch
    torch.set_num_threads(a.threads)
    sys.path.insert(0, ROOT)
    from tests.hf_reference import build_hf_model
    rss_import = _rss_mb()
    from ascend_v4 import load_config
    cfg = load_config(a.config)
    batches = dict(np.load(a.data))
    n_steps = batches["input_ids"].shape[0]
    model = build_hf_model(cfg, _weights(cfg))
    if hasattr(model, "mtp"):        # the harness's MTP blocks: transformers' forward never runs them
        del model.mtp
    model.train()
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    rss_built = _rss_mb()
    times, cpu, losses, parts = [], [], [], []
    for i in range(n_steps):
        ids = torch.from_numpy(batches["input_ids"][i].astype(np.int64))
        tgt = torch.from_numpy(batches["targets"][i].astype(np.int64))
        t0, c0 = time.perf_counter(), time.process_time()
        logits = model(input_ids=ids, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lv = float(loss.detach())
        times.append(time.perf_counter() - t0)
        parts.append((t1 - t0, t2 - t0, times[-1] - (t2 - t0)))
        cpu.append(time.process_time() - c0)
        losses.append({"loss": lv, "lm": lv, "grad_norm": float(gn)})
        if not np.isfinite(lv):
            raise FloatingPointError(f"transformers: loss {lv} at step {i + 1}")
    del model, opt, params, logits, loss
    matched = hf_matched_lm_loss(cfg, _weights(cfg), batches["input_ids"][0], batches["targets"][0])
    import transformers
    steady = parts[1 + a.warmup:] or parts
    phases = {k: 1e3 * statistics.median(p[j] for p in steady)
              for j, k in enumerate(("forward", "forward_backward", "optimizer"))}
    return {"times": times, "cpu_times": cpu, "losses": losses, "rss_after_import_mb": rss_import,
            "rss_after_build_mb": rss_built, "phases": phases, "first_lm_loss_matched": matched,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}


def hf_matched_lm_loss(cfg, weights, ids, targets) -> float:
    """transformers' LM loss (mean next-token CE over every position, float64 on its float32 logits) when it computes
    what ours computes: the harness's indexer FP4 simulation (Hadamard + FP4 q/k, when the config's `indexer_fp4`
    is on) and top-k ties broken to the lower entry id. Forward only, no grad, outside the timed steps.

    The trained peer runs as shipped: it scores the indexer exactly and takes torch.topk's order among exactly
    tied scores (ReLU zeroes whole heads, so a query's k-th and (k+1)-th scores are often both 0 when index_topk
    is smaller than the visible entries). Both change which compressed entries attention reads, so its first loss
    differs from ours by more than float noise (docs/performance.md, "Training step")."""
    import numpy as np
    import torch
    sys.path.insert(0, ROOT)
    from tests.hf_reference import build_hf_model
    model = build_hf_model(cfg, weights, spec_fixes=("indexer_fp4_sim",) if cfg.indexer_fp4 else False,
                           deterministic_topk=True)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(np.asarray(ids, np.int64)), use_cache=False).logits
    lg = logits.reshape(-1, logits.shape[-1]).double()
    return float(torch.nn.functional.cross_entropy(lg, torch.from_numpy(np.asarray(targets, np.int64)).reshape(-1)))


# ------------------------------------------------------------------------------------------------ parent
def make_batches(cfg, B, S, n, path):
    """n batches of B rows x S tokens of real text (embedded corpus, the project's tokenizer and packer); every row
    is one sequence (segment 0, all positions in the loss)."""
    import numpy as np
    from ascend_v4.train.corpus import default_corpus_files, default_tokenizer
    from ascend_v4.train.data import PackedLoader
    cache = tempfile.mkdtemp(prefix="bench_train_data_")
    try:
        tok = default_tokenizer(cfg.vocab_size, os.path.join(cache, "tok"))
        ld = PackedLoader(default_corpus_files(), tok, S, B, seed=0, cache_dir=os.path.join(cache, "c"))
        rows = [next(ld) for _ in range(n)]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    ids = np.stack([r["input_ids"] for r in rows]).astype(np.int32)
    tgt = np.stack([r["targets"] for r in rows]).astype(np.int32)
    np.savez(path, input_ids=ids, targets=tgt, segment_ids=np.zeros_like(ids),
             loss_mask=np.ones(ids.shape, np.float32))


def run_child(a, side, config, data):
    """One side in a fresh process; returns its result dict with the child's peak RSS (os.wait4)."""
    env = dict(os.environ, GLOG_v="3", OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(a.threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--config", config, "--data", data,
           "--threads", str(a.threads), "--lr", str(a.lr)] + (["--no-mtp"] if a.no_mtp else []) + \
        ([] if a.phases else ["--no-phases"])
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=tempfile.gettempdir())
        timer = threading.Timer(a.timeout, p.kill)
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith("RESULT ")]
        if p.returncode != 0 or not lines:
            tail = "\n".join(err.read().splitlines()[-15:])
            raise RuntimeError(f"{side} worker for {config} failed (exit {p.returncode}):\n{tail}")
    res = json.loads(lines[-1][len("RESULT "):])
    res["peak_rss_process_mb"] = ru.ru_maxrss / 1024.0
    # the training part's peak (ours measures its phases afterwards, in extra graphs)
    res["peak_rss_mb"] = res.get("peak_rss_train_mb") or res["peak_rss_process_mb"]
    return res


def summarize(a, config, runs):
    skip = 1 + a.warmup
    row = {"config": config, "batch": a.batch, "seq": a.seq, "tokens_per_step": a.batch * a.seq}
    for side in ("ours", "hf"):
        rs = runs[side]
        steady = [t for r in rs for t in r["times"][skip:]]
        med = statistics.median(steady)
        cpu_med = statistics.median([t for r in rs for t in r["cpu_times"][skip:]])
        row[side] = {
            "compile_or_first_step_s": statistics.median(r["times"][0] for r in rs),
            "first_step_s_per_rep": [r["times"][0] for r in rs],
            "step_s_median": med, "step_s_min": min(steady),
            "step_s_median_per_rep": [statistics.median(r["times"][skip:]) for r in rs],
            "tokens_per_s": a.batch * a.seq / med,
            "cpu_s_per_step_median": cpu_med, "tokens_per_cpu_s": a.batch * a.seq / cpu_med,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "rss_after_import_mb": statistics.median(r["rss_after_import_mb"] for r in rs),
            "rss_after_build_mb": statistics.median(r["rss_after_build_mb"] for r in rs),
            "first_lm_loss": rs[0]["losses"][0]["lm"], "last_loss": rs[0]["losses"][-1]["loss"],
            "losses_rep0": rs[0]["losses"],
        }
        ph = [r["phases"] for r in rs if r.get("phases")]
        if ph:
            row[side]["phase_ms"] = {k: statistics.median(p[k] for p in ph) for k in ph[0]}
        for k in ("backends", "versions", "mtp"):
            if k in rs[0]:
                row[side][k] = rs[0][k]
    row["tokens_per_s_ratio_ours_over_hf"] = row["ours"]["tokens_per_s"] / row["hf"]["tokens_per_s"]
    row["tokens_per_cpu_s_ratio_ours_over_hf"] = row["ours"]["tokens_per_cpu_s"] / row["hf"]["tokens_per_cpu_s"]
    row["peak_rss_ratio_ours_over_hf"] = row["ours"]["peak_rss_mb"] / row["hf"]["peak_rss_mb"]
    row["first_lm_loss_abs_diff"] = abs(row["ours"]["first_lm_loss"] - row["hf"]["first_lm_loss"])
    matched = runs["hf"][0].get("first_lm_loss_matched")
    if matched is not None:     # transformers computing what ours computes (hf_matched_lm_loss)
        row["hf"]["first_lm_loss_matched"] = matched
        row["first_lm_loss_abs_diff_matched"] = abs(row["ours"]["first_lm_loss"] - matched)
    return row


def main(a):
    from ascend_v4 import load_config
    n_steps = 1 + a.warmup + a.steps
    report = {"bench": "train", "args": {k: v for k, v in vars(a).items() if k not in ("worker", "config", "data")},
              "machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "cpus": os.cpu_count(), "threads": a.threads, "load_avg_start": os.getloadavg()},
              "rows": []}
    tmp = tempfile.mkdtemp(prefix="bench_train_")
    try:
        for name in [c for c in a.configs.split(",") if c]:
            cfg = load_config(name)
            data = os.path.join(tmp, f"{name}.npz")
            make_batches(cfg, a.batch, a.seq, n_steps, data)
            runs = {"ours": [], "hf": []}
            for rep in range(a.reps):
                for side in (("ours", "hf") if rep % 2 == 0 else ("hf", "ours")):
                    t0 = time.perf_counter()
                    r = run_child(a, side, name, data)
                    runs[side].append(r)
                    print(f"  {name} rep {rep + 1}/{a.reps} {side:<4}: first step {r['times'][0]:6.1f} s, steady "
                          f"{1e3 * statistics.median(r['times'][1 + a.warmup:]):8.1f} ms/step, peak RSS "
                          f"{r['peak_rss_mb']:7.0f} MB  ({time.perf_counter() - t0:.0f} s)", flush=True)
            report["rows"].append(summarize(a, name, runs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["machine"]["load_avg_end"] = os.getloadavg()
    print_table(a, report["rows"])
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    from ascend_v4.atomic import write_json   # here: importing ascend_v4 sets OMP env for the peers
    write_json(a.out, report, indent=2)
    print(f"wrote {a.out}")
    return report


def print_table(a, rows):
    print(f"\ntrain step, float32, {a.threads} thread(s), median of {a.steps} steps x {a.reps} rep(s) after "
          f"{a.warmup} warm-up step(s); ours = lm{'' if a.no_mtp else ' + MTP'} + balance, Muon+AdamW; "
          "transformers = lm CE, AdamW, no MTP")
    head = (f"{'config':<7}{'BxS':>8}{'side':>14}{'compile/1st s':>15}{'ms/step':>10}{'tok/s':>9}{'tok/CPU-s':>11}"
            f"{'peak RSS MB':>13}{'import RSS':>12}{'1st lm loss':>13}")
    print(head)
    print("-" * len(head))
    for r in rows:
        for side, label in (("ours", "ours"), ("hf", "transformers")):
            s = r[side]
            print(f"{r['config']:<7}{str(r['batch']) + 'x' + str(r['seq']):>8}{label:>14}"
                  f"{s['compile_or_first_step_s']:>15.1f}{1e3 * s['step_s_median']:>10.1f}{s['tokens_per_s']:>9.0f}"
                  f"{s['tokens_per_cpu_s']:>11.0f}{s['peak_rss_mb']:>13.0f}{s['rss_after_import_mb']:>12.0f}"
                  f"{s['first_lm_loss']:>13.4f}")
        print(f"{'':<7}{'':>8}{'ours/hf':>14}{'':>15}{'':>10}{r['tokens_per_s_ratio_ours_over_hf']:>8.2f}x"
              f"{r['tokens_per_cpu_s_ratio_ours_over_hf']:>10.2f}x{r['peak_rss_ratio_ours_over_hf']:>12.2f}x{'':>12}"
              f"{'|diff| %.1e' % r['first_lm_loss_abs_diff']:>13}")
    for r in rows:
        if "first_lm_loss_abs_diff_matched" in r:
            print(f"{r['config']}: 1st lm loss, transformers with the indexer's FP4 simulation and top-k ties to the "
                  f"lower id (what ours computes): {r['hf']['first_lm_loss_matched']:.6f}, |diff| "
                  f"{r['first_lm_loss_abs_diff_matched']:.1e}; as shipped it scores the indexer exactly and breaks "
                  f"exact score ties in torch.topk's order (docs/performance.md)")
    rows = [r for r in rows if "phase_ms" in r["ours"] and "phase_ms" in r["hf"]]
    if rows:
        print("\nwhere a step goes, ms (ours: each part compiled on its own; transformers: timed inside its steps)")
        head = f"{'config':<7}{'part':>18}{'ours':>10}{'transformers':>14}{'ours/hf':>9}"
        print(head)
        print("-" * len(head))
        for r in rows:
            for k in ("forward", "forward_backward", "optimizer"):
                o, h = r["ours"]["phase_ms"][k], r["hf"]["phase_ms"][k]
                print(f"{r['config']:<7}{k:>18}{o:>10.1f}{h:>14.1f}{o / h:>8.2f}x")


if __name__ == "__main__":
    ARGS = parse()
    os.environ.setdefault("GLOG_v", "3")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")     # before torch or mindspore loads libgomp
    if ARGS.worker:
        fn = worker_ours if ARGS.worker == "ours" else worker_hf
        print("RESULT " + json.dumps(fn(ARGS)), flush=True)
    else:
        main(ARGS)
