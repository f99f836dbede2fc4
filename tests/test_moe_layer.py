"""The model's MoE layer (ops/moe/layer.py MoeExperts behind ascend_v4/model.py MoE): dropless and fixed-capacity
modes against float64 NumPy, overflow accounting, gradients through the capacity path, and the train loop's report.

The fixed-capacity reference is written here from the drop rule's definition (MoeInitRoutingV2 drop/pad): the
assignments (t, j) are taken in flattened order t·k + j, and an expert keeps its first C of them; a dropped
assignment contributes nothing (the shared expert still does). Tolerances: float32 vs float64, 2e-5 relative.
"""
import numpy as np
import pytest

from ascend_v4.numpy_model import NumpyV4
from ascend_v4.ops.moe import reference as moe_ref
from ascend_v4.ops.moe.layer import default_capacity


LAYER = 1          # a routed (not hash) layer of the tiny preset


def _moe_cell(cfg, weights, cf):
    import mindspore as ms
    from ascend_v4.model import MoE
    cell = MoE(LAYER, cfg, capacity_factor=cf)
    p = f"layers.{LAYER}.ffn."
    for prm in cell.get_parameters():
        prm.set_data(ms.Tensor(np.asarray(weights[p + prm.name], dtype=np.float32 if prm.dtype == ms.float32 else None)))
    return cell


def _numpy_capacity_moe(cfg, weights, x, capacity):
    """y [T, D] and the dropped count of the layer with a fixed expert capacity, in float64."""
    ref = NumpyV4(cfg, weights)
    p = f"layers.{LAYER}.ffn."
    w, ids = moe_ref.moe_route(x, weights[p + "gate.weight"], weights[p + "gate.bias"], cfg.n_activated_experts,
                               cfg.route_scale, cfg.score_func)
    seen = np.zeros(cfg.n_routed_experts, int)
    y = np.zeros_like(x)
    dropped = 0
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = ids[t, j]
            seen[e] += 1
            if seen[e] > capacity:
                dropped += 1
                continue
            h = ref._swiglu(x[t:t + 1], f"{p}experts.{e}.") * w[t, j]
            y[t] += ref._lin(h, f"{p}experts.{e}.w2.weight")[0]
    sp = p + "shared_experts."
    y += ref._lin(ref._swiglu(x, sp), sp + "w2.weight")
    return y, dropped


def _x(cfg, T, seed=0, skew=0.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, cfg.dim))
    if skew:   # push every token toward one direction so routing concentrates on a few experts
        x = x + skew * rng.standard_normal((1, cfg.dim))
    return x


def _run(cell, x):
    import mindspore as ms
    ids = ms.Tensor(np.zeros((1, x.shape[0]), np.int32))
    y, aff, eids, dropped = ms.jit(cell.forward_stats)(ms.Tensor(x.astype(np.float32)).reshape(1, x.shape[0], -1), ids)
    return y.asnumpy().reshape(x.shape).astype(np.float64), eids.asnumpy(), int(dropped.asnumpy())


def test_dropless_matches_numpy(ms_graph, tiny_cfg, tiny_weights):
    x = _x(tiny_cfg, 48)
    y, _, dropped = _run(_moe_cell(tiny_cfg, tiny_weights, None), x)
    ref = NumpyV4(tiny_cfg, tiny_weights).moe(f"layers.{LAYER}.ffn.", x, np.zeros(48, np.int64), LAYER)
    np.testing.assert_allclose(y, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())
    assert dropped == 0


@pytest.mark.parametrize("cf,skew", [(0.5, 0.0), (1.0, 3.0), (0.25, 6.0)])
def test_fixed_capacity_drops_exactly_the_overflow(ms_graph, tiny_cfg, tiny_weights, cf, skew):
    T = 40
    x = _x(tiny_cfg, T, seed=3, skew=skew)
    C = default_capacity(T, tiny_cfg.n_activated_experts, tiny_cfg.n_routed_experts, cf)
    ref, ref_dropped = _numpy_capacity_moe(tiny_cfg, tiny_weights, x, C)
    assert ref_dropped > 0, "the case must overflow at least one expert"
    y, _, dropped = _run(_moe_cell(tiny_cfg, tiny_weights, cf), x)
    assert dropped == ref_dropped
    np.testing.assert_allclose(y, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())


