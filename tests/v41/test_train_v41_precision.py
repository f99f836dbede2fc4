"""DeepSeek-V4.1 training under the mixed-precision policy and activation recompute (ascend_v4/precision.py,
train `precision` / `recompute`), on v4.1-tiny:

* The parameters the bf16 emulation keeps bf16-representable are exactly those a bf16 V4.1 model (with the DSpark
  drafter) builds in bf16.
* The pipelined mHC mixes stay a float32 island under bf16-emulated (and the check fails when they are rounded).
* Recompute: Cell.recompute() on every V4.1 block leaves the loss bit-identical and every gradient (parameters and
  gathered Engram rows) equal up to float32 summation order, on a batch with two packed documents.
* bf16-emulated vs fp32 (slow): the whole V4.1 loss (lm + DSpark draft + confidence + balance) and its gradient
  w.r.t. every parameter and the Engram rows, same bf16-representable weights; bounds and measured numbers in the
  test's docstring.
"""
import numpy as np
import pytest

from ascend_v4.checkpoint.release_v41 import random_weights_v41
from ascend_v4.config import V41_PRESETS
from helpers import mhc_mix_inputs, rel_l2_total

CFG = V41_PRESETS["v4.1-tiny"].validate()
S = 20
U = 2.0 ** -8            # bf16 unit roundoff


def test_emulated_storage_is_what_the_bf16_v41_model_builds(ms_graph, policy):
    import mindspore as ms
    from ascend_v4.model import Transformer
    m = Transformer(CFG, max_seq_len=16, param_dtype=ms.bfloat16, with_dspark=True)
    rows = [(p.name, p.dtype == ms.bfloat16, policy.stored_bf16(p.name)) for p in m.get_parameters()
            if p.dtype in (ms.bfloat16, ms.float32)]
    assert any("engram.q_weight" in r[0] and r[1] for r in rows) and any(r[0].startswith("mtp.") for r in rows)
    assert [r[0] for r in rows if r[1] != r[2]] == []


def test_v41_pipelined_mhc_mixes_stay_an_fp32_island(ms_graph, policy):
    """Block._hc_mixes (pre, post, comb of V4.1's pipelined mHC, rms_norm_eps 1e-20) under bf16-emulated still
    match the float64 reference at float32 accuracy; rounded as bf16 (island dropped) they miss by ~bf16 ulps."""
    import mindspore as ms
    from ascend_v4.model import Block
    from ops.mhc.reference import hc_mixes
    policy.set_policy("bf16-emulated")
    rng = np.random.default_rng(1)
    blk = Block(2, CFG)
    fn, scale, base, h = mhc_mix_inputs(CFG, rng, policy.round_bf16_np)
    ref = hc_mixes(h.astype(np.float64), fn.astype(np.float64), scale.astype(np.float64), base.astype(np.float64),
                   blk.iters, blk.hc_eps, blk.norm_eps)
    args = (ms.Tensor(h), ms.Tensor(fn), ms.Tensor(scale), ms.Tensor(base))

    def mixes(x, f, sc, b):
        return blk._hc_mixes(x, f, sc, b)

    def errs(dropped):
        with policy.drop_islands(dropped):
            got = ms.jit(mixes)(*args)
        return [np.abs(g.asnumpy() - r).max() / np.abs(r).max() for g, r in zip(got, ref)]

    kept = errs(())
    assert max(kept) < 5e-6, kept
    dropped = errs(("mhc",))
    assert min(dropped) > 50 * 5e-6, dropped


def _batch(seed=7):
    from ascend_v4.train.v41 import dspark_batch
    ids = np.random.default_rng(seed).integers(0, CFG.engram_compressed_vocab_size, (2, S + 1))
    ids = np.where(ids == CFG.image_token_id, 0, ids)
    seg = np.zeros((2, S), np.int32)
    seg[0, 12:] = 1
    tg = ids[:, 1:]
    lm = np.ones((2, S), np.float32)
    lm[0, 11] = 0.0                                   # its target is document 1's first token
    o, lab, dm = dspark_batch(tg, lm, seg, CFG.dspark_block_size)
    return ids[:, :S], tg, lm, o, lab, dm


def _loss_and_grads(weights, tables, batch, *, with_dspark, recompute=False, emulate=False, keep=None):
    """-> (loss terms, {name: gradient} incl. 'engram_rows', (model, fn) for reuse with other weights)."""
    import mindspore as ms
    from ascend_v4 import precision
    from ascend_v4.model import Transformer
    from ascend_v4.train.loop import apply_recompute
    from ascend_v4.train.v41 import EngramSparseAdamW, V41Loss
    from ascend_v4.weights import load_into
    if keep is None:
        precision.set_policy("bf16-emulated" if emulate else "fp32")
        model = Transformer(CFG, max_seq_len=S, with_dspark=with_dspark)
        model.set_train(True)
        if recompute:
            assert apply_recompute(model) == CFG.n_layers
        net = V41Loss(model, 1e-2, 0.1)
        params = list(model.trainable_params())
        fn = ms.jit(ms.value_and_grad(net, 1, params, has_aux=True))
    else:
        model, fn, params = keep
    load_into(model, weights, strict=False)
    engram = EngramSparseAdamW(CFG, tables)
    ids, tg, lm, o, lab, dm = batch
    rows = np.stack(engram.rows(engram.hash(ids)))
    t = ms.Tensor
    out, (g_rows, grads) = fn(t(ids.astype(np.int32)), t(rows), t(tg.astype(np.int32)), t(lm), t(o), t(lab),
                              t(dm), t(np.float32(0.3)))
    g = {p.name: x.asnumpy() for p, x in zip(params, grads)}
    g["engram_rows"] = g_rows.asnumpy()
    return [float(x.asnumpy()) for x in out[:5]], g, (model, fn, params)


