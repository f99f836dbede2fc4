"""Packed rows in DeepSeek-V4.1 training (ascend_v4/train/v41.py `document_rows`, docs/training.md "DeepSeek-V4.1"):
every document piece of a packed batch computes exactly what the float64 golden (ascend_v4/numpy_model_v41.py)
computes on that document alone — positions from 0, Engram n-grams hashed from the document's own start, compressed
KV / indexer candidates / DSpark windows from its own tokens.

* document_rows by hand (row layout, padding, the power-of-two row count); padding positions touch no Engram row
  in the sparse update.
* The model's logits of each piece's row equal the golden's forward of the document alone (float32 vs float64:
  measured 4.7e-6 max error relative to the logits' largest magnitude; bound 2e-5); the packed rows themselves
  (no document_rows) miss that bound on the second documents (measured 1.3) — the test can fail.
* The train step's loss terms (V41TrainStep.losses: lm, DSpark draft, confidence) equal the float64 loss summed
  over the documents run alone (measured <= 6.1e-7 relative; bound 5e-6).
"""
import numpy as np
import pytest

from ascend_v4.checkpoint.release_v41 import random_weights_v41
from ascend_v4.config import V41_PRESETS
from ascend_v4.numpy_model_v41 import NumpyV41
from ascend_v4.train.v41 import document_rows

CFG = V41_PRESETS["v4.1-tiny"].validate()
S = 20
DOCS = ((11, 9), (7, 13))          # document lengths per packed row: none a multiple of a compression ratio
CONF_W, DSPARK_W = 0.1, 0.3


def test_document_rows_by_hand():
    ids = np.arange(1, 13).reshape(2, 6)
    seg = np.array([[0, 0, 1, 1, 1, -1], [0, 1, 2, 2, 2, 2]])
    batch = {"input_ids": ids, "targets": ids + 100, "loss_mask": np.array([[1, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]]),
             "segment_ids": seg}
    out, n = document_rows(batch, pad_id=2)
    assert n == 5 and out["input_ids"].shape == (8, 6)            # 5 pieces -> 2 · 4 rows
    assert out["input_ids"][:5].tolist() == [[1, 2, 2, 2, 2, 2], [3, 4, 5, 2, 2, 2], [7, 2, 2, 2, 2, 2],
                                             [8, 2, 2, 2, 2, 2], [9, 10, 11, 12, 2, 2]]
    assert out["targets"][1].tolist() == [103, 104, 105, 2, 2, 2]
    assert out["loss_mask"][:5].tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0],
                                             [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]
    assert out["segment_ids"][4].tolist() == [0, 0, 0, 0, -1, -1] and out["positions"][4].tolist() == [0, 1, 2, 3, 0, 0]
    assert np.all(out["segment_ids"][5:] == -1) and not out["loss_mask"][5:].any()
    assert document_rows(batch | {"segment_ids": np.zeros((2, 6), int)}, 2)[0]["input_ids"].shape == (2, 6)


def test_padding_positions_touch_no_engram_row():
    """EngramSparseAdamW.update(valid=...): rows hashed only at left-out (padding) positions keep their values,
    moments and counts; the others move with the gradient summed over their valid positions."""
    from ascend_v4.train.v41 import EngramSparseAdamW
    rng = np.random.default_rng(0)
    tables = [rng.standard_normal((n, CFG.engram_head_dim)).astype(np.float32) for n in CFG.engram_num_embeddings]
    eng = EngramSparseAdamW(CFG, [t.copy() for t in tables])
    ids = rng.integers(3, CFG.engram_compressed_vocab_size, (1, 8))
    hashed = eng.hash(ids)
    valid = np.zeros((1, 8), bool)
    valid[0, :5] = True
    grads = [rng.standard_normal((1, 8, hashed.shape[-1] * CFG.engram_head_dim)).astype(np.float32)
             for _ in tables]
    eng.update(hashed, grads, 1e-2, valid)
    for k, (t0, t1) in enumerate(zip(tables, eng.tables)):
        used = np.unique(hashed[0, :5, k])
        pad_only = np.setdiff1d(np.unique(hashed[0, 5:, k]), used)
        assert pad_only.size > 0
        assert np.array_equal(t1[pad_only], t0[pad_only]) and not eng.count[k][pad_only].any()
        assert np.all(np.any(t1[used] != t0[used], 1)) and np.all(eng.count[k][used] == 1)
        untouched = np.setdiff1d(np.arange(t0.shape[0]), used)
        assert np.array_equal(t1[untouched], t0[untouched])


