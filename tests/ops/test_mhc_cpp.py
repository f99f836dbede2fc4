"""mHC backend "cpp" (C++ aot kernels): registry selection, parity against the float64 reference (forward and
FD-checked backward), raw bfloat16 tensors, and graph mode through ms.jit(ms.value_and_grad)."""
import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import ops  # noqa: E402

from ascend_v4.ops import parity, registry  # noqa: E402
from ascend_v4.ops.mhc import cpp, reference  # noqa: E402
from ascend_v4.ops.mhc.cases import CASES  # noqa: E402

pytestmark = pytest.mark.skipif(not cpp.available(), reason="C++ library not built (python ops/build.py mhc)")

HC = 4


def _pre_inputs(rng, T, D):
    x = rng.standard_normal((T, HC, D)).astype(np.float32)
    fn = (rng.standard_normal(((2 + HC) * HC, HC * D)) * 0.5).astype(np.float32)
    scale = np.array([0.8, 0.6, 1.2], np.float32)
    base = (rng.standard_normal((2 + HC) * HC) * 0.3).astype(np.float32)
    return x, fn, scale, base


def _bf16(a):
    return np.asarray(ms.Tensor(a, ms.bfloat16).astype(ms.float32).asnumpy(), np.float64)


def test_registry_prefers_cpp_on_cpu_and_falls_back(monkeypatch):
    monkeypatch.delenv("ASCEND_V4_BACKENDS", raising=False)
    for op in ("hc_pre", "hc_post", "hc_head"):
        assert registry.resolve(op, device="CPU").name == "cpp"
        assert registry.selected()[op] == "cpp"
        assert registry.resolve(op, device="Ascend").name != "cpp"          # CPU-only backend
    monkeypatch.setenv("ASCEND_V4_BACKENDS", "hc_pre=composite")
    assert registry.resolve("hc_pre", device="CPU").name == "composite"
    monkeypatch.setattr(cpp, "LIB", "/nonexistent/_mhc_cpu.so")           # library missing -> composite
    monkeypatch.delenv("ASCEND_V4_BACKENDS")
    assert registry.resolve("hc_post", device="CPU").name == "composite"
    with pytest.raises(registry.BackendError, match="not built"):
        registry.resolve("hc_post", backend="cpp")


@pytest.mark.parametrize("op", ["hc_pre", "hc_post", "hc_head"])
def test_parity_cpp(op):
    rows = parity.run(op=op, backend="cpp")
    assert rows and all(r.backend == "cpp" for r in rows)
    assert {r.kind for r in rows} == {"fwd", "bwd"}
    bad = [r for r in rows if not r.ok]
    assert not bad, parity.format_table(bad)
    assert len({r.case for r in rows}) == len([c for c in CASES if c.op == op])


