"""Benchmark: DeepSeek-V4.1 DSpark speculative decoding vs plain greedy decoding in the serving engine, with the
random drafter and with a drafter self-distilled on the target's own greedy continuations.

    GLOG_v=3 python bench/decode_dspark.py [--config v4.1-tiny] [--batch 1] [--prompt 48] [--new 32] [--reps 3]
                                           [--distil-steps 300] [--distil-seqs 16] [--distil-probes 3]
    GLOG_v=3 python bench/decode_dspark.py --quick

One Engine (graph mode, float32, Engram tables in host memory) built with dspark=True on random release-format
weights (ascend_v4.checkpoint.release_v41.random_weights_v41) runs the same held-out prompts with
generate(greedy) and generate(greedy, speculative=True), repetitions interleaved so a noisy shared host slows both
alike; medians reported. The peer is plain greedy decoding of the same engine, in the same run.

Two drafters:
* random: the drafter of the random weights. Its drafts are almost never the target's tokens (acceptance ~1%), so
  this row shows the overhead side: a draft and a (block + 1)-token verify per emitted token.
* self-distilled: the same target, frozen; the DSpark stages trained for --distil-steps Adam steps on the target's
  own greedy continuations of --distil-seqs other 16-token prompts (--distil-new tokens each), with the V4.1
  trainer's drafter loss (train/v41.py V41Loss: block-drafting CE + confidence BCE, teacher-forced Markov tokens;
  loss mask = the generated tokens). Measured twice: on the held-out prompts above (does it generalise?) and on
  the first training prompts (a drafter that has fitted the target's continuations there: what the verify/accept
  loop and its rollback do at high acceptance). The trained drafter reaches the engine's compiled graphs through
  Engine.load_dspark. During distillation, at --distil-probes + 1 evenly spaced steps (step 0 = the random
  drafter), the drafter so far is loaded and one DSpark generation on each prompt set gives the acceptance curve.

Per row: decode tokens/s (graph compiles excluded) and its ratio to plain greedy, verify steps, acceptance rate
(accepted drafts / drafted tokens), mean accepted length (accepted drafts per row and step), tokens per step, the
wall-time share of draft / verify / rollback in DSpark's decode time, and whether the tokens equal plain greedy
decoding (they must). Rollback: the engine rewinds each row's length into the cache's spare slots
(ascend_v4/serve/cache.py) — measured as `rollback share`. For comparison, `host-snapshot rollback` times what the
previous mechanism did per rejecting step on this engine and cache (copy every cache buffer to the host, write
them back, re-run the verify graph for the kept tokens) and the share of a step it would take at this acceptance.
Writes bench/results/decode_dspark.json (--quick: bench/results/quick/).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

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
    ap.add_argument("--distil-steps", type=int, default=None,
                    help="Adam steps of drafter self-distillation (0: skip; default 300, --quick 150)")
    ap.add_argument("--distil-seqs", type=int, default=None,
                    help="prompts whose greedy continuations train it (default 16, --quick 8)")
    ap.add_argument("--distil-new", type=int, default=48, help="generated tokens per training sequence")
    ap.add_argument("--distil-lr", type=float, default=3e-3)
    ap.add_argument("--distil-probes", type=int, default=3,
                    help="acceptance measured at this many + 1 evenly spaced distillation steps (the first: step 0)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="16 new tokens, 2 reps, 150 distillation steps on 8 sequences (unless given); results in "
                         "bench/results/quick/")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.quick:
        a.new, a.reps = 16, 2
    if a.distil_steps is None:
        a.distil_steps = 150 if a.quick else 300
    if a.distil_seqs is None:
        a.distil_seqs = 8 if a.quick else 16
    for k in ("batch", "prompt", "new", "reps", "distil_seqs", "distil_new", "distil_probes"):
        if getattr(a, k) < 1:
            sys.exit(f"error: --{k.replace('_', '-')} must be >= 1, got {getattr(a, k)}")
    if a.distil_steps < 0:
        sys.exit(f"error: --distil-steps must be >= 0, got {a.distil_steps}")
    if a.out is None:
        a.out = os.path.join(HERE, "results", *(("quick",) if a.quick else ()), "decode_dspark.json")
    return a


def _prompts(cfg, n, length, seed):
    import numpy as np
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(0, cfg.engram_compressed_vocab_size, length)
        out.append(np.where(ids == cfg.image_token_id, 0, ids))
    return out


def compare(eng, prompts, new, reps):
    """Interleaved plain / DSpark generations (rep 0 compiles, untimed) -> (stats lists per mode, tokens equal)."""
    import numpy as np
    runs = {"plain": [], "dspark": []}
    same = True
    for rep in range(reps + 1):
        gens = {}
        for mode in ("plain", "dspark"):
            gens[mode] = eng.generate(prompts, max_new_tokens=new, eos_id=None, speculative=mode == "dspark",
                                      keep_logits=False)
            if rep:
                runs[mode].append(gens[mode].stats)
        same = same and bool(np.array_equal(gens["plain"].tokens, gens["dspark"].tokens))
    return runs, same


def summarise(label, st, plain_tps, batch, same):
    med = lambda k: statistics.median(s[k] for s in st)          # noqa: E731
    last = st[-1]
    dec = med("decode_s")
    row = {"mode": label, "decode_tokens_per_s": med("decode_tokens_per_s"), "steps": last["steps"],
           "generated_tokens": last["generated_tokens"]}
    row["over_plain"] = row["decode_tokens_per_s"] / plain_tps
    if "drafts" in last and last.get("row_steps"):
        row.update(acceptance_rate=last["acceptance_rate"],
                   mean_accepted_length=last["accepted"] / last["row_steps"],
                   tokens_per_step=(last["generated_tokens"] - batch) / max(last["steps"], 1),
                   rejected_step_fraction=last["rejected_steps"] / max(last["steps"], 1),
                   draft_share=med("draft_s") / dec, verify_share=med("verify_s") / dec,
                   rollback_share=med("rollback_s") / dec,
                   step_ms=1e3 * dec / max(last["steps"], 1), equals_plain_greedy=same)
    return row


def host_snapshot_rollback_ms(eng, prompts, reps=5):
    """What the previous rollback cost per rejecting step on this engine: every cache buffer copied to the host
    and written back, and the verify graph re-run for the kept token (measured, median ms)."""
    import mindspore as ms
    import numpy as np
    bs = eng.cfg.dspark_block_size
    n = len(prompts)
    eng.prefill(prompts)
    pos0 = eng.pos.copy()
    ids = np.zeros((eng.max_batch, bs + 1), np.int64)
    keep = np.zeros(eng.max_batch, np.int64)
    keep[:n] = 1
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        snap = [p.asnumpy().copy() for p in eng.cache.params]
        for p, a in zip(eng.cache.params, snap):
            p.set_data(ms.Tensor(a))
        eng.run_main(ids, pos0, keep, logits="all", dspark=True)[0].asnumpy()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[1:])


def self_distil(cfg, weights, eng, a, held_out):
    """Train the DSpark stages (target frozen) on the target's greedy continuations -> (drafter weights by release
    name (every mtp.* tensor: the trained ones and the untouched router biases), per-step drafter loss, the
    acceptance curve: at --distil-probes + 1 evenly spaced steps the drafter so far is loaded into the engine and
    one DSpark generation runs on the held-out and on the first training prompts, seconds)."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn

    from ascend_v4.model import Transformer
    from ascend_v4.serve.engram import engram_table_names
    from ascend_v4.train.v41 import EngramSparseAdamW, V41Loss, dspark_batch
    from ascend_v4.weights import load_into
    t0 = time.perf_counter()
    plen = 16
    seqs = []
    train_prompts = _prompts(cfg, a.distil_seqs, plen, seed=1)             # not the measured prompts
    for i in range(0, len(train_prompts), eng.max_batch):
        part = train_prompts[i:i + eng.max_batch]
        g = eng.generate(part, max_new_tokens=a.distil_new, eos_id=None, keep_logits=False)
        seqs += [np.concatenate([p, g.row(k)]) for k, p in enumerate(part)]
    seqs = np.stack(seqs)                                                  # [N, plen + new]
    S = seqs.shape[1] - 1
    ids, tgt = seqs[:, :-1], seqs[:, 1:]
    mask = (np.arange(S)[None, :] + 1 >= plen).astype(np.float32) * np.ones((len(seqs), 1), np.float32)
    markov, labels, dmask = dspark_batch(tgt, mask, np.zeros_like(tgt), cfg.dspark_block_size)
    names = engram_table_names(cfg)
    feed = EngramSparseAdamW(cfg, [weights[n] for n in names]) if names else None
    rows = (np.stack(feed.rows(feed.hash(ids))) if feed is not None else np.zeros((1, 1, 1, 1), np.float32))

    model = Transformer(cfg, max_seq_len=S, with_dspark=True)
    model.set_train(True)
    load_into(model, {k: v for k, v in weights.items() if k not in names})
    loss_net = V41Loss(model, balance_alpha=0.0)
    params = [p for p in model.trainable_params() if p.name.startswith("mtp.")]      # the drafter only
    opt = nn.Adam(params, learning_rate=a.distil_lr)
    grad_fn = ms.value_and_grad(loss_net, None, opt.parameters, has_aux=True)

    @ms.jit
    def step(*args):
        out, grads = grad_fn(*args)
        opt(grads)
        return out[2]

    drafter = lambda: {p.name: p.asnumpy() for p in model.get_parameters() if p.name.startswith("mtp.")}  # noqa: E731
    seen = train_prompts[:a.batch]
    at = sorted({round(a.distil_steps * k / a.distil_probes) for k in range(a.distil_probes + 1)})

    def probe(step):
        # acceptance of the engine's drafts with the drafter as trained so far (one untimed DSpark generation)
        tp = time.perf_counter()
        eng.load_dspark(drafter())
        row = {"step": step, "draft_loss": float(np.mean(losses[-5:])) if losses else None}
        for label, ps in (("held_out", held_out), ("training", seen)):
            g = eng.generate(ps, max_new_tokens=a.new, eos_id=None, speculative=True, keep_logits=False)
            row[f"acceptance_{label}"] = g.stats["acceptance_rate"]
        row["seconds"] = time.perf_counter() - tp
        curve.append(row)

    t = ms.Tensor
    B = min(4, len(seqs))
    rng = np.random.default_rng(2)
    losses, curve = [], []
    for i in range(a.distil_steps):
        if i in at:
            probe(i)
        b = rng.choice(len(seqs), B, replace=False)
        args = (t(ids[b].astype(np.int32)), t(rows[:, b] if feed is not None else rows), t(tgt[b].astype(np.int32)),
                t(mask[b]), t(markov[b]), t(labels[b]), t(dmask[b]), t(np.float32(1.0)),
                t(np.float32(max(mask[b].sum(), 1.0))), t(np.float32(max(dmask[b].sum(), 1.0))))
        losses.append(float(step(*args).asnumpy()))
    probe(a.distil_steps)
    return drafter(), losses, curve, time.perf_counter() - t0 - sum(r.pop("seconds", 0) for r in curve)


