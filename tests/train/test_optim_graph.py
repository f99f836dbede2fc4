"""MuonAdamW inside a compiled train step: GRAPH_MODE + ms.jit(value_and_grad + clip + opt).

The default test uses a small Cell whose parameters carry model names (Muon matrices incl. router and two
experts, AdamW embedding/head/norm/mHC base, a frozen router bias); the `slow` one trains the tiny Transformer.
"""
import numpy as np
import pytest


def _small_net():
    import mindspore as ms
    from mindspore import nn, ops, Parameter, Tensor

    rng = np.random.default_rng(0)

    def p(name, shape, scale=0.3, init=None, grad=True):
        w = rng.normal(size=shape) * scale if init is None else np.full(shape, init)
        return Parameter(Tensor(w.astype(np.float32)), name=name, requires_grad=grad)

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            V, D, I = 32, 16, 24
            self.embed = p("embed.weight", (V, D), 1.0)
            self.norm_w = p("layers.0.attn_norm.weight", (D,), init=1.0)
            self.base = p("layers.0.hc_attn_base", (D,), init=0.0)
            self.wq = p("layers.0.attn.wq_a.weight", (D, D))
            self.gate = p("layers.0.ffn.gate.weight", (2, D))
            self.gate_bias = p("layers.0.ffn.gate.bias", (2,), init=0.5, grad=False)
            self.e0_w1 = p("layers.0.ffn.experts.0.w1.weight", (I, D))
            self.e0_w2 = p("layers.0.ffn.experts.0.w2.weight", (D, I))
            self.e1_w1 = p("layers.0.ffn.experts.1.w1.weight", (I, D))
            self.e1_w2 = p("layers.0.ffn.experts.1.w2.weight", (D, I))
            self.head = p("head.weight", (V, D))

        def construct(self, ids, tgt):
            x = ops.gather(self.embed, ids, 0)
            x = x * ops.rsqrt(ops.mean(x * x, -1, True) + 1e-6) * self.norm_w + self.base
            x = x + ops.tanh(ops.matmul(x, self.wq.T))
            route = ops.softmax(ops.matmul(x, self.gate.T) + self.gate_bias, -1)
            y0 = ops.matmul(ops.relu(ops.matmul(x, self.e0_w1.T)), self.e0_w2.T)
            y1 = ops.matmul(ops.relu(ops.matmul(x, self.e1_w1.T)), self.e1_w2.T)
            y = route[..., 0:1] * y0 + route[..., 1:2] * y1
            logits = ops.matmul(x + y, self.head.T)
            return ops.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))

    return Net()


def test_graph_mode_train_step_lowers_loss_and_updates_state(ms_graph):
    import mindspore as ms
    from ascend_v4.train.optim import MuonAdamW, clip_by_global_norm
    from ascend_v4.train.param_groups import split
    from ascend_v4.train.schedule import Schedule

    assert ms.get_context("mode") == ms.GRAPH_MODE
    net = _small_net()
    groups = split(net)
    assert [p.name for p in groups["frozen"]] == ["layers.0.ffn.gate.bias"]
    assert len(groups["muon"]) == 6 and len(groups["adamw"]) == 4
    sched = Schedule(peak_lr=0.02, total_steps=30, warmup_steps=3, min_lr=0.002)
    opt = MuonAdamW(net.trainable_params(), sched)
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    grad_fn = ms.value_and_grad(net, None, opt.parameters)

    @ms.jit
    def train_step(ids, tgt):
        loss, grads = grad_fn(ids, tgt)
        grads, gnorm = clip_by_global_norm(grads, 1.0)
        lr = opt(grads)
        return loss, gnorm, lr

    rng = np.random.default_rng(1)
    ids = rng.integers(0, 32, (4, 16)).astype(np.int32)
    tgt = (ids * 7 + 3) % 32                                  # a learnable token -> token map
    ids, tgt = ms.Tensor(ids), ms.Tensor(tgt.astype(np.int32))
    losses, lrs = [], []
    for _ in range(12):
        loss, gnorm, lr = train_step(ids, tgt)
        losses.append(float(loss.asnumpy()))
        lrs.append(float(lr.asnumpy()))
        assert np.isfinite(float(gnorm.asnumpy()))
    assert losses[-1] < 0.7 * losses[0], losses
    np.testing.assert_allclose(lrs, sched.lr_at(np.arange(1, 13)), rtol=1e-6)
    st = opt.state_dict()
    assert int(st["step"]) == 12
    for p in opt.parameters:
        assert not np.allclose(p.asnumpy(), before[p.name]), p.name
    for k, v in st.items():
        if k != "step":
            assert np.abs(v).max() > 0, k
    assert sorted(k.split(".", 1)[1] for k in st if k.startswith("muon_m.")) == sorted(p.name for p in groups["muon"])
    assert sorted(k.split(".", 1)[1] for k in st if k.startswith("adam_v.")) == sorted(p.name for p in groups["adamw"])
    np.testing.assert_array_equal(net.gate_bias.asnumpy(), before["layers.0.ffn.gate.bias"])


@pytest.mark.slow
def test_tiny_transformer_trains_in_graph_mode(ms_graph, tiny_cfg, monkeypatch):
    """Full tiny model (4 layers, CSA/HCA/SWA, hash + routed MoE, mHC); ~1 min, mostly compiling the backward."""
    import mindspore as ms
    from mindspore import nn, ops
    from ascend_v4.checkpoint import random_weights
    from ascend_v4.model import Transformer
    from ascend_v4.weights import load_into
    from ascend_v4.train.optim import MuonAdamW, clip_by_global_norm

    monkeypatch.setenv("ASCEND_V4_BACKENDS", "*=composite")   # the pure-MindSpore ops (with autodiff)
    model = Transformer(tiny_cfg, max_seq_len=32, with_mtp=False)
    load_into(model, random_weights(tiny_cfg, seed=1), strict=False)

    class Loss(nn.Cell):
        def __init__(self, m):
            super().__init__(auto_prefix=False)
            self.m = m

        def construct(self, ids, tgt):
            logits = self.m(ids)
            return ops.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))

    net = Loss(model)
    opt = MuonAdamW(model.trainable_params(), 3e-3)
    grad_fn = ms.value_and_grad(net, None, opt.parameters)

    @ms.jit
    def train_step(ids, tgt):
        loss, grads = grad_fn(ids, tgt)
        grads, _ = clip_by_global_norm(grads, 1.0)
        opt(grads)
        return loss

    ids = np.random.default_rng(0).integers(0, tiny_cfg.vocab_size, (2, 32)).astype(np.int32)
    tgt = np.roll(ids, -1, 1)
    losses = [float(train_step(ms.Tensor(ids), ms.Tensor(tgt)).asnumpy()) for _ in range(4)]
    assert losses[-1] < losses[0] - 1.0, losses
    assert int(opt.step.asnumpy()) == 4
