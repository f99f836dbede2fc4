"""DeepSeek-V4.1 training under msrun (dp, tp, dp·ep, pp·micro-batches, ZeRO-1) against one process training the same global batch
(docs/training.md, "DeepSeek-V4.1"), on v4.1-tiny: 2 steps of a global batch of 2 x 16 tokens, the DSpark drafter
and both Engram layers trained, no eval (each compile of the 10-layer + 3-stage model costs minutes on CPU).

Each run's per-step loss / lm / drafter / balance / grad-norm / expert-imbalance, its step-2 model.safetensors (full
release tensors, gathered on save) and every rank's Engram tables (weights, moments, row counts) are compared with
the single-process run; the Engram tables and their row state (each rank's rows, gathered: under tp a rank holds
a row range, under ZeRO-1 a dp share of the rows' state) must be bit-identical across the ranks of a run (every
rank applies the same sparse update to the rows of the whole global batch that it holds). The dp=2 run is then
relaunched from its step-1 checkpoint and must reach its own step-2 state bit for bit (model, optimiser, Engram
state); so is the pp=2 · micro_batches=2 run (train/pipeline.py V41PipelineTrainStep; observed: weights 1.5e-5,
Engram rows 4.8e-7, drafter loss 1.4e-7 relative; 9 + 6.5 min for its two launches). ZeRO-1 over dp=2 is compared
with the unsharded dp=2 run bit for bit (and resumed; 3 launches, ~26 min). Not in .ci/run; docs/training.md
("DeepSeek-V4.1") says how to run them.

Tolerances (float32 summation order over dp / tp / ep partial sums; adam_eps 1e-4 for the reason given in
tests/train/test_msrun_parallel.py): losses 2e-5 relative (observed <= 3.3e-6, the tp=2 drafter loss at step 2),
grad norm 1e-4 relative (observed <= 2.6e-5, tp=2), weights 1e-4 absolute + 1e-4 relative (observed <= 1.7e-5, in
layers.5.hc_ffn_fn), Engram tables 5e-6 absolute (observed <= 8.9e-7, dp=2). Expert imbalance and the rows each step
touches are exact. Measured on the loaded 2-core host: one process 12.5 min, each 2-worker msrun 8-9.5 min.

The msrun entry is this file (`v41-worker CONFIG OUT`): the `ascend-v4 train` sequence (distributed, Trainer,
resume, run) plus dumps of the Engram state (gathered, a collective) and of this rank's own rows.
"""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from run_dirs import (assert_runs_match, assert_same_tensors, assert_weights_match, launch_msrun, msrun_env,
                      run_metrics, run_weights)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]     # dp2 + resume: ~30 min on the loaded host

STEPS = 2


def _yaml(path, batch, parallel):
    path.write_text(f"model: v4.1-tiny\nseq_len: 16\nbatch_size: {batch}\nsteps: {STEPS}\nwarmup_steps: 1\n"
                    f"lr: 3.0e-3\neval_every: 1000\nsave_every: 1\nadam_eps: 1.0e-4\ntensorboard: false\n"
                    f"data: {{eval_fraction: 0.0}}\nparallel: {parallel}\n")


def _worker(cfg_path, out):
    from ascend_v4.runtime import setup
    setup(None, "graph", None, training=True)
    from ascend_v4.train.loop import TrainConfig, Trainer, distributed
    tc = TrainConfig.from_yaml(cfg_path)
    rank, world = distributed(tc)
    tr = Trainer(tc, out, rank, world)
    tr.maybe_resume()
    tr.run()
    np.savez(os.path.join(out, f"engram_rank{rank}.npz"), **tr.engram.state_dict())    # gathered (collective)
    np.savez(os.path.join(out, f"engram_local_rank{rank}.npz"), **tr.engram.local_state())


def _single(tmp_path, name="one"):
    _yaml(tmp_path / f"{name}.yaml", 2, "{dp: 1}")
    t0 = time.time()
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "v41-worker", str(tmp_path / f"{name}.yaml"),
                        str(tmp_path / name)], env=msrun_env(), capture_output=True, text=True, timeout=1500,
                       cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    print(f"single-process reference: {time.time() - t0:.0f}s")
    return str(tmp_path / name)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    return _single(tmp_path_factory.mktemp("v41single"))


