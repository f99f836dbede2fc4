"""Engram ops: the float64 reference against hand derivations, and every backend against the reference through the
parity harness (forward, and backward as directional derivatives vs central differences of the reference)."""
import numpy as np
import pytest

from ascend_v4.ops import parity
from ascend_v4.ops.engram import reference as R
from ascend_v4.ops.engram.cases import CASES


def test_gate_hand_derivation():
    D, hc = 16, 4
    rng = np.random.default_rng(1)
    h = rng.standard_normal((hc, D))
    # keys: stream 0 = its own input (dot = √D), stream 1 = −3·input (dot = −√D), stream 2 = 0 (dot = 0, the
    # |dot| floor gives σ(√1e-6)), stream 3 = pairwise rotated input (products cancel exactly: dot = 0 too)
    k3 = np.empty(D)
    k3[0::2], k3[1::2] = h[3, 1::2], -h[3, 0::2]
    keys = np.stack([h[0], -3 * h[1], np.zeros(D), k3])
    value = rng.standard_normal(D)
    kv = np.concatenate([keys.ravel(), value])
    out = R.engram_gate(h, kv, np.ones((hc, D)), np.ones((hc, D)), np.array(1.0))
    sig = lambda z: 1 / (1 + np.exp(-z))
    g = [sig(D ** 0.25), sig(-(D ** 0.25)), sig(1e-3), sig(1e-3)]
    np.testing.assert_allclose(out, h + np.array(g)[:, None] * value, rtol=1e-12, atol=1e-12)
    dead = R.engram_gate(h, kv, np.ones((hc, D)), np.ones((hc, D)), np.array(0.0))
    assert np.array_equal(dead, h)
    # only the product q_weight·k_weight matters
    q = rng.standard_normal((hc, D)) + 2
    np.testing.assert_allclose(R.engram_gate(h, kv, q, 1 / q, np.array(1.0))[:2], out[:2], rtol=1e-12)


def test_lookup_concatenates_rows_in_column_order():
    table = np.arange(40, dtype=np.float64).reshape(10, 4)
    out = R.engram_lookup(table, np.array([[3, 0, 9]]))
    assert out.tolist() == [[12, 13, 14, 15, 0, 1, 2, 3, 36, 37, 38, 39]]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}-{c.name}" for c in CASES])
def test_backends_match_the_reference(case):
    rows = parity.run(cases=[case])
    assert rows, "no backend ran"
    bad = [r for r in rows if not r.ok]
    assert not bad, parity.format_table(rows)
    assert {r.kind for r in rows} == ({"fwd", "bwd"} if case.grad_args else {"fwd"})


def test_engram_ops_in_a_graph_mode_cell_with_gradients():
    """The way the model will run them: inside a GRAPH_MODE Cell, resolved from the registry, differentiated."""
    import mindspore as ms
    from mindspore import nn

    from ascend_v4.ops import registry

    class EngramRead(nn.Cell):
        def __init__(self, lookup, gate):
            super().__init__()
            self.lookup, self.gate = lookup, gate

        def construct(self, table, ids, w, h, q, k, alive):
            e = self.lookup(table, ids)                                 # [T, C·d]
            kv = ms.ops.matmul(e, w)                                    # wkv stands in as a plain matmul
            return self.gate(h, kv, q, k, alive)

    rng = np.random.default_rng(5)
    T, C, d, D = 6, 6, 8, 16
    table, ids = rng.standard_normal((40, d)), rng.integers(0, 40, (T, C))
    w, h = rng.standard_normal((C * d, 5 * D)) * 0.3, rng.standard_normal((T, 4, D))
    q, k = 1 + 0.2 * rng.standard_normal((4, D)), 1 + 0.2 * rng.standard_normal((4, D))
    alive = np.array([1., 0, 1, 1, 1, 1])
    args = [table, ids, w, h, q, k, alive]
    f64 = [a.astype(np.float32).astype(np.float64) if a.dtype.kind == "f" else a for a in args]
    want = R.engram_gate(f64[3], R.engram_lookup(f64[0], f64[1]) @ f64[2], f64[4], f64[5], f64[6])
    ms_args = [ms.Tensor(a.astype(np.int32) if a.dtype.kind == "i" else a.astype(np.float32)) for a in args]
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        for lookup in ("composite", "cpp"):
            cell = EngramRead(registry.resolve("engram_lookup", lookup).fn,
                              registry.resolve("engram_gate", "composite").fn)
            out = cell(*ms_args).asnumpy()
            np.testing.assert_allclose(out, want, rtol=1e-6, atol=2e-6)          # measured max abs ~9e-7 on |4|
            def total(*a):
                return cell(*a).sum()
            grads = ms.jit(ms.grad(total, grad_position=(0, 2, 3)))(*ms_args)
            # d/d table of sum(out): finite difference of the float64 reference along one random direction
            v = rng.standard_normal(table.shape)
            def f(t):
                return R.engram_gate(f64[3], R.engram_lookup(t, f64[1]) @ f64[2], f64[4], f64[5], f64[6]).sum()
            fd = (f(f64[0] + 1e-6 * v) - f(f64[0] - 1e-6 * v)) / 2e-6
            assert abs(float(np.sum(grads[0].asnumpy() * v)) - fd) <= 2e-6 * (1 + abs(fd))   # measured ~5e-7 rel
            assert np.all(grads[0].asnumpy()[np.setdiff1d(np.arange(40), ids)] == 0)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
