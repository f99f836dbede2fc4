"""Pipeline stages and micro-batching (ascend_v4/train/pipeline.py), single process.

* the stage split of the layers and which stage holds each official name (the embedding on the first stage and,
  with MTP, a copy on the last);
* rank coordinates and communication groups of dp·tp·pp layouts;
* two pipeline stages composed by hand (stage 0 forward, stage 1 value-and-grad, stage 0 value-and-grad fed stage
  1's input gradient) give the whole model's loss terms and gradients: each parameter's gradient on the stage
  holding it, the embedding's as the sum of its two copies' (what the `emb` AllReduce forms);
* `gather_stages` merges the stages' tensors exactly (ranks as threads, the AllReduce replaced by an exchange);
* (slow: two tiny training runs, ~1.5 min) micro_batches = 2 trains like micro_batches = 1 (losses, grad norm,
  weights; the pipelined eval loss is checked in the msrun runs), and in both the router bias moves by the
  balancer's sign steps;
The schedule with real communication (msrun: pp = 2, pp = 3, dp = 2 · pp = 2) and the refused layouts are in
test_msrun_parallel.py.

Tolerances: float32 against float32 with a different summation order — losses 2e-6 relative, gradients 2e-5 of
the largest entry, weights after 2 Muon/AdamW steps 1e-4 (observed 5e-5 after 3 steps).
"""

import numpy as np
import pytest

from ascend_v4.parallel import ParallelContext, stage_layers, stages_holding


def test_stage_split_covers_the_layers_last_stage_smallest():
    for n in range(1, 13):
        for pp in range(1, n + 1):
            parts = [stage_layers(n, pp, s) for s in range(pp)]
            assert [i for r in parts for i in r] == list(range(n))
            sizes = [len(r) for r in parts]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
            assert sizes[-1] == min(sizes)
    assert list(stage_layers(43, 4, 0)) == list(range(0, 11))       # V4-Flash: 43 layers on 4 stages
    assert list(stage_layers(43, 4, 3)) == list(range(33, 43))


def test_stages_holding_names():
    assert stages_holding("layers.1.attn.wq_a.weight", 4, 2, True) == (0,)
    assert stages_holding("layers.2.ffn.experts.3.w1.weight", 4, 2, True) == (1,)
    assert stages_holding("muon_m.layers.3.attn.wo_a.weight", 4, 2, True) == (1,)
    assert stages_holding("adam_v.layers.0.hc_attn_base", 4, 2, True) == (0,)
    assert stages_holding("mtp.0.e_proj.weight", 4, 2, True) == (1,)
    assert stages_holding("embed.weight", 4, 3, True) == (0, 2)
    assert stages_holding("embed.weight", 4, 3, False) == (0,)
    assert stages_holding("adam_m.embed.weight", 4, 1, True) == (0,)
    for n in ("head.weight", "norm.weight", "hc_head_fn", "adam_v.hc_head_base", "master.head.weight"):
        assert stages_holding(n, 4, 2, True) == (1,), n
    assert stages_holding("step", 4, 3, True) == (0, 1, 2)


def test_pipeline_groups(tiny_cfg):
    dp, tp, pp = 2, 2, 2
    ctxs = [ParallelContext(dp=dp, tp=tp, pp=pp, rank=r, world=8) for r in range(8)]
    c = ctxs[5]                                       # stage 1, dp_rank 0, tp_rank 1
    assert (c.pp_rank, c.dp_rank, c.tp_rank) == (1, 0, 1)
    assert c.group_ranks("tp") == (4, 5)
    assert c.group_ranks("dp") == (5, 7)
    assert c.group_ranks("pp") == (1, 5)
    assert c.group_ranks("emb") == (1, 5)
    for kind, size in (("tp", tp), ("dp", dp), ("pp", pp)):
        groups = {x.group_ranks(kind) for x in ctxs}
        assert all(len(g) == size for g in groups)
        assert sorted(r for g in groups for r in g) == list(range(8)), kind
    mid = ParallelContext(pp=3, rank=1, world=3)      # a middle stage holds no embedding
    assert mid.group_ranks("emb") == (1,) and ParallelContext(pp=3, rank=2, world=3).group_ranks("emb") == (0, 2)
    assert list(ctxs[0].stage_layers(tiny_cfg.n_layers)) == [0, 1]
    assert list(ctxs[7].stage_layers(tiny_cfg.n_layers)) == [2, 3]


