"""MoE backend "cpp" (C++ aot kernels) beyond the parity cases: registry selection, GEMM blocking edges at sizes
past every block (KC, MC, NB) on both micro-kernels (AVX-512 and AVX2), graph mode (ms.jit of value_and_grad),
the MoE layer in both modes (dropless / fixed capacity with overflow accounting) against the per-token definition,
raw bfloat16 data movement, int64 ids, and the per-config primitive cache."""
import os
import subprocess
import sys

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import ops  # noqa: E402

from ascend_v4.ops import registry  # noqa: E402
from ascend_v4.ops.moe import composite, cpp, reference  # noqa: E402
from ascend_v4.ops.moe.layer import MoeExperts, default_capacity  # noqa: E402

pytestmark = pytest.mark.skipif(not cpp.available(), reason="C++ library not built (python ops/build.py moe)")
T_ = ms.Tensor


def test_registry_prefers_cpp_on_cpu_and_falls_back(monkeypatch):
    monkeypatch.delenv("ASCEND_V4_BACKENDS", raising=False)
    for op in ("moe_route", "moe_dispatch", "expert_ffn", "moe_combine", "moe_gating_topk", "moe_init_routing",
               "grouped_matmul", "moe_finalize_routing", "grouped_expert_ffn"):
        assert registry.resolve(op, device="CPU").name == "cpp"
        assert registry.resolve(op, device="Ascend").name == "composite"      # cpp is CPU-only
    monkeypatch.setattr(cpp, "LIB", "/nonexistent/_moe_cpu.so")
    assert registry.resolve("grouped_matmul", device="CPU").name == "composite"


