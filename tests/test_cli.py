"""The command line as a user runs it: real subprocesses, exit codes, one-line errors, no partial output."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ENV = dict(os.environ, GLOG_v="3")


def run(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "ascend_v4.cli", *args], capture_output=True, text=True, env=ENV,
                       cwd=cwd, timeout=600)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.slow   # > 20 s: runs in .ci/run, so the default suite stays under 10 minutes
def test_demo_runs_with_no_arguments(tmp_path):
    rc, out, err = run("demo", cwd=tmp_path)
    assert rc == 0, err
    assert "layer schedule" in out and "graph-mode forward" in out
    assert "FAIL" not in out and out.count("-> PASS") == 2        # forward parity, then generation vs recompute
    gen = [l for l in out.splitlines() if l.startswith("generate (greedy, KV cache)")]
    assert len(gen) == 1 and len(gen[0].split("new ids [")[1].split("]")[0].split(",")) == 8
    assert not (tmp_path / "rank_0").exists()


def test_info_on_presets_and_checkpoint(tiny_ckpt_dir):
    rc, out, _ = run("info", "v4-flash")
    assert rc == 0 and "284.33B" in out and "3514 B" in out
    rc, out, _ = run("info", "v4-pro", "--json")
    d = json.loads(out)
    assert round(d["kv_bytes_per_token"]["cuda_fp8"]) == 5031
    rc, out, _ = run("info", tiny_ckpt_dir)
    assert rc == 0 and "S C H C S" in out


def test_dump_graph_vs_numpy_and_compare(tmp_path, tiny_ckpt_dir, tiny_cfg):
    ids = np.random.default_rng(3).integers(0, tiny_cfg.vocab_size, (2, 40))
    np.save(tmp_path / "t.npy", ids)
    a, b = str(tmp_path / "graph.npz"), str(tmp_path / "np.npz")
    rc, out, err = run("dump", tiny_ckpt_dir, "--tokens", str(tmp_path / "t.npy"), "--out", a)
    assert rc == 0, err
    rc, out, err = run("dump", tiny_ckpt_dir, "--tokens", str(tmp_path / "t.npy"), "--out", b, "--backend", "numpy")
    assert rc == 0, err
    with np.load(a) as z:
        assert sorted(z.files) == sorted(["embed", "logits"] + [f"hidden_block{i}" for i in range(4)])
        assert z["logits"].dtype == np.float32 and z["hidden_block0"].shape == (2, 40, 4, tiny_cfg.dim)
    rc, out, err = run("dump", tiny_ckpt_dir, "--tokens", str(tmp_path / "t.npy"), "--out", str(tmp_path / "off.npz"),
                       "--mode", "official")
    assert rc == 0 and "official numerics" in out, err
    rc, out, err = run("compare", a, b, "--max-median-rel", "1e-4")
    assert rc == 0, err
    assert "logits" in out and "top1" in out
    rc, out, _ = run("compare", a, b, "--json")
    rep = json.loads(out)
    lg = next(r for r in rep["rows"] if r["key"] == "logits")
    assert lg["median_rel"] < 1e-5 and lg["top1_agree"] > 0.97
    # a perturbed dump must fail the threshold with exit 1
    with np.load(b) as z:
        bad = {k: z[k] for k in z.files}
    bad["logits"] = bad["logits"] * 1.01
    np.savez(tmp_path / "bad.npz", **bad)
    rc, out, err = run("compare", a, str(tmp_path / "bad.npz"), "--max-median-rel", "1e-3")
    assert rc == 1 and "logits" in err


@pytest.mark.parametrize("case", ["missing_ckpt", "bad_tokens", "oov_tokens", "float_tokens", "bad_config"])
def test_bad_input_gives_one_line_error_and_no_output(tmp_path, tiny_ckpt_dir, case):
    tok = tmp_path / "t.npy"
    np.save(tok, np.zeros((1, 8), np.int64))
    ckpt = tiny_ckpt_dir
    if case == "missing_ckpt":
        ckpt = str(tmp_path / "nope")
    elif case == "bad_tokens":
        tok.write_bytes(b"not an npy file")
    elif case == "oov_tokens":
        np.save(tok, np.full((1, 8), 10 ** 6, np.int64))
    elif case == "float_tokens":
        np.save(tok, np.zeros((1, 8), np.float32))
    elif case == "bad_config":
        import shutil
        ckpt = str(tmp_path / "ck")
        shutil.copytree(tiny_ckpt_dir, ckpt)
        with open(os.path.join(ckpt, "config.json")) as fh:
            cfg = json.load(fh)
        cfg["num_attention_heads"] = 3
        with open(os.path.join(ckpt, "config.json"), "w") as fh:
            json.dump(cfg, fh)
    out = tmp_path / "d.npz"
    rc, _, err = run("dump", ckpt, "--tokens", str(tok), "--out", str(out))
    assert rc == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not out.exists()


def test_compare_rejects_non_dumps(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"garbage")
    rc, _, err = run("compare", str(tmp_path / "x.npz"), str(tmp_path / "x.npz"))
    assert rc == 2 and err.startswith("error: ")


def test_make_checkpoint_and_ops_list(tmp_path):
    rc, out, err = run("make-checkpoint", str(tmp_path / "ck"), "--config", "tiny")
    assert rc == 0, err
    assert (tmp_path / "ck" / "model.safetensors.index.json").exists()
    rc, _, err = run("make-checkpoint", str(tmp_path / "ck"))
    assert rc == 2 and "not empty" in err
    rc, out, _ = run("ops", "list")
    assert rc == 0 and "hc_pre" in out and "composite" in out
