"""CUDA-numerics emulation (`dump --mode official`): quantiser ties, Hadamard, blocked GEMMs, expected deltas."""
import math

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
    import ml_dtypes
    xq = N.qdq_fp8(x.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float32), 128).astype(np.float64)
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


# ------------------------------------------------- kernel steps of --mode official, each against a hand derivation
def _bf16_by_hand(v: float) -> float:
    """Round a float to BF16 with ml_dtypes (independent of checkpoint.formats.bf16_round)."""
    import ml_dtypes
    return float(np.float32(v).astype(ml_dtypes.bfloat16).astype(np.float64))


def test_activation_is_bf16_before_fp8_quantisation():
    # block amax 448 -> scale 1. 1.0625 is the E4M3 midpoint between 1.0 (even) and 1.125. x = 1.0625 + 2^-10 rounds
    # up to 1.125 when quantised from float32, but the official model holds it as BF16 first (8 significant bits:
    # 1.0625 exactly), and the tie then goes to the even code 1.0.
    x = np.zeros((1, 128))
    x[0, 0], x[0, 1] = 448.0, 1.0625 + 2.0 ** -10
    w = np.eye(128, dtype=np.float32)
    y = N.fp8_linear(x, w)
    assert y[0, 1] == 1.0 and y[0, 0] == 448.0
    assert N.qdq_fp8(x.astype(np.float32))[0, 1] == 1.125          # without the BF16 step it would be 1.125
    assert N.fp4_linear(x, w)[0, 1] == 1.0


def test_sparse_attn_rounds_probabilities_to_bf16_before_pv():
    """One block: o = Σ bf16(exp(z_j - m)) v_j / (Σ exp(z_j - m) + exp(sink - m)), written out per entry."""
    z_target = [0.0, -0.3, -1.1, 0.7]
    q = np.array([[[[1.0, 0.0]]]])                        # [B=1, S=1, H=1, D=2], scale 1: z_j = kv_j[0]
    kv = np.array([[[z, 0.25 * (j + 1)] for j, z in enumerate(z_target)]])
    idx = np.array([[[0, -1, 1, 2, 3]]])                  # a -1 is skipped
    sink = np.array([0.2])
    m = max(max(z_target), -1e30)
    p = [math.exp(np.float32(z) - np.float32(m)) for z in z_target]
    num = np.zeros(2)
    for j in range(4):
        num += _bf16_by_hand(p[j]) * kv[0, j]
    want = num / (sum(p) + math.exp(0.2 - m))
    got = N.sparse_attn(q, kv, sink, idx, 1.0)[0, 0, 0]
    np.testing.assert_allclose(got, [_bf16_by_hand(v) for v in want], rtol=0, atol=0)
    exact = (np.array(p) @ kv[0]) / (sum(p) + math.exp(0.2 - m))
    assert not np.allclose(got, exact, rtol=1e-4)                  # the BF16 step is visible


def test_sparse_attn_online_softmax_rounds_relative_to_the_running_max():
    """Two blocks of 64: block 1's probabilities are rounded relative to block 1's max m1, then rescaled by
    alpha = exp(m1 - m2) when block 2 raises the max: acc = alpha·Σ₁ bf16(e^{z-m1}) v + Σ₂ bf16(e^{z-m2}) v."""
    rng = np.random.default_rng(5)
    K = 100
    z = rng.uniform(-2, 0.5, K).astype(np.float32)
    z[70] = 3.0                                                    # the max is in block 2
    kv = np.stack([z.astype(np.float64), rng.standard_normal(K)], -1)[None]
    q = np.array([[[[1.0, 0.0]]]])
    got = N.sparse_attn(q, kv, np.array([-1.0]), np.arange(K)[None, None], 1.0)[0, 0, 0]
    m1, m2 = float(z[:64].max()), float(z.max())
    alpha = math.exp(m1 - m2)
    acc = np.zeros(2)
    l1 = sum(math.exp(zz - m1) for zz in z[:64].astype(np.float64))
    for j in range(64):
        acc += _bf16_by_hand(math.exp(float(z[j]) - m1)) * kv[0, j]
    acc *= alpha
    for j in range(64, K):
        acc += _bf16_by_hand(math.exp(float(z[j]) - m2)) * kv[0, j]
    den = l1 * alpha + sum(math.exp(zz - m2) for zz in z[64:].astype(np.float64)) + math.exp(-1.0 - m2)
    want = acc / den
    np.testing.assert_allclose(got, want, rtol=2 ** -8)           # final BF16 output rounding
    one_pass = sum(_bf16_by_hand(math.exp(float(zz) - m2)) * kv[0, j] for j, zz in enumerate(z)) / den
    assert np.abs(want - one_pass).max() > 0                       # the block structure matters


