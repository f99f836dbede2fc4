"""ZeRO-1 under msrun on CPU (slow): a fine-tune from a release-format checkpoint (init_from, frozen embedding and
router) with optimizer_shard over dp=2 trains bit-identically to the unsharded dp=2 run (Muon and AdamW state both
sharded); its checkpoint holds the unsharded state, resumes bit-exactly, and resumes in one process (another dp)."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from run_dirs import assert_same_tensors, launch_msrun, msrun_env

# three 2-worker msrun runs and one single-process run, each compiling the train step: beyond pytest.ini's 900 s
# default on a loaded 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]


def _yaml(path, dp, batch, shard, save_every=1000):
    # adam_eps 1e-4 as in test_msrun_dp.py: the one-process resume (other summation order) is then a float32
    # tolerance statement; the sharded-vs-unsharded comparisons are bit-exact whatever eps.
    rel = path.parent / "release"
    path.write_text(f"model: tiny\nseq_len: 32\nbatch_size: {batch}\nsteps: 3\nwarmup_steps: 1\neval_every: 3\n"
                    f"save_every: {save_every}\nadam_eps: 1.0e-4\ntensorboard: false\nlr: 1.0e-3\n"
                    f"init_from: {rel}\nfreeze: [embed, router]\n"
                    f"parallel: {{dp: {dp}, optimizer_shard: {str(shard).lower()}}}\n")
    return str(path)


def _msrun(tmp_path, cfg, out, tag):
    """-> the workers' logs."""
    entry = os.path.join(os.path.dirname(sys.executable), "ascend-v4")
    return launch_msrun(tmp_path, [entry, "train", "--config", cfg, "--out", out], tmp_path / f"logs_{tag}")


def _ckpt(out, step):
    from safetensors.numpy import load_file
    d = os.path.join(out, f"ckpt-{step:08d}")
    return load_file(os.path.join(d, "model.safetensors")), load_file(os.path.join(d, "optimizer.safetensors"))


def _losses(out):
    return [(r["step"], r["loss"], r["grad_norm"], r.get("eval_loss")) for r in
            (json.loads(x) for x in open(os.path.join(out, "metrics.jsonl")))]


def test_zero1_dp2_is_bit_identical_and_resumes(tmp_path, tiny_cfg):
    from ascend_v4.checkpoint import load_official_weights, random_weights, write_official_checkpoint
    write_official_checkpoint(tiny_cfg, random_weights(tiny_cfg, seed=21), str(tmp_path / "release"))
    plain, zero = tmp_path / "plain", tmp_path / "zero"
    _msrun(tmp_path, _yaml(tmp_path / "plain.yaml", 2, 2, False), plain, "plain")
    log = _msrun(tmp_path, _yaml(tmp_path / "zero.yaml", 2, 2, True, save_every=2), zero, "zero")
    held = re.search(r"optimizer_shard: ZeRO-1 over dp 2: rank 0 holds ([\d,]+) of ([\d,]+) optimiser state", log)
    mine, full = (int(g.replace(",", "")) for g in held.groups())
    assert 0.3 * full < mine < 0.7 * full, (mine, full)       # about half: the state really is split
    assert _losses(zero) == _losses(plain)                    # every logged float identical
    for a, b in zip(_ckpt(plain, 3), _ckpt(zero, 3)):         # weights AND the gathered optimiser state
        assert_same_tensors(a, b)
    w, o = _ckpt(zero, 3)
    rw = load_official_weights(str(tmp_path / "release"))
    np.testing.assert_array_equal(w["embed.weight"], rw["embed.weight"])       # frozen: the release's values
    assert any(k.endswith(".ffn.gate.weight") for k in rw)
    for k in rw:
        if k.endswith(".ffn.gate.weight"):
            np.testing.assert_array_equal(w[k], rw[k], err_msg=k)
    owners = {k.split(".", 1)[1] for k in o if k != "step"}
    assert "embed.weight" not in owners and not any(k.endswith(".ffn.gate.weight") for k in owners)  # frozen
    assert any(k.startswith("muon_m.") for k in o) and any(k.startswith("adam_v.") for k in o)  # both optimisers
    # resume the sharded run from its step-2 checkpoint: the same step-3 state, bit for bit
    again = tmp_path / "again"
    os.makedirs(again)
    shutil.copytree(zero / "ckpt-00000002", again / "ckpt-00000002")
    (again / "latest").write_text("ckpt-00000002\n")
    _msrun(tmp_path, str(tmp_path / "zero.yaml"), again, "again")
    for a, b in zip(_ckpt(zero, 3), _ckpt(again, 3)):
        assert_same_tensors(a, b)
    # a different dp: one process (the same global batch) resumes the ZeRO checkpoint
    one = tmp_path / "one"
    os.makedirs(one)
    shutil.copytree(zero / "ckpt-00000002", one / "ckpt-00000002")
    (one / "latest").write_text("ckpt-00000002\n")
    r = subprocess.run([sys.executable, "-m", "ascend_v4.cli", "train", "--config",
                        _yaml(tmp_path / "one.yaml", 1, 4, True), "--out", str(one)],
                       env=msrun_env(), capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    (wa, oa), (wb, ob) = _ckpt(zero, 3), _ckpt(one, 3)
    assert wa.keys() == wb.keys() and oa.keys() == ob.keys()
    for k in wa:      # float32 summation order differs between 1 and 2 processes (as in test_msrun_dp.py)
        np.testing.assert_allclose(wb[k], wa[k], rtol=2e-4, atol=2e-4, err_msg=k)
