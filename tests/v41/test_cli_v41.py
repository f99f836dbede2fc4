"""The commands that run DeepSeek-V4.1 as a user runs them (release-format directory from make-checkpoint):
dump through the graph-mode Cells equals the golden dump, and what this port cannot run (image inputs, DSpark
drafting, the INT8 cache) is refused with one `error:` line, exit 2 and no output file."""
import os

import numpy as np
import pytest
from click.testing import CliRunner

from ascend_v4.cli import main
from ascend_v4.config import MODEL_VERSIONS, V41_PRESETS

CFG = V41_PRESETS["v4.1-tiny"]


def _tokens(tmp_path, ids, name="t.npy"):
    p = str(tmp_path / name)
    np.save(p, np.asarray(ids, np.int64))
    return p


def _one_error(r):
    lines = [l for l in r.output.splitlines() if l.startswith("error:")]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    return lines[0]


def test_image_inputs_and_unsupported_options_are_refused(release, tmp_path):
    out = str(tmp_path / "g.npz")
    line = _one_error(CliRunner().invoke(main, ["generate", release, "--tokens", _tokens(tmp_path, [3, 4, 5]),
                                                "--image", "cat.png", "--out", out]))
    assert "image inputs are not supported" in line and "vision" in line
    line = _one_error(CliRunner().invoke(main, ["generate", release, "--tokens",
                                                _tokens(tmp_path, [3, CFG.image_token_id, 5], "img.npy"), "--out", out]))
    assert f"image token id {CFG.image_token_id}" in line
    line = _one_error(CliRunner().invoke(main, ["generate", release, "--tokens", _tokens(tmp_path, [3, 4, 5]),
                                                "--mtp", "--out", out]))
    assert "DSpark" in line and "--dspark" in line
    line = _one_error(CliRunner().invoke(main, ["generate", release, "--tokens", _tokens(tmp_path, [3, 4, 5]),
                                                "--dspark", "--out", out]))
    assert "--greedy" in line
    line = _one_error(CliRunner().invoke(main, ["generate", release, "--tokens", _tokens(tmp_path, [3, 4, 5]),
                                                "--int8-kv", "--kv-format", "reference", "--out", out]))
    assert "--int8-kv contradicts --kv-format reference" in line
    dump_out = str(tmp_path / "d.npz")
    line = _one_error(CliRunner().invoke(main, ["dump", release, "--tokens",
                                                _tokens(tmp_path, [[3, CFG.image_token_id]], "img2.npy"),
                                                "--out", dump_out, "--backend", "numpy"]))
    assert "image inputs are not supported" in line
    assert not os.path.exists(out) and not os.path.exists(dump_out)


@pytest.mark.slow      # compiles the 10-layer graph (~85 s on the shared 2-core host)
def test_dump_graph_equals_the_golden_dump(release, tmp_path):
    ids = np.random.default_rng(1).integers(0, CFG.image_token_id, (2, 24))
    t = _tokens(tmp_path, ids)
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    r = CliRunner().invoke(main, ["dump", release, "--tokens", t, "--out", a])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["dump", release, "--tokens", t, "--out", b, "--backend", "numpy"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["compare", a, b, "--max-median-rel", "1e-5"])
    assert r.exit_code == 0, r.output
    da, db = np.load(a), np.load(b)
    assert sorted(da.files) == sorted(db.files)
    assert np.array_equal(da["logits"].argmax(-1), db["logits"].argmax(-1))


def test_engine_refuses_image_tokens(release):
    from ascend_v4.serve.engine import Engine, ServeError
    from ascend_v4.weights import load_checkpoint
    cfg, w = load_checkpoint(release, versions=MODEL_VERSIONS)
    eng = Engine(cfg, w, max_batch=1, max_len=64)
    with pytest.raises(ServeError, match="image inputs are not supported"):
        eng.prefill([np.array([1, cfg.image_token_id, 2])])
    with pytest.raises(ServeError, match="DSpark"):
        Engine(cfg, w, max_batch=1, max_len=64, mtp=True)


@pytest.mark.slow      # two engines (prefill, decode, DSpark draft and verify graphs): ~130 s on a quiet 2-core host
@pytest.mark.timeout(3000)
def test_generate_dspark_equals_greedy(release, tmp_path):
    toks = _tokens(tmp_path, [[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]])
    runs = {}
    for name, extra in (("greedy", []), ("dspark", ["--dspark"])):
        out = str(tmp_path / f"{name}.npz")
        r = CliRunner().invoke(main, ["generate", release, "--tokens", toks, "--greedy", "--no-eos", "--quiet",
                                      "--max-new-tokens", "12", "--out", out] + extra)
        assert r.exit_code == 0, r.output
        runs[name] = np.load(out)
    assert "DSpark draft acceptance" in r.output
    np.testing.assert_array_equal(runs["dspark"]["tokens"], runs["greedy"]["tokens"])
