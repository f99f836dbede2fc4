"""Training losses against NumPy float64 references, and the whole tiny model's gradient against finite
differences of the float64 golden model (directional derivatives)."""
import numpy as np
import pytest

from ascend_v4.numpy_model import NumpyV4


def _ce_np(logits, targets, mask):
    lg = logits.astype(np.float64)
    m = lg.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(lg - m).sum(-1, keepdims=True)))[..., 0]
    nll = lse - np.take_along_axis(lg, targets[..., None], -1)[..., 0]
    return float((nll * mask).sum() / max(mask.sum(), 1))


def _balance_np(aff, ids, E, K, B, mask):
    S = aff.shape[0] // B
    tot = 0.0
    for b in range(B):
        rows = slice(b * S, (b + 1) * S)
        m = mask[b].astype(np.float64)
        n = max(m.sum(), 1.0)
        p = aff[rows] / aff[rows].sum(-1, keepdims=True)
        P = (p * m[:, None]).sum(0) / n
        f = np.zeros(E)
        for t in range(S):
            for e in ids[rows][t]:
                f[e] += m[t]
        tot += float((f * E / (K * n) * P).sum())
    return tot / B


def test_masked_ce_and_balance_match_numpy(ms_graph, rng):
    import mindspore as ms
    from ascend_v4.train.losses import masked_ce, seq_balance, expert_load
    B, S, V, E, K = 2, 5, 7, 6, 2
    logits = rng.standard_normal((B, S, V)).astype(np.float32)
    tg = rng.integers(0, V, (B, S)).astype(np.int32)
    mask = (rng.random((B, S)) > 0.3).astype(np.float32)
    got = float(ms.jit(masked_ce)(ms.Tensor(logits), ms.Tensor(tg), ms.Tensor(mask)).asnumpy())
    assert got == pytest.approx(_ce_np(logits, tg, mask), rel=1e-5)
    aff = rng.random((B * S, E)).astype(np.float32) + 0.1
    ids = np.stack([rng.permutation(E)[:K] for _ in range(B * S)]).astype(np.int32)
    got = float(seq_balance(ms.Tensor(aff), ms.Tensor(ids), E, K, B, ms.Tensor(mask)).asnumpy())
    assert got == pytest.approx(_balance_np(aff, ids, E, K, B, mask), rel=1e-5)
    load = expert_load(ms.Tensor(ids), E, ms.Tensor(mask)).asnumpy()
    want = np.zeros(E)
    for t in range(B * S):
        want[ids[t]] += mask.reshape(-1)[t]
    np.testing.assert_allclose(load, want)
    # perfectly uniform routing gives the minimum f·P = 1 per sequence
    aff_u = np.ones((S * 1, E), np.float32)
    ids_u = np.array([[t % E, (t + 1) % E] for t in range(S)], np.int32)
    uni = float(seq_balance(ms.Tensor(aff_u), ms.Tensor(ids_u), E, K, 1, ms.Tensor(np.ones((1, S), np.float32))).asnumpy())
    assert uni == pytest.approx(1.0, rel=1e-6) if S % E == 0 else uni > 0


@pytest.fixture(scope="module")
def loss_net(ms_graph, tiny_cfg, tiny_weights):
    from ascend_v4.model import Transformer
    from ascend_v4.train.losses import V4Loss
    from ascend_v4.weights import load_into
    m = Transformer(tiny_cfg, max_seq_len=32, with_mtp=True)
    load_into(m, tiny_weights)
    return V4Loss(m, balance_alpha=1e-4)


def _numpy_loss(cfg, w, ids, tg, mask, mtp_weight):
    out = NumpyV4(cfg, w).forward(ids, with_mtp=True)
    lm = _ce_np(out["logits"], tg, mask)
    mtp = _ce_np(out["mtp_logits"], tg[:, 1:], mask[:, 1:])
    return lm + mtp_weight * mtp, lm, mtp


def test_loss_net_matches_numpy_golden(loss_net, tiny_cfg, tiny_weights):
    import mindspore as ms
    rng = np.random.default_rng(5)
    ids = rng.integers(0, tiny_cfg.vocab_size, (2, 24))
    tg = rng.integers(0, tiny_cfg.vocab_size, (2, 24))
    seg = np.zeros((2, 24), np.int32)
    mask = np.ones((2, 24), np.float32)
    out = loss_net(ms.Tensor(ids.astype(np.int32)), ms.Tensor(tg.astype(np.int32)), ms.Tensor(seg),
                   ms.Tensor(mask), ms.Tensor(np.float32(0.3)))
    total, lm, mtp = _numpy_loss(tiny_cfg, tiny_weights, ids, tg, mask, 0.3)
    assert float(out[1].asnumpy()) == pytest.approx(lm, rel=1e-5)
    assert float(out[2].asnumpy()) == pytest.approx(mtp, rel=1e-5)
    assert float(out[0].asnumpy()) == pytest.approx(total + 1e-4 * float(out[3].asnumpy()), rel=1e-5)
    assert out[4].shape == (tiny_cfg.n_layers - tiny_cfg.n_hash_layers + 1, tiny_cfg.n_routed_experts)
    np.testing.assert_allclose(out[4].asnumpy().sum(-1)[:-1], 2 * 24 * tiny_cfg.n_activated_experts)


def test_whole_model_gradient_matches_finite_differences(loss_net, tiny_cfg, tiny_weights):
    """<autodiff grad, v> against (L(w + εv) − L(w − εv)) / 2ε of the float64 golden, for random directions v
    over every trainable float parameter at once (lm + MTP loss; top-k decisions don't flip at this ε)."""
    import mindspore as ms
    rng = np.random.default_rng(11)
    ids = rng.integers(0, tiny_cfg.vocab_size, (1, 20))
    tg = rng.integers(0, tiny_cfg.vocab_size, (1, 20))
    mask = np.ones((1, 20), np.float32)
    net = loss_net
    params = [p for p in net.model.trainable_params() if p.name in tiny_weights]
    args = (ms.Tensor(ids.astype(np.int32)), ms.Tensor(tg.astype(np.int32)), ms.Tensor(np.zeros((1, 20), np.int32)),
            ms.Tensor(mask), ms.Tensor(np.float32(0.3)))

    def lm_mtp(*a):
        out = net(*a)
        return out[1] + 0.3 * out[2]
    grads = ms.grad(lm_mtp, grad_position=None, weights=params)(*args)
    for trial in range(2):
        v = {p.name: rng.standard_normal(p.shape) for p in params}
        dot = sum(float(np.sum(g.asnumpy().astype(np.float64) * v[p.name])) for g, p in zip(grads, params))
        eps = 1e-5
        wp = {k: (a + eps * v[k] if k in v else a) for k, a in tiny_weights.items()}
        wm = {k: (a - eps * v[k] if k in v else a) for k, a in tiny_weights.items()}
        fd = (_numpy_loss(tiny_cfg, wp, ids, tg, mask, 0.3)[0] - _numpy_loss(tiny_cfg, wm, ids, tg, mask, 0.3)[0]) / (2 * eps)
        assert dot == pytest.approx(fd, rel=2e-3, abs=1e-4), (trial, dot, fd)
