"""The cpp (aot) backends inside GRAPH_MODE Cells and ms.jit(value_and_grad), the FP4 pieces bit-exact, the
streaming indexer equal to the one-shot one, and the model's attention through the registry on cpp vs composite."""
import os

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import nn, ops  # noqa: E402

from ascend_v4.ops import registry  # noqa: E402
from ascend_v4.ops.attention import reference as R  # noqa: E402
from peak_memory import peak_bytes as _vm_hwm, reset_peak as _peak_rss_reset  # noqa: E402


def _cpp():
    from ascend_v4.ops.attention import cpp
    if not cpp.available():
        pytest.skip("attention C++ kernels not built (python ops/build.py attention)")
    return cpp


class _AttnCell(nn.Cell):
    def __init__(self, fns, ratio, topk, scale):
        super().__init__()
        self.attend, self.hca, self.index, self.compress = fns
        self.ratio, self.topk, self.scale = ratio, topk, scale

    def construct(self, q, kv, sink, win, qi, ki, wi, x, wkv, wg, ape, nw):
        idx = self.index(qi, ki, wi, self.ratio, self.topk, fp4=False)   # d=16: exact scoring
        S = q.shape[1]
        cmp = ops.where(idx >= 0, idx + S, idx)
        o1 = self.attend(q, kv, sink, win, cmp, self.scale)
        o2 = self.hca(q, kv, sink, win, self.ratio, self.scale)
        c = self.compress(x, wkv, wg, ape, nw, self.ratio, True, 1e-6)
        return o1, o2, c, idx


def _inputs(rng, B=2, S=24, H=3, D=16, ratio=4, Hi=2, di=16, Dm=16, c=8):
    n = S // ratio
    t = dict(q=rng.standard_normal((B, S, H, D)), kv=rng.standard_normal((B, S + n, D)), sink=rng.standard_normal(H),
             win=np.broadcast_to(R.window_indices(S, 8), (B, S, 8)).astype(np.int32),
             qi=rng.standard_normal((B, S, Hi, di)), ki=rng.standard_normal((B, n, di)), wi=rng.standard_normal((B, S, Hi)),
             x=rng.standard_normal((B, S, Dm)), wkv=rng.standard_normal((2 * c, Dm)) / 4, wg=rng.standard_normal((2 * c, Dm)) / 4,
             ape=rng.standard_normal((ratio, 2 * c)) * 0.3, nw=1 + 0.1 * rng.standard_normal(c))
    return {k: (v.astype(np.float32) if v.dtype != np.int32 else v) for k, v in t.items()}


def test_cpp_in_graph_mode_matches_reference():
    cpp = _cpp()
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        rng = np.random.default_rng(3)
        a = _inputs(rng)
        cell = _AttnCell((cpp.sparse_attention, cpp.hca_attention, cpp.lightning_indexer, cpp.compress_kv), 4, 3, 0.25)
        o1, o2, c, idx = cell(*[ms.Tensor(v) for v in a.values()])
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    f = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in a.items()}
    ridx = R.lightning_indexer(f["qi"], f["ki"], f["wi"], 4, 3, fp4=False)
    np.testing.assert_array_equal(idx.asnumpy(), ridx)
    cmp = np.where(ridx >= 0, ridx + 24, -1)
    np.testing.assert_allclose(o1.asnumpy(), R.sparse_attention(f["q"], f["kv"], f["sink"], f["win"], cmp, 0.25),
                               atol=2e-5, rtol=2e-4)
    np.testing.assert_allclose(o2.asnumpy(), R.hca_attention(f["q"], f["kv"], f["sink"], f["win"], 4, 0.25),
                               atol=2e-5, rtol=2e-4)
    np.testing.assert_allclose(c.asnumpy(), R.compress_kv(f["x"], f["wkv"], f["wg"], f["ape"], f["nw"], 4, True),
                               atol=2e-5, rtol=2e-4)


