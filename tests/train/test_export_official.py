"""`ascend-v4 export-official`: trained weights -> the official release layout, checked independently.

What is checked and against what:
* names / dtypes / shapes: the safetensors headers are parsed here (8-byte length + JSON) and compared with the
  the release format's rules (docs/formats.md) written out in this file (FP8 E4M3 + E8M0 block scales for linears, I8 + E8M0 for MXFP4 experts,
  BF16 / F32 / I64 for the rest; no .scale entries in a bf16 export) and with the inventory's entry list.
* values: the exported tensors, decoded by the project's loader, equal the trained float32 weights quantised by
  independent quantisers written here with ml_dtypes (BF16 RNE; FP8: 128x128 blocks, scale 2^ceil(log2(amax/448));
  MXFP4: 1x32 blocks, scale 2^ceil(log2(amax/6))) - exactly.
* logits: the exported model (loaded through load_any_checkpoint) vs the trained model. Quantisation moves the
  logits, so the tolerance is measured rather than guessed: the trained weights plus Gaussian noise of the same
  per-tensor RMS as the export's quantisation error give the logit change that error size causes in this network
  (routing top-k flips included). The export must stay within 2x that (observed ratio 0.7-1.1), and a layout bug
  (a transposed or swapped tensor) would be far outside it. Absolute anchors for the tiny model: bf16 median
  relative L2 of the logits ~1e-2 (BF16 keeps 8 significant bits: per-weight relative error <= 2^-9, RMS ~1e-3,
  amplified ~10x through 5 blocks), fp8 ~0.3 (E4M3 ~3% per weight, MXFP4 experts ~12%).
* errors: missing directory, truncated model.safetensors, a `latest` naming nothing, an existing output: one
  `error:` line, exit code 2, nothing left behind.
"""
import json
import os
import shutil
import struct

import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes")


# ------------------------------------------------------------------------------------------------ helpers
def _make_run(out_dir, mtp=True, seed=0, step=3):
    """A run directory as `ascend-v4 train` leaves it, built without compiling: Trainer (model, optimiser, default
    tokenizer), weights moved away from their initialisation, router biases non-zero, then Trainer.save()."""
    from ascend_v4.train.loop import Trainer, TrainConfig
    tc = TrainConfig.from_dict(dict(model="tiny", seq_len=32, batch_size=2, steps=10, warmup_steps=1, mtp=mtp))
    tr = Trainer(tc, str(out_dir))
    import mindspore as ms
    rng = np.random.default_rng(seed)
    for p in tr.model.get_parameters():
        a = p.asnumpy()
        if a.dtype == np.float32:
            moved = a * (1 + 0.05 * rng.standard_normal(a.shape)) + 0.01 * rng.standard_normal(a.shape)
            if p.name.endswith("gate.bias"):
                moved = 0.003 * rng.standard_normal(a.shape)
            p.set_data(ms.Tensor(moved.astype(np.float32)))
    tr.step = step
    tr.save()
    return tr


def _trained_weights(run_dir):
    from safetensors.numpy import load_file
    with open(os.path.join(run_dir, "latest")) as fh:
        ck = os.path.join(run_dir, fh.read().strip())
    return load_file(os.path.join(ck, "model.safetensors"))


