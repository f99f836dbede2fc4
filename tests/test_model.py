"""The graph-mode model against the float64 NumPy golden model, on a tiny official-format checkpoint.

Tolerances: float32 vs float64 gives ~1e-6 relative error per position; a position may differ more when a
float32 rounding flips a near-tied routing or indexer decision, so we bound the median and the fraction of
positions above 1e-4 rather than the maximum.
"""
import numpy as np
import pytest

from ascend_v4.dump import compare_arrays
from ascend_v4.numpy_model import NumpyV4


@pytest.fixture(scope="module")
def fwd(ms_graph, tiny_cfg, tiny_weights):
    from ascend_v4.graph.forward import build_forward
    return build_forward(tiny_cfg, tiny_weights, max_seq_len=128, with_mtp=True)


def _check(out, ref, frac=0.97):
    rows = {r["key"]: r for r in compare_arrays(out, ref)}
    assert set(rows) == set(ref)
    for key, r in rows.items():
        assert r["median_rel"] < 1e-5, (key, r)
        assert r["cosine"] > 0.9999, (key, r)
    for key in ref:
        a, b = out[key].astype(np.float64), ref[key]
        a = a.reshape(int(np.prod(a.shape[:2])), -1)
        b = b.reshape(a.shape)
        rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
        assert np.mean(rel < 1e-4) >= frac, (key, np.sort(rel)[-5:])
    assert rows["logits"]["top1_agree"] >= 0.98


def test_forward_matches_numpy_golden_across_windows_and_blocks(fwd, tiny_cfg, tiny_weights):
    # S=64 with window 16, ratios 4 and 16: wraps the window 4x and crosses 16 CSA / 4 HCA block boundaries
    ids = np.random.default_rng(0).integers(0, tiny_cfg.vocab_size, (2, 64))
    out = fwd(ids)
    ref = NumpyV4(tiny_cfg, tiny_weights).forward(ids, with_mtp=True)
    assert out["logits"].shape == (2, 64, tiny_cfg.vocab_size)
    assert out["hidden_block3"].shape == (2, 64, 4, tiny_cfg.dim)
    assert out["mtp_logits"].shape == (2, 63, tiny_cfg.vocab_size)
    _check(out, ref)


def test_forward_is_causal(fwd, tiny_cfg):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, tiny_cfg.vocab_size, (2, 64))
    ids2 = ids.copy()
    ids2[:, 40:] = rng.integers(0, tiny_cfg.vocab_size, (2, 24))
    a, b = fwd(ids)["logits"], fwd(ids2)["logits"]
    np.testing.assert_array_equal(a[:, :40], b[:, :40])
    assert np.abs(a[:, 40:] - b[:, 40:]).max() > 1e-3


@pytest.mark.parametrize("S", [3, 4, 17])
def test_short_sequences_and_exact_block_boundaries(ms_graph, tiny_cfg, tiny_weights, S):
    # 3: shorter than one CSA block; 4: exactly one block; 17: one past the first HCA block (ratio 16)
    from ascend_v4.graph.forward import build_forward
    f = build_forward(tiny_cfg, tiny_weights, max_seq_len=32)
    ids = np.random.default_rng(S).integers(0, tiny_cfg.vocab_size, (1, S))
    _check(f(ids), NumpyV4(tiny_cfg, tiny_weights).forward(ids), frac=0.9)


def test_bad_tokens_and_weights_are_rejected(fwd, tiny_cfg, tiny_weights):
    from ascend_v4.model import Transformer
    from ascend_v4.weights import WeightError, load_into
    with pytest.raises(ValueError, match="token ids must lie"):
        fwd(np.array([[0, tiny_cfg.vocab_size]]))
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        fwd(np.array([1, 2, 3]))
    m = Transformer(tiny_cfg, max_seq_len=16, with_mtp=False)
    w = dict(tiny_weights)
    w.pop("layers.1.attn.indexer.wq_b.weight")
    with pytest.raises(WeightError, match="missing from the checkpoint"):
        load_into(m, w)
    w = dict(tiny_weights)
    w["layers.0.attn.wq_a.weight"] = w["layers.0.attn.wq_a.weight"][:, :8]
    with pytest.raises(WeightError, match="layers.0.attn.wq_a.weight"):
        load_into(m, w)
    w = dict(tiny_weights)
    w["norm.weight"] = np.full_like(w["norm.weight"], np.nan)
    with pytest.raises(WeightError, match="NaN"):
        load_into(m, w)