def test_cpp_grads_under_jit_match_composite():
    cpp = _cpp()
    from ascend_v4.ops.attention import composite as C
    rng = np.random.default_rng(5)
    a = {k: ms.Tensor(v) for k, v in _inputs(rng).items()}

    def make(mod):
        def loss(q, kv, sink, x, wkv, wg, ape, nw):
            ent = mod.compress_kv(x, wkv, wg, ape, nw, 4, True, 1e-6)            # [B, 6, 8]
            kv2 = ops.concat([kv[:, :24, :8], ent], 1)                            # entries feed attention
            kv2 = ops.concat([kv2, kv2], -1)
            o = mod.sparse_attention(q, kv2, sink, a["win"], None, 0.25)
            h = mod.hca_attention(q, kv2, sink, a["win"], 4, 0.25)
            return (o * o).sum() + (h * ops.sin(h)).sum()
        return ms.jit(ms.value_and_grad(loss, grad_position=tuple(range(8))))

    args = [a[k] for k in ("q", "kv", "sink", "x", "wkv", "wg", "ape", "nw")]
    lc, gc = make(C)(*args)
    lp, gp = make(cpp)(*args)
    np.testing.assert_allclose(lp.asnumpy(), lc.asnumpy(), rtol=1e-5)
    for x, y in zip(gp, gc):
        np.testing.assert_allclose(x.asnumpy(), y.asnumpy(), atol=5e-5, rtol=5e-4)


def test_fp4_rotate_bit_exact_across_backends():
    from ascend_v4.ops.attention import composite as C
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((64, 128)) * np.exp2(rng.integers(-20, 20, (64, 1)))).astype(np.float32)
    ref = R.fp4_rotate(x)
    np.testing.assert_array_equal(C.fp4_rotate(ms.Tensor(x)).asnumpy(), ref)
    # E2M1 grid times a power-of-two scale per block of 32
    rot = (x.astype(np.float64) @ R.hadamard_matrix(128)).astype(np.float32).reshape(64, 4, 32)
    scale = np.exp2(np.ceil(np.log2(np.abs(rot).max(-1, keepdims=True) / 6.0)))
    assert np.all(np.isin(np.abs(ref.reshape(64, 4, 32) / scale), [0, .5, 1, 1.5, 2, 3, 4, 6]))
    assert not np.array_equal(ref, (x @ R.hadamard_matrix(128)).astype(np.float32))


def test_fp4_changes_selection_but_not_much():
    rng = np.random.default_rng(1)
    q, k, w = rng.standard_normal((1, 256, 4, 64)), rng.standard_normal((1, 64, 64)), rng.random((1, 256, 4))
    a = R.lightning_indexer(q, k, w, 4, 16, fp4=False)
    b = R.lightning_indexer(q, k, w, 4, 16)            # the default simulates FP4
    overlap = np.mean([len(set(x) & set(y)) / max(1, len(set(x) - {-1})) for x, y in zip(a[0], b[0]) if x[0] >= 0])
    assert 0.6 < overlap < 1.0


def test_streaming_indexer_equals_one_shot():
    rng = np.random.default_rng(2)
    q, k, w = rng.standard_normal((2, 100, 3, 16)), rng.standard_normal((2, 25, 16)), rng.standard_normal((2, 100, 3))
    want = R.lightning_indexer_stream(q, k, w, 4, 7, fp4=False, chunk=10 ** 6)
    for chunk in (1, 7, 64):
        np.testing.assert_array_equal(R.lightning_indexer_stream(q, k, w, 4, 7, fp4=False, chunk=chunk), want)


