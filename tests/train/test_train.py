"""Training end to end on the tiny preset and the embedded corpus: loss goes down, resume is bit-exact."""
import json
import os

import numpy as np
import pytest

from run_dirs import fork_run


def _tc(**kw):
    from ascend_v4.train.loop import TrainConfig
    base = dict(model="tiny", seq_len=32, batch_size=4, steps=30, lr=1e-2, warmup_steps=3, eval_every=1000,
                eval_batches=1, save_every=1000)
    base.update(kw)
    return TrainConfig.from_dict(base)


def _weights(tr):
    return {p.name: p.asnumpy().copy() for p in tr.model.get_parameters()}


@pytest.mark.slow      # 30 train steps + eval: over 20 s on a quiet 2-core machine; in .ci/run's slower proofs
def test_loss_goes_down_on_the_embedded_corpus(ms_graph, tmp_path):
    from ascend_v4.train.loop import Trainer
    tr = Trainer(_tc(), str(tmp_path / "run"))
    rows = tr.run()
    first = np.mean([r["lm_loss"] for r in rows[:5]])
    last = np.mean([r["lm_loss"] for r in rows[-5:]])
    assert last < first - 0.5, (first, last)
    assert all(np.isfinite(r["loss"]) for r in rows)
    lines = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [x["step"] for x in lines] == list(range(1, 31))
    assert {"loss", "lm_loss", "mtp_loss", "balance_loss", "tokens_per_s"} <= set(lines[0])
    assert "eval_loss" in lines[-1] and np.isfinite(lines[-1]["eval_loss"])
    assert os.path.isdir(tmp_path / "run" / "ckpt-00000030")


@pytest.mark.slow      # two trainers (two train-step compiles): ~125 s of CPU; in .ci/run's slower proofs
def test_resume_is_bit_exact(ms_graph, tmp_path):
    from ascend_v4.train.loop import Trainer
    a_dir, b_dir = str(tmp_path / "a"), str(tmp_path / "b")
    tc = _tc(steps=6, save_every=3, eval_every=3)
    a = Trainer(tc, a_dir)
    a.run()
    # B starts from A's step-3 checkpoint and runs the remaining 3 steps
    fork_run(a_dir, 3, b_dir)
    b = Trainer(tc, b_dir)
    assert b.maybe_resume() and b.step == 3
    b.run()
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    oa = {p.name: p.asnumpy() for p in a.opt.get_parameters()}
    ob = {p.name: p.asnumpy() for p in b.opt.get_parameters()}
    for k in oa:
        np.testing.assert_array_equal(oa[k], ob[k], err_msg=k)


def test_bad_train_configs(tmp_path):
    from ascend_v4.train.loop import TrainConfig, TrainConfigError
    with pytest.raises(TrainConfigError, match="unknown key"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(TrainConfigError, match="seq_len"):
        TrainConfig.from_dict({"seq_len": 0})
    (tmp_path / "c.yaml").write_text("steps: [1, 2\n")
    with pytest.raises(TrainConfigError, match="not valid YAML"):
        TrainConfig.from_yaml(str(tmp_path / "c.yaml"))
