"""--dry-run layout checks: divisibility, vendor-op limits, HCCL_BUFFSIZE formulas, memory estimate."""
import math

import pytest

from ascend_v4 import load_config
from ascend_v4.train.cluster import dry_run, hccl_buffsize_mb, memory_estimate
from ascend_v4.train.loop import TrainConfig


def _tc(**par):
    return TrainConfig.from_dict({"model": "v4-flash", "seq_len": 4096, "batch_size": 8,
                                  "parallel": dict({"micro_batches": 8}, **par)})


def test_hccl_buffsize_formulas_by_hand():
    # A3: 2·(local·bs·ep·Align512(Align32(2H)+64) + (K+shared)·bs·Align512(2H)) bytes, H=4096, 256 experts, ep 16
    local, bs, ep, H, K = 16, 256, 16, 4096, 6
    a = ((2 * H + 31) // 32 * 32 + 64 + 511) // 512 * 512            # 8704
    b = (2 * H + 511) // 512 * 512                                  # 8192
    want = 2 * (local * bs * ep * a + (K + 1) * bs * b)
    assert hccl_buffsize_mb("910c", H, K, 256, ep, bs, 1) == math.ceil(want / 2 ** 20)
    # A2 fullmesh: 2·(bs·ep·min(local, K)·H·2 + 2 MB)
    assert hccl_buffsize_mb("910b", H, K, 256, ep, bs) == math.ceil(2 * (bs * ep * 6 * H * 2 + 2 * 2 ** 20) / 2 ** 20)


def test_a_sound_flash_layout_passes_and_reports_hccl():
    rep = dry_run(load_config("v4-flash"), _tc(dp=32, tp=4, ep=32, pp=4), "910c")
    assert not rep.errors, rep.errors
    assert int(rep.env["HCCL_BUFFSIZE"]) > 2
    assert rep.memory["total"] < 64


@pytest.mark.parametrize("par, soc, fragment", [
    (dict(dp=16, tp=3, ep=16, pp=1), "910b", "n_heads 64 is not divisible by tp 3"),
    (dict(dp=16, tp=4, ep=12, pp=1), "910b", "not divisible by ep 12"),
    (dict(dp=8, tp=1, ep=8, pp=1), "910b", "supports ep in"),
    (dict(dp=16, tp=1, ep=8, pp=2), "910b", "32 experts per rank exceeds the 24"),
    (dict(dp=4, tp=2, ep=16, pp=1), "910c", "must be divisible by ep 16"),
    (dict(dp=1, tp=1, ep=1, pp=1), "910b", "exceeds 64 GiB HBM"),
])
def test_bad_layouts_are_named(par, soc, fragment):
    rep = dry_run(load_config("v4-flash"), _tc(**par), soc)
    assert any(fragment in e for e in rep.errors), rep.errors


def test_too_small_hccl_buffsize_in_the_environment(monkeypatch):
    monkeypatch.setenv("HCCL_BUFFSIZE", "64")
    rep = dry_run(load_config("v4-flash"), _tc(dp=32, tp=4, ep=32, pp=4), "910c")
    assert any("HCCL_BUFFSIZE=64 MB is below" in e for e in rep.errors)


def test_memory_estimate_counts_every_parameter_once():
    cfg = load_config("tiny")
    tc = TrainConfig.from_dict({"model": "tiny", "mtp": True})
    from ascend_v4.info import parameter_counts
    n = parameter_counts(cfg)["total_with_mtp"]
    assert memory_estimate(cfg, tc)["weights_bf16"] == pytest.approx(2 * n / 2 ** 30)


def test_memory_estimate_shards_optimiser_state_like_the_runtime():
    """ZeRO-1 as ascend_v4.parallel.OptimizerShard does it: dense state over dp, expert state over dp/ep replicas
    (tp slices are not replicas); recompute keeps one stream set per block instead of every activation."""
    from ascend_v4.checkpoint.inventory import official_inventory
    from ascend_v4.train.param_groups import classify
    cfg = load_config("v4-flash")
    dense = experts = 0
    for name, spec in official_inventory(cfg).items():
        if classify(name, spec.shape, requires_grad=spec.fmt != "i64")[0] == "frozen":
            continue
        if ".ffn.experts." in name:
            experts += math.prod(spec.shape)
        else:
            dense += math.prod(spec.shape)
    base = dict(dp=8, tp=2, ep=4, pp=1)
    full, zero = memory_estimate(cfg, _tc(**base)), memory_estimate(cfg, _tc(optimizer_shard=True, **base))
    for k in ("weights_bf16", "grads_bf16", "activations"):
        assert zero[k] == full[k]
    state = lambda m: m["master_fp32"] + m["adam_state"] + m["muon_momentum"]    # noqa: E731
    # per value of state: 4 (master) + 4 (Muon) or 8 (AdamW) bytes; the ratio is between the two weightings
    lo = (dense / (2 * 8) + experts / (4 * 2)) / (dense / 2 + experts / 4)
    assert state(zero) / state(full) == pytest.approx(lo, rel=0.05)
    rc = memory_estimate(cfg, TrainConfig.from_dict({"model": "v4-flash", "seq_len": 4096, "batch_size": 8,
                                                     "recompute": True, "parallel": {"micro_batches": 8}}))
    assert rc["activations"] < full["activations"] / 3
