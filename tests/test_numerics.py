"""CUDA-numerics emulation (`dump --mode official`): quantiser ties, Hadamard, blocked GEMMs, expected deltas."""
import numpy as np
import pytest

from ascend_v4 import numerics as N
from ascend_v4.ops.attention import reference as R
from ascend_v4.numpy_model import NumpyV4


def test_hadamard_is_the_normalised_sylvester_matrix(rng):
    H = np.array([[1.0]])
    for _ in range(5):
        H = np.block([[H, H], [H, -H]])
    x = rng.standard_normal((3, 32))
    np.testing.assert_allclose(R.hadamard(x), x @ H.T / np.sqrt(32), atol=1e-12)
    np.testing.assert_allclose(R.hadamard(R.hadamard(x)), x, atol=1e-12)      # orthonormal and symmetric
    np.testing.assert_array_equal(R.hadamard_matrix(32), R.hadamard(np.eye(32)))


def test_fp8_activation_ties_round_to_even():
    # block amax 448 -> scale 2^0: values halfway between E4M3 neighbours
    x = np.zeros((1, 128), np.float32)
    x[0, :5] = [448.0, 1.0625, 1.1875, -9.0, 0.0009765625 * 1.5]
    y = N.qdq_fp8(x)[0, :5]
    # 1.0625 lies halfway between 1.0 (mantissa 000) and 1.125 (001) -> 1.0; 1.1875 between 1.125 (001) and
    # 1.25 (010) -> 1.25; 9 is exact (step 1 in [8, 16)); 0.75·2^-9 is nearer the smallest subnormal 2^-9 than 0
    assert y[0] == 448.0 and y[1] == 1.0 and y[2] == 1.25 and y[3] == -9.0
    assert y[4] == pytest.approx(2.0 ** -9)      # 1.5·2^-10 = 0.75·2^-9 -> rounds up to the subnormal 2^-9


def test_fp4_activation_ties_round_to_even():
    x = np.array([[6.0, 2.5, 5.0, 0.25, 0.75, -3.5, 1.25, 1.75] + [0.0] * 24])
    y = R.fp4_act_quant(x)[0, :8]
    # E2M1 grid 0,.5,1,1.5,2,3,4,6: 2.5 -> 2 (even code), 5 -> 4, .25 -> 0, .75 -> 1, -3.5 -> -4, 1.25 -> 1, 1.75 -> 2
    np.testing.assert_array_equal(y, [6.0, 2.0, 4.0, 0.0, 1.0, -4.0, 1.0, 2.0])


def test_power_of_two_scales_and_ragged_blocks():
    x = np.full((1, 100), 3.0, np.float32)            # amax 3 -> scale 2^ceil(log2(3/448)) = 2^-7
    y = N.qdq_fp8(x)
    np.testing.assert_array_equal(y, 3.0)            # 3/2^-7 = 384 is an E4M3 value: exact
    assert y.shape == (1, 100)


def test_blocked_fp8_gemm_by_hand(rng):
    x = rng.standard_normal((4, 256))
    w = (rng.standard_normal((3, 256)) / 16).astype(np.float32)
    xq = N.qdq_fp8(x, 128).astype(np.float64)
    acc = np.zeros((4, 3), np.float32)
    for k in (0, 128):
        acc = acc + (xq[:, k:k + 128] @ w[:, k:k + 128].T.astype(np.float64)).astype(np.float32)
    from ascend_v4.checkpoint import bf16_round
    np.testing.assert_array_equal(N.fp8_linear(x, w), bf16_round(acc))
    rel = np.linalg.norm(N.fp8_linear(x, w) - x @ w.T) / np.linalg.norm(x @ w.T)
    assert 1e-3 < rel < 0.06                          # E4M3 has 3 mantissa bits


def test_official_mode_differs_from_exact_by_fp8_level_amounts(tiny_cfg, tiny_weights):
    from ascend_v4.dump import compare_arrays
    ids = np.random.default_rng(0).integers(0, tiny_cfg.vocab_size, (1, 48))
    exact = NumpyV4(tiny_cfg, tiny_weights).forward(ids)
    off = NumpyV4(tiny_cfg, tiny_weights, numerics="official").forward(ids)
    spec = NumpyV4(tiny_cfg, tiny_weights, numerics="official", kv_fp8="spec").forward(ids)
    rows = {r["key"]: r for r in compare_arrays(off, exact)}
    assert rows["embed"]["max_abs"] == 0.0
    # one block of FP8/FP4 GEMMs: a few percent; the tiny random model amplifies it with depth
    assert 0.01 < rows["hidden_block0"]["median_rel"] < 0.3
    assert 0.01 < rows["logits"]["median_rel"] < 0.6
    assert {r["key"]: r for r in compare_arrays(spec, off)}["logits"]["median_rel"] > 1e-3   # the KV QDQ matters
    with pytest.raises(ValueError, match="numerics"):
        NumpyV4(tiny_cfg, tiny_weights, numerics="fp8")