def _msrun(tmp_path, cfg_path, out):
    """-> the workers' logs."""
    return launch_msrun(tmp_path, [os.path.abspath(__file__), "v41-worker", cfg_path, out],
                        tmp_path / f"logs_{os.path.basename(out)}")


def _engram(out, rank):
    with np.load(os.path.join(out, f"engram_rank{rank}.npz")) as z:
        return {k: z[k] for k in z.files}


def _compare_runs(ref, par, workers=2):
    """-> (max |dw| of the model, max |d table| of the Engram tables) against the single-process run."""
    a, _ = assert_runs_match(ref, par, STEPS)
    assert all(r["mtp_loss"] > 0 for r in a)               # the drafter trains
    assert any(k.startswith("mtp.2.markov_head") for k in run_weights(ref, STEPS))
    dw = assert_weights_match(ref, par, STEPS, atol=1e-4)       # full release tensors, not a rank's slice
    ea = _engram(ref, 0)
    e0 = _engram(par, 0)
    for r in range(1, workers):                          # the gathered state: the same bits on every rank
        er = _engram(par, r)
        for k in e0:
            np.testing.assert_array_equal(er[k], e0[k], err_msg=f"rank {r} {k}")
    de = 0.0
    for k in ea:
        if k.endswith(".count"):                          # rows touched per step: the same rows as one process
            np.testing.assert_array_equal(e0[k], ea[k], err_msg=k)
            assert (ea[k] > 0).any()
        elif k.endswith(".weight"):
            np.testing.assert_allclose(e0[k], ea[k], rtol=0, atol=5e-6, err_msg=k)
            de = max(de, float(np.abs(e0[k].astype(np.float64) - ea[k]).max()))
    # the step-2 checkpoint's Engram state is rank 0's
    with np.load(os.path.join(par, f"ckpt-{STEPS:08d}", "engram_state.npz")) as z:
        for k in e0:
            np.testing.assert_array_equal(z[k], e0[k], err_msg=k)
    return dw, de


def test_v41_dp2_trains_like_one_process_and_resumes(single_run, tmp_path):
    _yaml(tmp_path / "dp2.yaml", 1, "{dp: 2}")
    out = tmp_path / "dp2"
    _msrun(tmp_path, tmp_path / "dp2.yaml", out)
    print("dp2 max |dw|, |d engram|", _compare_runs(single_run, str(out)))
    _relaunch_reaches_the_same_step2(tmp_path, tmp_path / "dp2.yaml", out)