def test_capacity_large_enough_equals_dropless(ms_graph, tiny_cfg, tiny_weights):
    x = _x(tiny_cfg, 32, seed=5, skew=2.0)
    # cf = E / k gives C = T: no expert can overflow
    big, _, d_big = _run(_moe_cell(tiny_cfg, tiny_weights, tiny_cfg.n_routed_experts / tiny_cfg.n_activated_experts), x)
    free, _, d_free = _run(_moe_cell(tiny_cfg, tiny_weights, None), x)
    assert d_big == d_free == 0
    np.testing.assert_allclose(big, free, rtol=1e-5, atol=1e-6)


def test_capacity_path_gradient_matches_finite_differences(ms_graph, tiny_cfg, tiny_weights):
    """d(sum(y·r))/dx through init_routing(drop/pad) -> expert FFN -> finalize, vs central differences of the
    float64 NumPy capacity layer (routing frozen: the perturbation is too small to change a decision)."""
    import mindspore as ms
    T = 24
    x = _x(tiny_cfg, T, seed=7, skew=3.0)
    C = default_capacity(T, tiny_cfg.n_activated_experts, tiny_cfg.n_routed_experts, 0.5)
    _, nd = _numpy_capacity_moe(tiny_cfg, tiny_weights, x, C)
    assert nd > 0
    r = np.random.default_rng(8).standard_normal(x.shape)
    cell = _moe_cell(tiny_cfg, tiny_weights, 0.5)
    ids = ms.Tensor(np.zeros((T,), np.int32))

    def f(xx):
        return (cell(xx, ids) * ms.Tensor(r.astype(np.float32))).sum()

    g = ms.jit(ms.grad(f))(ms.Tensor(x.astype(np.float32))).asnumpy()
    rng = np.random.default_rng(9)
    eps = 1e-4
    for t, d in zip(rng.integers(0, T, 6), rng.integers(0, tiny_cfg.dim, 6)):
        xp, xm = x.copy(), x.copy()
        xp[t, d] += eps
        xm[t, d] -= eps
        yp, dp = _numpy_capacity_moe(tiny_cfg, tiny_weights, xp, C)
        ym, dm = _numpy_capacity_moe(tiny_cfg, tiny_weights, xm, C)
        assert dp == dm == nd
        fd = ((yp - ym) * r).sum() / (2 * eps)
        assert g[t, d] == pytest.approx(fd, rel=2e-3, abs=2e-4)


@pytest.mark.slow   # > 20 s: runs in .ci/run, so the default suite stays under 10 minutes
def test_train_reports_dropped_tokens(tmp_path, ms_graph):
    import json
    from ascend_v4.train.loop import TrainConfig, Trainer
    tc = TrainConfig.from_dict({"steps": 2, "seq_len": 32, "batch_size": 2, "eval_every": 100, "save_every": 100,
                                "warmup_steps": 1, "moe_capacity_factor": 0.5})
    tr = Trainer(tc, str(tmp_path))
    bias = next(p for p in tr.model.get_parameters() if p.name == "layers.1.ffn.gate.bias")
    before = bias.asnumpy().copy()
    rows = tr.run()
    # the aux-loss-free balancer: two sign steps of speed 1e-3 against each step's expert load (0 at the mean)
    moved = np.abs(bias.asnumpy() - before)
    assert np.all(np.isclose(moved, 0) | np.isclose(moved, 1e-3) | np.isclose(moved, 2e-3)) and moved.max() > 0
    per_step = 2 * 32 * 2 * 5          # tokens · top-2 · (4 layers + MTP) of the tiny preset
    for row in rows:
        assert 0 < row["dropped_tokens"] < per_step          # cf 0.5 must overflow some experts, never all
        assert row["dropped_frac"] == pytest.approx(row["dropped_tokens"] / per_step)
    logged = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [r["dropped_tokens"] for r in logged] == [r["dropped_tokens"] for r in rows]


def test_bad_capacity_factor_is_refused():
    from ascend_v4.train.loop import TrainConfig, TrainConfigError
    with pytest.raises(TrainConfigError, match="moe_capacity_factor"):
        TrainConfig.from_dict({"moe_capacity_factor": -1})
