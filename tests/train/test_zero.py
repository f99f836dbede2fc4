"""ZeRO-1 (parallel.optimizer_shard): owner plan, per-rank update and state, checkpoint layout.

In one process each dp rank is played by a simulated ParallelContext (no collectives): rank r's optimiser must
update exactly the parameters it owns, bit-identically to the unsharded optimiser, hold state only for them, and
the union of the ranks' states must be the unsharded state. The all-gather of the new weights and the state
gather on save run under msrun: tests/train/test_msrun_zero.py (slow).
"""
import numpy as np
import pytest

from test_optim import SHAPES, make_params, random_grads


def test_balanced_owners_is_greedy_largest_first():
    from ascend_v4.parallel import balanced_owners
    sizes = {"a": 10, "b": 7, "c": 5, "d": 5, "e": 3, "f": 1}
    own = balanced_owners(sizes, 2)
    # by hand: a->0 (10), b->1 (7), c->1 (12), d->0 (15), e->1 (15), f->0 (16)
    assert own == {"a": 0, "b": 1, "c": 1, "d": 0, "e": 1, "f": 0}
    # the plan depends on names and sizes only, not on their order
    assert balanced_owners(dict(reversed(list(sizes.items()))), 2) == own
    loads = [sum(n for k, n in sizes.items() if own[k] == r) for r in range(2)]
    assert max(loads) - min(loads) <= max(sizes.values())
    assert set(balanced_owners(sizes, 4).values()) == {0, 1, 2, 3}


def _shard(tiny_cfg, params, dp, rank, ep=1):
    from ascend_v4.parallel import OptimizerShard, ParallelContext
    from ascend_v4.train.param_groups import FROZEN, classify_param
    ctx = ParallelContext.simulated_rank(tiny_cfg, dp=dp, ep=ep, rank=rank)
    return OptimizerShard(ctx, [p for p in params if classify_param(p)[0] != FROZEN])


@pytest.mark.slow   # > 20 s: runs in .ci/run, so the default suite stays under 10 minutes
def test_each_rank_updates_its_own_parameters_like_the_unsharded_optimiser(ms_graph, tiny_cfg):
    import mindspore as ms
    from ascend_v4.train.optim import MuonAdamW
    from ascend_v4.train.schedule import Schedule
    sched = Schedule(peak_lr=0.02, total_steps=10, warmup_steps=2, min_lr=0.002)
    ref_params = make_params()
    ref = MuonAdamW(ref_params, sched)
    ranks = []
    for r in range(2):
        ps = make_params()
        shard = _shard(tiny_cfg, ps, 2, r)
        ranks.append((ps, MuonAdamW(ps, sched, shard=shard), shard))
    rng = np.random.default_rng(3)
    for _ in range(2):
        g = random_grads(ref_params, rng)
        train = tuple(ms.Tensor(x) for x, p in zip(g, ref_params) if p.requires_grad)
        ref(train)
        for ps, opt, shard in ranks:
            opt(train)
            assert opt.shard is shard
            # a rank only moves what it owns (the simulated context has no all-gather of the others)
            for p, q in zip(ps, ref_params):
                if p.requires_grad and shard.owns(p.name):
                    np.testing.assert_array_equal(p.asnumpy(), q.asnumpy(), err_msg=p.name)
    owners = {n: [r for r, (_, _, s) in enumerate(ranks) if s.owns(n)] for n in SHAPES
              if n in ranks[0][2].kind_of}
    assert all(len(v) == 1 for v in owners.values()), owners      # every trainable parameter has one owner
    assert {v[0] for v in owners.values()} == {0, 1}
    for ps, opt, shard in ranks:       # non-owned parameters never moved
        init = {p.name: p.asnumpy() for p in make_params()}
        for p in ps:
            if p.requires_grad and not shard.owns(p.name):
                np.testing.assert_array_equal(p.asnumpy(), init[p.name], err_msg=p.name)
    # the ranks' states partition the unsharded state, value for value
    full = ref.state_dict()
    assert set(ranks[0][1].state_specs) == set(full)
    union = {}
    for _, opt, _ in ranks:
        st = opt.state_dict()
        assert set(st) < set(full)
        union.update({k: v for k, v in st.items() if k != "step"})
    union["step"] = full["step"]
    assert set(union) == set(full)
    for k in full:
        np.testing.assert_array_equal(union[k], full[k], err_msg=k)
    # the rank's share of the state is roughly half (balanced by size)
    sizes = [sum(v.size for v in opt.state_dict().values()) for _, opt, _ in ranks]
    assert abs(sizes[0] - sizes[1]) <= max(v.size for v in full.values())


def test_experts_shard_over_their_replicas_only(tiny_cfg):
    """ep = dp: an expert shard has no replica, its state stays on its rank (already partitioned by ep);
    dp = 4, ep = 2: experts are split over their 2 replicas, dense tensors over all 4 dp ranks."""
    params = make_params()
    s = _shard(tiny_cfg, params, 2, 0, ep=2)
    assert s.kind_of["layers.0.ffn.experts.0.w1.weight"] is None and s.owns("layers.0.ffn.experts.0.w1.weight")
    assert s.kind_of["layers.0.attn.wq_b.weight"] == "dp"
    s4 = [_shard(tiny_cfg, params, 4, r, ep=2) for r in range(4)]
    assert s4[0].kind_of["layers.0.ffn.experts.0.w1.weight"] == "edp"
    for name in ("layers.0.ffn.experts.0.w1.weight", "layers.0.attn.wq_b.weight", "embed.weight"):
        owners = [r for r in range(4) if s4[r].owns(name)]
        # dense: one of 4; an expert: one per replica group (ranks 0,2 hold shard 0; 1,3 hold shard 1)
        assert len(owners) == (2 if "experts" in name else 1), (name, owners)
