"""MuonAdamW and the Newton–Schulz iteration against float64 NumPy references written here (docs/training.md).

Tolerances: the optimiser runs in float32 (CPU graph mode) and the references in float64. Ten NS steps in
float32 stay within ~1e-6 of float64 (measured max 7e-7 on 16x48 .. 64x64 Gaussians), so updated weights and
state are compared at 1e-6 absolute (weights are O(1), moments O(grad)).
"""
import math

import numpy as np
import pytest

NS8 = (3.4445, -4.7750, 2.0315)
NS2 = (2.0, -1.5, 0.5)


# ------------------------------------------------------------------------------------------------ references
def ns_ref(g, steps=((NS8,) * 8 + (NS2,) * 2), eps=1e-7):
    """Hybrid Newton–Schulz, float64: tall -> transpose, divide by the Frobenius norm, X ← aX + (bA + cA²)X."""
    x = np.asarray(g, np.float64)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (np.linalg.norm(x) + eps)
    for a, b, c in steps:
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


class RefMuonAdamW:
    """Float64 NumPy transcription of the spec's update rules (one object per run)."""

    def __init__(self, weights, groups, lr_at, mu=0.95, muon_wd=0.1, rms=0.18, b1=0.9, b2=0.95, eps=1e-20,
                 adam_wd=0.1):
        self.w = {k: np.asarray(v, np.float64).copy() for k, v in weights.items()}
        self.groups, self.lr_at = groups, lr_at
        self.mu, self.muon_wd, self.rms = mu, muon_wd, rms
        self.b1, self.b2, self.eps, self.adam_wd = b1, b2, eps, adam_wd
        self.m = {k: np.zeros_like(v) for k, v in self.w.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.w.items()}
        self.t = 0

    def step(self, grads):
        self.t += 1
        lr = self.lr_at(self.t)
        for k, g in grads.items():
            g = np.asarray(g, np.float64)
            grp = self.groups[k]
            if grp == "frozen":
                continue
            if grp == "muon":
                self.m[k] = self.mu * self.m[k] + g
                u = g + self.mu * self.m[k]
                mats = u.reshape((-1,) + u.shape[-2:])
                o = np.stack([ns_ref(x) for x in mats]).reshape(u.shape)
                upd = o * math.sqrt(max(u.shape[-2:])) * self.rms
                self.w[k] = self.w[k] * (1 - lr * self.muon_wd) - lr * upd
            else:
                self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
                self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
                mh = self.m[k] / (1 - self.b1 ** self.t)
                vh = self.v[k] / (1 - self.b2 ** self.t)
                self.w[k] = self.w[k] * (1 - lr * self.adam_wd) - lr * mh / (np.sqrt(vh) + self.eps)
        return lr


# ------------------------------------------------------------------------------------------------ fixtures
SHAPES = {  # name -> shape; groups come from param_groups.classify
    "layers.0.attn.wq_b.weight": (24, 8),            # tall: NS on the transpose
    "layers.0.attn.wo_b.weight": (8, 24),            # wide, same bucket shape class as wq_b's transpose
    "layers.0.ffn.experts.0.w1.weight": (6, 10),     # experts 0/1 share a bucket (stacked bmm)
    "layers.0.ffn.experts.1.w1.weight": (6, 10),
    "layers.0.ffn.experts.w2": (3, 10, 6),           # stacked [E, out, in]: each slice on its own
    "layers.0.hc_attn_fn": (6, 16),
    "embed.weight": (12, 8),
    "layers.0.attn_norm.weight": (8,),
    "layers.0.hc_attn_base": (6,),
    "layers.0.hc_attn_scale": (3,),
    "layers.0.attn.compressor.ape": (4, 8),
    "layers.0.ffn.gate.bias": (4,),                  # frozen (requires_grad=False)
}


SMALL = ("layers.0.attn.wq_b.weight", "layers.0.ffn.experts.0.w1.weight", "layers.0.attn_norm.weight",
         "layers.0.ffn.gate.bias")   # one of each kind, for the tests that compile two optimisers


def make_params(seed=0, dtype=None, names=None):
    import mindspore as ms
    from mindspore import Parameter, Tensor
    rng = np.random.default_rng(seed)
    out = []
    for name in names or SHAPES:
        shp = SHAPES[name]
        w = rng.normal(size=shp).astype(np.float32)
        p = Parameter(Tensor(w, dtype or ms.float32), name=name, requires_grad=not name.endswith("gate.bias"))
        out.append(p)
    return out


def random_grads(params, rng, scales=None):
    return [rng.normal(size=tuple(p.shape)).astype(np.float32) * (scales or {}).get(p.name, 1.0) for p in params]