def test_bf16_tensors_hc_pre():
    """Real bfloat16 tensors (raw 16-bit words in the kernel): outputs in bf16, float32 compute."""
    rng = np.random.default_rng(3)
    x, fn, scale, base = _pre_inputs(rng, 5, 96)
    xr = _bf16(x)
    y, post, comb = cpp.hc_pre(ms.Tensor(x, ms.bfloat16), ms.Tensor(fn), ms.Tensor(scale), ms.Tensor(base))
    assert y.dtype == ms.bfloat16 and post.dtype == ms.float32 and comb.dtype == ms.float32
    ry, rp, rc = reference.hc_pre(xr, fn.astype(np.float64), scale, base)
    np.testing.assert_allclose(y.astype(ms.float32).asnumpy(), ry, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(post.asnumpy(), rp, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(comb.asnumpy(), rc, rtol=1e-4, atol=1e-5)

    cy = ms.Tensor(rng.standard_normal(ry.shape).astype(np.float32))
    cp = ms.Tensor(rng.standard_normal(rp.shape).astype(np.float32))
    cc = ms.Tensor(rng.standard_normal(rc.shape).astype(np.float32))

    def loss(x, fn):
        y, p, c = cpp.hc_pre(x, fn, ms.Tensor(scale), ms.Tensor(base))
        return (ops.cast(y, ms.float32) * cy).sum() + (p * cp).sum() + (c * cc).sum()

    gb = ms.grad(loss, grad_position=(0, 1))(ms.Tensor(x, ms.bfloat16), ms.Tensor(fn))
    gf = ms.grad(loss, grad_position=(0, 1))(ms.Tensor(xr.astype(np.float32)), ms.Tensor(fn))
    assert gb[0].dtype == ms.bfloat16 and gb[1].dtype == ms.float32
    gx32 = gf[0].asnumpy()
    np.testing.assert_allclose(gb[0].astype(ms.float32).asnumpy(), gx32, rtol=1e-2, atol=1e-2 * np.abs(gx32).max())
    # the bf16 run also sees dy rounded to bf16 (the cotangent of a bf16 output), hence bf16-level agreement
    gfn32 = gf[1].asnumpy()
    np.testing.assert_allclose(gb[1].asnumpy(), gfn32, rtol=1e-2, atol=1e-2 * np.abs(gfn32).max())


def test_bf16_tensors_hc_post_and_head():
    rng = np.random.default_rng(4)
    T, D = 6, 40
    f, res = rng.standard_normal((T, D)), rng.standard_normal((T, HC, D))
    post = 2 * rng.random((T, HC))
    comb = rng.random((T, HC, HC)) + 0.05
    comb /= comb.sum(-1, keepdims=True)
    out = cpp.hc_post(ms.Tensor(f, ms.bfloat16), ms.Tensor(res, ms.bfloat16), ms.Tensor(post.astype(np.float32)),
                      ms.Tensor(comb.astype(np.float32)))
    assert out.dtype == ms.bfloat16
    ref = reference.hc_post(_bf16(f), _bf16(res), post.astype(np.float32), comb.astype(np.float32))
    np.testing.assert_allclose(out.astype(ms.float32).asnumpy(), ref, rtol=1e-2, atol=1e-2)

    x, _, _, _ = _pre_inputs(rng, T, D)
    fn = (rng.standard_normal((HC, HC * D)) * 0.5).astype(np.float32)
    scale, base = np.array([0.7], np.float32), (rng.standard_normal(HC) * 0.3).astype(np.float32)
    y = cpp.hc_head(ms.Tensor(x, ms.bfloat16), ms.Tensor(fn), ms.Tensor(scale), ms.Tensor(base))
    assert y.dtype == ms.bfloat16
    np.testing.assert_allclose(y.astype(ms.float32).asnumpy(), reference.hc_head(_bf16(x), fn, scale, base),
                               rtol=1e-2, atol=1e-2)


class _MhcBlock(ms.nn.Cell):
    """hc_pre -> toy sublayer -> hc_post -> hc_head, parameters as in a V4 block (leading [B, S] dims)."""

    def __init__(self, backend, D, rng):
        super().__init__()
        x, fn, scale, base = _pre_inputs(rng, 1, D)
        self.fn = ms.Parameter(ms.Tensor(fn), name="fn")
        self.scale = ms.Parameter(ms.Tensor(scale), name="scale")
        self.base = ms.Parameter(ms.Tensor(base), name="base")
        self.head_fn = ms.Parameter(ms.Tensor((rng.standard_normal((HC, HC * D)) * 0.5).astype(np.float32)),
                                    name="head_fn")
        self.head_scale = ms.Parameter(ms.Tensor(np.array([0.7], np.float32)), name="head_scale")
        self.head_base = ms.Parameter(ms.Tensor(np.zeros(HC, np.float32)), name="head_base")
        self._pre = registry.resolve("hc_pre", backend).fn
        self._post = registry.resolve("hc_post", backend).fn
        self._head = registry.resolve("hc_head", backend).fn

    def construct(self, h):
        x, post, comb = self._pre(h, self.fn, self.scale, self.base, 20, 1e-6, 1e-6)
        h = self._post(ops.tanh(x), h, post, comb)
        y = self._head(h, self.head_fn, self.head_scale, self.head_base, 1e-6, 1e-6)
        return (y * y).mean()


def test_graph_mode_value_and_grad_through_cpp():
    rng = np.random.default_rng(5)
    h = ms.Tensor(rng.standard_normal((2, 3, HC, 32)).astype(np.float32))
    results = {}
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        for backend in ("cpp", "composite"):
            net = _MhcBlock(backend, 32, np.random.default_rng(6))
            step = ms.jit(ms.value_and_grad(net, grad_position=0, weights=net.trainable_params()))
            loss, (gh, gw) = step(h)
            results[backend] = (loss.asnumpy(), gh.asnumpy(), [g.asnumpy() for g in gw])
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    (l1, gh1, gw1), (l2, gh2, gw2) = results["cpp"], results["composite"]
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    np.testing.assert_allclose(gh1, gh2, rtol=1e-4, atol=1e-5 * np.abs(gh2).max())
    assert len(gw1) == 6
    for a, b in zip(gw1, gw2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(np.abs(b).max(), 1e-3))
