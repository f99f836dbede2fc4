"""DeepSeek-V4.1 pipeline stages (ascend_v4/parallel.py v41_stage_starts, train/pipeline.py V41StageLoss /
V41PipelineTrainStep; docs/training.md, "DeepSeek-V4.1"), single process.

* where a V4.1 stage may start, derived by hand from the v4.1-tiny and v4.1-flash layouts (CSA-v2 sources, the
  candidate source, the DSpark target layers), the split chosen for each pp and the one-line refusal past it;
* which stage holds each release name (the embedding on the first and, with the drafter, the last stage);
* two stages composed by hand (stage 0 forward; stage 1 value-and-grad w.r.t. its input streams and FFN `pre`;
  stage 0 value-and-grad fed those gradients), each on two micro-batches of one row, give the whole model's loss
  terms, expert loads, parameter gradients (the embedding's as the sum of its two copies') and Engram row
  gradients. PyNative mode: no graph compile (the V4.1 value-and-grad graph takes minutes to compile here).

The msrun pp=2 (micro_batches 2) run against one process is tests/v41/test_msrun_v41.py (slow).
Tolerances: float32 against float32 in another summation order — losses 1e-5 relative, gradients 1e-4 of the
tensor's largest entry.
"""
import numpy as np
import pytest

from ascend_v4.config import V41_PRESETS
from ascend_v4.parallel import ParallelConfigError, ParallelContext, stages_holding, v41_stage_cuts, v41_stage_starts

CFG = V41_PRESETS["v4.1-tiny"].validate()
FLASH = V41_PRESETS["v4.1-flash"].validate()
S = 16


def test_v41_stage_cuts_by_hand():
    # v4.1-tiny: layers 0-1 window-only; 2-3 read source 2, 4-5 source 4; 6-9 source 6 (index sources 6, 8; 8
    # narrows within layer 6's candidates); DSpark targets 7-9. A stage may start at 1 or 2 (nothing before is
    # shared), 4 and 6 (a new source) - not at 3, 5 (kv of 2 / 4) nor 7-9 (kv of 6, candidates of 6, targets).
    assert v41_stage_cuts(CFG) == (1, 2, 4, 6)
    # v4.1-flash: window 0-1, ratio-2 runs from sources 2, 8, 14; one ratio-1 run 20-39 (kv and candidates of 20)
    assert v41_stage_cuts(FLASH) == (1, 2, 8, 14, 20)
    # the largest stage as small as possible, ties to the later stages smaller
    assert v41_stage_starts(CFG, 2) == (0, 6)            # 6 + 4 (4 + 6 also has 6 at most)
    assert v41_stage_starts(CFG, 3) == (0, 4, 6)         # 4 + 2 + 4
    assert v41_stage_starts(CFG, 5) == (0, 1, 2, 4, 6)
    assert v41_stage_starts(FLASH, 2) == (0, 20)
    assert v41_stage_starts(FLASH, 3) == (0, 14, 20)     # 14 + 6 + 20: the last 20 layers share layer 20's KV
    with pytest.raises(ParallelConfigError) as e:
        v41_stage_starts(FLASH, 7)
    msg = str(e.value)
    assert "\n" not in msg and "at most 6 pipeline stage" in msg and "set parallel.pp <= 6" in msg
    with pytest.raises(ParallelConfigError):
        ParallelContext.check(CFG, 1, 1, 1, 6)


def test_v41_stages_holding():
    assert stages_holding("layers.5.attn.wq_a.weight", CFG.n_layers, 2, True, CFG) == (0,)
    assert stages_holding("adam_m.layers.6.attn.compressor.wkv.weight", CFG.n_layers, 2, True, CFG) == (1,)
    assert stages_holding("mtp.2.markov_head.head.weight", CFG.n_layers, 2, True, CFG) == (1,)
    assert stages_holding("embed.weight", CFG.n_layers, 2, True, CFG) == (0, 1)
    assert stages_holding("head.weight", CFG.n_layers, 2, True, CFG) == (1,)


def _batch(B=2):
    rng = np.random.default_rng(11)
    ids = rng.integers(0, CFG.engram_compressed_vocab_size, (B, S + 1))
    ids = np.where(ids == CFG.image_token_id, 0, ids)
    mask = np.ones((B, S), np.float32)
    mask[1, 12:] = 0
    return ids[:, :S], ids[:, 1:], mask


