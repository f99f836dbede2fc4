"""DeepSeek-V4.1 sharding (ascend_v4/parallel.py; docs/training.md, "DeepSeek-V4.1"), one process:

* shard -> gather is the identity for every float release tensor of v4.1-tiny (and its optimiser-state names) under
  tp, dp·ep and dp·tp·ep, ranks played by threads: the DSpark drafter's 4 experts split over ep like the backbone's
  8 (a per-layer expert count; one global count would misplace them);
* the tensor-parallel math of a V4.1 CSA-v2 source layer (Attention.forward_v41: compressor, indexer keys, the
  two-level indexer) and of a DSpark stage's attention (forward_dspark): simulated tp ranks give partial outputs that
  sum to the full layer's, sliced parameters' gradients are slices of the full gradients and replicated ones'
  partial gradients sum to the full ones.
The msrun proofs (dp=2, tp=2, dp2·ep2 training against one process, resume): tests/v41/test_msrun_v41.py -m slow.
"""
import numpy as np
import pytest

from ascend_v4.parallel import ParallelConfigError, ParallelContext, routed_experts_of
from helpers import assert_shard_gather_identity, check_tp_ranks, rand_params, value_and_grads


@pytest.fixture(scope="module")
def cfg():
    from ascend_v4 import load_config
    from ascend_v4.config import MODEL_VERSIONS
    return load_config("v4.1-tiny", versions=MODEL_VERSIONS)


def test_expert_counts_per_layer_and_refusals(cfg):
    n = routed_experts_of(cfg)
    assert (n("layers.3.ffn.experts.7.w1.weight"), n("mtp.0.ffn.experts.1.w2.weight")) == (8, 4)
    assert n("adam_v.mtp.2.ffn.experts.3.w3.weight") == 4 and n("muon_m.layers.9.ffn.experts.0.w1.weight") == 8
    ParallelContext.check(cfg, 4, 1, 4)
    with pytest.raises(ParallelConfigError, match="dspark_n_routed_experts 4 is not divisible by ep 8"):
        ParallelContext.check(cfg, 8, 1, 8)


@pytest.mark.parametrize("dp,tp,ep", [(1, 2, 1), (2, 1, 2), (2, 2, 2), (4, 1, 4)])
def test_shard_then_gather_is_identity_v41(cfg, thread_ranks, dp, tp, ep):
    from ascend_v4.checkpoint.release_v41 import random_weights_v41
    full = {k: a.astype(np.float32) for k, a in random_weights_v41(cfg, seed=4).items()
            if a.dtype.kind == "f" and ".engram.embed." not in k}
    assert "mtp.1.ffn.experts.3.w1.weight" in full and "mtp.1.ffn.experts.4.w1.weight" not in full

    def drafter_experts(ctx, names):            # the drafter's 4 experts split over ep like the backbone's 8
        if ep > 1:
            per = 4 // ep
            assert {f"mtp.0.ffn.experts.{e}.w2.weight" for e in range(4)} & set(names) == \
                {f"mtp.0.ffn.experts.{ctx.ep_rank * per + e}.w2.weight" for e in range(per)}
    assert_shard_gather_identity(cfg, thread_ranks, full, dp, tp, ep, routed_experts_of(cfg), drafter_experts)


def _tp_check(cfg, make, run, prefix, tp):
    """check_tp_ranks on the cells make(None) (the full one, random parameters) and make(ctx) (a simulated rank's):
    at least wq_b, attn_sink, wo_a and wo_b are sliced."""
    full = make(None)
    w = rand_params(full, np.random.default_rng(7))
    assert check_tp_ranks(cfg, tp, full, w, prefix, run, make) >= 4


@pytest.mark.slow
def test_tensor_parallel_v41_source_layer_math(ms_graph, cfg):
    """Layer 2: a ratio-2 kv source and index source (compressor, indexer keys, two-level candidate indexer)."""
    import mindspore as ms
    from ascend_v4.model import Attention, RopeTables
    layer, B, S = 2, 2, 16
    assert layer in cfg.kv_source_layers and layer in cfg.index_source_layers
    rng = np.random.default_rng(3)
    cos, sin = RopeTables(cfg, S).for_ratio(cfg.ratio(layer))
    x = ms.Tensor(rng.standard_normal((B, S, cfg.dim)).astype(np.float32))
    cot = ms.Tensor(rng.standard_normal((B, S, cfg.dim)).astype(np.float32))

    def run(cell):
        def fwd(xv):
            return cell.forward_v41(xv, cos, sin, (None, None, None, None, ()))[0]
        return value_and_grads(cell, fwd, x, cot)

    _tp_check(cfg, lambda ctx: Attention(layer, cfg, parallel=ctx), run, f"layers.{layer}.attn.", 2)