def _gmm_check(rng, counts, K, N, transpose, extra_rows=0):
    counts = np.asarray(counts)
    M = int(counts.sum()) + extra_rows
    E = len(counts)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = (rng.standard_normal((E, N, K) if transpose else (E, K, N)) / np.sqrt(K)).astype(np.float32)
    gl = np.cumsum(counts).astype(np.int32)
    dy = rng.standard_normal((M, N)).astype(np.float32)

    def loss(a, b):
        return (cpp.grouped_matmul(a, b, T_(gl), 0, transpose) * T_(dy)).sum()
    y = cpp.grouped_matmul(T_(x), T_(w), T_(gl), 0, transpose).asnumpy()
    gx, gw = ms.grad(loss, grad_position=(0, 1))(T_(x), T_(w))
    ref = reference.grouped_matmul(x, w, gl, 0, transpose)
    wt = np.swapaxes(w, 1, 2) if transpose else w
    rx = np.zeros_like(x, np.float64)
    rw = np.zeros(wt.shape)
    s = 0
    for e, c in enumerate(counts):
        rx[s:s + c] = dy[s:s + c].astype(np.float64) @ wt[e].T
        rw[e] = x[s:s + c].astype(np.float64).T @ dy[s:s + c]
        s += c
    rw = np.swapaxes(rw, 1, 2) if transpose else rw
    for got, want in ((y, ref), (gx.asnumpy(), rx), (gw.asnumpy(), rw)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("transpose", [False, True])
def test_grouped_matmul_blocking_edges(transpose):
    """M per group past MC (144) and ragged, K past KC (512) and ragged, N past NB (256) and ragged."""
    rng = np.random.default_rng(1)
    _gmm_check(rng, [150, 0, 7, 290, 1], 530, 300, transpose, extra_rows=5)


def test_avx2_micro_kernel_subprocess():
    """The AVX2 6x16 kernel (forced with MOE_CPU_ISA=avx2) gives the same results as the default one."""
    code = (
        "import numpy as np, mindspore as ms\n"
        "ms.set_device('CPU')\n"
        "import ctypes\n"
        "from ascend_v4.ops.moe import cpp\n"
        "import importlib, sys\n"
        "sys.path.insert(0, %r)\n"
        "import test_moe_cpp as t\n"
        "assert ctypes.CDLL(cpp.LIB).MoeCpuIsaIsAvx512() == 0\n"
        "t._gmm_check(np.random.default_rng(2), [100, 13, 0, 61], 300, 70, True, 3)\n"
        "t._gmm_check(np.random.default_rng(3), [9, 200], 520, 33, False)\n"
        "print('ok')\n" % os.path.dirname(__file__))
    env = dict(os.environ, MOE_CPU_ISA="avx2", GLOG_v="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def _layer_problem(rng, T=40, D=32, I=48, E=8, K=3, skew=True):
    x = rng.standard_normal((T, D)).astype(np.float32)
    ids = np.stack([rng.permutation(E)[:K] for _ in range(T)]).astype(np.int32)
    if skew:                                          # 3/4 of tokens pick expert 2 first: overflow at low capacity
        others = np.delete(np.arange(E), 2)
        for t in range(3 * T // 4):
            ids[t] = np.concatenate([[2], rng.permutation(others)[:K - 1]])
    w = rng.random((T, K)).astype(np.float32)
    w1 = (rng.standard_normal((E, I, D)) / np.sqrt(D) * 3).astype(np.float32)
    w2 = (rng.standard_normal((E, D, I)) / np.sqrt(I)).astype(np.float32)
    w3 = (rng.standard_normal((E, I, D)) / np.sqrt(D) * 3).astype(np.float32)
    return x, ids, w, w1, w2, w3


@pytest.mark.parametrize("backend", ["cpp", "composite"])
@pytest.mark.parametrize("capacity", [None, 64, 6])
def test_moe_layer_modes_graph(backend, capacity):
    """MoeExperts (dropless / capacity) under ms.jit(value_and_grad) vs the per-token definition; overflow count."""
    rng = np.random.default_rng(4)
    x, ids, w, w1, w2, w3 = _layer_problem(rng)
    E, limit = w1.shape[0], 7.0
    shared = rng.standard_normal(x.shape).astype(np.float32)
    cell = MoeExperts(E, limit, capacity, backend)

    def loss(xv, wv, a, b, c, s):
        y, dropped = cell(xv, wv, T_(ids), a, b, c, s)
        return (y * y).sum(), (y, dropped)
    step = ms.jit(ms.value_and_grad(loss, grad_position=(0, 1, 2, 3, 4, 5), has_aux=True))
    (_, (y, dropped)), grads = step(T_(x), T_(w), T_(w1), T_(w2), T_(w3), T_(shared))
    # reference: drop the overflowing (token, expert) pairs exactly like MoeInitRouting drop/pad does
    if capacity is None:
        keep_w = w
        want_drop = 0
    else:
        _, row, _, _ = reference.moe_init_routing(x, ids, expert_capacity=capacity, expert_num=E, drop_pad_mode=1)
        keep_w = np.where(row.reshape(ids.shape) >= 0, w, 0)
        want_drop = reference.dropped_rows(row)
    ref = reference.moe_forward(x, keep_w, ids, w1, w2, w3, limit) + shared
    np.testing.assert_allclose(y.asnumpy(), ref, rtol=1e-4, atol=1e-4)
    assert int(dropped.asnumpy()) == want_drop
    if capacity == 6:
        assert want_drop > 0
    # gradients: against the other backend's autodiff-free path, i.e. cpp vs composite (composite = ms autodiff)
    other = "composite" if backend == "cpp" else "cpp"
    cell2 = MoeExperts(E, limit, capacity, other)

    def loss2(xv, wv, a, b, c, s):
        y2, _ = cell2(xv, wv, T_(ids), a, b, c, s)
        return (y2 * y2).sum()
    grads2 = ms.grad(loss2, grad_position=(0, 1, 2, 3, 4, 5))(T_(x), T_(w), T_(w1), T_(w2), T_(w3), T_(shared))
    for g1, g2 in zip(grads, grads2):
        g2 = g2.asnumpy()
        np.testing.assert_allclose(g1.asnumpy(), g2, rtol=2e-4, atol=2e-4 * max(1.0, np.abs(g2).max()))


def test_graph_mode_model_facing_ops_subprocess(tmp_path):
    """GRAPH_MODE (set_context) with a Cell that calls the model-facing ops, forward + grad, cpp == composite."""
    code = r'''
import numpy as np, mindspore as ms
from mindspore import nn, ops
ms.set_device("CPU"); ms.set_context(mode=ms.GRAPH_MODE)
from ascend_v4.ops import registry
class Layer(nn.Cell):
    def __init__(self, backend, cap):
        super().__init__()
        self.route = registry.resolve("moe_route", backend).fn
        self.dispatch = registry.resolve("moe_dispatch", backend).fn
        self.ffn = registry.resolve("expert_ffn", backend).fn
        self.combine = registry.resolve("moe_combine", backend).fn
        self.cap = cap
    def construct(self, x, gw, bias, w1, w2, w3):
        wts, ids = self.route(x, gw, bias, 2, 1.5, "sqrtsoftplus")
        ex, slot = self.dispatch(x, ids, 8, self.cap)
        return self.combine(self.ffn(ex, w1, w2, w3, 10.0), wts, slot)
rng = np.random.default_rng(0)
args = [rng.standard_normal(s).astype(np.float32) for s in [(24, 16), (8, 16), (8,), (8, 20, 16), (8, 16, 20), (8, 20, 16)]]
args[2] *= 0.1
outs = {}
for be in ("cpp", "composite"):
    net = Layer(be, 5)
    gf = ms.grad(net, grad_position=(0, 1, 3, 4, 5))
    outs[be] = [net(*map(ms.Tensor, args)).asnumpy()] + [g.asnumpy() for g in gf(*map(ms.Tensor, args))]
for a, b in zip(outs["cpp"], outs["composite"]):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * max(1, np.abs(b).max()))
print("ok")
'''
    script = tmp_path / "graph_mode_moe.py"          # graph mode parses source: it must live in a file
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], env=dict(os.environ, GLOG_v="3"), capture_output=True,
                         text=True, timeout=300, cwd=str(tmp_path))
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def test_bf16_rows_move_bit_exactly_and_int64_ids():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 32)).astype(np.float32)
    ids = np.stack([rng.permutation(6)[:2] for _ in range(9)])
    xb = T_(x, ms.bfloat16)
    for mode, cap in ((0, 0), (1, 2)):
        ex, row, cnt, before = cpp.moe_init_routing(xb, T_(ids.astype(np.int64)), 0, cap, 6, mode, 1)
        assert ex.dtype == ms.bfloat16
        r_ex, r_row, r_cnt, r_before = reference.moe_init_routing(xb.astype(ms.float32).asnumpy(), ids, 0, cap, 6,
                                                                  mode, 1)
        np.testing.assert_array_equal(ex.astype(ms.float32).asnumpy(), r_ex)
        np.testing.assert_array_equal(row.asnumpy(), r_row)
        np.testing.assert_array_equal(cnt.asnumpy(), r_cnt)
        np.testing.assert_array_equal(before.asnumpy(), r_before)