def _batch(cfg, B=2, S=32, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (B, S)).astype(np.int32)
    seg = np.zeros((B, S), np.int32)
    seg[0, 20:] = 1                                   # two documents in row 0
    mask = np.ones((B, S), np.float32)
    mask[1, -5:] = 0                                  # padding at the end of row 1
    tgt = rng.integers(0, cfg.vocab_size, (B, S)).astype(np.int32)
    return ids, tgt, seg, mask


@pytest.mark.slow   # > 20 s: runs in .ci/run, so the default suite stays under 10 minutes
def test_two_stages_compose_to_the_whole_model(ms_graph, tiny_cfg):
    import mindspore as ms
    from ascend_v4.checkpoint import random_weights
    from ascend_v4.model import Transformer
    from ascend_v4.train.losses import V4Loss
    from ascend_v4.train.pipeline import StageLoss
    from ascend_v4.weights import load_into

    cfg = tiny_cfg
    w = random_weights(cfg, seed=5)
    ids, tgt, seg, mask = _batch(cfg)
    T = ms.Tensor
    mtp_w, lm_den = 0.3, float(mask.sum())
    mtp_den = float((mask[:, 1:] * (seg[:, :-1] == seg[:, 1:])).sum())
    args = (T(ids), T(tgt), T(seg), T(mask), T(np.float32(mtp_w)), T(np.float32(lm_den)), T(np.float32(mtp_den)))

    full = Transformer(cfg, max_seq_len=32, with_mtp=True)
    load_into(full, w, strict=False)
    full.set_train(True)
    loss_net = V4Loss(full, 1e-2)
    fparams = [p for p in full.trainable_params()]
    (f_loss, f_lm, f_mtp, f_bal, f_loads, _), f_grads = ms.jit(
        ms.value_and_grad(loss_net, None, fparams, has_aux=True))(*args)
    ref = {p.name: g.asnumpy() for p, g in zip(fparams, f_grads)}

    stages, grads = [], {}
    for s in range(2):
        m = Transformer(cfg, max_seq_len=32, with_mtp=True, parallel=ParallelContext.pipeline_stage(cfg, 2, s))
        load_into(m, w, strict=False)
        m.set_train(True)
        stages.append((m, StageLoss(m, 1e-2)))
    m0, sl0 = stages[0]
    m1, sl1 = stages[1]
    assert m0.local_layers == (0, 1) and m1.local_layers == (2, 3)
    assert not hasattr(m0, "head") and hasattr(m1, "embed") and hasattr(m1, "mtp") and not m0.with_mtp
    names0 = {p.name for p in m0.trainable_params()}
    names1 = {p.name for p in m1.trainable_params()}
    assert names0 | names1 == set(ref) and names0 & names1 == {"embed.weight"}

    dummy = T(np.zeros((1,), np.float32))
    def fwd0(x, sg):
        return sl0.stage_forward(dummy, x, sg)[0]

    h = ms.jit(fwd0)(T(ids), T(seg))
    one = T(np.float32(1.0))
    p1 = m1.trainable_params()
    (_, aux1), (g_h, g1) = ms.jit(ms.value_and_grad(sl1, 0, p1, has_aux=True))(h, dummy, *args, one)
    p0 = m0.trainable_params()
    (_, aux0), (_, g0) = ms.jit(ms.value_and_grad(sl0, 0, p0, has_aux=True))(dummy, g_h, *args, one)
    for p, g in list(zip(p0, g0)) + list(zip(p1, g1)):
        grads[p.name] = grads.get(p.name, 0) + g.asnumpy()

    np.testing.assert_allclose(float(aux0[0].asnumpy()) + float(aux1[0].asnumpy()), float(f_loss.asnumpy()), rtol=2e-6)
    np.testing.assert_allclose(float(aux1[1].asnumpy()), float(f_lm.asnumpy()), rtol=2e-6)
    np.testing.assert_allclose(float(aux1[2].asnumpy()), float(f_mtp.asnumpy()), rtol=2e-6)
    np.testing.assert_allclose(float(aux0[3].asnumpy()) + float(aux1[3].asnumpy()), float(f_bal.asnumpy()), rtol=2e-6)
    loads = np.concatenate([aux0[4].asnumpy(), aux1[4].asnumpy()])        # stage 0: layer 1; stage 1: 2, 3, MTP
    np.testing.assert_array_equal(loads, f_loads.asnumpy())
    assert float(aux0[2].asnumpy()) == 0.0 and float(aux0[1].asnumpy()) == 0.0
    for n, g in ref.items():
        np.testing.assert_allclose(grads[n], g, rtol=2e-5, atol=2e-5 * max(np.abs(g).max(), 1e-6), err_msg=n)
    # the last stage's embedding copy gets a real (MTP) gradient: the `emb` sum is needed
    i = [p.name for p in p1].index("embed.weight")
    assert np.abs(g1[i].asnumpy()).max() > 0


