"""Test helpers for training runs: a run directory that resumes from another run's checkpoint, an msrun launch's
environment, a run's metrics and checkpoint tensors."""
import json
import os
import shutil
import sys


def fork_run(src_dir, step: int, dst_dir) -> None:
    """dst_dir (new) holds src_dir's checkpoint of `step` and its tokenizer, with `latest` naming that checkpoint:
    a Trainer on dst_dir resumes there."""
    name = f"ckpt-{step:08d}"
    os.makedirs(dst_dir)
    shutil.copytree(os.path.join(src_dir, name), os.path.join(dst_dir, name))
    shutil.copytree(os.path.join(src_dir, "tokenizer"), os.path.join(dst_dir, "tokenizer"))
    with open(os.path.join(dst_dir, "latest"), "w") as fh:
        fh.write(name + "\n")


def msrun_env():
    """The environment of an msrun launch from the tests: quiet logs, this venv's msrun / ascend-v4 on PATH, the
    test helpers importable (workers that run a test file import them as pytest does), and passive OpenMP waits
    (two ranks share the host's cores)."""
    bindir = os.path.dirname(sys.executable)
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, GLOG_v="3", OMP_WAIT_POLICY="PASSIVE", PATH=bindir + os.pathsep + os.environ["PATH"],
                PYTHONPATH=path)


def run_metrics(out):
    """A run directory's metrics.jsonl as a list of dicts."""
    return [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]


def run_weights(out, step, what="model"):
    """The tensors of a run's checkpoint file `what` at `step`."""
    from safetensors.numpy import load_file
    return load_file(os.path.join(out, f"ckpt-{step:08d}", f"{what}.safetensors"))



def assert_runs_match(ref, par, steps):
    """A parallel run's logged steps equal the single-process run's: loss terms to 2e-5, grad norm to 1e-4,
    expert imbalance to 1e-6 (float32 summation order) -> (ref rows, par rows)."""
    import numpy as np
    a, b = run_metrics(ref), run_metrics(par)
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, steps + 1))
    for ra, rb in zip(a, b):
        for k in ("loss", "lm_loss", "mtp_loss", "balance_loss"):
            np.testing.assert_allclose(rb[k], ra[k], rtol=2e-5, err_msg=f"step {ra['step']} {k}")
        np.testing.assert_allclose(rb["grad_norm"], ra["grad_norm"], rtol=1e-4, err_msg=f"step {ra['step']}")
        np.testing.assert_allclose(rb["expert_imbalance"], ra["expert_imbalance"], rtol=1e-6)
    return a, b
