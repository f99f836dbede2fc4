"""msprobe interop: `dump --format msprobe` writes MindStudio msprobe's MindSpore L0 tensor-dump layout;
scripts/msprobe_reference_dump.py dumps transformers' DeepSeek-V4 with msprobe's own PyTorch hooks; msprobe's own
`msprobe compare` (package mindstudio-probe) lines the two up point by point."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import msprobe  # noqa: F401  (a required test dependency: missing it must fail, not skip)

from test_cli import ENV

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_layout_files_stats_and_refusal(tmp_path):
    from ascend_v4.dump import DumpError, write_msprobe
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (2, 5))
    res = {"embed": rng.standard_normal((2, 5, 8)).astype(np.float32),
           "hidden_block0": rng.standard_normal((2, 5, 4, 8)).astype(np.float32),
           "hidden_block1": rng.standard_normal((2, 5, 4, 8)).astype(np.float32),
           "logits": rng.standard_normal((2, 5, 50)).astype(np.float32)}
    path = write_msprobe(str(tmp_path / "d"), res, ids, n_layers=2)
    rank = tmp_path / "d" / "step0" / "rank0"
    assert path == str(rank / "dump.json")
    assert sorted(os.listdir(rank)) == ["construct.json", "dump.json", "dump_tensor_data", "stack.json"]
    d = json.loads((rank / "dump.json").read_text())
    assert (d["task"], d["level"], d["framework"]) == ("tensor", "L0", "mindspore")
    assert list(d["data"]) == ["Cell.embed.Embedding.forward.0", "Cell.layers.0.Block.forward.0",
                               "Cell.layers.1.Block.forward.0", "Cell.hc_head.HcHead.forward.0"]
    block1 = d["data"]["Cell.layers.1.Block.forward.0"]
    out, = block1["output"]
    assert out["type"] == "mindspore.Tensor" and out["dtype"] == "Float32" and out["shape"] == [2, 5, 4, 8]
    assert out["data_name"] == "Cell.layers.1.Block.forward.0.output.0.npy"
    saved = np.load(rank / "dump_tensor_data" / out["data_name"], allow_pickle=False)
    assert np.array_equal(saved, res["hidden_block1"])
    x = res["hidden_block1"].astype(np.float64)
    assert (out["Max"], out["Min"]) == (x.max(), x.min())
    assert out["Mean"] == pytest.approx(x.mean(), rel=1e-12) and out["Norm"] == pytest.approx(np.sqrt((x * x).sum()))
    # a block's input is the previous point; block 0 gets the embedding's 4 stream copies; embed gets the ids
    inp, = block1["input_args"]
    assert np.array_equal(np.load(rank / "dump_tensor_data" / inp["data_name"]), res["hidden_block0"])
    b0 = np.load(rank / "dump_tensor_data" / "Cell.layers.0.Block.forward.0.input.0.npy")
    assert b0.shape == (2, 5, 4, 8) and all(np.array_equal(b0[:, :, k], res["embed"]) for k in range(4))
    e_in, = d["data"]["Cell.embed.Embedding.forward.0"]["input_args"]
    assert e_in["dtype"] == "Int64" and np.array_equal(np.load(rank / "dump_tensor_data" / e_in["data_name"]), ids)
    assert d["data"]["Cell.hc_head.HcHead.forward.0"]["input_args"] == []
    assert json.loads((rank / "construct.json").read_text()) == {k: None for k in d["data"]}
    stack = json.loads((rank / "stack.json").read_text())
    assert stack["0"][0] == list(d["data"])
    with pytest.raises(DumpError, match="already exists and is not an empty directory"):
        write_msprobe(str(tmp_path / "d"), res, ids, n_layers=2)
    assert sorted(os.listdir(tmp_path)) == ["d"]                  # no temporary directory left behind


def _run(*cmd, cwd):
    p = subprocess.run(list(cmd), capture_output=True, text=True, env=ENV, cwd=cwd, timeout=900)
    assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-2000:])
    return p


@pytest.mark.slow
def test_msprobe_compare_lines_up_our_dump_with_the_pytorch_reference(tiny_ckpt_dir, tiny_cfg, tmp_path):
    ids = np.random.default_rng(11).integers(0, tiny_cfg.vocab_size, (1, 32))
    np.save(tmp_path / "ids.npy", ids)
    _run(sys.executable, "-m", "ascend_v4.cli", "dump", tiny_ckpt_dir, "--tokens", "ids.npy", "--format", "msprobe",
         "--out", "ours", cwd=tmp_path)
    _run(sys.executable, os.path.join(REPO, "scripts", "msprobe_reference_dump.py"), tiny_ckpt_dir, "--tokens",
         "ids.npy", "--out", "ref", cwd=tmp_path)
    ref_json, = glob.glob(str(tmp_path / "ref" / "step0" / "*" / "dump.json"))
    assert json.loads(open(ref_json).read())["framework"] == "pytorch"
    os.mkdir(tmp_path / "cmp")
    _run(os.path.join(os.path.dirname(sys.executable), "msprobe"), "compare", "-tp", "ours/step0/rank0/dump.json",
         "-gp", ref_json, "-cm", "ref/cell_mapping.yaml", "-o", "cmp", cwd=tmp_path)
    table, = glob.glob(str(tmp_path / "cmp" / "compare_result_*.csv"))
    t = pd.read_csv(table).set_index("NPU Name")
    points = [f"Cell.embed.Embedding.forward.0.{s}.0" for s in ("input", "output")]
    for i in range(tiny_cfg.n_layers):
        points += [f"Cell.layers.{i}.Block.forward.0.{s}.0" for s in ("input", "output")]
    points.append("Cell.hc_head.HcHead.forward.0.output.0")
    assert sorted(t.index) == sorted(points)                       # every point of ours, each once
    their = {p: p.replace("Cell.embed.Embedding", "Module.model.embed_tokens.Embedding")
             .replace("Cell.hc_head.HcHead", "Module.lm_head.Linear")
             .replace("Cell.layers.", "Module.model.layers.").replace(".Block.", ".DeepseekV4DecoderLayer.")
             for p in points}
    for p in points:
        row = t.loc[p]
        assert row["Bench Name"] == their[p], (p, row["Bench Name"])
        assert row["NPU Tensor Shape"] == row["Bench Tensor Shape"]
        # measured on this preset: cosine 1.0, max |diff| <= 1.1e-5 (logits), 0 for embed and block 0's input
        assert float(row["Cosine"]) > 0.999999 and float(row["MaxAbsErr"]) < 1e-4, (p, row.to_dict())
        # msprobe flags every MindSpore-vs-PyTorch pair for the dtype's spelling (Float32 vs torch.float32) and
        # for MindSpore dumps carrying no requires_grad; nothing else may be reported
        msgs = set(json.loads(row["Err_message"])) if isinstance(row["Err_message"], str) else set()
        assert msgs <= {"error: The Required_Grad of NPU and Bench are inconsistent",
                        "error: The dtype of NPU and Bench are inconsistent."}, (p, msgs)
    assert float(t.loc["Cell.embed.Embedding.forward.0.output.0", "MaxAbsErr"]) == 0.0