def _headers(out_dir):
    """{entry: (dtype, shape)} over every model-*.safetensors, parsed directly."""
    got = {}
    for f in sorted(os.listdir(out_dir)):
        if not f.endswith(".safetensors"):
            continue
        with open(os.path.join(out_dir, f), "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            head = json.loads(fh.read(n))
        head.pop("__metadata__", None)
        for k, v in head.items():
            assert k not in got, f"{k} in two shards"
            got[k] = (v["dtype"], tuple(v["shape"]))
    return got


def _expected_dtype(name, dtype):
    """The release format (docs/formats.md), written out: the release dtype of a logical tensor (dtype = the export's --dtype)."""
    leaf = name.split(".")[-1]
    if name.endswith("tid2eid"):
        return "I64"
    if "hc_" in name or leaf in ("attn_sink", "ape", "bias") or name.endswith("hc_head_scale"):
        return "F32"
    if name.endswith("norm.weight") or name in ("embed.weight", "head.weight") or name.endswith("gate.weight") \
            or ".compressor." in name or name.endswith("weights_proj.weight"):
        return "BF16"
    if dtype == "bf16":
        return "BF16"
    return "I8" if ".experts." in name and "shared" not in name else "F8_E4M3"


def _pow2_ceil(x):
    return np.exp2(np.ceil(np.log2(x)))


def _q_bf16(w):
    return w.astype(ml_dtypes.bfloat16).astype(np.float32)


def _q_fp8_blocks(w, b=128):
    out = np.empty_like(w)
    for i in range(0, w.shape[0], b):
        for j in range(0, w.shape[1], b):
            blk = w[i:i + b, j:j + b].astype(np.float64)
            s = _pow2_ceil(max(np.abs(blk).max(), 1e-4) / 448.0)
            q = np.clip(blk / s, -448, 448).astype(np.float32).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
            out[i:i + b, j:j + b] = q * s
    return out


def _q_mxfp4(w, b=32):
    wb = w.reshape(w.shape[0], -1, b).astype(np.float64)
    s = _pow2_ceil(np.maximum(np.abs(wb).max(-1, keepdims=True), 6 * 2.0 ** -126) / 6.0)
    q = np.clip(wb / s, -6, 6).astype(np.float32).astype(ml_dtypes.float4_e2m1fn).astype(np.float64)
    return (q * s).reshape(w.shape).astype(np.float32)


def _logit_err(a, b):
    r = np.linalg.norm(a - b, axis=-1) / np.linalg.norm(a, axis=-1)
    return float(np.median(r))


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def run_dir(ms_graph, tmp_path_factory):
    d = tmp_path_factory.mktemp("export") / "run"
    _make_run(d)
    return str(d)


@pytest.fixture(scope="module")
def exports(run_dir, tmp_path_factory):
    from ascend_v4.train.export import export_official
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for dt in ("fp8", "bf16"):
        out[dt] = str(root / dt)
        summary = export_official(run_dir, out[dt], dt)
        assert summary["step"] == 3 and summary["warning"] is None
    return out


# ------------------------------------------------------------------------------------------------ layout
@pytest.mark.parametrize("dtype", ["fp8", "bf16"])
def test_names_dtypes_and_shapes_follow_the_release(exports, tiny_cfg, dtype):
    from ascend_v4.checkpoint import official_inventory, stored_entries
    cfg = tiny_cfg.replace(dtype=dtype)
    inv = official_inventory(cfg)
    got = _headers(exports[dtype])
    want = {e.name: (e.dtype, e.shape) for n, s in inv.items() for e in stored_entries(n, s)}
    assert got == want
    assert any(n.startswith("mtp.0.") for n in got) and "mtp.0.e_proj.weight" in got
    for name, spec in inv.items():
        assert got[name][0] == _expected_dtype(name, dtype), name
        scale = name[:-len("weight")] + "scale" if name.endswith(".weight") else None
        if got[name][0] in ("F8_E4M3", "I8"):
            assert got[scale][0] == "F8_E8M0", name
            blocks = ((-(-spec.shape[0] // 128), -(-spec.shape[1] // 128)) if got[name][0] == "F8_E4M3"
                      else (spec.shape[0], spec.shape[1] // 32))
            assert got[scale][1] == blocks, name
        elif scale:
            assert scale not in got, name
    if dtype == "bf16":
        assert not any(k.endswith(".scale") for k in got)
    with open(os.path.join(exports[dtype], "config.json")) as fh:
        conf = json.load(fh)
    assert conf["model_type"] == "deepseek_v4" and conf["num_nextn_predict_layers"] == 1
    assert ("quantization_config" in conf) == (dtype == "fp8")
    with open(os.path.join(exports[dtype], "model.safetensors.index.json")) as fh:
        assert set(json.load(fh)["weight_map"]) == set(want)


@pytest.mark.parametrize("dtype", ["fp8", "bf16"])
def test_values_equal_independent_quantisation_of_the_trained_weights(run_dir, exports, dtype):
    from ascend_v4.checkpoint import official_inventory
    from ascend_v4.convert import load_any_checkpoint
    trained = _trained_weights(run_dir)
    cfg, loaded = load_any_checkpoint(exports[dtype])
    assert cfg.dtype == dtype and cfg.n_mtp_layers == 1
    for name, spec in official_inventory(cfg).items():
        w = trained[name]
        want = {"bf16": _q_bf16, "fp8": _q_fp8_blocks, "fp4": _q_mxfp4}.get(spec.fmt, lambda a: a)(w)
        if spec.fmt == "i64":
            want = w.astype(np.int64)
        np.testing.assert_array_equal(loaded[name], want, err_msg=name)
    assert not np.array_equal(loaded["layers.1.ffn.gate.bias"], 0)    # the balancer's trained biases travel


@pytest.mark.parametrize("dtype", ["fp8", "bf16"])
def test_exported_logits_match_the_trained_model_within_quantisation_noise(run_dir, exports, tiny_cfg, dtype):
    from ascend_v4.convert import load_any_checkpoint
    from ascend_v4.numpy_model import NumpyV4
    trained = {k: (v.astype(np.int64) if k.endswith("tid2eid") else v) for k, v in _trained_weights(run_dir).items()}
    cfg, loaded = load_any_checkpoint(exports[dtype])
    ids = np.random.default_rng(7).integers(2, tiny_cfg.vocab_size, (2, 48))
    ref = NumpyV4(tiny_cfg, trained).forward(ids, with_mtp=True)
    out = NumpyV4(cfg, loaded).forward(ids, with_mtp=True)
    noise_err = {"logits": [], "mtp_logits": []}
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        noisy = {k: (v + rng.standard_normal(v.shape) * np.std(loaded[k].astype(np.float64) - v)).astype(np.float32)
                 if v.dtype == np.float32 else v for k, v in trained.items()}
        o = NumpyV4(tiny_cfg, noisy).forward(ids, with_mtp=True)
        for k in noise_err:
            noise_err[k].append(_logit_err(ref[k], o[k]))
    for k in ("logits", "mtp_logits"):
        err, budget = _logit_err(ref[k], out[k]), 2 * float(np.mean(noise_err[k]))
        assert err <= budget, (dtype, k, err, noise_err[k])
        if dtype == "bf16":
            assert err < 5e-2 and np.mean(ref[k].argmax(-1) == out[k].argmax(-1)) >= 0.85, (k, err)


def test_tokenizer_is_exported_and_loads(run_dir, exports):
    from ascend_v4.train.tokenizer import load_tokenizer
    tdir = os.path.join(run_dir, "tokenizer")
    model = [f for f in os.listdir(tdir) if f.endswith(".model")]
    for dt, d in exports.items():
        with open(os.path.join(d, "tokenizer.model"), "rb") as a, open(os.path.join(tdir, model[0]), "rb") as b:
            assert a.read() == b.read()
        conf = json.load(open(os.path.join(d, "tokenizer_config.json")))
        assert conf["bos_token"] == "<s>" and conf["eos_token"] == "</s>"
        tok = load_tokenizer(d)
        text = "The MTP block predicts two tokens ahead."
        assert tok.decode(tok.encode(text)) == text


def test_ckpt_dir_and_run_dir_give_the_same_export(run_dir, exports, tmp_path):
    from ascend_v4.train.export import export_official
    s = export_official(os.path.join(run_dir, "ckpt-00000003"), str(tmp_path / "again"), "fp8")
    assert s["checkpoint"].endswith("ckpt-00000003")
    for f in os.listdir(exports["fp8"]):
        if f.endswith(".safetensors"):
            with open(os.path.join(exports["fp8"], f), "rb") as a, open(tmp_path / "again" / f, "rb") as b:
                assert a.read() == b.read(), f


def test_run_without_mtp_exports_a_model_without_mtp_layers(ms_graph, tmp_path):
    from ascend_v4.convert import load_any_checkpoint
    from ascend_v4.train.export import export_official
    _make_run(tmp_path / "run", mtp=False)
    export_official(str(tmp_path / "run"), str(tmp_path / "out"), "bf16")
    cfg, w = load_any_checkpoint(str(tmp_path / "out"))
    assert cfg.n_mtp_layers == 0 and len(cfg.compress_ratios) == cfg.n_layers
    assert not any(k.startswith("mtp.") for k in w)


# ------------------------------------------------------------------------------------------------ CLI + errors
def _cli(*args):
    from click.testing import CliRunner
    from ascend_v4.cli import main
    return CliRunner().invoke(main, list(args))


def _assert_clean_error(res, match, parent):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], res.output
    assert not [f for f in os.listdir(parent) if "export" in f or f.startswith(".out")], os.listdir(parent)


def test_cli_exports_and_reports(run_dir, tmp_path):
    res = _cli("export-official", run_dir, str(tmp_path / "out"), "--dtype", "bf16")
    assert res.exit_code == 0, res.output
    assert "exported step 3" in res.output and "bf16" in res.output and "tokenizer.model" in res.output
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_cli_errors_leave_nothing_behind(run_dir, tmp_path):
    _assert_clean_error(_cli("export-official", str(tmp_path / "nope"), str(tmp_path / "out")), "does not exist",
                        tmp_path)
    # truncated model.safetensors
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    ck = bad / "ckpt-00000003" / "model.safetensors"
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])
    _assert_clean_error(_cli("export-official", str(bad), str(tmp_path / "out")), "damaged", tmp_path)
    assert not (tmp_path / "out").exists()
    # `latest` names a checkpoint that is gone
    shutil.rmtree(bad / "ckpt-00000003")
    _assert_clean_error(_cli("export-official", str(bad), str(tmp_path / "out")), "latest", tmp_path)
    # a directory that is not a run
    (tmp_path / "empty").mkdir()
    _assert_clean_error(_cli("export-official", str(tmp_path / "empty"), str(tmp_path / "out")), "neither", tmp_path)
    # output exists
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    _assert_clean_error(_cli("export-official", run_dir, str(tmp_path / "taken")), "not empty", tmp_path)
    assert os.listdir(tmp_path / "taken") == ["x"]


@pytest.mark.slow
def test_trained_for_real_then_exported_matches_the_graph_model(ms_graph, tmp_path):
    """Two real graph-mode training steps, export, then the exported checkpoint through the project's loader and
    graph forward vs the trained MindSpore model's own logits (~1-2 min: train-step and two forward compiles)."""
    import mindspore as ms
    from ascend_v4.convert import load_any_checkpoint
    from ascend_v4.graph.forward import build_forward
    from ascend_v4.train.export import export_official
    from ascend_v4.train.loop import TrainConfig, Trainer
    tc = TrainConfig.from_dict(dict(model="tiny", seq_len=32, batch_size=2, steps=2, warmup_steps=1, lr=1e-2,
                                    eval_every=100, save_every=100))
    tr = Trainer(tc, str(tmp_path / "run"))
    tr.run()
    ids = np.random.default_rng(3).integers(2, tr.cfg.vocab_size, (2, 32))
    tr.model.set_train(False)
    trained_logits = ms.jit(tr.model)(ms.Tensor(ids.astype(np.int32))).asnumpy()
    export_official(str(tmp_path / "run"), str(tmp_path / "bf16"), "bf16")
    cfg, w = load_any_checkpoint(str(tmp_path / "bf16"))
    got = build_forward(cfg, w, max_seq_len=32)(ids)["logits"]
    assert _logit_err(trained_logits, got) < 5e-2
    assert np.mean(trained_logits.argmax(-1) == got.argmax(-1)) >= 0.85