def test_index_scores_are_bf16_with_ties_to_the_lower_id():
    """Rotated+FP4 query all ones, keys (6×21, 2) and (6×21, 1.5, 1): scores 128 and 128.5 (exact in float32).
    BF16 has 8 significant bits, so 128.5 rounds to even 128: tied, the lower id wins; float scores pick id 1."""
    d = 32
    e_q = np.ones(d)
    e_k = np.zeros((2, d))
    e_k[:, :21] = 6.0
    e_k[0, 21] = 2.0
    e_k[1, 21:23] = 1.5, 1.0
    # inputs whose Hadamard rotation is e (H is its own inverse); FP4 keeps these grid values
    q = np.broadcast_to(R.hadamard(e_q), (1, 8, 1, d)).astype(np.float32)
    k = R.hadamard(e_k)[None].astype(np.float32)
    w = np.ones((1, 8, 1), np.float32)
    np.testing.assert_array_equal(R.fp4_rotate(q)[0, 7, 0], e_q)
    np.testing.assert_array_equal(R.fp4_rotate(k)[0], e_k)
    assert (e_k @ e_q).tolist() == [128.0, 128.5] and _bf16_by_hand(128.5) == 128.0
    assert N.index_select(q, k, w, 4, 1)[0][0, 7].tolist() == [0]       # BF16 tie -> lower id
    assert R.lightning_indexer(q, k, w, 4, 1)[0, 7].tolist() == [1]  # float scores: the larger one


def test_index_scores_round_per_head_before_the_head_sum():
    """The Indexer's einsum output is a BF16 tensor [B, S, H, N]: each head's score rounds before ReLU·w and the FP32
    head sum. Two heads, w = 1, query head 0 all ones, head 1 = (0.5, 0, ...); keys k0 = (1, 6×21, 1.5, 0...) and
    k1 = (1.5, 6×21, 0.5, 0...), all FP4 grid values (scale 1 / 2^-3). Head scores: k0 (128.5, 0.5), k1 (128, 0.75).
    Per head in BF16 (8 significant bits): 128.5 -> 128 (tie to even); sums 128.5 -> 128 and 128.75 -> 129: k1 wins.
    Rounding only the sum: 129 and 128.75 -> 129, tied -> k0; exact scores 129 > 128.75 -> k0."""
    d = 32
    e_q = np.zeros((2, d))
    e_q[0] = 1.0
    e_q[1, 0] = 0.5
    e_k = np.zeros((2, d))
    e_k[:, 1:22] = 6.0
    e_k[0, 0], e_k[0, 22] = 1.0, 1.5
    e_k[1, 0], e_k[1, 22] = 1.5, 0.5
    q = np.broadcast_to(R.hadamard(e_q), (1, 8, 2, d)).astype(np.float32)
    k = R.hadamard(e_k)[None].astype(np.float32)
    w = np.ones((1, 8, 2), np.float32)
    for x, e in ((q[0, 7], e_q), (k[0], e_k)):      # the official rotate-then-quantise path keeps the grid values
        np.testing.assert_array_equal(R.fp4_act_quant(N.bf16(R.hadamard(N.bf16(x)))), e)
    heads = e_q @ e_k.T                                              # [head, key]
    assert heads.tolist() == [[128.5, 128.0], [0.5, 0.75]]
    per_head = [_bf16_by_hand(_bf16_by_hand(heads[0, j]) + heads[1, j]) for j in range(2)]
    assert per_head == [128.0, 129.0]
    assert [_bf16_by_hand(v) for v in heads.sum(0)] == [129.0, 129.0]
    assert N.index_select(q, k, w, 4, 1)[0][0, 7].tolist() == [1]
    assert R.lightning_indexer(q, k, w, 4, 1)[0, 7].tolist() == [0]


def test_window_list_is_laid_out_valid_first():
    """The official prefill window list (get_window_topk_idxs): query t lists positions max(0, t-w+1) .. t in
    ascending order and pads with -1 at the end; written out by hand for S = 5, w = 4."""
    got = N.valid_first(R.window_indices(5, 4))
    assert got.tolist() == [[0, -1, -1, -1], [0, 1, -1, -1], [0, 1, 2, -1], [0, 1, 2, 3], [1, 2, 3, 4]]


