"""A DSpark drafter whose weights change after the serving engine built its graphs (a drafter trained with the
target frozen, loaded into a running Engine: what bench/decode_dspark.py does) drafts with the NEW weights, and
the training-time forward (Transformer.dspark_forward over dspark_batch's teacher-forced Markov ids, as V41Loss
runs it) computes the same block at the same anchor. Expected values from the float64 golden
(ascend_v4/numpy_model_v41.py: forward + dspark_observe + dspark_draft with the new drafter).

The bug this pins down: the engine's graph wrappers used to register the model as a prefixed child Cell, which
renamed every Parameter `model.<release name>` once the first graph was built; loading drafter weights by release
name afterwards (load_into(..., strict=False)) then matched nothing, and the engine drafted with the random
drafter it was built with, however well the drafter had been trained.

Tolerances: measured ~3e-6 relative L2 (float32 graphs vs float64); bound 1e-4.
"""
import numpy as np
import pytest

from ascend_v4.checkpoint.release_v41 import random_weights_v41
from ascend_v4.config import V41_PRESETS
from ascend_v4.numpy_model_v41 import NumpyV41
from helpers import rel_l2_rows, v41_ids

CFG = V41_PRESETS["v4.1-tiny"].validate()


@pytest.mark.slow      # prefill, decode, draft, verify and one training-forward graph: ~2-4 min on the 2-core host
@pytest.mark.timeout(3000)
def test_drafter_loaded_after_compile_drafts_like_golden_and_training_forward(ms_graph):
    import mindspore as ms

    from ascend_v4.model import Transformer
    from ascend_v4.serve.engine import Engine, ServeError
    from ascend_v4.serve.engram import split_engram_tables
    from ascend_v4.train.v41 import EngramSparseAdamW, dspark_batch
    from ascend_v4.weights import load_into
    bs = CFG.dspark_block_size
    target = random_weights_v41(CFG, seed=7)
    drafter = {k: v for k, v in random_weights_v41(CFG, seed=23).items() if k.startswith("mtp.")}
    assert drafter and all(not np.array_equal(v, target[k]) for k, v in drafter.items() if v.size > 1)
    prompt = v41_ids(CFG, 31, 21)                                       # longer than the window (16)

    eng = Engine(CFG, target, max_batch=1, max_len=64, prefill_chunk=32, ctx_min=16, dspark=True)
    eng.generate([prompt], max_new_tokens=3, eos_id=None, speculative=True)   # every serving graph built
    names = {p.name for p in eng.model.get_parameters()}
    assert set(drafter) <= names, "graph wrappers renamed the model's Parameters"
    with pytest.raises(ServeError, match="missing"):
        eng.load_dspark({k: v for k, v in drafter.items() if k != next(iter(drafter))})
    eng.load_dspark(drafter)

    eng.reset()
    y = int(eng.prefill([prompt])[0].argmax(-1))
    tok, lg, conf = eng.dspark_draft(np.array([y]))

    gold = NumpyV41(CFG, {**target, **drafter})
    st = gold.new_state(1)
    out = gold.forward(prompt[None], st)
    assert out["logits"][0, -1].argmax() == y
    gold.dspark_observe(out, st)
    ref = gold.dspark_draft(np.array([y]), st)
    old = NumpyV41(CFG, target)                                 # the drafter the engine was built with
    st_o = old.new_state(1)
    out_o = old.forward(prompt[None], st_o)
    old.dspark_observe(out_o, st_o)
    stale = old.dspark_draft(np.array([y]), st_o)
    assert rel_l2_rows(stale["logits"][0], ref["logits"][0]).min() > 0.1      # the two drafters are far apart
    np.testing.assert_array_equal(tok[0], ref["tokens"][0])
    e_srv = rel_l2_rows(lg[0], ref["logits"][0]).max()
    e_conf = float(rel_l2_rows(conf[0], ref["confidence"][0]))
    assert e_srv < 1e-4 and e_conf < 1e-4, (e_srv, e_conf)

    # the training forward at the same anchor: the sequence prompt + [y, o_1 .. o_bs-1] (the golden's drafts), so
    # dspark_batch's teacher-forced Markov ids at anchor p = len(prompt) - 1 are the tokens serving drafted from
    seq = np.concatenate([prompt, [y], ref["tokens"][0, :bs - 1]])
    ids, tgt = seq[None, :-1], seq[None, 1:]
    S, p = ids.shape[1], len(prompt) - 1
    markov, _, _ = dspark_batch(tgt, np.ones_like(tgt, np.float32), np.zeros_like(tgt), bs)
    rest, tables = split_engram_tables(CFG, {**target, **drafter})
    feed = EngramSparseAdamW(CFG, tables.tables)
    rows = ms.Tensor(np.stack(feed.rows(feed.hash(ids))))
    model = Transformer(CFG, max_seq_len=S, with_dspark=True)
    model.set_train(True)                                       # as the trainer runs it
    load_into(model, rest)
    n_engram = len(CFG.engram_layer_ids)

    @ms.jit
    def train_forward(i, r, m):
        h = model.embed_streams(i)[1]
        o = model.run_layers_v41(h, i, tuple(r[k] for k in range(n_engram)), stats=True, targets=True)
        logits, c, _ = model.dspark_forward(o[4], m)
        return logits, c

    tl, tc = (x.asnumpy() for x in train_forward(ms.Tensor(ids.astype(np.int32)), rows, ms.Tensor(markov)))
    np.testing.assert_array_equal(tl[0, p].argmax(-1), ref["tokens"][0])
    e_tr = rel_l2_rows(tl[0, p], ref["logits"][0]).max()
    e_tc = float(rel_l2_rows(tc[0, p], ref["confidence"][0]))
    assert e_tr < 1e-4 and e_tc < 1e-4, (e_tr, e_tc)
    print(f"new drafter: engine draft logits max rel L2 {e_srv:.1e} (confidence {e_conf:.1e}); training forward "
          f"{e_tr:.1e} ({e_tc:.1e}); stale drafter {rel_l2_rows(stale['logits'][0], ref['logits'][0]).min():.2f}")


