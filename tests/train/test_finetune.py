"""init_from + freeze + eval on a held-out file: fine-tuning the tiny preset from a release-format checkpoint.

Expected values are independent of the trainer: the first step's loss is recomputed with the float64 NumPy golden
model on the dequantised release weights (read by the checkpoint package's loader), and per-rank streaming is
checked against ParallelContext's slicing of those same full tensors.
"""

import numpy as np
import pytest

LONG_DOC = " ".join(f"the {w} runs over the hill and the river {i} keeps the old stone bridge" for i, w in
                    enumerate(["fox", "dog", "cat", "horse", "bird", "wolf", "bear", "deer"] * 6))


@pytest.fixture(scope="module")
def release(tmp_path_factory, tiny_cfg):
    from ascend_v4.checkpoint import random_weights, write_official_checkpoint
    d = tmp_path_factory.mktemp("rel") / "tiny-release"
    write_official_checkpoint(tiny_cfg, random_weights(tiny_cfg, seed=11), str(d))
    return str(d)


@pytest.fixture(scope="module")
def release_weights(release):
    from ascend_v4.checkpoint import load_official_weights
    return load_official_weights(release)        # dequantised FP8 / MXFP4 / BF16, as any reader would see them


def _golden_lm_loss(cfg, weights, batch):
    """Mean next-token cross entropy over loss_mask, float64, from the NumPy golden forward."""
    from ascend_v4.numpy_model import NumpyV4
    logits = NumpyV4(cfg, weights).forward(batch["input_ids"].astype(np.int64))["logits"]
    mx = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - mx).sum(-1)) + mx[..., 0]
    tgt = np.take_along_axis(logits, batch["targets"][..., None].astype(np.int64), -1)[..., 0]
    m = batch["loss_mask"].astype(np.float64)
    return float(((lse - tgt) * m).sum() / m.sum())


@pytest.mark.slow      # one train-step graph compile + eval: ~25 s on a quiet 2-core machine
def test_finetune_from_release_first_loss_matches_golden_and_frozen_stay(ms_graph, tmp_path, release,
                                                                         release_weights, tiny_cfg):
    from ascend_v4.train.loop import TrainConfig, Trainer
    (tmp_path / "train.txt").write_text(LONG_DOC + "\n")        # one document: every row is one segment
    (tmp_path / "heldout.txt").write_text("a held out line about rivers and hills\n\nanother one on bridges\n")
    tc = TrainConfig.from_dict({"model": None, "init_from": release, "freeze": ["embed", "head", "router"],
                                "seq_len": 32, "batch_size": 2, "steps": 2, "warmup_steps": 1, "lr": "1e-3",
                                "mtp": False, "eval_every": 2, "eval_batches": 1, "save_every": 100,
                                "tensorboard": False,
                                "data": {"files": [str(tmp_path / "train.txt")],
                                         "eval_files": [str(tmp_path / "heldout.txt")]}})
    assert tc.lr == 1e-3
    tr = Trainer(tc, str(tmp_path / "run"))
    assert tr.cfg.to_hf_json() == tiny_cfg.to_hf_json()          # model: null -> the release's config
    start = tr.loader.state_dict()
    batch = next(tr.loader)
    tr.loader.load_state_dict(start)
    assert (batch["segment_ids"] == 0).all() and batch["loss_mask"].all()
    rows = tr.run()
    golden = _golden_lm_loss(tiny_cfg, release_weights, batch)
    # float32 graph vs float64 golden: measured |rel| 3e-7 on this batch
    assert abs(rows[0]["lm_loss"] - golden) <= 2e-6 * abs(golden), (rows[0]["lm_loss"], golden)
    assert np.isfinite(rows[-1]["eval_loss"])

    params = {p.name: p.asnumpy() for p in tr.model.get_parameters()}
    frozen = [n for n in params if n in ("embed.weight", "head.weight") or ".ffn.gate.weight" in n
              or ".ffn.gate.bias" in n]
    assert {"embed.weight", "head.weight"} | {f"layers.{i}.ffn.gate.weight" for i in range(tiny_cfg.n_layers)} \
        <= set(frozen)
    for n in frozen:
        np.testing.assert_array_equal(params[n], release_weights[n].astype(np.float32), err_msg=n)
    moved = [n for n in params if n not in frozen and "tid2eid" not in n
             and not np.array_equal(params[n], release_weights[n].astype(np.float32))]
    assert "layers.0.attn.wq_a.weight" in moved and len(moved) > 100
    assert set(tr.frozen) == set(frozen)
    assert not any(n in {p.name for p in tr.opt.parameters} for n in frozen)

    # the run is itself a source: its checkpoint's tensors are the trained parameters
    from ascend_v4.train.init_from import open_source
    src = open_source(str(tmp_path / "run"))
    assert src.kind == "run checkpoint" and set(params) <= src.names()
    for n in ("embed.weight", "layers.0.attn.wq_a.weight"):
        np.testing.assert_array_equal(src.read(n), params[n], err_msg=n)


def test_each_rank_reads_only_its_own_tensors(ms_graph, release, release_weights, tiny_cfg, simulated_ep_rank):
    from ascend_v4.model import Transformer
    from ascend_v4.parallel import ParallelContext
    from ascend_v4.train.init_from import load_initial_weights
    layouts = [simulated_ep_rank(tiny_cfg, dp=2, tp=2, ep=2, rank=3),
               ParallelContext.pipeline_stage(tiny_cfg, 2, 1)]
    for ctx in layouts:
        model = Transformer(tiny_cfg, max_seq_len=32, with_mtp=True, parallel=ctx)
        read = []
        rep = load_initial_weights(model, tiny_cfg, release, ctx, log=lambda m: None, on_read=read.append)
        local = [p.name for p in model.get_parameters()]
        assert sorted(read) == sorted(local) and rep["loaded"] == len(local) and rep["random"] == []
        assert len(read) < len(release_weights)           # never the whole model
        if ctx.ep > 1:
            mine = set(ctx.local_experts(tiny_cfg.n_routed_experts))
            got = {int(n.split(".experts.")[1].split(".")[0]) for n in read if ".experts." in n}
            assert got == mine and len(mine) < tiny_cfg.n_routed_experts
        else:
            assert not any(n.startswith("layers.0.") for n in read)     # stage 1 holds the later layers
        for p in model.get_parameters():
            want = ctx.shard(p.name, release_weights[p.name]) if ctx.sharded else release_weights[p.name]
            np.testing.assert_array_equal(p.asnumpy(), want.astype(p.asnumpy().dtype), err_msg=p.name)


def test_init_from_run_and_converted_sources(ms_graph, tmp_path, release, release_weights, tiny_cfg):
    """A converted bf16 tp=2 directory and a training run give the same tensors as their own readers."""
    from ascend_v4.convert.loader import load_converted
    from ascend_v4.convert.run import convert_checkpoint
    from ascend_v4.train.init_from import open_source
    conv = str(tmp_path / "conv")
    convert_checkpoint(release, conv, precision="w8a8", tp=2, ep=1, workers=1, progress=False, log=lambda m: None)
    _, want = load_converted(conv)
    src = open_source(conv)
    assert src.kind == "converted" and src.names() == set(want)
    for n in ("layers.1.attn.wq_b.weight", "layers.0.ffn.gate.tid2eid", "layers.2.ffn.experts.3.w2.weight"):
        np.testing.assert_array_equal(src.read(n), want[n], err_msg=n)
    src.close()
