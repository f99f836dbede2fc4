"""`ascend-v4 train` on DeepSeek-V4.1 (Trainer, ascend_v4/train/v41.py) end to end on v4.1-tiny: a run resumed from
its step-2 checkpoint equals the uninterrupted run bit for bit (model, optimiser, Engram tables and their row
state, per-step losses); V4.1 layouts it does not run (more pipeline stages than its CSA-v2 layout allows) are refused with one line; init_from a V4.1 release
directory loads every tensor (Engram tables included) decoded from its FP8 / MXFP4 storage."""
import json
import os

import numpy as np
import pytest

from run_dirs import fork_run


def _tc(**kw):
    from ascend_v4.train.loop import TrainConfig
    base = dict(model="v4.1-tiny", seq_len=16, batch_size=2, steps=4, lr=3e-3, warmup_steps=1, eval_every=1000,
                eval_batches=1, save_every=2, tensorboard=False)
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_unsupported_v41_layouts_are_refused(tmp_path):
    from ascend_v4.train.loop import TrainConfigError, Trainer
    for kw, what in (({"parallel": {"pp": 6}}, r"at most 5 pipeline stage\(s\)"),):
        with pytest.raises(TrainConfigError, match=what):
            Trainer(_tc(**kw), str(tmp_path / "r"))


@pytest.mark.slow     # two train-step compiles + evals of the 10-layer + 3-stage model: 657 s on the loaded host
def test_v41_resume_is_bit_exact(ms_graph, tmp_path):
    from ascend_v4.train.loop import Trainer
    a_dir, b_dir = str(tmp_path / "a"), str(tmp_path / "b")
    tc = _tc()
    a = Trainer(tc, a_dir)
    rows_a = a.run()
    assert os.path.isfile(os.path.join(a_dir, "ckpt-00000002", "engram_state.npz"))
    assert all(np.isfinite(r["loss"]) and r["mtp_loss"] > 0 for r in rows_a)
    fork_run(a_dir, 2, b_dir)
    b = Trainer(tc, b_dir)
    assert b.maybe_resume() and b.step == 2
    rows_b = b.run()
    assert [r["loss"] for r in rows_b] == [r["loss"] for r in rows_a[2:]]
    for x, y in ((a.model, b.model), (a.opt, b.opt)):
        wa = {p.name: p.asnumpy() for p in x.get_parameters()}
        wb = {p.name: p.asnumpy() for p in y.get_parameters()}
        assert wa.keys() == wb.keys()
        for k in wa:
            np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    sa, sb = a.engram.state_dict(), b.engram.state_dict()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    lines = [json.loads(x) for x in open(os.path.join(a_dir, "metrics.jsonl"))]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]


def test_init_from_a_v41_release_directory(ms_graph, tmp_path):
    """make-checkpoint --config v4.1-tiny, then a run with init_from it and its tokenizer: every model tensor and
    both Engram tables equal the release's decoded values (read by the checkpoint loader), the drafter included."""
    from click.testing import CliRunner
    from ascend_v4.checkpoint import load_official_weights
    from ascend_v4.cli import main
    from ascend_v4.config import MODEL_VERSIONS, ModelConfig
    from ascend_v4.train.loop import Trainer
    rel = str(tmp_path / "rel")
    res = CliRunner().invoke(main, ["make-checkpoint", rel, "--config", "v4.1-tiny"])
    assert res.exit_code == 0, res.output
    tc = _tc(model=None, init_from=rel, data={"tokenizer": os.path.join(rel, "tokenizer.json")})
    tr = Trainer(tc, str(tmp_path / "run"))
    assert tr.cfg.version == "v4.1" and tr.init_report["random"] == []
    ref = load_official_weights(rel, ModelConfig.from_json(rel, versions=MODEL_VERSIONS))
    params = {p.name: p.asnumpy() for p in tr.model.get_parameters()}
    assert any(n.startswith("mtp.2.markov_head") for n in params)
    for n, v in params.items():
        np.testing.assert_array_equal(v, ref[n].astype(np.float32), err_msg=n)
    for k, L in enumerate(tr.cfg.engram_layer_ids):
        np.testing.assert_array_equal(tr.engram.tables[k], ref[f"layers.{L}.engram.embed.weight"])
    assert tr.init_report["loaded"] == len(params)