def test_graph_wrappers_keep_release_names_and_load_dspark_checks_names(ms_graph):
    """Wrapping the model in the serving graphs (built, not compiled) leaves its Parameter names alone, so
    Engine.load_dspark finds the drafter by release name; it refuses a partial or foreign set."""
    from ascend_v4.serve.engine import Engine, ServeError
    from ascend_v4.serve.graphs import DSparkDraftGraph, StepGraph
    target = random_weights_v41(CFG, seed=7)
    drafter = {k: v for k, v in random_weights_v41(CFG, seed=23).items() if k.startswith("mtp.")}
    eng = Engine(CFG, target, max_batch=1, max_len=64, prefill_chunk=16, ctx_min=16, dspark=True)
    before = [p.name for p in eng.model.get_parameters()]
    StepGraph(eng.model, eng.cache.layout, eng.cache.params, 1, 16, logits="last", experts=eng.experts, dspark=True)
    DSparkDraftGraph(eng.model)
    assert [p.name for p in eng.model.get_parameters()] == before
    first = next(iter(drafter))
    with pytest.raises(ServeError, match="1 missing"):
        eng.load_dspark({k: v for k, v in drafter.items() if k != first})
    with pytest.raises(ServeError, match="1 unknown"):
        eng.load_dspark({**drafter, "layers.0.attn.wq_a.weight": target["layers.0.attn.wq_a.weight"]})
    eng.load_dspark(drafter)
    got = {p.name: p.asnumpy() for p in eng.model.get_parameters()}
    for k, v in drafter.items():
        np.testing.assert_array_equal(got[k], np.asarray(v, np.float32), err_msg=k)
    for k in ("embed.weight", "layers.0.attn.wkv.weight"):
        np.testing.assert_array_equal(got[k], np.asarray(target[k], np.float32), err_msg=k)