def _packed(seed=11):
    """Two packed rows of random documents: input ids, targets (the next token of the stream; a document's last
    target is the next document's first token, loss mask 0 as the data loader packs), segment ids."""
    rng = np.random.default_rng(seed)
    docs = [[np.where(d == CFG.image_token_id, 0, d) for d in
             [rng.integers(0, CFG.engram_compressed_vocab_size, n + 1) for n in row]] for row in DOCS]
    ids = np.zeros((2, S), np.int64)
    tg = np.zeros((2, S), np.int64)
    lm = np.zeros((2, S), np.float32)
    seg = np.zeros((2, S), np.int32)
    for b, row in enumerate(docs):
        o = 0
        for k, d in enumerate(row):
            n = d.size - 1
            ids[b, o:o + n], tg[b, o:o + n], seg[b, o:o + n] = d[:n], d[1:], k
            lm[b, o:o + n - 1] = 1.0                        # the last target crosses into the next document
            o += n
        lm[b, o - 1] = 1.0                                   # ... except at the row's end (its own next token)
    return {"input_ids": ids, "targets": tg, "loss_mask": lm, "segment_ids": seg}, docs


def _weights():
    w = random_weights_v41(CFG, seed=3)
    for n in w:
        if n.endswith("ffn.gate.bias"):
            w[n] = np.zeros_like(w[n])
    return w


def _golden_doc(g, w, ids, tg, lm):
    """Float64 sums over one document run alone (1 row): (logits [n, V], lm CE sum, draft CE sum, confidence BCE
    sum, draft row count), the draft terms as tests/v41/test_train_v41.py golden_loss builds them."""
    from ascend_v4.train.v41 import dspark_batch
    n = ids.size
    out = g.forward(ids[None])
    logits = out["logits"][0]
    lse = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    lm_sum = float(np.sum((lse - logits[np.arange(n), tg]) * lm))
    bs = CFG.dspark_block_size
    o, lab, dm = dspark_batch(tg[None], lm[None], np.zeros((1, n), np.int32), bs)
    last = f"mtp.{CFG.n_mtp_layers - 1}."
    d_sum = c_sum = 0.0
    for p in range(n):
        st = g.new_state(1)
        g.dspark_observe(g.forward(ids[None, :p + 1], st), st)
        d = g.dspark_draft(tg[None, p], st)
        emb = w[last + "markov_head.embed.weight"][o[0, p]]                              # [bs, r]
        li = d["base_logits"][0] + emb @ np.asarray(w[last + "markov_head.head.weight"], np.float64).T
        c = np.concatenate([d["hidden"][0], emb], -1) @ np.asarray(w[last + "confidence_head.proj.weight"],
                                                                    np.float64)[0]
        l_lse = np.log(np.sum(np.exp(li - li.max(-1, keepdims=True)), -1)) + li.max(-1)
        d_sum += float(np.sum((l_lse - li[np.arange(bs), lab[0, p]]) * dm[0, p]))
        hit = (li.argmax(-1) == lab[0, p]).astype(np.float64)
        c_sum += float(np.sum((np.logaddexp(0.0, c) - hit * c) * dm[0, p]))
    return logits, lm_sum, d_sum, c_sum, float(dm.sum())