def main():
    a = parse()
    import numpy as np

    from ascend_v4.atomic import write_json
    from ascend_v4.checkpoint.release_v41 import random_weights_v41
    from ascend_v4.config import V41_PRESETS
    from ascend_v4.serve.engine import Engine
    if a.config not in V41_PRESETS:
        sys.exit(f"error: --config {a.config} is not a DeepSeek-V4.1 preset; choose one of {sorted(V41_PRESETS)}")
    cfg = V41_PRESETS[a.config].validate()
    weights = random_weights_v41(cfg, seed=0)
    prompts = _prompts(cfg, a.batch, a.prompt, seed=0)
    max_len = 64
    while max_len < max(a.prompt + a.new, 16 + a.distil_new) + cfg.dspark_block_size:
        max_len *= 2
    eng = Engine(cfg, weights, max_batch=a.batch, max_len=max_len, prefill_chunk=max(16, a.prompt),
                 ctx_min=min(256, max_len), threads=a.threads, dspark=True)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)   # noqa: E731
    log("plain vs DSpark (random drafter)")
    runs, same = compare(eng, prompts, a.new, a.reps)
    plain_tps = statistics.median(s["decode_tokens_per_s"] for s in runs["plain"])
    rows = [summarise("plain", runs["plain"], plain_tps, a.batch, True),
            summarise("dspark (random drafter)", runs["dspark"], plain_tps, a.batch, same)]
    log("host-snapshot rollback cost")
    old_ms = host_snapshot_rollback_ms(eng, prompts)
    distil = None
    if a.distil_steps:
        log(f"self-distillation ({a.distil_steps} steps)")
        trained, losses, curve, secs = self_distil(cfg, weights, eng, a, prompts)
        eng.load_dspark(trained)          # exactly the drafter's tensors; the compiled graphs read these Parameters
        # held-out prompts (the measured ones), then the first training prompts, whose continuations it has fitted
        seen = _prompts(cfg, a.distil_seqs, 16, seed=1)[:a.batch]
        plain_d = {}
        for label, ps, new in (("held-out prompts", prompts, a.new), ("training prompts", seen, a.new)):
            log(f"plain vs DSpark (self-distilled drafter, {label})")
            runs_d, same_d = compare(eng, ps, new, a.reps)
            plain_d[label] = statistics.median(s["decode_tokens_per_s"] for s in runs_d["plain"])
            rows.append(summarise(f"dspark (distilled, {label.split()[0]})", runs_d["dspark"], plain_d[label],
                                  a.batch, same_d))
            same = same and same_d
        k = max(1, len(losses) // 10)
        distil = {"steps": a.distil_steps, "sequences": a.distil_seqs, "generated_per_sequence": a.distil_new,
                  "lr": a.distil_lr, "draft_loss_first": float(np.mean(losses[:k])),
                  "draft_loss_last": float(np.mean(losses[-k:])), "seconds": secs, "acceptance_curve": curve,
                  "plain_tokens_per_s_same_run": plain_d}
    for r in rows[1:]:      # the previous mechanism at this acceptance: a snapshot + re-run per rejecting step
        step_now = r["step_ms"] * (1 - r["rollback_share"])
        extra = old_ms * r["rejected_step_fraction"]
        r["host_snapshot_rollback_share"] = extra / (step_now + extra)
    print(f"{a.config}, batch {a.batch}, prompt {a.prompt}, {a.new} new tokens, block {cfg.dspark_block_size}, "
          f"median of {a.reps}; host-snapshot rollback (previous mechanism) {old_ms:.1f} ms per rejecting step")
    hdr = (f"{'mode':<30} {'tok/s':>7} {'vs plain':>8} {'steps':>5} {'accept':>7} {'acc.len':>7} {'tok/step':>8} "
           f"{'draft':>6} {'verify':>6} {'rollbk':>6} {'rollbk(old)':>11} {'==greedy':>8}")
    print(hdr)
    nan = float("nan")
    for r in rows:
        print(f"{r['mode']:<30} {r['decode_tokens_per_s']:>7.1f} {r['over_plain']:>7.2f}x {r['steps']:>5} "
              f"{r.get('acceptance_rate', nan):>7.1%} {r.get('mean_accepted_length', nan):>7.2f} "
              f"{r.get('tokens_per_step', 1.0):>8.2f} {r.get('draft_share', nan):>6.1%} "
              f"{r.get('verify_share', nan):>6.1%} {r.get('rollback_share', nan):>6.2%} "
              f"{r.get('host_snapshot_rollback_share', nan):>11.1%} {str(r.get('equals_plain_greedy', '')):>8}")
    if distil:
        print(f"self-distillation: {distil['steps']} steps on {distil['sequences']} greedy continuations, drafter "
              f"loss {distil['draft_loss_first']:.2f} -> {distil['draft_loss_last']:.2f}, {distil['seconds']:.0f} s")
        print("acceptance of the engine's drafts during distillation (one DSpark generation per point):")
        for r in distil["acceptance_curve"]:
            loss = "" if r["draft_loss"] is None else f"{r['draft_loss']:.2f}"
            print(f"  step {r['step']:>4}  drafter loss {loss:>5}  held-out {r['acceptance_held_out']:>6.1%}  "
                  f"training prompts {r['acceptance_training']:>6.1%}")
    print(f"tokens equal plain greedy: {same}")
    report = {"bench": "decode_dspark", "config": a.config, "batch": a.batch, "prompt": a.prompt, "new": a.new,
              "reps": a.reps, "block_size": cfg.dspark_block_size, "machine": platform.platform(),
              "cpus": os.cpu_count(), "load_average": list(os.getloadavg()),
              "weights": "random target; drafter random, then self-distilled", "rows": rows,
              "dspark_over_plain": rows[1]["over_plain"], "equals_plain_greedy": same,
              "host_snapshot_rollback_ms_per_rejecting_step": old_ms, "self_distillation": distil,
              "compile_seconds": {str(k): v for k, v in eng.compile_seconds.items()}}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    write_json(a.out, report, indent=2)
    print(f"wrote {a.out}")
    if not same:
        sys.exit("error: DSpark tokens differ from plain greedy decoding")


if __name__ == "__main__":
    main()
