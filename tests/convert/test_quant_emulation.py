"""`dump --quant-emulation`: per-token dynamic int8 activations before every int8 / int4 matmul."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from ascend_v4.convert.quantize import dynamic_quant_int8
from ascend_v4.dump import DumpError, dynamic_int8_linear, quant_emulation_model


def test_dynamic_quant_by_hand():
    x = np.array([[0.3, -1.27, 0.0049, 0.0], [0.0, 0.0, 0.0, 0.0], [254.0, 5.0, -7.0, 1.0]])
    q, s = dynamic_quant_int8(x)
    assert s[0, 0] == float(np.float32(1.27 / 127))  # the kernel keeps the scale in float32
    assert s[1, 0] == 1.0 and s[2, 0] == 2.0
    assert q[0].tolist() == [30, -127, 0, 0]
    assert q[1].tolist() == [0, 0, 0, 0]
    assert q[2].tolist() == [127, 2, -4, 0]          # 2.5 -> 2, -3.5 -> -4, 0.5 -> 0: half to even


def test_dynamic_int8_linear_by_hand():
    x = np.array([[0.3, -1.27]])
    w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = dynamic_int8_linear(x, w)
    s = float(np.float32(0.01))
    # (30, -127) @ w^T * s = (0.3, -1.27, -0.97), each rounded to BF16 (8 significant bits)
    assert y.tolist() == [[0.30078125, -1.2734375, -0.96875]]
    assert abs(30 * s - 0.3) < 1e-7 and abs(-97 * s + 0.97) < 1e-7    # far from the BF16 rounding boundaries


def test_quant_emulation_runs_exactly_the_int_linears(release, converted):
    from ascend_v4.weights import load_checkpoint
    d = converted("w4a8", layout="serving")
    desc = json.load(open(os.path.join(d, "quant_model_description.json")))
    int_weights = {k for k, v in desc.items() if k.endswith(".weight") and v != "FLOAT"
                   and k not in ("model_quant_type",)}
    cfg, w = load_checkpoint(d)
    m = quant_emulation_model(d, cfg, w)
    assert set(m.quantized) == int_weights
    seen = []
    orig = m._lin

    def spy(x, name):
        seen.append(name)
        return orig(x, name)
    m._lin = spy
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 24))
    out = m.forward(ids)
    assert {n for n in seen if n in int_weights} and all(n in seen for n in int_weights if "experts" not in n)
    # activation quantisation changes the result, by about what int8 activations cost (a few %)
    from ascend_v4.numpy_model import NumpyV4
    ref = NumpyV4(cfg, w).forward(ids)["logits"]
    rel = np.linalg.norm(out["logits"] - ref) / np.linalg.norm(ref)
    assert 1e-4 < rel < 0.2


def test_quant_emulation_refuses_what_it_cannot_emulate(release, converted):
    from ascend_v4.weights import load_checkpoint
    cfg, w = load_checkpoint(release[0])
    with pytest.raises(DumpError, match="--mode official"):
        quant_emulation_model(release[0], cfg, w)
    d = converted("bf16")
    cfg, w = load_checkpoint(d)
    with pytest.raises(DumpError, match="stores no int8"):
        quant_emulation_model(d, cfg, w)


def test_dump_cli_quant_emulation(converted, tmp_path):
    from ascend_v4.cli import main
    d = converted("w8a8", layout="serving")
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(1).integers(0, 512, (1, 16)))
    r = CliRunner().invoke(main, ["dump", d, "--tokens", str(ids), "--out", str(tmp_path / "q.npz"),
                                  "--quant-emulation"])
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "q.npz") as z:
        assert {"embed", "logits"} <= set(z.files)
    r = CliRunner().invoke(main, ["dump", d, "--tokens", str(ids), "--out", str(tmp_path / "x.npz"),
                                  "--quant-emulation", "--mode", "official"])
    assert r.exit_code == 2 and "exclude each other" in r.output and not (tmp_path / "x.npz").exists()
