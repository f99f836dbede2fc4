"""Decode-state compressor (docs/design.md): prefill-then-decode == one-shot prefill, chunked prefill, reset,
and every backend of compress_kv_step against the reference, states included (-inf slots compared as equal)."""
import numpy as np
import pytest

from ascend_v4.ops import registry
from ascend_v4.ops.attention import reference as R

ms = pytest.importorskip("mindspore")


def _weights(rng, D, c, ratio, overlap):
    coff = 2 if overlap else 1
    return (rng.standard_normal((coff * c, D)) / np.sqrt(D), rng.standard_normal((coff * c, D)) / np.sqrt(D),
            rng.standard_normal((ratio, coff * c)) * 0.3, 1 + 0.1 * rng.standard_normal(c))


GEOMS = [(4, True), (8, False), (4, False), (16, False)]
CHUNKS = [(5, 1, 1, 13, 1, 16), (3,), (4, 4, 1), (1,) * 9, (16, 1, 1, 1, 1)]


@pytest.mark.parametrize("ratio,overlap", GEOMS)
def test_reference_stream_equals_prefill(ratio, overlap):
    rng = np.random.default_rng(ratio)
    B, D, c = 2, 16, 8
    w = _weights(rng, D, c, ratio, overlap)
    for chunks in CHUNKS:
        S = sum(chunks)
        x = rng.standard_normal((B, S, D))
        full = R.compress_kv(x, *w, ratio, overlap)
        st = R.compressor_state(B, ratio, c, overlap)
        outs, pos = [], 0
        for T in chunks:
            e, *st = R.compress_kv_step(x[:, pos:pos + T], *w, *st, pos, ratio, overlap)
            assert e.shape[1] == (pos + T) // ratio - pos // ratio
            outs.append(e)
            pos += T
        np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-12)
        # canonical state: the slots of the pending partial block and nothing else are filled
        off = ratio if overlap else 0
        pending = S % ratio
        assert np.all(np.isfinite(st[1][:, off:off + pending])) and np.all(st[1][:, off + pending:] == -np.inf)


def test_reset_between_sequences():
    rng = np.random.default_rng(7)
    B, D, c, ratio = 1, 16, 8, 4
    w = _weights(rng, D, c, ratio, True)
    a, b = rng.standard_normal((B, 10, D)), rng.standard_normal((B, 7, D))
    st = R.compressor_state(B, ratio, c, True)
    _, *st_after_a = R.compress_kv_step(a, *w, *st, 0, ratio, True)
    fresh, *_ = R.compress_kv_step(b, *w, *R.compressor_state(B, ratio, c, True), 0, ratio, True)
    stale, *_ = R.compress_kv_step(b, *w, *st_after_a, 0, ratio, True)
    np.testing.assert_allclose(fresh, R.compress_kv(b, *w, ratio, True), atol=1e-12)
    assert not np.allclose(stale, fresh)     # carrying state across sequences is wrong: reset it


def _to_ms(a):
    return ms.Tensor(np.asarray(a, np.float32))


@pytest.mark.parametrize("backend", ["composite", "cpp"])
@pytest.mark.parametrize("ratio,overlap", GEOMS[:3])
def test_backend_step_matches_reference(backend, ratio, overlap):
    b = next((x for x in registry.backends("compress_kv_step") if x.name == backend), None)
    if b is None or not b.available():
        pytest.skip(f"{backend} backend not available")
    rng = np.random.default_rng(11)
    B, D, c = 2, 16, 8
    w = [np.asarray(t, np.float32).astype(np.float64) for t in _weights(rng, D, c, ratio, overlap)]
    x = rng.standard_normal((B, 23, D)).astype(np.float32).astype(np.float64)
    st_ref = R.compressor_state(B, ratio, c, overlap)
    st = [_to_ms(s) for s in st_ref]
    pos, got, want = 0, [], []
    for T in (6, 1, 1, 1, 9, 1, 4):
        e_ref, *st_ref = R.compress_kv_step(x[:, pos:pos + T], *w, *st_ref, pos, ratio, overlap)
        e, *st = b.fn(_to_ms(x[:, pos:pos + T]), *[_to_ms(t) for t in w], *st, pos, ratio, overlap)
        for o, r in zip([e] + st, [e_ref] + st_ref):
            o = o.asnumpy()
            assert o.shape == r.shape
            np.testing.assert_allclose(o, r, atol=2e-5, rtol=2e-4)   # -inf == -inf passes
        got.append(e.asnumpy())
        want.append(e_ref)
        pos += T
    full = R.compress_kv(x, *w, ratio, overlap)
    np.testing.assert_allclose(np.concatenate(got, 1), full, atol=2e-5, rtol=2e-4)