@pytest.mark.slow     # PyNative forward + 5 backwards of v4.1-tiny: 130 s on the loaded 2-core host
def test_two_v41_stages_compose_to_the_whole_model():
    import mindspore as ms
    from ascend_v4.runtime import setup
    from ascend_v4.checkpoint.release_v41 import random_weights_v41
    from ascend_v4.model import Transformer
    from ascend_v4.serve.engram import split_engram_tables
    from ascend_v4.train.pipeline import V41StageLoss
    from ascend_v4.train.v41 import EngramSparseAdamW, V41Loss, dspark_batch
    from ascend_v4.weights import load_into

    setup("CPU", "graph")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    w = random_weights_v41(CFG, seed=4)
    rest, tables = split_engram_tables(CFG, w)
    engram = EngramSparseAdamW(CFG, tables.tables)
    ids, tgt, mask = _batch()
    o, lab, dm = dspark_batch(tgt, mask, np.zeros_like(ids), CFG.dspark_block_size)
    rows = np.stack(engram.rows(engram.hash(ids)))                       # [2 Engram layers, B, S, c·d]
    T = ms.Tensor
    consts = (T(np.float32(0.3)), T(np.float32(mask.sum())), T(np.float32(max(dm.sum(), 1.0))), T(np.float32(2)))

    def data(sl):
        return (T(ids[sl].astype(np.int32)), T(rows[:, sl]), T(tgt[sl].astype(np.int32)), T(mask[sl]), T(o[sl]),
                T(lab[sl]), T(dm[sl]))

    full = Transformer(CFG, max_seq_len=S, with_dspark=True)
    load_into(full, rest)
    full.set_train(True)
    fparams = full.trainable_params()
    (f_out, (f_rows, f_grads)) = ms.value_and_grad(V41Loss(full, 1e-2, 0.1), 1, fparams, has_aux=True)(
        *data(slice(None)), *consts)
    f_out = [x.asnumpy() for x in f_out]
    ref = {p.name: g.asnumpy() for p, g in zip(fparams, f_grads)}

    stages = []
    for s in range(2):
        m = Transformer(CFG, max_seq_len=S, with_dspark=True, parallel=ParallelContext.pipeline_stage(CFG, 2, s))
        load_into(m, rest, strict=False)
        m.set_train(True)
        stages.append((m, V41StageLoss(m, 1e-2, 0.1)))
    (m0, sl0), (m1, sl1) = stages
    assert m0.local_layers == tuple(range(6)) and m1.local_layers == (6, 7, 8, 9)
    assert m0.engram_layers == (1, 4) and m1.engram_layers == ()
    assert not hasattr(m0, "head") and not hasattr(m0, "mtp") and not m0.with_dspark
    assert hasattr(m1, "embed") and m1.with_dspark and m1.shared_embed and m0.shared_embed
    names0 = {p.name for p in m0.trainable_params()}
    names1 = {p.name for p in m1.trainable_params()}
    assert names0 | names1 == set(ref) and names0 & names1 == {"embed.weight"}

    p0, p1 = m0.trainable_params(), m1.trainable_params()
    grads, sums = {}, np.zeros(5)
    loads0, loads1, dloads, g_rows = 0, 0, 0, []
    for b in range(2):                                   # two micro-batches of one row each
        d = data(slice(b, b + 1))
        dummy = (T(np.zeros((1, S, CFG.hc_mult, CFG.dim), np.float32)), T(np.zeros((1, S, CFG.hc_mult), np.float32)))
        h, pre = sl0.stage_forward(*dummy, d[0], d[1])[:2]
        no_rows = T(np.zeros((1, 1, 1, 1), np.float32))
        (_, aux1), ((g_h, g_pre), g1) = ms.value_and_grad(sl1, (0, 1), p1, has_aux=True)(
            h, pre, *dummy, d[0], no_rows, *d[2:], *consts)
        (_, aux0), ((_, _, g_r), g0) = ms.value_and_grad(sl0, (0, 1, 5), p0, has_aux=True)(
            *dummy, g_h, g_pre, *d, *consts)
        for p, g in list(zip(p0, g0)) + list(zip(p1, g1)):
            grads[p.name] = grads.get(p.name, 0) + g.asnumpy().astype(np.float64)
        for aux in (aux0, aux1):
            sums += [float(aux[i].asnumpy()) for i in range(5)]
        assert float(aux0[1].asnumpy()) == 0 and float(aux0[2].asnumpy()) == 0    # lm and drafter: stage 1
        loads0, loads1 = loads0 + aux0[5].asnumpy(), loads1 + aux1[5].asnumpy()
        dloads = dloads + aux1[6].asnumpy()
        g_rows.append(g_r.asnumpy())

    np.testing.assert_allclose(sums, f_out[:5], rtol=1e-5)               # loss, lm, draft, confidence, balance
    np.testing.assert_array_equal(np.concatenate([loads0, loads1]), f_out[5])
    np.testing.assert_array_equal(dloads, f_out[6])
    g_rows = np.concatenate(g_rows, 1)
    f_rows = f_rows.asnumpy()
    assert np.abs(f_rows).max() > 0
    np.testing.assert_allclose(g_rows, f_rows, rtol=1e-4, atol=1e-4 * np.abs(f_rows).max())
    for n, g in ref.items():
        np.testing.assert_allclose(grads[n], g, rtol=1e-4, atol=1e-4 * max(np.abs(g).max(), 1e-6), err_msg=n)
    # the last stage's embedding copy gets a real (drafter) gradient: the `emb` sum is needed
    i = [p.name for p in p1].index("embed.weight")
    assert np.abs(g1[i].asnumpy()).max() > 0