# ------------------------------------------------------------------------------------------------ NS
def test_ns_coefficients_are_the_spec_hybrid():
    from ascend_v4.train.optim import NS_COEFFS
    assert NS_COEFFS == (NS8,) * 8 + (NS2,) * 2


def test_newton_schulz_matches_float64_reference(ms_graph):
    import mindspore as ms
    from ascend_v4.train.optim import newton_schulz

    @ms.jit
    def f(x):
        return newton_schulz(x)

    rng = np.random.default_rng(0)
    for shp in [(16, 48), (32, 32), (4, 64)]:
        g = rng.normal(size=(3,) + shp).astype(np.float32) * np.array([1e-3, 1.0, 50.0], np.float32)[:, None, None]
        out = f(ms.Tensor(g)).asnumpy()
        ref = np.stack([ns_ref(x) for x in g])
        np.testing.assert_allclose(out, ref, atol=2e-6, rtol=0)


def test_ns_reference_drives_singular_values_to_one():
    rng = np.random.default_rng(1)
    for shp in [(32, 96), (96, 32), (40, 40)]:
        g = rng.normal(size=shp)
        o = ns_ref(g)
        assert o.shape == shp
        s = np.linalg.svd(o, compute_uv=False)
        assert np.all(np.abs(s - 1) < 2e-3), (shp, s.min(), s.max())
        # the 8 fast steps alone leave them spread around 1 (≈0.68..1.13); the 2 (2,-1.5,0.5) steps settle them
        s8 = np.linalg.svd(ns_ref(g, (NS8,) * 8), compute_uv=False)
        assert s8.max() - s8.min() > 0.2
        # O is the polar factor U·Vᵀ of G (same singular vectors)
        u, _, vt = np.linalg.svd(g, full_matrices=False)
        np.testing.assert_allclose(o, u @ vt, atol=2e-3)
    # tall input = transpose of the wide result (the Gram matrix is always the small side)
    g = rng.normal(size=(48, 16))
    np.testing.assert_allclose(ns_ref(g), ns_ref(g.T).T, atol=1e-12)


# ------------------------------------------------------------------------------------------------ optimiser
def _close(a, ref, tol, msg):
    """|a − ref| <= tol · max(1, max|ref|): 1e-6 of the tensor's own scale (fp32 vs fp64)."""
    np.testing.assert_allclose(a, ref, atol=tol * max(1.0, float(np.abs(ref).max())), rtol=0, err_msg=msg)


def _check_against_ref(opt, params, ref, tol=1e-6):
    st = opt.state_dict()
    assert int(st["step"]) == ref.t
    for p in params:
        k = p.name
        grp = ref.groups[k]
        _close(p.asnumpy().astype(np.float64), ref.w[k], tol, k)
        if grp == "muon":
            _close(st["muon_m." + k], ref.m[k], tol, k)
            assert "adam_m." + k not in st
        elif grp == "adamw":
            _close(st["adam_m." + k], ref.m[k], tol, k)
            _close(st["adam_v." + k], ref.v[k], tol, k)
            assert "muon_m." + k not in st
        else:
            assert not any(s.endswith("." + k) for s in st)


def test_muon_and_adamw_steps_match_numpy(ms_graph):
    import mindspore as ms
    from ascend_v4.train.optim import MuonAdamW
    from ascend_v4.train.param_groups import classify_param
    from ascend_v4.train.schedule import Schedule

    sched = Schedule(peak_lr=0.02, total_steps=10, warmup_steps=2, min_lr=0.002)
    params = make_params()
    groups = {p.name: classify_param(p)[0] for p in params}
    assert [k for k, g in groups.items() if g == "frozen"] == ["layers.0.ffn.gate.bias"]
    ref = RefMuonAdamW({p.name: p.asnumpy() for p in params}, groups, sched.lr_at)
    opt = MuonAdamW(params, sched)
    assert [p.name for p in opt.parameters] == [p.name for p in params if groups[p.name] != "frozen"]
    frozen_before = params[-1].asnumpy().copy()
    rng = np.random.default_rng(2)
    # expert 1's gradient is 1000x expert 0's: each is normalised on its own, so both get RMS-0.18 updates
    scales = {"layers.0.ffn.experts.1.w1.weight": 1e3, "layers.0.attn_norm.weight": 1e-6}
    for step in range(1, 4):
        g = random_grads(params, rng, scales)
        if step == 2:   # full-list order, the frozen entry's gradient is ignored
            lr = opt(tuple(ms.Tensor(x) for x in g))
        else:
            lr = opt(tuple(ms.Tensor(x) for x, p in zip(g, params) if p.requires_grad))
        lr_ref = ref.step({p.name: x for p, x in zip(params, g)})
        assert abs(float(lr.asnumpy()) - lr_ref) < 1e-9
        _check_against_ref(opt, params, ref)
    np.testing.assert_array_equal(params[-1].asnumpy(), frozen_before)