@pytest.mark.slow
def test_tensor_parallel_dspark_attention_math(ms_graph, cfg):
    """A DSpark stage's attention over [main-KV window ‖ block] (forward_dspark), the window KV given."""
    import mindspore as ms
    from ascend_v4.model import Attention, RopeTables
    layer, N, T, W = cfg.n_layers, 3, cfg.dspark_block_size, 4
    rng = np.random.default_rng(4)
    pc, ps = RopeTables(cfg, 16).plain
    pos = (np.arange(N)[:, None] + 1 + np.arange(T)[None, :]).reshape(-1)
    cos = ms.Tensor(pc.asnumpy()[pos].reshape(N, T, -1))
    sin = ms.Tensor(ps.asnumpy()[pos].reshape(N, T, -1))
    ctx_kv = ms.Tensor(rng.standard_normal((N, W, cfg.head_dim)).astype(np.float32))
    idx = ms.Tensor(np.broadcast_to(np.arange(W + T), (N, T, W + T)).astype(np.int32).copy())
    x = ms.Tensor(rng.standard_normal((N, T, cfg.dim)).astype(np.float32))
    cot = ms.Tensor(rng.standard_normal((N, T, cfg.dim)).astype(np.float32))

    def run(cell):
        def fwd(xv):
            return cell.forward_dspark(xv, cos, sin, (ctx_kv, idx))[0]
        return value_and_grads(cell, fwd, x, cot)

    _tp_check(cfg, lambda ctx: Attention(layer, cfg, parallel=ctx), run, "mtp.0.attn.", 2)


def test_init_from_a_v41_release_loads_only_this_ranks_slices(cfg, tmp_path):
    """init_from on rank 3 of dp2·tp2·ep2 (tp_rank 1, ep_rank 1): every parameter is this rank's slice of the
    release tensor (decoded from FP8 / MXFP4), the backbone's experts 4-7 and the drafter's 2-3 only, and only those
    tensors are read."""
    from click.testing import CliRunner
    from mindspore import nn
    from ascend_v4.checkpoint import load_official_weights
    from ascend_v4.cli import main
    from ascend_v4.config import MODEL_VERSIONS, ModelConfig
    from ascend_v4.model import Transformer
    from ascend_v4.train.init_from import load_initial_weights
    rel = str(tmp_path / "rel")
    res = CliRunner().invoke(main, ["make-checkpoint", rel, "--config", "v4.1-tiny"])
    assert res.exit_code == 0, res.output
    rcfg = ModelConfig.from_json(rel, versions=MODEL_VERSIONS)
    ctx = ParallelContext.simulated_rank(rcfg, dp=2, tp=2, ep=2, rank=3)
    ctx.routed_experts = lambda c, capacity_factor: nn.Cell()       # construction only: no tokens dispatched
    assert (ctx.tp_rank, ctx.ep_rank) == (1, 1)
    model = Transformer(rcfg, max_seq_len=16, parallel=ctx, with_dspark=True)
    read = []
    rep = load_initial_weights(model, rcfg, rel, ctx, log=lambda m: None, on_read=read.append)
    params = {p.name: p.asnumpy() for p in model.get_parameters()}
    assert rep["random"] == [] and rep["loaded"] == len(params) and sorted(read) == sorted(params)
    experts = {n.split(".experts.")[0] + "." + n.split(".experts.")[1].split(".")[0] for n in params if ".experts." in n}
    assert {e for e in experts if e.startswith("mtp.0.")} == {"mtp.0.ffn.2", "mtp.0.ffn.3"}
    assert {e for e in experts if e.startswith("layers.3.")} == {f"layers.3.ffn.{e}" for e in range(4, 8)}
    ref = load_official_weights(rel, rcfg)
    for n, v in params.items():
        np.testing.assert_array_equal(v, ctx.shard(n, ref[n]).astype(v.dtype), err_msg=n)


def test_cluster_dry_run_names_the_drafter_expert_split(cfg):
    from ascend_v4.train.cluster import dry_run
    from ascend_v4.train.run_config import TrainConfig
    tc = TrainConfig.from_dict({"model": "v4.1-tiny", "parallel": {"dp": 8, "ep": 8}})
    rep = dry_run(cfg, tc, "910b")
    assert any("dspark_n_routed_experts 4 is not divisible by ep 8" in e for e in rep.errors), rep.errors
    tc = TrainConfig.from_dict({"model": "v4.1-tiny", "parallel": {"dp": 4, "ep": 4}})
    assert not any("dspark" in e for e in dry_run(cfg, tc, "910b").errors)
