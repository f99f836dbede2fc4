"""Warm-up + cosine LR and the MTP loss weight (docs/training.md) at key steps, against hand computation."""
import math

import numpy as np
import pytest

from ascend_v4.train.schedule import Schedule, as_table, constant, flash, pro


def test_lr_at_key_steps_by_hand():
    s = Schedule(peak_lr=1e-3, total_steps=1000, warmup_steps=100, min_lr=1e-4)
    assert s.lr_at(0) == 0.0                                   # warm-up starts from 0
    assert s.lr_at(1) == pytest.approx(1e-5, rel=1e-12)        # 1e-3 · 1/100
    assert s.lr_at(50) == pytest.approx(5e-4, rel=1e-12)
    assert s.lr_at(100) == pytest.approx(1e-3, rel=1e-12)      # peak at the end of warm-up
    # cosine from step 100 to 1000 (900 steps): half way (550) is the mean of peak and floor
    assert s.lr_at(550) == pytest.approx(5.5e-4, rel=1e-12)
    # a quarter of the way (325): floor + (peak-floor)·(1+cos(π/4))/2
    assert s.lr_at(325) == pytest.approx(1e-4 + 9e-4 * (1 + math.sqrt(0.5)) / 2, rel=1e-12)
    assert s.lr_at(1000) == pytest.approx(1e-4, rel=1e-12)
    assert s.lr_at(5000) == pytest.approx(1e-4, rel=1e-12)     # floor held afterwards
    steps = np.arange(0, 1201)
    lr = s.lr_at(steps)
    assert np.all(np.diff(lr[:101]) > 0) and np.all(np.diff(lr[100:1001]) < 0)


def test_constant_phase_and_mtp_weight_switch():
    s = Schedule(peak_lr=2.0, total_steps=100, warmup_steps=10, min_lr=0.2, decay_start=40)
    assert s.lr_at(10) == s.lr_at(25) == s.lr_at(40) == 2.0
    assert s.lr_at(41) < 2.0
    assert s.lr_at(70) == pytest.approx(1.1, rel=1e-12)        # midway through the 60-step cosine
    assert [s.mtp_weight_at(t) for t in (0, 10, 40, 41, 100, 10 ** 6)] == [0.3, 0.3, 0.3, 0.1, 0.1, 0.1]
    # no constant phase: the weight drops right after warm-up, when the LR first falls below its peak
    s2 = Schedule(peak_lr=1.0, total_steps=50, warmup_steps=5)
    assert s2.mtp_weight_at(5) == 0.3 and s2.mtp_weight_at(6) == 0.1
    assert s2.min_lr is None and s2.lr_at(50) == pytest.approx(0.1)   # default floor = peak / 10


def test_presets_and_tables():
    f = flash(total_steps=10000)
    assert f.lr_at(2000) == pytest.approx(2.7e-4) and f.lr_at(10000) == pytest.approx(2.7e-5)
    assert f.lr_at(1000) == pytest.approx(1.35e-4)
    p = pro(total_steps=10000)
    assert p.lr_at(2000) == pytest.approx(2.0e-4) and p.lr_at(10000) == pytest.approx(2.0e-5)
    t = f.table()
    assert t.dtype == np.float32 and t.shape == (10001,)
    np.testing.assert_allclose(t, f.lr_at(np.arange(10001)), rtol=1e-7)
    np.testing.assert_array_equal(constant(3e-4).table(), np.float32([3e-4, 3e-4]))
    np.testing.assert_array_equal(as_table(0.5), np.float32([0.5]))
    np.testing.assert_array_equal(as_table([1, 2, 3]), np.float32([1, 2, 3]))
    with pytest.raises(ValueError):
        as_table([1.0, float("nan")])
    with pytest.raises(ValueError):
        Schedule(peak_lr=1.0, total_steps=10, warmup_steps=20)
    with pytest.raises(ValueError):
        Schedule(peak_lr=1.0, total_steps=10, warmup_steps=2, min_lr=2.0)


def test_graph_schedule_lookup(ms_graph):
    import mindspore as ms
    from ascend_v4.train.schedule import GraphSchedule

    s = Schedule(peak_lr=1e-3, total_steps=20, warmup_steps=4, min_lr=1e-4, decay_start=8)
    gs = GraphSchedule(s)
    for step in (0, 1, 4, 8, 9, 14, 20, 21, 1000):
        lr, w = gs(ms.Tensor(step, ms.int32))
        assert float(lr.asnumpy()) == pytest.approx(s.lr_at(step), rel=1e-6), step
        assert float(w.asnumpy()) == pytest.approx(s.mtp_weight_at(step)), step