@pytest.mark.slow      # compiles two optimisers: 59 s on the loaded shared host; in .ci/run's slower proofs
def test_fused_cpu_kernels_equal_the_graph_ops_bitwise(ms_graph):
    """The in-place C++ update (ops/muon/cpu/optim_fused.cc) against the graph-op form on the same parameters,
    gradients and clip scale: weights and every state tensor identical bit for bit, three steps."""
    import mindspore as ms
    from ascend_v4.ops.muon import cpp
    from ascend_v4.train.optim import MuonAdamW
    from ascend_v4.train.schedule import Schedule
    if not cpp.fused_available():
        pytest.skip("ops/muon C++ library not built (python ops/build.py muon)")
    sched = Schedule(peak_lr=0.02, total_steps=10, warmup_steps=2, min_lr=0.002)
    pa, pb = make_params(), make_params()
    fused, plain = MuonAdamW(pa, sched), MuonAdamW(pb, sched, fused=False)
    assert fused.fused and not plain.fused
    rng = np.random.default_rng(5)
    for step, scale in ((1, 1.0), (2, 0.37), (3, 1e-3)):
        g = [ms.Tensor(x) for x, p in zip(random_grads(pa, rng), pa) if p.requires_grad]
        s = ms.Tensor(np.float32(scale))
        la, lb = fused(tuple(g), s), plain(tuple(g), s)
        assert float(la.asnumpy()) == float(lb.asnumpy())
        for a, b in zip(pa, pb):
            np.testing.assert_array_equal(a.asnumpy(), b.asnumpy(), err_msg=f"{a.name} step {step}")
        sa, sb = fused.state_dict(), plain.state_dict()
        assert sorted(sa) == sorted(sb)
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=f"{k} step {step}")
    # the scale really reached the gradients: a step without it moves the weights differently
    assert not np.array_equal(pa[0].asnumpy(), make_params()[0].asnumpy())


def test_fused_update_writes_parameters_read_at_two_side_effect_states(ms_graph):
    """The fused kernels write their Parameters in place. A train step that reads a weight at two side-effect
    states (here the forward reads it and an assign writes it before the update; the expert-parallel train step
    splits its reads the same way) gets each read as a TensorMove copy from MindSpore: a kernel not declaring its
    writes then updated the copy and the weight never moved (the ep2 msrun proofs left the first update out). The
    kernels declare their written inputs, so weights and state follow the float64 reference over two steps."""
    import mindspore as ms
    from mindspore import nn, ops, ParameterTuple
    from ascend_v4.train.optim import MuonAdamW
    from ascend_v4.train.param_groups import classify_param

    params = make_params(seed=7, names=SMALL)
    moved = [p for p in params if p.requires_grad]
    opt = MuonAdamW(params, 0.01)
    if not opt.fused:
        pytest.skip("ops/muon C++ library not built (python ops/build.py muon)")

    class Cube(nn.Cell):                        # loss = sum(w^3): gradient 3 w^2
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.ws = ParameterTuple(moved)

        def construct(self):
            t = ops.zeros((), ms.float32)
            for w in self.ws:
                t = t + ops.sum(w * w * w)
            return t

    grad_fn = ms.value_and_grad(Cube(), None, opt.parameters)
    first = moved[0]

    @ms.jit
    def step(one):
        loss, grads = grad_fn()
        ops.assign(first, first * one)          # one = 1: the value stays, the write splits the reads
        return opt(grads, None, loss)

    ref = RefMuonAdamW({p.name: p.asnumpy() for p in params}, {p.name: classify_param(p)[0] for p in params},
                       lambda t: 0.01)
    for _ in range(2):
        ref.step({p.name: 3.0 * p.asnumpy().astype(np.float64) ** 2 for p in params})
        step(ms.Tensor(np.float32(1.0)))
        _check_against_ref(opt, params, ref)


