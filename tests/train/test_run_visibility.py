"""Seeing a run and resuming it safely: timestamps, TensorBoard events, plot, keep_last_n, group-readable files;
a resume cuts metrics.jsonl back to the checkpoint's step and says what a changed schedule changes; damaged or
non-finite checkpoints and a parallel layout without msrun are refused with one clear error."""
import datetime
import json
import os
import shutil
import stat
import struct
import subprocess
import sys

import numpy as np
import pytest


def _tc(**kw):
    from ascend_v4.train.loop import TrainConfig
    # no eval split (one compiled graph: the train step; eval is covered by test_finetune)
    base = dict(model="tiny", seq_len=32, batch_size=2, steps=3, lr=1e-2, warmup_steps=1, save_every=1,
                keep_last_n=1, mtp=False, data={"eval_fraction": 0})
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real 3-step run (one graph compile: ~30 s, so the tests that read it are slow)."""
    from ascend_v4.runtime import setup
    setup("CPU", "graph")
    from ascend_v4.train.loop import Trainer
    d = str(tmp_path_factory.mktemp("vis") / "run")
    old = os.umask(0o077)          # a private umask: group-readable files must come from the trainer, not the shell
    try:
        Trainer(_tc(), d).run()
    finally:
        os.umask(old)
    return d


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    """A run directory with a checkpoint at step 3 and 3 metrics rows, written without compiling a step (the
    resume / refusal tests read only the files)."""
    from ascend_v4.runtime import setup
    setup("CPU", "graph")
    from ascend_v4.train.loop import Trainer
    d = str(tmp_path_factory.mktemp("saved") / "run")
    tr = Trainer(_tc(), d)
    tr.step = 3
    tr.save()
    with open(os.path.join(d, "metrics.jsonl"), "w") as fh:
        fh.writelines(json.dumps({"step": s, "loss": 5.0}) + "\n" for s in (1, 2, 3))
    return d


def _metrics(d):
    return [json.loads(x) for x in open(os.path.join(d, "metrics.jsonl"))]


def _tb_scalars(logdir):
    """{tag: {step: value}} read straight from the TFRecord event files (length, crc, Event proto, crc)."""
    from tensorboardX.proto.event_pb2 import Event
    out = {}
    for name in sorted(os.listdir(logdir)):
        data = open(os.path.join(logdir, name), "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, {})[ev.step] = v.simple_value
    return out


@pytest.mark.slow
def test_metrics_tensorboard_checkpoints_and_modes(run_dir):
    from ascend_v4 import load_config
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    times = [datetime.datetime.fromisoformat(r["time"]) for r in rows]
    assert all(t.tzinfo is not None for t in times) and times == sorted(times)
    assert abs((times[-1] - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) < 600
    assert [r["elapsed_s"] for r in rows] == sorted(r["elapsed_s"] for r in rows)
    assert not any("eval_loss" in r for r in rows)       # no eval split: no eval entry (it used to log NaN)
    cfg = load_config("tiny")
    n_routed = sum(1 for i in range(cfg.n_layers) if not cfg.is_hash_layer(i))
    for r in rows:
        per = r["expert_imbalance_layers"]
        assert len(per) == n_routed and all(v >= 1.0 for v in per)
        assert abs(np.mean(per) - r["expert_imbalance"]) < 1e-4
    tb = _tb_scalars(os.path.join(run_dir, "tensorboard"))
    assert {s: round(v, 4) for s, v in tb["train/loss"].items()} == {r["step"]: round(r["loss"], 4) for r in rows}
    assert set(tb["train/lr"]) == {1, 2, 3} and "expert_imbalance/layer0" in tb
    # keep_last_n: 1 -> only the newest checkpoint is left
    assert sorted(n for n in os.listdir(run_dir) if n.startswith("ckpt-")) == ["ckpt-00000003"]
    under = [os.path.join(d, n) for d in ("tensorboard", "tokenizer", "cache")
             for n in os.listdir(os.path.join(run_dir, d))]
    assert len(under) >= 3
    for rel in [".", "metrics.jsonl", "latest", "ckpt-00000003", "ckpt-00000003/model.safetensors",
                "ckpt-00000003/optimizer.safetensors", "ckpt-00000003/trainer_state.json", "tensorboard",
                "tokenizer", "cache"] + under:
        mode = os.stat(os.path.join(run_dir, rel)).st_mode
        assert mode & stat.S_IRGRP and (not stat.S_ISDIR(mode) or mode & stat.S_IXGRP), rel


def test_plot_draws_one_or_several_runs(saved_dir, tmp_path):
    from ascend_v4.train.plot import plot_runs
    out = tmp_path / "loss.png"
    run_dir = str(tmp_path / "a")
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as fh:      # the row layout Trainer.run writes
        for s in (1, 2, 3):
            fh.write(json.dumps({"step": s, "loss": 6.0 - s, "lr": 1e-3 * s, "grad_norm": 1.0 / s,
                                 "expert_imbalance": 1.2, "expert_imbalance_layers": [1.1, 1.3],
                                 **({"eval_loss": 5.5} if s == 3 else {})}) + "\n")
    msg = plot_runs([run_dir, os.path.join(saved_dir, "metrics.jsonl")], str(out))
    assert "2 run(s), 6 steps" in msg
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10000
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]
    r = subprocess.run([sys.executable, "-m", "ascend_v4.cli", "plot", str(tmp_path / "nothing"), "--out",
                        str(tmp_path / "x.png")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "no metrics.jsonl" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_plot_compares_like_with_like():
    """The eval loss is next-token cross entropy on held-out data: the training line it is drawn against is the
    same quantity (lm_loss), not the total objective (+0.3 MTP + balance), which sits far above it."""
    from ascend_v4.train.plot import loss_curves
    rows = [{"step": 1, "loss": 8.77, "lm_loss": 6.72}, {"step": 2, "loss": 8.62, "lm_loss": 6.63, "eval_loss": 6.74}]
    c = loss_curves(rows)
    assert c == {"train": [(1, 6.72), (2, 6.63)], "eval": [(2, 6.74)], "objective": [(1, 8.77), (2, 8.62)]}
    old = [{"step": 1, "loss": 5.0}, {"step": 2}]          # rows without lm_loss: the loss is the only line
    assert loss_curves(old) == {"train": [(1, 5.0)], "eval": [], "objective": []}


def _copy_run(run_dir, tmp_path, name="b"):
    d = str(tmp_path / name)
    shutil.copytree(run_dir, d)
    return d


def test_resume_cuts_metrics_and_says_what_the_new_schedule_changes(saved_dir, tmp_path, capsys):
    from ascend_v4.train.loop import Trainer
    d = _copy_run(saved_dir, tmp_path)
    with open(os.path.join(d, "metrics.jsonl"), "a") as fh:   # a killed run logged steps past its checkpoint
        fh.write(json.dumps({"step": 4, "loss": 1.0}) + "\n" + json.dumps({"step": 5, "loss": 1.0}) + "\n")
        fh.write('{"step": 7, "lo')                              # and was killed mid-line
    tr = Trainer(_tc(steps=8, init_from=str(tmp_path / "gone")), d)    # resuming: init_from is not read
    assert tr.init_report is None
    assert tr.maybe_resume() and tr.step == 3
    assert [r["step"] for r in _metrics(d)] == [1, 2, 3]
    out = capsys.readouterr().out
    assert "resume: steps 3 -> 8: the LR schedule is recomputed; lr at step 4: 1.000e-03 -> " in out
    assert "the decay now runs from step 1 to 8 (was 1 to 3)" in out
    assert f"init_from: not read - {d} holds a checkpoint, the run resumes from it" in out


@pytest.mark.parametrize("damage, match", [
    (lambda st: [], "state version 'list' != 1"),
    (lambda st: {k: v for k, v in st.items() if k != "data"}, "'data' is missing"),
    (lambda st: dict(st, step="x"), "step 'x' is not a non-negative integer"),
    (lambda st: dict(st, data={"epoch": "zero"}), "the data position does not fit this run's data"),
    (None, "is not valid JSON"),
])
def test_damaged_trainer_state_is_one_clear_error(saved_dir, tmp_path, damage, match):
    from ascend_v4.train.loop import Trainer
    from ascend_v4.train.state import TrainStateError
    d = _copy_run(saved_dir, tmp_path)
    p = os.path.join(d, "ckpt-00000003", "trainer_state.json")
    st = json.load(open(p))
    with open(p, "w") as fh:
        fh.write(json.dumps(damage(st)) if damage else '{"step": 4, "da')
    with pytest.raises(TrainStateError, match=match):
        Trainer(_tc(), d).maybe_resume()


def test_nan_in_a_resumed_checkpoint_is_refused_before_training(saved_dir, tmp_path):
    from safetensors.numpy import load_file, save_file
    from ascend_v4.train.loop import Trainer
    from ascend_v4.train.state import TrainStateError
    d = _copy_run(saved_dir, tmp_path)
    for f in ("model", "optimizer"):
        p = os.path.join(d, "ckpt-00000003", f"{f}.safetensors")
        t = load_file(p)
        name = "layers.1.attn.wq_a.weight" if f == "model" else "adam_m.embed.weight"
        t[name] = t[name].copy()
        t[name].flat[7] = np.nan
        save_file(t, p)
        with pytest.raises(TrainStateError, match=f"{f} tensor '{name}' has 1 NaN/Inf values; resume from an "
                                                  f"earlier checkpoint"):
            Trainer(_tc(), d).maybe_resume()
        shutil.copy(os.path.join(saved_dir, "ckpt-00000003", f"{f}.safetensors"), p)


def test_truncate_metrics_keeps_the_checkpoint_prefix(tmp_path):
    from ascend_v4.train.loop import truncate_metrics
    p = tmp_path / "metrics.jsonl"
    p.write_text("".join(json.dumps({"step": s}) + "\n" for s in [1, 2, 3, 4, 5]) + '{"step": 6, "lo')
    assert truncate_metrics(str(p), 3) == 3
    assert [json.loads(x)["step"] for x in p.read_text().splitlines()] == [1, 2, 3]
    assert truncate_metrics(str(p), 3) == 0 and truncate_metrics(str(tmp_path / "none.jsonl"), 3) == 0


def test_parallel_layout_without_msrun_is_refused(tmp_path):
    from ascend_v4.train.loop import TrainConfigError, distributed
    env_had = os.environ.pop("MS_WORKER_NUM", None)
    try:
        with pytest.raises(TrainConfigError, match=r"dp·tp·pp = 2·1·1 = 2 needs 2 processes: launch with `msrun "
                                                   r"--worker_num 2"):
            distributed(_tc(parallel={"dp": 2}))
        assert distributed(_tc()) == (0, 1)
    finally:
        if env_had is not None:
            os.environ["MS_WORKER_NUM"] = env_had
    (tmp_path / "dp.yaml").write_text("parallel: {dp: 2, ep: 2}\n")
    env = {k: v for k, v in os.environ.items() if k != "MS_WORKER_NUM"}
    r = subprocess.run([sys.executable, "-m", "ascend_v4.cli", "train", "--config", str(tmp_path / "dp.yaml"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and r.stderr.startswith("error: parallel dp·tp·pp = 2·1·1 = 2 needs 2 processes")
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()
