"""The one loader (ascend_v4.weights.load_checkpoint) and the memory guard of commands that build a model."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from ascend_v4.checkpoint import load_official_weights, random_weights, write_official_checkpoint
from ascend_v4.config import PRESETS, load_config
from ascend_v4.convert import convert_checkpoint
from ascend_v4.weights import WeightError, checkpoint_config, checkpoint_kind, load_checkpoint

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("rel") / "tiny")
    write_official_checkpoint(TINY, random_weights(TINY, 3), d)
    return d


@pytest.mark.parametrize("precision,layout,tp,ep", [("bf16", "ranks", 2, 4), ("w8a8", "serving", 1, 1),
                                                     ("w8a8", "ranks", 2, 2), ("w4a8", "serving", 1, 1)])
def test_every_converted_directory_loads_like_the_release(release, tmp_path, precision, layout, tp, ep):
    ref = load_official_weights(release, load_config(release))
    d = str(tmp_path / "out")
    convert_checkpoint(release, d, precision, tp, ep, progress=False, layout=layout)
    assert checkpoint_kind(d) == "converted"
    cfg, w = load_checkpoint(d)
    assert checkpoint_config(d) == cfg and (cfg.dim, cfg.n_layers) == (TINY.dim, TINY.n_layers)
    assert set(w) == set(ref)
    for k, v in ref.items():
        assert w[k].shape == v.shape and w[k].dtype == (np.int64 if v.dtype == np.int64 else np.float32), k
        if precision == "bf16" or v.dtype == np.int64:
            assert np.array_equal(w[k], v), k                   # bf16 is exact; tid2eid untouched
    worst = max(np.linalg.norm(w[k] - ref[k]) / np.linalg.norm(ref[k]) for k in ref
                if ref[k].dtype != np.int64 and np.linalg.norm(ref[k]) > 0)
    # int8 per channel: ~0.6 %; int4 per group 32 with a searched clip on Gaussian weights: ~7 %
    assert worst < {"bf16": 1e-12, "w8a8": 0.01, "w4a8": 0.09}[precision]


def test_training_runs_point_to_export_official(tmp_path):
    run = tmp_path / "run"
    (run / "ckpt-00000010").mkdir(parents=True)
    (run / "ckpt-00000010" / "model.safetensors").write_bytes(b"")
    for p in (run, run / "ckpt-00000010"):
        with pytest.raises(WeightError, match=r"export-official .* OUT_DIR"):
            load_checkpoint(str(p))
        with pytest.raises(WeightError, match="export-official"):
            checkpoint_config(str(p))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightError, match="no config.json"):
        load_checkpoint(str(tmp_path / "empty"))


def test_make_checkpoint_writes_a_tokenizer_that_fits_the_vocabulary(tmp_path):
    from ascend_v4.cli import main
    from ascend_v4.serve.tokenizer import load_tokenizer
    d = str(tmp_path / "ck")
    r = CliRunner().invoke(main, ["make-checkpoint", d, "--config", "tiny"])
    assert r.exit_code == 0, r.output
    ids = load_tokenizer(d).encode("hello")
    assert 0 < len(ids) and max(ids) < TINY.vocab_size


@pytest.mark.parametrize("argv", [["make-checkpoint", "{out}", "--config", "v4-flash"],
                                  ["train", "--config", "{yaml}", "--list-param-groups"]])
def test_full_size_models_are_refused_before_they_are_built(tmp_path, argv, monkeypatch):
    from ascend_v4.cli import main
    from ascend_v4.info import parameter_counts
    yaml = tmp_path / "flash.yaml"
    yaml.write_text("model: v4-flash\n")
    monkeypatch.setenv("ASCEND_V4_MEMORY_BYTES", str(64e9))
    args = [a.format(out=tmp_path / "out", yaml=yaml) for a in argv]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: ") and "64.0 GB available" in line and ("smaller preset" in line or "small" in line)
    n = parameter_counts(PRESETS["v4-flash"])["total_with_mtp"]
    per = 5.5 if argv[0] == "make-checkpoint" else 4.0
    assert f"{n * per / 1e12:.1f} TB" in line                  # the estimate: parameters x bytes each
    assert not (tmp_path / "out").exists()


def test_info_describes_a_converted_directory(release, tmp_path):
    from ascend_v4.cli import main
    d = str(tmp_path / "w4")
    convert_checkpoint(release, d, "w4a8", progress=False)
    r = CliRunner().invoke(main, ["info", d])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "w4a8, serving layout, int4 group 32, tp 1 ep 1" in out
    man = json.load(open(os.path.join(d, "manifest.json")))
    assert man["source"]["config_sha256"] in out
    experts = next(line for line in out.splitlines() if line.strip().startswith("routed experts"))
    n_exp = TINY.n_layers * TINY.n_routed_experts * 3
    assert f"I8 x{n_exp}" in experts and "rel. error mean" in experts
    assert next(line for line in out.splitlines() if line.strip().startswith("embed")).split()[-1] == "x1"


@pytest.mark.slow
@pytest.mark.parametrize("precision,layout,tp,ep", [("w4a8", "serving", 1, 1), ("w8a8", "ranks", 2, 2)])
def test_generate_runs_on_converted_directories(release, tmp_path, precision, layout, tp, ep):
    """`generate` reads converted directories through the one loader; its greedy ids are the float64 golden
    model's argmax over the same (dequantised) weights. Slow: two graph compiles."""
    from ascend_v4.cli import main
    from ascend_v4.numpy_model import NumpyV4
    d = str(tmp_path / "out")
    convert_checkpoint(release, d, precision, tp, ep, progress=False, layout=layout)
    prompt = np.array([5, 17, 300, 42, 7], np.int64)
    np.save(tmp_path / "p.npy", prompt)
    out = tmp_path / "g.npz"
    r = CliRunner().invoke(main, ["generate", d, "--tokens", str(tmp_path / "p.npy"), "--max-new-tokens", "3",
                                  "--greedy", "--no-eos", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    with np.load(out) as z:
        got = z["tokens"][0]
    cfg, w = load_checkpoint(d)
    seq = prompt.copy()
    for _ in range(3):
        nxt = int(NumpyV4(cfg, w).forward(seq[None])["logits"][0, -1].argmax())
        seq = np.append(seq, nxt)
    assert got.tolist() == seq[prompt.size:].tolist()


def test_loading_refuses_a_checkpoint_that_cannot_fit(release, monkeypatch):
    """A full-size checkpoint would be a MemoryError half-way; the estimate refuses it first (here: a tiny one
    against a pretend 1 MB host)."""
    from ascend_v4.config import ConfigError
    from ascend_v4.info import parameter_counts
    monkeypatch.setenv("ASCEND_V4_MEMORY_BYTES", "1000000")
    need = parameter_counts(TINY)["total_with_mtp"] * 4
    want = rf"about {need / 1e6:.1f} MB in memory.*\(1\.0 MB available\).*ascend-v4 info"
    with pytest.raises(ConfigError, match=want):
        load_checkpoint(release)
    load_checkpoint(release, names=["embed.weight"])        # a subset is not guarded