def test_clip_scale_is_the_clip_of_clip_by_global_norm(ms_graph):
    import mindspore as ms
    from ascend_v4.train.optim import clip_by_global_norm, clip_scale
    rng = np.random.default_rng(3)
    g = tuple(ms.Tensor(rng.normal(size=s).astype(np.float32) * 3) for s in ((7, 5), (11,), (2, 3, 4)))

    @ms.jit
    def f(gs):
        scale, norm = clip_scale(gs, 1.0)
        clipped, norm2 = clip_by_global_norm(gs, 1.0)
        return scale, norm, clipped[0], norm2

    scale, norm, c0, norm2 = f(g)
    ref = math.sqrt(sum(float((x.asnumpy().astype(np.float64) ** 2).sum()) for x in g))
    assert abs(float(norm.asnumpy()) - ref) <= 2e-7 * ref
    assert abs(float(norm.asnumpy()) - float(norm2.asnumpy())) <= 2e-7 * ref
    np.testing.assert_allclose(g[0].asnumpy() * float(scale.asnumpy()), c0.asnumpy(), rtol=1e-6)


def test_muon_update_rms_is_0_18_and_experts_are_independent(ms_graph):
    import mindspore as ms
    from mindspore import Parameter, Tensor
    from ascend_v4.train.optim import MuonAdamW

    names = [f"layers.0.ffn.experts.{e}.w1.weight" for e in range(3)] + ["layers.0.attn.wq_b.weight"]
    shapes = [(16, 48)] * 3 + [(64, 16)]

    def run(expert0_scale):
        ps = [Parameter(Tensor(np.zeros(s, np.float32)), name=n) for n, s in zip(names, shapes)]
        opt = MuonAdamW(ps, 1.0, muon_weight_decay=0.0)
        g = [np.random.default_rng(4 + i).normal(size=s).astype(np.float32) for i, s in enumerate(shapes)]
        g[0] = g[0] * expert0_scale
        opt(tuple(Tensor(x) for x in g))
        return [-p.asnumpy() for p in ps]           # lr = 1, W0 = 0  ->  W1 = -update

    a, b = run(1.0), run(1e4)
    for u in a:
        assert abs(np.sqrt(np.mean(u.astype(np.float64) ** 2)) - 0.18) < 0.18 * 2e-3
    np.testing.assert_allclose(a[0], b[0], atol=2e-6)       # scale-invariant (own Frobenius norm)
    for x, y in zip(a[1:], b[1:]):                           # neighbours in the same bmm batch unaffected
        np.testing.assert_array_equal(x, y)


def test_half_precision_params_get_fp32_masters(ms_graph):
    # Ascend keeps bf16 params; the CPU Assign kernel has no bf16 (it has fp16), so the same non-fp32 path is
    # exercised here with float16 parameters and gradients.
    import mindspore as ms
    from mindspore import Tensor
    from ascend_v4.train.optim import MuonAdamW
    from ascend_v4.train.param_groups import classify_param

    half = ms.float16
    params = make_params(seed=5, dtype=half, names=SMALL)
    groups = {p.name: classify_param(p)[0] for p in params}
    start = {p.name: p.asnumpy().astype(np.float32) for p in params}
    opt = MuonAdamW(params, 0.01)
    st = opt.state_dict()
    masters = sorted(k for k in st if k.startswith("master."))
    assert masters == sorted("master." + k for k, g in groups.items() if g != "frozen")
    ref = RefMuonAdamW(start, groups, lambda t: 0.01)
    rng = np.random.default_rng(6)
    for _ in range(2):
        g = random_grads(params, rng)
        opt(tuple(Tensor(x, half) for x, p in zip(g, params) if p.requires_grad))
        # the reference sees the rounded gradients the optimiser received
        ref.step({p.name: x.astype(np.float16).astype(np.float32) for p, x in zip(params, g)})
    st = opt.state_dict()
    for p in params:
        if groups[p.name] == "frozen":
            continue
        m = st["master." + p.name]
        assert m.dtype == np.float32
        np.testing.assert_allclose(m, ref.w[p.name], atol=2e-6, err_msg=p.name)
        assert p.dtype == half
        np.testing.assert_array_equal(p.asnumpy(), m.astype(np.float16))