def _weights(seed=3):
    from ascend_v4.serve.engram import split_engram_tables
    w = random_weights_v41(CFG, seed=seed)
    for n in w:
        if n.endswith("ffn.gate.bias"):
            w[n] = np.zeros_like(w[n])
    rest, tables = split_engram_tables(CFG, w)
    return rest, [np.asarray(t, np.float32) for t in tables.tables]


@pytest.mark.slow     # two backward compiles of the 10-layer model: 374 s, > 900 s on a heavily loaded host
@pytest.mark.timeout(3000)
def test_v41_recompute_leaves_loss_bit_identical_and_gradients_within_float32_noise(ms_graph, policy):
    w, tables = _weights()
    batch = _batch()
    l0, g0, _ = _loss_and_grads(w, tables, batch, with_dspark=False)
    l1, g1, _ = _loss_and_grads(w, tables, batch, with_dspark=False, recompute=True)
    assert np.isfinite(l0[0]) and l1 == l0                  # the forward is bit-identical
    assert g0.keys() == g1.keys() and len(g0) > 50
    nonzero, same, worst = 0, 0, 0.0
    for k in g0:
        # gradients: equal up to (presumably) float32 summation order: measured 48 of 472 tensors bit-identical,
        # the others within 4.6e-6 of their largest value (a V4 block's recompute is bit-identical)
        err = float(np.abs(g1[k] - g0[k]).max() / max(np.abs(g0[k]).max(), 1e-30))
        assert err < 2e-5, (k, err)
        worst, same = max(worst, err), same + bool(np.array_equal(g1[k], g0[k]))
        nonzero += bool(np.any(g0[k]))
    print(f"V4.1 recompute: {same}/{len(g0)} gradients bit-identical, worst relative difference {worst:.1e}")
    assert nonzero > 0.8 * len(g0), (nonzero, len(g0))


@pytest.mark.slow     # two backward compiles of the 10-layer model + 3 DSpark stages
@pytest.mark.timeout(3000)
def test_v41_bf16_emulated_loss_and_grads_within_bound_of_fp32(ms_graph, policy):
    """Same bf16-representable weights and Engram rows, fp32 vs bf16-emulated, with the DSpark drafter (one packed
    2x20 batch, random weights). Measured: total loss relative difference 9.4e-4 = 0.24 u (lm 0.21 u, draft 0.06 u,
    confidence 11 u, not bounded: its label "row i's argmax equals its label" is discrete and the untrained
    drafter's logits are near-uniform, so rounding likely flips some labels); global gradient relative L2 difference (every parameter and the
    Engram rows) 0.425. Bounds: each smooth loss term within 2 u (as V4), the gradient within 0.55 (1.3x the
    measured value; V4's tiny model measures 0.30, tests/train/test_precision.py).
    The fp32 run's response to a bf16-sized relative noise (u/sqrt(3) rms) on its bf16-stored weights and rows is
    printed beside it (measured: loss 0.04 u, gradient 0.048): unlike V4's (where bf16 stays within 3x of it,
    measured 1.8x) the V4.1 emulation moves the loss ~6x and the gradient ~9x more than that weight noise; which
    rounding points dominate is not isolated (docs/training.md)."""
    from ascend_v4 import precision
    w, tables = _weights()
    w = {k: (precision.round_bf16_np(v) if precision.stored_bf16(k) and v.dtype == np.float32 else v)
         for k, v in w.items()}
    tables = [precision.round_bf16_np(t) for t in tables]
    prng = np.random.default_rng(9)
    noise = lambda v: (v * (1 + U / np.sqrt(3) * prng.standard_normal(v.shape))).astype(np.float32)  # noqa: E731
    noisy = {k: noise(v) if v.dtype == np.float32 and precision.stored_bf16(k) else v for k, v in w.items()}
    noisy_tables = [noise(t) for t in tables]
    batch = _batch()
    l32, g32, keep = _loss_and_grads(w, tables, batch, with_dspark=True)
    lnz, gnz, _ = _loss_and_grads(noisy, noisy_tables, batch, with_dspark=True, keep=keep)
    l16, g16, _ = _loss_and_grads(w, tables, batch, with_dspark=True, emulate=True)
    assert all(np.isfinite(l16))
    rel = [abs(a - b) / abs(b) for a, b in zip(l16, l32)]
    rel_nz = [abs(a - b) / abs(b) for a, b in zip(lnz, l32)]
    rel_grad, sens = rel_l2_total(g16, g32), rel_l2_total(gnz, g32)
    print(f"V4.1 bf16-emulated vs fp32: loss rel {rel[0]:.2e} ({rel[0] / U:.2f} u), lm {rel[1] / U:.2f} u, "
          f"draft {rel[2] / U:.2f} u, confidence {rel[3] / U:.2f} u; grad rel L2 {rel_grad:.3f}; fp32 with "
          f"bf16-sized noise: loss {rel_nz[0] / U:.2f} u, grad {sens:.3f}")
    assert rel[0] > 0 and rel_grad > 0 and sens > 0          # the emulation does round; the noise does move it
    assert rel[0] < 2 * U and rel[1] < 2 * U and rel[2] < 2 * U, rel
    assert rel_grad < 0.55, (rel_grad, sens)
