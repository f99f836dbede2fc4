"""Data parallelism under msrun on CPU: dp=2 must give the weights of one process with the doubled batch."""
import os
import subprocess
import sys

import numpy as np
import pytest
from run_dirs import launch_msrun, msrun_env

pytestmark = pytest.mark.slow


def _yaml(path, dp, batch):
    # adam_eps 1e-4: with the spec's 1e-20, AdamW's first updates are lr·sign(g), so float32 summation-order noise
    # on near-zero gradients flips whole updates; a smooth eps makes "same weights" a float32-tolerance statement.
    # (1e-8 is not smooth enough: 3 of 32768 embedding entries whose gradient is a cancellation at the 1e-7 level
    # moved by 1.2e-3 between the dp=2 and the one-process run.)
    path.write_text(f"model: tiny\nseq_len: 32\nbatch_size: {batch}\nsteps: 3\nwarmup_steps: 1\neval_every: 3\n"
                    f"save_every: 1000\nadam_eps: 1.0e-4\ndata: {{eval_fraction: 0.05}}\nparallel: {{dp: {dp}}}\n")


def _final(out):
    from safetensors.numpy import load_file
    return load_file(os.path.join(out, "ckpt-00000003", "model.safetensors"))


def test_dp2_equals_single_process_with_double_batch(tmp_path):
    _yaml(tmp_path / "dp2.yaml", 2, 2)
    _yaml(tmp_path / "dp1.yaml", 1, 4)
    cli = [sys.executable, "-m", "ascend_v4.cli", "train"]
    single = subprocess.run(cli + ["--config", str(tmp_path / "dp1.yaml"), "--out", str(tmp_path / "one")],
                            env=msrun_env(), capture_output=True, text=True, timeout=1200)
    assert single.returncode == 0, single.stderr[-2000:]
    entry = os.path.join(os.path.dirname(sys.executable), "ascend-v4")     # msrun runs `python SCRIPT args`
    launch_msrun(tmp_path, [entry, "train", "--config", tmp_path / "dp2.yaml", "--out", tmp_path / "two"],
                 tmp_path / "logs")
    import json
    la = [json.loads(x)["loss"] for x in open(tmp_path / "one" / "metrics.jsonl")]
    lb = [json.loads(x)["loss"] for x in open(tmp_path / "two" / "metrics.jsonl")]
    np.testing.assert_allclose(lb, la, rtol=1e-4)          # global-batch loss, step by step
    ea = [json.loads(x)["eval_loss"] for x in open(tmp_path / "one" / "metrics.jsonl") if "eval_loss" in x]
    eb = [json.loads(x)["eval_loss"] for x in open(tmp_path / "two" / "metrics.jsonl") if "eval_loss" in x]
    assert len(ea) == len(eb) == 1
    np.testing.assert_allclose(eb, ea, rtol=1e-4)          # eval loss of the global eval batch, not rank 0's half
    a, b = _final(str(tmp_path / "one")), _final(str(tmp_path / "two"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=2e-4, err_msg=k)