def test_window_layout_decides_the_kernel_blocks():
    """70 listed entries: valid-first puts entries 0..63 in block 1 and 64..69 in block 2; with the -1 padding in
    front (58 of them) block 1 holds only entries 0..5. The block max that the BF16 probabilities are rounded
    against differs, so the outputs differ (by BF16-rounding amounts, in some of 32 output columns)."""
    rng = np.random.default_rng(3)
    z = rng.uniform(-3, 0, 70)
    z[66] = 2.0                                                   # the max lies in block 2 of the valid-first list
    kv = np.concatenate([z[:, None], rng.standard_normal((70, 31))], -1)[None]     # 31 value columns
    q = np.zeros((1, 1, 1, 32))
    q[..., 0] = 1.0
    pad = np.full(58, -1)
    front = N.sparse_attn(q, kv, np.array([0.0]), np.concatenate([pad, np.arange(70)])[None, None], 1.0)
    first = N.sparse_attn(q, kv, np.array([0.0]), N.valid_first(np.concatenate([pad, np.arange(70)]))[None, None], 1.0)
    exact = np.exp(z - 2.0) @ kv[0] / (np.exp(z - 2.0).sum() + np.exp(-2.0))
    np.testing.assert_allclose(first[0, 0, 0], exact, rtol=2e-2)
    assert np.abs(front - first).max() > 0


def test_index_list_is_in_topk_order():
    """One head, w = 1, query all ones, keys with FP4 grid values summing to 6, 12 and 12: scores 6, 12, 12. The
    kernel gets torch.topk's sorted order - best first, the tie lower id first - and -1 (not yet visible) last:
    query 11 sees 3 entries -> [1, 2, 0]; query 7 sees 2 -> [1, 0, -1]; query 3 one -> [0, -1, -1]; query 2 none."""
    d = 32
    e_k = np.zeros((3, d))
    e_k[0, 0] = 6.0
    e_k[1, :2] = 6.0
    e_k[2, :3] = 6.0, 4.0, 2.0
    q = np.broadcast_to(R.hadamard(np.ones(d)), (1, 12, 1, d)).astype(np.float32)
    k = R.hadamard(e_k)[None].astype(np.float32)
    got = N.index_list(q, k, np.ones((1, 12, 1), np.float32), 4, 3)[0]
    assert got[11].tolist() == [1, 2, 0] and got[7].tolist() == [1, 0, -1] and got[3].tolist() == [0, -1, -1]
    assert got[2].tolist() == [-1, -1, -1]


def test_query_rms_norm_runs_in_bf16():
    """q *= rsqrt(q.square().mean(-1) + eps) on a BF16 tensor, by hand for q = (1, 1, 1, 2): squares and their mean
    1.75 are exact; 1.75 + 1e-6 rounds back to 1.75; rsqrt(1.75) = 0.75593 rounds to 194·2^-8 = 0.7578125 (BF16
    spacing 2^-8 in [0.5, 1)); the products 0.7578125 and 1.515625 are exact. float64 gives 0.75593 and 1.51186."""
    got = N.bf16_rms(np.array([[1.0, 1.0, 1.0, 2.0]]), 1e-6)
    np.testing.assert_array_equal(got, [[0.7578125, 0.7578125, 0.7578125, 1.515625]])
    assert abs(got[0, 0] - 1 / math.sqrt(1.75)) > 1e-3


@pytest.mark.slow
def test_official_mode_at_flash_geometry_and_length():
    """The whole emulation on Flash's head geometry at length: window 128, index top-k 64, 704 tokens, 6 layers
    (SWA, CSA, HCA), 16 experts (about 70 s). Every residual stream the official model hands from block to block is a
    BF16 tensor; against exact float64 the difference is the kernels' quantisation, compounding with depth -
    measured (random weights): block 0 median 9.0e-2, block 5 3.5e-1, logits cosine 0.92 (docs/numerics.md has the
    comparison against DeepSeek's own code: 2-3x below this spread)."""
    from ascend_v4.checkpoint import random_weights
    from ascend_v4.config import PRESETS
    from ascend_v4.dump import compare_arrays
    cfg = PRESETS["small"].replace(n_layers=6, compress_ratios=(0, 4, 128, 4, 128, 4, 0), name="small6")
    w = random_weights(cfg, seed=2)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 704))
    off = NumpyV4(cfg, w, numerics="official").forward(ids)
    for i in range(cfg.n_layers):
        np.testing.assert_array_equal(N.bf16(off[f"hidden_block{i}"]), off[f"hidden_block{i}"])
    rows = {r["key"]: r for r in compare_arrays(off, NumpyV4(cfg, w).forward(ids))}
    assert 0.06 < rows["hidden_block0"]["median_rel"] < 0.12, rows["hidden_block0"]
    meds = [rows[f"hidden_block{i}"]["median_rel"] for i in range(cfg.n_layers)]
    assert all(np.isfinite(meds)) and 0.25 < meds[-1] < 0.45, meds
    assert 0.88 < rows["logits"]["cosine"] < 0.96, rows["logits"]