def test_primitive_cache_distinguishes_configs():
    """Two capacities / two k in one process: MindSpore's per-(function, attrs) infer cache must not mix them."""
    rng = np.random.default_rng(6)
    x = T_(rng.standard_normal((10, 8)).astype(np.float32))
    ids = T_(np.stack([rng.permutation(5)[:2] for _ in range(10)]).astype(np.int32))
    assert cpp.moe_dispatch(x, ids, 5, 3)[0].shape == (5, 3, 8)
    assert cpp.moe_dispatch(x, ids, 5, 7)[0].shape == (5, 7, 8)
    logits = T_(rng.standard_normal((10, 16)).astype(np.float32))
    assert cpp.moe_gating_topk(logits, None, 2)[1].shape == (10, 2)
    assert cpp.moe_gating_topk(logits, None, 5)[1].shape == (10, 5)


def test_padded_ffn_skips_padding_exactly():
    """expert_ffn on a drop/pad buffer: all-zero tail rows are skipped, results equal the dense computation."""
    rng = np.random.default_rng(7)
    E, C, D, I = 3, 20, 16, 24
    x = rng.standard_normal((E, C, D)).astype(np.float32)
    x[0, 5:] = 0
    x[1, :] = 0
    x[2, 3] = 0                                               # an interior zero row is computed (and is 0)
    w1, w3 = (rng.standard_normal((E, I, D)).astype(np.float32) for _ in range(2))
    w2 = rng.standard_normal((E, D, I)).astype(np.float32)
    y = cpp.expert_ffn(T_(x), T_(w1), T_(w2), T_(w3), 10.0).asnumpy()
    np.testing.assert_allclose(y, reference.expert_ffn(x, w1, w2, w3, 10.0), rtol=1e-4, atol=1e-3)
    assert not y[1].any() and not y[0, 5:].any()


def test_default_capacity():
    assert default_capacity(2048, 6, 256) == 60
    assert default_capacity(4, 6, 256) == 1
    assert default_capacity(10, 8, 2, capacity_factor=4.0) == 10


def test_composite_stable_topk_matches_reference_on_ties():
    rng = np.random.default_rng(8)
    sel = rng.integers(0, 3, (50, 40)).astype(np.float32)
    got = composite.stable_topk_ids(T_(sel), 7).asnumpy()
    np.testing.assert_array_equal(got, reference._stable_topk(sel.astype(np.float64), 7))
    assert ops is not None


@pytest.mark.parametrize("backend", ["cpp", "composite"])
def test_router_math_is_float32_for_bf16_inputs(backend):
    """bf16 activations and gate weight: the router GEMM, scores and weights are float32 (= the float64 reference on
    the bf16-rounded values to float32 accuracy; a bf16 router would pick different experts)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((64, 128)).astype(np.float32)
    w = (rng.standard_normal((64, 128)) / np.sqrt(128)).astype(np.float32)
    bias = (rng.standard_normal(64) * 0.05).astype(np.float32)
    xb, wb = T_(x, ms.bfloat16), T_(w, ms.bfloat16)
    xr = xb.astype(ms.float32).asnumpy().astype(np.float64)
    wr = wb.astype(ms.float32).asnumpy().astype(np.float64)
    fn = registry.resolve("moe_route", backend).fn
    y, ids = fn(xb, wb, T_(bias), 6, 1.5, "sqrtsoftplus")
    ry, rids = reference.moe_route(xr, wr, bias.astype(np.float64), 6, 1.5)
    assert y.dtype == ms.float32
    np.testing.assert_array_equal(ids.asnumpy(), rids)
    np.testing.assert_allclose(y.asnumpy(), ry, rtol=1e-5, atol=1e-6)
