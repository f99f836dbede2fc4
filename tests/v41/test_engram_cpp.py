"""The Engram C++ kernels: the hash bit-exact to the reference (and the release's vectors), the gather and its
scatter-add backward exactly equal to an independent NumPy computation, and an out-of-range id refused."""
import numpy as np
import pytest

from ascend_v4.ops.engram import cpp
from ascend_v4.ops.engram.reference import NgramHashState

from .test_engram_hash import VEC_DECODE_60, VEC_L1_POS4, VEC_L14_POS4

if not cpp.available():      # the kernels are built by .ci/setup; a missing library is a broken install here
    raise RuntimeError("ops/engram/cpu/_engram_cpu.so is not built; run `python ops/build.py engram`")


def test_hash_kernel_reproduces_the_release_vectors_and_the_reference():
    st = NgramHashState(1, (1, 14), 16000000, 4, 8, 2, 99092, hash_fn=cpp.ngram_hash_cpp)
    out = st(np.array([[10, 20, 30, 40, 50]]))
    assert out[0, 4, 0].tolist() == VEC_L1_POS4 and out[0, 4, 1, :3].tolist() == VEC_L14_POS4
    assert st(np.array([[60]]))[0, 0, 0, :3].tolist() == VEC_DECODE_60
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 99092, (3, 300))
    mask = rng.random((3, 300)) > 0.1
    kw = dict(batch=3, layer_ids=(1, 14), vocab_size=16000000, max_ngram=4, n_heads=8, pad_id=2,
              compressed_vocab_size=99092)
    assert np.array_equal(NgramHashState(**kw, hash_fn=cpp.ngram_hash_cpp)(ids, mask), NgramHashState(**kw)(ids, mask))


def test_gather_and_scatter_add_backward_exact():
    import mindspore as ms
    rng = np.random.default_rng(1)
    table = rng.standard_normal((50, 8)).astype(np.float32)
    ids = rng.integers(0, 50, (40, 6))
    ids[0, :] = 7                                            # one row hit many times
    t, i = ms.Tensor(table), ms.Tensor(ids.astype(np.int32))
    assert np.array_equal(cpp.engram_lookup(t, i).asnumpy(), table[ids].reshape(40, 48))
    cot = rng.standard_normal((40, 48)).astype(np.float32)
    c = ms.Tensor(cot)

    def loss(tt):
        return (cpp.engram_lookup(tt, i) * c).sum()
    grad = ms.grad(loss)(t).asnumpy()
    want = np.zeros((50, 8), np.float64)
    np.add.at(want, ids.reshape(-1), cot.reshape(-1, 8).astype(np.float64))
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-6)
    assert np.all(grad[np.setdiff1d(np.arange(50), ids)] == 0)


def test_out_of_range_id_fails():
    import mindspore as ms
    with pytest.raises(RuntimeError, match="EngramLookupFwd.* is 4"):     # code 4: id outside the table
        cpp.engram_lookup(ms.Tensor(np.zeros((4, 8), np.float32)), ms.Tensor(np.array([[4]], np.int32))).asnumpy()