def test_gather_stages_merges_exactly(thread_ranks):
    pp = 3
    local = [{"layers.0.w": np.arange(6, dtype=np.float32).reshape(2, 3), "embed.weight": np.full((2,), 1.5, np.float32),
              "step": np.array(7, np.int32)},
             {"layers.1.w": np.array([[-0.0, 1e-30]], np.float32), "step": np.array(7, np.int32)},
             {"head.weight": np.linspace(-1, 1, 5, dtype=np.float32), "embed.weight": np.full((2,), 9.0, np.float32),
              "tid": np.array([[3, 16777215]], np.int32), "step": np.array(7, np.int32)}]
    comm = thread_ranks(pp)

    def run(r):
        ctx = ParallelContext(pp=pp, rank=r, world=pp)
        # the AllReduce of per-stage slots: stage s's row lands in row s
        ctx._pp_sum = lambda row, width: np.stack(comm.exchange(r, np.asarray(row, np.float32).reshape(-1),
                                                               range(pp)))
        return ctx.gather_stages(local[r])

    results = comm.run(run)
    for r in range(pp):
        out = results[r]
        assert set(out) == {"layers.0.w", "layers.1.w", "embed.weight", "step", "head.weight", "tid"}
        np.testing.assert_array_equal(out["embed.weight"], local[0]["embed.weight"])     # the lowest stage's copy
        np.testing.assert_array_equal(out["layers.1.w"], local[1]["layers.1.w"])
        assert out["tid"].dtype == np.int32 and out["tid"].tolist() == [[3, 16777215]]
        assert out["step"].dtype == np.int32 and out["step"].shape == () and int(out["step"]) == 7
        np.testing.assert_array_equal(out["head.weight"], local[2]["head.weight"])


@pytest.mark.slow
def test_micro_batches_train_like_one_batch(ms_graph, tmp_path):
    from ascend_v4.train.loop import TrainConfig, Trainer
    runs = {}
    for M in (1, 2):
        tc = TrainConfig.from_dict({"model": "tiny", "seq_len": 32, "batch_size": 4, "steps": 2, "warmup_steps": 1,
                                    "eval_every": 2, "save_every": 1000, "adam_eps": 1e-4,
                                    "data": {"eval_fraction": 0.0}, "parallel": {"micro_batches": M}})
        tr = Trainer(tc, str(tmp_path / f"m{M}"))
        assert tr.pipelined == (M > 1)
        bias = next(p for p in tr.model.get_parameters() if p.name == "layers.1.ffn.gate.bias")
        before = bias.asnumpy().copy()
        rows = tr.run()
        # the aux-loss-free balancer: two sign steps of speed 1e-3 against the step's load (zero for an expert
        # exactly at the mean), from the loads summed over micro-batches
        moved = np.abs(bias.asnumpy() - before)
        assert np.all(np.isclose(moved, 0) | np.isclose(moved, 1e-3) | np.isclose(moved, 2e-3)) and moved.max() > 0
        runs[M] = rows, {p.name: p.asnumpy() for p in tr.model.get_parameters()}
    (a, wa), (b, wb) = runs[1], runs[2]
    for ra, rb in zip(a, b):
        for k in ("loss", "lm_loss", "mtp_loss", "balance_loss"):
            np.testing.assert_allclose(rb[k], ra[k], rtol=2e-6, err_msg=f"step {ra['step']} {k}")
        np.testing.assert_allclose(rb["grad_norm"], ra["grad_norm"], rtol=1e-5)
        np.testing.assert_allclose(rb["expert_imbalance"], ra["expert_imbalance"], rtol=1e-6)
    for n in wa:
        np.testing.assert_allclose(wb[n], wa[n], rtol=1e-4, atol=1e-4, err_msg=n)