def test_cpp_indexer_and_hca_memory_is_not_quadratic():
    """S = 16384: a materialised [S, S/4] score matrix alone would be 256 MiB (HCA index list [S, S/16]: 64 MiB)."""
    cpp = _cpp()
    if not _peak_rss_reset():
        pytest.skip("cannot reset the peak-RSS counter here")
    S, ratio = 16384, 4
    rng = np.random.default_rng(0)
    q = ms.Tensor(rng.standard_normal((1, S, 1, 16), dtype=np.float32))
    k = ms.Tensor(rng.standard_normal((1, S // ratio, 16), dtype=np.float32))
    w = ms.Tensor(rng.random((1, S, 1), dtype=np.float32))
    cpp.lightning_indexer(q, k, w, ratio, 8, fp4=False).asnumpy()         # warm (kernel load)
    _peak_rss_reset()
    base = _vm_hwm()
    idx = cpp.lightning_indexer(q, k, w, ratio, 8, fp4=False).asnumpy()
    grown = _vm_hwm() - base
    assert grown < 48 << 20, f"indexer peak RSS grew {grown / 2**20:.0f} MiB"
    assert idx.shape == (1, S, 8) and (idx[:, -1] >= 0).all()
    kv = ms.Tensor(rng.standard_normal((1, S + S // 16, 16), dtype=np.float32))
    win = ms.Tensor(np.ascontiguousarray(np.broadcast_to(R.window_indices(S, 4), (1, S, 4))))
    cpp.hca_attention(q, kv, ms.Tensor(np.zeros(1, np.float32)), win, 16, 0.25).asnumpy()
    _peak_rss_reset()
    base = _vm_hwm()
    cpp.hca_attention(q, kv, ms.Tensor(np.zeros(1, np.float32)), win, 16, 0.25).asnumpy()
    grown = _vm_hwm() - base
    assert grown < 24 << 20, f"hca peak RSS grew {grown / 2**20:.0f} MiB"


def _pinned(pins, build):
    old = os.environ.get("ASCEND_V4_BACKENDS")
    os.environ["ASCEND_V4_BACKENDS"] = pins
    try:
        net = build()
    finally:
        if old is None:
            os.environ.pop("ASCEND_V4_BACKENDS")
        else:
            os.environ["ASCEND_V4_BACKENDS"] = old
    rng = np.random.default_rng(0)
    for p in sorted(net.get_parameters(), key=lambda p: p.name):
        if p.dtype == ms.float32:
            base = 1.0 if p.name.endswith("norm.weight") else 0.0
            p.set_data(ms.Tensor((base + 0.1 * rng.standard_normal(p.shape)).astype(np.float32)))
    return net


_ATTN_OPS = ("compress_kv", "lightning_indexer", "sparse_attention")


@pytest.mark.parametrize("layer_id", [1, pytest.param(2, marks=pytest.mark.slow)], ids=["csa", "hca"])
def test_model_attention_cell_through_registry_cpp_vs_composite(layer_id):
    """ascend_v4.model.Attention (compressor, indexer, sparse attention resolved from the registry) in GRAPH_MODE:
    the cpp backends give the composite's output (tiny config: layer 1 = CSA ratio 4, layer 2 = HCA ratio 16)."""
    _cpp()
    from ascend_v4 import load_config
    from ascend_v4.model import Attention, RopeTables
    cfg = load_config("tiny")
    S = 40
    rope = RopeTables(cfg, 64).for_ratio(cfg.ratio(layer_id))
    x = ms.Tensor(np.random.default_rng(1).standard_normal((2, S, cfg.dim)).astype(np.float32))
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        outs = [_pinned(",".join(f"{o}={b}" for o in _ATTN_OPS), lambda: Attention(layer_id, cfg))(x, *rope).asnumpy()
                for b in ("cpp", "composite")]
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(outs[0], outs[1], atol=2e-5, rtol=2e-4)


@pytest.mark.slow
def test_model_through_registry_cpp_vs_composite():
    _cpp()
    from ascend_v4 import load_config
    from ascend_v4.model import Transformer
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        ids = ms.Tensor(np.random.default_rng(1).integers(0, 512, (1, 40)).astype(np.int32))
        a, b = [_pinned(",".join(f"{o}={be}" for o in _ATTN_OPS),
                        lambda: Transformer(load_config("tiny"), max_seq_len=64, with_mtp=False))(ids).asnumpy()
                for be in ("cpp", "composite")]
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert registry.selected()["sparse_attention"] in ("cpp", "composite")
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=2e-3)


def test_dense_causal_baseline_equals_full_window_and_samples_exactly():
    """The bench's dense baseline: same kernel machinery, causal over all tokens; stride-sampled rows are exact."""
    cpp = _cpp()
    rng = np.random.default_rng(4)
    S, H, D = 64, 3, 32
    q = rng.standard_normal((1, S, H, D)).astype(np.float32)
    kv = rng.standard_normal((1, S, D)).astype(np.float32)
    sink = rng.standard_normal(H).astype(np.float32)
    full = cpp.dense_causal_attention(ms.Tensor(q), ms.Tensor(kv), ms.Tensor(sink), 0.2).asnumpy()
    ref = R.sparse_attention(q, kv, sink, R.window_indices(S, S)[None], None, 0.2)
    np.testing.assert_allclose(full, ref, atol=2e-5, rtol=2e-4)
    sub = cpp.dense_causal_attention(ms.Tensor(np.ascontiguousarray(q[:, 3::4])), ms.Tensor(kv), ms.Tensor(sink),
                                     0.2, 4).asnumpy()
    np.testing.assert_array_equal(sub, full[:, 3::4])