@pytest.fixture(scope="module")
def golden():
    w = _weights()
    batch, _ = _packed()
    g = NumpyV41(CFG, w)
    per = []
    for b in range(2):
        for k in range(len(DOCS[b])):
            cols = batch["segment_ids"][b] == k
            per.append(_golden_doc(g, w, batch["input_ids"][b, cols], batch["targets"][b, cols],
                                   batch["loss_mask"][b, cols]))
    return w, batch, per


def _model(w):
    from ascend_v4.model import Transformer
    from ascend_v4.serve.engram import split_engram_tables
    from ascend_v4.train.v41 import EngramSparseAdamW
    from ascend_v4.weights import load_into
    rest, tables = split_engram_tables(CFG, w)
    model = Transformer(CFG, max_seq_len=S, with_dspark=True)
    load_into(model, rest)
    return model, EngramSparseAdamW(CFG, tables.tables)


@pytest.mark.slow     # one forward compile of the 10-layer model + the golden's per-anchor drafts
def test_each_document_row_equals_the_golden_on_that_document_alone(ms_graph, golden):
    import mindspore as ms
    w, batch, per = golden
    model, engram = _model(w)
    fwd = ms.jit(model)

    def logits(b):
        rows = np.stack(engram.rows(engram.hash(b["input_ids"])))
        return fwd(ms.Tensor(b["input_ids"].astype(np.int32)), ms.Tensor(rows)).asnumpy()

    rows, n = document_rows(batch, CFG.engram_pad_id)
    assert n == 4 and rows["input_ids"].shape == (4, S)
    got = logits(rows)
    scale = max(np.abs(p[0]).max() for p in per)
    errs = [np.abs(got[r, :p[0].shape[0]] - p[0]).max() / scale for r, p in enumerate(per)]
    # control: the packed rows themselves (padded to the same shape) see across the boundary
    packed = {k: np.concatenate([v, np.full_like(v, CFG.engram_pad_id)]) for k, v in batch.items()}
    got = logits(packed)
    first = [np.abs(got[b, :DOCS[b][0]] - per[2 * b][0]).max() / scale for b in range(2)]
    second = [np.abs(got[b, DOCS[b][0]:S] - per[2 * b + 1][0]).max() / scale for b in range(2)]
    print(f"document rows vs golden alone: max rel {max(errs):.1e}; packed rows: first documents {max(first):.1e}, "
          f"second documents {min(second):.1e}")
    assert max(errs) < 2e-5, errs
    assert max(first) < 2e-5, first                  # the first document of a packed row: causal, alike
    assert min(second) > 1e-2, second                # the second: it sees the first


@pytest.mark.slow     # one loss compile (forward with the drafter) + the golden's per-anchor drafts
def test_step_loss_terms_equal_the_golden_summed_over_documents_alone(ms_graph, golden):
    from ascend_v4.train.optim import MuonAdamW
    from ascend_v4.train.schedule import Schedule
    from ascend_v4.train.v41 import V41Loss, V41TrainStep
    w, batch, per = golden
    model, engram = _model(w)
    sched = Schedule(peak_lr=1e-3, total_steps=10, warmup_steps=1)
    step = V41TrainStep(V41Loss(model, 0.0, CONF_W), MuonAdamW(model.get_parameters(), sched), engram, sched)
    lm_denom = float(batch["loss_mask"].sum())
    loss, lm, draft, conf, _ = step.losses(batch, DSPARK_W, lm_denom)
    d_count = sum(p[4] for p in per)
    ref = {"lm": sum(p[1] for p in per) / lm_denom, "draft": sum(p[2] for p in per) / d_count,
           "confidence": sum(p[3] for p in per) / d_count}
    rel = {k: abs(v - ref[k]) / abs(ref[k]) for k, v in (("lm", lm), ("draft", draft), ("confidence", conf))}
    print("step loss terms vs golden over documents alone (relative): "
          + ", ".join(f"{k} {v:.1e}" for k, v in rel.items()))
    for k, v in rel.items():
        assert v < 5e-6, (k, v)
    assert abs(loss - (ref["lm"] + DSPARK_W * (ref["draft"] + CONF_W * ref["confidence"]))) < 5e-6 * loss