def test_v41_tp2_trains_like_one_process(single_run, tmp_path):
    """The Engram tables' rows are split over the 2 tp ranks (each holds half of every table and its state); the
    gathered state (every rank's engram_rank*.npz, the checkpoint) is compared with one process's."""
    _yaml(tmp_path / "tp2.yaml", 2, "{tp: 2}")
    out = tmp_path / "tp2"
    _msrun(tmp_path, tmp_path / "tp2.yaml", out)
    print("tp2 max |dw|, |d engram|", _compare_runs(single_run, str(out)))
    full = _engram(str(out), 0)
    for r in range(2):
        with np.load(os.path.join(out, f"engram_local_rank{r}.npz")) as z:
            for k in full:
                R = full[k].shape[0]
                assert z[k].shape[0] == R // 2, k                      # half of the rows
                np.testing.assert_array_equal(z[k], full[k][r * R // 2:(r + 1) * R // 2], err_msg=k)


def _relaunch_reaches_the_same_step2(tmp_path, cfg_path, out):
    """Relaunched from its step-1 checkpoint, the msrun run in `out` keeps its step-1 metrics and reaches its own
    step-2 state bit for bit: the logged step-2 floats, the model, the optimiser and every rank's Engram state."""
    first = {w: run_weights(str(out), STEPS, w) for w in ("model", "optimizer")}
    eng = _engram(str(out), 0)
    rows = run_metrics(str(out))
    shutil.rmtree(out / f"ckpt-{STEPS:08d}")
    (out / "latest").write_text("ckpt-00000001\n")
    _msrun(tmp_path, cfg_path, out)
    again = run_metrics(str(out))
    assert [r["step"] for r in again] == [1, 2] and again[0] == rows[0]      # step 1 kept, step 2 re-run
    for k in ("loss", "lm_loss", "mtp_loss", "balance_loss", "grad_norm", "expert_imbalance"):
        assert again[1][k] == rows[1][k], k
    for w, ref in first.items():
        assert_same_tensors(ref, run_weights(str(out), STEPS, w), f"resumed {w}")
    for r in range(2):
        assert_same_tensors(eng, _engram(str(out), r), f"resumed engram rank {r}")


def test_v41_zero1_dp2_is_bit_identical_and_resumes(tmp_path):
    """ZeRO-1 (optimizer_shard) over dp=2 against the unsharded dp=2 run: every logged float, the step-2 model,
    the gathered optimiser state and the gathered Engram state bit-identical; each rank holds about half of the
    Muon/AdamW state and half of the Engram rows' moments and counts (the tables themselves stay whole); the run
    relaunched from its step-1 checkpoint reaches the same step-2 state bit for bit. 3 msrun launches (~30 min)."""
    import re
    _yaml(tmp_path / "plain.yaml", 1, "{dp: 2}")
    _yaml(tmp_path / "zero.yaml", 1, "{dp: 2, optimizer_shard: true}")
    plain, zero = tmp_path / "plain", tmp_path / "zero"
    _msrun(tmp_path, tmp_path / "plain.yaml", plain)
    log = _msrun(tmp_path, tmp_path / "zero.yaml", zero)
    held = re.search(r"optimizer_shard: ZeRO-1 over dp 2: rank 0 holds ([\d,]+) of ([\d,]+) optimiser state", log)
    mine, full = (int(g.replace(",", "")) for g in held.groups())
    assert 0.3 * full < mine < 0.7 * full, (mine, full)
    rows = run_metrics(str(zero))
    assert rows == [dict(r, time=x["time"], elapsed_s=x["elapsed_s"], tokens_per_s=x["tokens_per_s"])
                    for r, x in zip(run_metrics(str(plain)), rows)]       # every logged float (not the clock)
    for w in ("model", "optimizer"):
        assert_same_tensors(run_weights(str(plain), STEPS, w), run_weights(str(zero), STEPS, w), w)
    eng = _engram(str(plain), 0)
    for r in range(2):
        assert_same_tensors(eng, _engram(str(zero), r), f"engram rank {r}")
        with np.load(os.path.join(zero, f"engram_local_rank{r}.npz")) as z:
            for k in eng:
                R = eng[k].shape[0]
                lo, hi = (0, R) if k.endswith(".weight") else (r * R // 2, (r + 1) * R // 2)
                np.testing.assert_array_equal(z[k], eng[k][lo:hi], err_msg=k)
    with np.load(os.path.join(zero, f"ckpt-{STEPS:08d}", "engram_state.npz")) as z:
        assert_same_tensors(eng, {k: z[k] for k in z.files}, "engram checkpoint")
    _relaunch_reaches_the_same_step2(tmp_path, tmp_path / "zero.yaml", zero)


def test_v41_dp2_ep2_trains_like_one_process(single_run, tmp_path):
    """The backbone's 8 experts and the drafter's 4 split over 2 ranks (4 + 2 each)."""
    _yaml(tmp_path / "ep2.yaml", 1, "{dp: 2, ep: 2}")
    out = tmp_path / "ep2"
    _msrun(tmp_path, tmp_path / "ep2.yaml", out)
    print("dp2 ep2 max |dw|, |d engram|", _compare_runs(single_run, str(out)))


def test_v41_pp2_micro2_trains_like_one_process_and_resumes(single_run, tmp_path):
    """Two pipeline stages (layers 0-5 | 6-9 + head + drafter; parallel.v41_stage_starts) and two micro-batches of
    one row each (gradient accumulation through the GPipe schedule), then a relaunch from the step-1 checkpoint
    that must reach the same step-2 state bit for bit (model, optimiser, Engram state on both ranks)."""
    _yaml(tmp_path / "pp2.yaml", 2, "{pp: 2, micro_batches: 2}")
    out = tmp_path / "pp2"
    _msrun(tmp_path, tmp_path / "pp2.yaml", out)
    print("pp2 micro2 max |dw|, |d engram|", _compare_runs(single_run, str(out)))
    _relaunch_reaches_the_same_step2(tmp_path, tmp_path / "pp2.yaml", out)


if __name__ == "__main__" and len(sys.argv) > 3 and sys.argv[1] == "v41-worker":
    _worker(sys.argv[2], sys.argv[3])
