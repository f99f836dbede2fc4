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