def test_state_round_trip_by_name(ms_graph, tmp_path):
    import mindspore as ms
    from mindspore import Tensor
    from ascend_v4.train.optim import MuonAdamW

    rng = np.random.default_rng(7)
    pa = make_params(seed=8, names=SMALL)
    opt_a = MuonAdamW(pa, 0.01)
    for _ in range(2):
        opt_a(tuple(Tensor(x) for x, p in zip(random_grads(pa, rng), pa) if p.requires_grad))
    names = sorted(opt_a.state_parameters())
    assert names[-1] == "step" and all(n.split(".", 1)[0] in ("muon_m", "adam_m", "adam_v") for n in names[:-1])
    # through a checkpoint file (list of {'name', 'data'}: MindSpore's safetensors checkpoint form)
    f = str(tmp_path / "opt.safetensors")
    ms.save_checkpoint([{"name": k, "data": p} for k, p in opt_a.state_parameters().items()], f,
                       format="safetensors")
    loaded = ms.load_checkpoint(f, format="safetensors")
    pb = make_params(seed=8, names=SMALL)
    for a, b in zip(pa, pb):
        b.set_data(Tensor(a.asnumpy()))
    opt_b = MuonAdamW(pb, 0.01)
    assert opt_b.load_state_dict(loaded) == []
    g = tuple(Tensor(x) for x, p in zip(random_grads(pa, rng), pa) if p.requires_grad)
    opt_a(g)
    opt_b(g)
    for a, b in zip(pa, pb):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
    with pytest.raises(KeyError):
        opt_b.load_state_dict({"step": np.int32(1)})


def test_clip_by_global_norm_matches_numpy(ms_graph):
    import mindspore as ms
    from ascend_v4.train.optim import clip_by_global_norm

    @ms.jit
    def clip(a, b, c, max_norm):
        return clip_by_global_norm((a, b, c), max_norm)

    rng = np.random.default_rng(9)
    g = [rng.normal(size=s).astype(np.float32) for s in [(5, 7), (3,), (2, 3, 4)]]
    norm = np.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g))
    for max_norm in (1.0, 1e3):
        out, n = clip(*(ms.Tensor(x) for x in g), ms.Tensor(max_norm, ms.float32))
        assert abs(float(n.asnumpy()) - norm) < 1e-5 * norm
        scale = min(1.0, max_norm / (norm + 1e-6))
        for o, x in zip(out, g):
            np.testing.assert_allclose(o.asnumpy(), x * scale, rtol=1e-6, atol=1e-7)
        if max_norm == 1.0:
            assert abs(np.sqrt(sum(np.sum(o.asnumpy().astype(np.float64) ** 2) for o in out)) - 1.0) < 1e-5


def test_buckets_group_equal_shapes_and_respect_the_cap():
    from ascend_v4.train.optim import _buckets
    shapes = [(4, 8), (8, 4), (4, 8), (4, 8), (2, 4, 8)]
    assert _buckets(shapes, 1 << 20) == ((0, 2, 3), (1,), (4,))
    assert _buckets(shapes, 64) == ((0, 2), (3,), (1,), (4,))
    assert _buckets(shapes, 1) == ((0,), (2,), (3,), (1,), (4,))


def test_rejects_bad_groups(ms_graph):
    import mindspore as ms
    from mindspore import Parameter, Tensor
    from ascend_v4.train.optim import MuonAdamW

    p = Parameter(Tensor(np.zeros((2, 2, 2, 2), np.float32)), name="x.weight")
    with pytest.raises(ValueError, match="Muon needs"):
        MuonAdamW([p], 0.1, classify=lambda q: ("muon", "test"))
    with pytest.raises(ValueError, match="unknown group"):
        MuonAdamW([p], 0.1, classify=lambda q: ("sgd", "test"))


@pytest.mark.slow
def test_every_tiny_transformer_parameter_steps_like_numpy(ms_graph, tiny_cfg):
    """The real parameter set (258 tensors, 8 NS buckets) through two graph-mode steps; ~25 s of compile."""
    from mindspore import Tensor
    from ascend_v4.model import Transformer
    from ascend_v4.train.optim import MuonAdamW
    from ascend_v4.train.param_groups import classify_param
    from ascend_v4.train.schedule import Schedule

    model = Transformer(tiny_cfg, max_seq_len=32)
    rng = np.random.default_rng(10)
    params = list(model.get_parameters())
    for p in params:
        if p.requires_grad:
            p.set_data(Tensor(rng.normal(size=tuple(p.shape)).astype(np.float32)))
    groups = {p.name: classify_param(p)[0] for p in params}
    sched = Schedule(peak_lr=0.01, total_steps=100, warmup_steps=1)
    ref = RefMuonAdamW({p.name: p.asnumpy() for p in params if groups[p.name] != "frozen"}, groups, sched.lr_at)
    opt = MuonAdamW(params, sched)
    assert len(opt.parameters) == sum(g != "frozen" for g in groups.values())
    for _ in range(2):
        g = {p.name: rng.normal(size=tuple(p.shape)).astype(np.float32) for p in opt.parameters}
        opt(tuple(Tensor(g[p.name]) for p in opt.parameters))
        ref.step(g)
    _check_against_ref(opt, list(opt.parameters), ref)
