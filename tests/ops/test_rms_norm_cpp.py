"""The C++ RMS norm (ops/attention/cpu/rms_norm.cc) that ops/common.py `rms_norm` uses on CPU for float32: forward
and both gradients against float64 NumPy written here (the gradients also against central finite differences of
that float64 forward), with and without a gain, and inside a compiled graph."""
import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from ascend_v4.ops import common  # noqa: E402
from ascend_v4.ops.attention import cpp  # noqa: E402

pytestmark = [pytest.mark.usefixtures("ms_graph"),
              pytest.mark.skipif(not cpp.available(), reason="C++ library not built (python ops/build.py attention)")]
EPS = 1e-6


def _fwd64(x, w, eps=EPS):
    x = np.asarray(x, np.float64)
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return y * w if w is not None else y


def _grads64(x, w, dy, eps=EPS):
    """Hand-derived: y = x·r·w, r = (mean x² + eps)^-1/2 -> dx = r·w·dy − x·r³·mean(x·w·dy), dw = Σ dy·x·r."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    wv = np.ones(x.shape[-1]) if w is None else np.asarray(w, np.float64)
    r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    dx = r * wv * dy - x * r ** 3 * (x * wv * dy).mean(-1, keepdims=True)
    dw = (dy * x * r).reshape(-1, x.shape[-1]).sum(0)
    return dx, dw


def test_common_rms_norm_uses_the_cpp_kernel_on_cpu():
    assert common._CPU_RMS_NORM is cpp.rms_norm


@pytest.mark.parametrize("with_w", [True, False])
def test_forward_and_gradients_match_float64(with_w):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 5, 40)) * 2.0).astype(np.float32)
    w = (1.0 + 0.3 * rng.normal(size=40)).astype(np.float32) if with_w else None
    dy = rng.normal(size=x.shape).astype(np.float32)

    def f(xx, ww):
        return common.rms_norm(xx, ww if with_w else None, EPS)

    def loss(xx, ww):
        return (f(xx, ww) * ms.Tensor(dy)).sum()

    wt = ms.Tensor(w if with_w else np.ones(40, np.float32))
    y = ms.jit(f)(ms.Tensor(x), wt).asnumpy()
    np.testing.assert_allclose(y, _fwd64(x, w), rtol=0, atol=1e-6)
    dx, dw = ms.jit(ms.grad(loss, (0, 1)))(ms.Tensor(x), wt)
    rdx, rdw = _grads64(x, w, dy)
    np.testing.assert_allclose(dx.asnumpy(), rdx, rtol=0, atol=2e-6)
    if with_w:
        np.testing.assert_allclose(dw.asnumpy(), rdw, rtol=0, atol=5e-6)
    else:
        assert not dw.asnumpy().any()     # no gain: nothing flows to the unused stand-in
    # the hand derivation itself against central differences of the float64 forward
    h = 1e-6
    for idx in [(0, 0, 0), (1, 3, 17), (2, 4, 39)]:
        xp, xm = x.astype(np.float64), x.astype(np.float64)
        xp[idx] += h
        xm[idx] -= h
        fd = ((_fwd64(xp, w) - _fwd64(xm, w)) * dy).sum() / (2 * h)
        assert abs(fd - rdx[idx]) < 1e-6 * max(1.0, abs(fd))
    if with_w:
        for j in (0, 21):
            wp, wm = w.astype(np.float64), w.astype(np.float64)
            wp[j] += h
            wm[j] -= h
            fd = ((_fwd64(x, wp) - _fwd64(x, wm)) * dy).sum() / (2 * h)
            assert abs(fd - rdw[j]) < 1e-6 * max(1.0, abs(fd))
