"""INT8 KV cache: 448 (here head_dim - rope_head_dim) non-RoPE dims int8 with a per-entry scale, RoPE dims float32.

The step's own KV rows and new entries are quantised the same way before use, so decode and prefill stay
consistent with each other in INT8 mode (checked to float32 tolerance); the cost is a bounded logit error
against the float32 cache (reported by bench/decode.py)."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def int8_engine(ms_graph, tiny_cfg, tiny_weights):
    from ascend_v4.serve import Engine
    return Engine(tiny_cfg, tiny_weights, max_batch=2, max_len=128, prefill_chunk=16, kv_int8=True)


@pytest.mark.slow   # > 20 s: runs in .ci/run, so the default suite stays under 10 minutes
def test_int8_cache_quantisation_error_and_consistency(int8_engine, tiny_cfg, tiny_weights):
    c = tiny_cfg
    seq = np.random.default_rng(4).integers(2, c.vocab_size, (2, 48))
    eng = int8_engine
    pre = eng.prefill([seq[0, :32], seq[1, :32]], return_all=True)
    dec = [[], []]
    for t in range(32, 48):
        lg = eng.decode_step(seq[:, t])
        for r in range(2):
            dec[r].append(lg[r])
    arr = eng.cache.arrays()
    # storage: int8 non-RoPE dims, float32 RoPE dims, one scale per row; dequantised error <= scale / 2
    q, rope, scale = arr["L1.ent_q"], arr["L1.ent_r"], arr["L1.ent_s"]
    assert q.dtype == np.int8 and q.shape[-1] == c.head_dim - c.rope_head_dim and rope.shape[-1] == c.rope_head_dim
    assert scale.shape[-1] == 1 and np.abs(q).max() <= 127
    # against the float32 model (the float64 golden forward; the float32 cache matches it to ~1e-6): a bounded
    # logit error
    from ascend_v4.numpy_model import NumpyV4
    ref_pre = NumpyV4(c, tiny_weights).forward(seq[:, :32])["logits"]
    for r in range(2):
        rel = np.linalg.norm(pre[r] - ref_pre[r], axis=-1) / np.linalg.norm(ref_pre[r], axis=-1)
        assert np.median(rel) < 0.15, np.median(rel)
    # consistency inside INT8 mode: one-shot prefill over 48 tokens == prefill 32 + 16 decode steps
    full = eng.prefill([seq[0], seq[1]], chunk=16, return_all=True)
    for r in range(2):
        got = np.concatenate([pre[r], np.stack(dec[r])[:-1]])
        rel = np.linalg.norm(got - full[r][:47], axis=-1) / np.linalg.norm(full[r][:47], axis=-1)
        assert rel.max() < 2e-5, rel.max()
    from ascend_v4.serve.cache import KVCache
    saved = 1 - eng.cache.bytes_per_token_formula()["total"] / KVCache(c, 1, 128).bytes_per_token_formula()["total"]
    assert saved > 0.1


def test_kv_quant_roundtrip_error_is_half_a_step(ms_graph):
    import mindspore as ms
    from ascend_v4.kv_formats import INT8, decode, encode
    x = (np.random.default_rng(0).normal(size=(3, 5, 512)) * np.array([0.01, 1, 100])[:, None, None]).astype(np.float32)
    q, r, s = encode(ms.Tensor(x), INT8, 448)
    y = decode((q, r, s), INT8).asnumpy()
    s = s.asnumpy()
    assert q.asnumpy().dtype == np.int8 and np.abs(q.asnumpy()).max() == 127
    np.testing.assert_array_equal(y[..., 448:], x[..., 448:])                    # RoPE dims untouched
    assert (np.abs(y[..., :448] - x[..., :448]) <= 0.5 * s * (1 + 1e-5)).all()
    np.testing.assert_allclose(s[..., 0], np.abs(x[..., :448]).max(-1) / 127, rtol=1e-6)
