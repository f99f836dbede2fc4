"""Training DeepSeek-V4.1 (ascend_v4/train/v41.py) on v4.1-tiny against the float64 golden
(ascend_v4/numpy_model_v41.py): the loss terms equal a NumPy float64 loss built from the golden's forward and its
DSpark draft (teacher-forced Markov bias and the losses computed here), the graph's gradient w.r.t. gathered Engram
rows equals a central finite difference of that float64 loss w.r.t. table rows, a step moves only the hashed
rows (untouched rows bit-identical; the step runs each packed document as its own row, document_rows; per-document
equality with the golden: test_train_v41_documents.py) and the loss falls on a repeated batch (resume: test_train_v41_run.py).

Tolerances: the loss terms within 2e-5 relative (float32 graph vs float64 golden; the V4.1 forward's per-position
logits agree to ~5e-7, tests/v41/test_model_v41.py); the directional derivative within 2e-3 relative of the central
difference (step 1e-5 in float64: rounding ~1e-10, small enough that no top-k or routing choice flips; the float32
backward over 20 positions and 13 blocks dominates).
"""
import numpy as np
import pytest

from ascend_v4.checkpoint.release_v41 import random_weights_v41
from ascend_v4.config import V41_PRESETS
from ascend_v4.numpy_model_v41 import NumpyV41
from ascend_v4.train.v41 import document_rows, dspark_batch
from helpers import v41_ids

CFG = V41_PRESETS["v4.1-tiny"].validate()
S = 20
ALPHA, CONF_W, DSPARK_W = 1e-2, 0.1, 0.3


def test_dspark_batch_by_hand():
    """Anchor p's row i: Markov token targets[p+i], label targets[p+1+i], masked past the row / across documents."""
    tg = np.arange(10, 16).reshape(1, 6)
    lm = np.array([[1, 1, 1, 1, 0, 1]])            # position 4: its target is not trained
    seg = np.array([[0, 0, 0, 1, 1, 1]])           # document 1 starts at position 3
    o, lab, m = dspark_batch(tg, lm, seg, 2)
    assert o[0, :, 0].tolist() == [10, 11, 12, 13, 14, 15] and o[0, :, 1].tolist() == [11, 12, 13, 14, 15, 0]
    assert lab[0, :, 0].tolist() == [11, 12, 13, 14, 15, 0] and lab[0, :, 1].tolist() == [12, 13, 14, 15, 0, 0]
    # row 0 of anchor p needs p, p+1 in mask and document; row 1 needs p .. p+2
    assert m[0, :, 0].tolist() == [1, 1, 0, 0, 0, 0]       # 2: crosses into document 1; 3, 4: position 4
    assert m[0, :, 1].tolist() == [1, 0, 0, 0, 0, 0]
    o, lab, m = dspark_batch(tg, np.ones((1, 6)), np.zeros((1, 6)), 2)
    assert m[0, :, 0].tolist() == [1, 1, 1, 1, 1, 0] and m[0, :, 1].tolist() == [1, 1, 1, 1, 0, 0]


def _softplus(x):
    return np.logaddexp(0.0, x)


def _ce(logits, labels, mask):
    lse = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    tgt = np.take_along_axis(logits, labels[..., None], -1)[..., 0]
    return float(np.sum((lse - tgt) * mask) / max(mask.sum(), 1.0))


def _seq_balance(aff, ids, E, K, mask):
    """V3 sequence-wise balance loss (docs/training.md) of one layer, float64: aff [B, T, E], ids [B, T, K]."""
    m = mask[..., None]
    n = np.maximum(mask.sum(1), 1.0)[:, None]
    P = np.sum(aff / aff.sum(-1, keepdims=True) * m, 1) / n
    counts = np.stack([np.sum((ids == e) * m, (1, 2)) for e in range(E)], -1)
    return float(np.mean(np.sum(counts * E / K / n * P, -1)))


def golden_loss(w, ids, targets, loss_mask, seg):
    """The V4.1 training loss in float64 from the golden: lm CE, the drafter's teacher-forced block CE and
    confidence BCE at every anchor (NumpyV41.dspark_draft's base logits and hidden + the Markov bias and the
    confidence readout of the true previous tokens), and the balance loss from the golden's routing (recomputed
    from its collapsed FFN inputs)."""
    g = NumpyV41(CFG, w)
    B = ids.shape[0]
    out = g.forward(ids, trace=True)
    lm = _ce(out["logits"], targets, loss_mask)
    bs = CFG.dspark_block_size
    o, lab, dm = dspark_batch(targets, loss_mask, seg, bs)
    last = f"mtp.{CFG.n_mtp_layers - 1}."
    logits = np.zeros((B, S, bs, CFG.vocab_size))
    conf = np.zeros((B, S, bs))
    for p in range(S):
        st = g.new_state(B)
        o_p = g.forward(ids[:, :p + 1], st)
        g.dspark_observe(o_p, st)
        d = g.dspark_draft(targets[:, p], st)
        emb = w[last + "markov_head.embed.weight"][o[:, p]]                       # [B, bs, r]
        logits[:, p] = d["base_logits"] + emb @ np.asarray(w[last + "markov_head.head.weight"], np.float64).T
        conf[:, p] = np.concatenate([d["hidden"], emb], -1) @ np.asarray(
            w[last + "confidence_head.proj.weight"], np.float64)[0]
    draft = _ce(logits, lab, dm)
    hit = (logits.argmax(-1) == lab).astype(np.float64)
    cbce = float(np.sum((_softplus(conf) - hit * conf) * dm) / max(dm.sum(), 1.0))
    return {"lm": lm, "draft": draft, "confidence": cbce, "out": out}


@pytest.fixture(scope="module")
def setup(ms_graph):
    import mindspore as ms
    from ascend_v4.model import Transformer
    from ascend_v4.serve.engram import split_engram_tables
    from ascend_v4.train.v41 import EngramSparseAdamW, V41Loss
    from ascend_v4.weights import load_into
    w = random_weights_v41(CFG, seed=3)
    for n in w:
        if n.endswith("ffn.gate.bias"):
            w[n] = np.zeros_like(w[n])
    rest, tables = split_engram_tables(CFG, w)
    model = Transformer(CFG, max_seq_len=S, with_dspark=True)
    load_into(model, rest)
    loss = V41Loss(model, ALPHA, CONF_W)
    engram = EngramSparseAdamW(CFG, tables.tables)
    ids = v41_ids(CFG, 7, (2, S + 1))
    batch = {"input_ids": ids[:, :S], "targets": ids[:, 1:], "loss_mask": np.ones((2, S), np.float32),
             "segment_ids": np.zeros((2, S), np.int32)}
    batch["loss_mask"][1, 15:] = 0
    batch["segment_ids"][0, 12:] = 1
    return ms, w, model, loss, engram, batch


def _graph_terms(ms, loss, engram, batch, grad=False):
    o, lab, dm = dspark_batch(batch["targets"], batch["loss_mask"], batch["segment_ids"], CFG.dspark_block_size)
    hashed = engram.hash(batch["input_ids"])
    rows = ms.Tensor(np.stack(engram.rows(hashed)))
    t = ms.Tensor
    args = (t(batch["input_ids"].astype(np.int32)), rows, t(batch["targets"].astype(np.int32)),
            t(batch["loss_mask"].astype(np.float32)), t(o), t(lab), t(dm), t(np.float32(DSPARK_W)))
    if grad:
        fn = ms.value_and_grad(loss, 1, None, has_aux=True)
        out, g = ms.jit(fn)(*args)
        return [x.asnumpy() for x in out], list(g.asnumpy()), hashed
    return [x.asnumpy() for x in ms.jit(loss)(*args)], None, hashed


@pytest.mark.slow     # the golden's per-anchor drafts and one graph compile: 182 s on the loaded shared host
def test_loss_terms_match_float64_golden(setup):
    ms, w, model, loss, engram, batch = setup
    out, _, _ = _graph_terms(ms, loss, engram, batch)
    ref = golden_loss(w, batch["input_ids"], batch["targets"], batch["loss_mask"], batch["segment_ids"])
    for k, i in (("lm", 1), ("draft", 2), ("confidence", 3)):
        assert abs(float(out[i]) - ref[k]) < 2e-5 * abs(ref[k]), (k, float(out[i]), ref[k])
    total = ref["lm"] + DSPARK_W * (ref["draft"] + CONF_W * ref["confidence"]) + ALPHA * float(out[4])
    assert abs(float(out[0]) - total) < 2e-5 * total


def _table_grad(engram, hashed, g_rows):
    """d loss / d table from d loss / d gathered rows: a row read at several places sums their gradients."""
    d = CFG.engram_head_dim
    out = []
    for k, t in enumerate(engram.tables):
        G = np.zeros(t.shape, np.float64)
        np.add.at(G, hashed[:, :, k].reshape(-1), np.asarray(g_rows[k], np.float64).reshape(-1, d))
        out.append(G)
    return out


@pytest.mark.slow     # two float64 golden losses (a forward + a draft per anchor each) + one compile: 329 s loaded
def test_engram_row_gradient_matches_finite_difference_of_golden_loss(setup):
    """The graph's gradient w.r.t. the gathered rows, scattered onto the tables, against a central finite
    difference of the float64 golden loss (lm + drafter terms; balance weight 0 here) along random directions
    over the touched rows."""
    import mindspore as ms
    from ascend_v4.train.v41 import V41Loss
    _, w, model, _, engram, batch = setup
    loss0 = V41Loss(model, 0.0, CONF_W)
    out, g_rows, hashed = _graph_terms(ms, loss0, engram, batch, grad=True)
    G = _table_grad(engram, hashed, g_rows)
    names = [f"layers.{L}.engram.embed.weight" for L in CFG.engram_layer_ids]
    rng = np.random.default_rng(0)
    h = 1e-5             # float64: rounding error ~1e-10 relative; small enough that no top-k / routing choice flips
    for trial in range(1):
        V = []
        for k, t in enumerate(engram.tables):
            v = np.zeros(t.shape)
            touched = np.unique(hashed[:, :, k])
            v[touched] = rng.standard_normal((touched.size, t.shape[1]))
            V.append(v)
        lo = []
        for sgn in (1.0, -1.0):
            ws = dict(w)
            for n, t, v in zip(names, engram.tables, V):
                ws[n] = t.astype(np.float64) + sgn * h * v
            r = golden_loss(ws, batch["input_ids"], batch["targets"], batch["loss_mask"], batch["segment_ids"])
            lo.append(r["lm"] + DSPARK_W * (r["draft"] + CONF_W * r["confidence"]))
        fd = (lo[0] - lo[1]) / (2 * h)
        an = sum(float(np.sum(g * v)) for g, v in zip(G, V))
        assert abs(an - fd) < 2e-3 * abs(fd), (trial, an, fd)
    # rows no position hashed to get exactly zero gradient
    for k, g in enumerate(G):
        untouched = np.setdiff1d(np.arange(g.shape[0]), hashed[:, :, k])
        assert not np.any(g[untouched])


@pytest.mark.slow     # one train-step compile: 432 s on the loaded host (runs last: it trains the shared model)
@pytest.mark.timeout(3000)       # 4 document rows per step (document_rows): > 900 s on a heavily loaded host
def test_step_moves_only_hashed_rows_and_loss_falls_on_a_repeated_batch(setup):
    import mindspore as ms
    from ascend_v4.train.optim import MuonAdamW
    from ascend_v4.train.schedule import Schedule
    from ascend_v4.train.v41 import V41TrainStep
    _, w, model, loss, engram, batch = setup
    sched = Schedule(peak_lr=3e-3, total_steps=20, warmup_steps=1)
    step = V41TrainStep(loss, MuonAdamW(model.get_parameters(), sched), engram, sched, 1.0, 1e-3)
    bias0 = model.layers[3].ffn.gate.bias.asnumpy().copy()
    before = [t.copy() for t in engram.tables]
    # the step runs each document piece as its own row (document_rows): row 0's two pieces, then row 1
    rows, n_pieces = document_rows(batch, CFG.engram_pad_id)
    assert n_pieces == 3
    hashed = engram.hash(rows["input_ids"])
    valid = rows["segment_ids"] >= 0                       # padding positions touch no row
    lm_denom = float(batch["loss_mask"].sum())
    first = float(step(batch, DSPARK_W, lm_denom)[0].asnumpy())
    # row 1's positions 15.. have no loss of their own and nothing later reads them: their rows get a zero
    # gradient (and no decay), so only rows hashed at some other position must move
    live = valid.copy()
    live[2, 15:] = False
    for k, (t0, t1) in enumerate(zip(before, engram.tables)):
        touched = np.zeros(t0.shape[0], bool)
        touched[hashed[:, :, k][valid]] = True
        used = np.zeros(t0.shape[0], bool)
        used[hashed[:, :, k][live]] = True
        assert np.array_equal(t0[~used], t1[~used])                       # bit-identical
        assert np.all(np.any(t0[used] != t1[used], axis=1))              # every row with a gradient moved
        assert np.array_equal(engram.count[k], touched.astype(np.int64))
    assert engram.last_touched == sum(len(np.unique(hashed[:, :, k][valid])) for k in range(hashed.shape[2]))
    assert not np.array_equal(bias0, model.layers[3].ffn.gate.bias.asnumpy())   # aux-free balancing moved it
    losses = [first] + [float(step(batch, DSPARK_W, lm_denom)[0].asnumpy()) for _ in range(5)]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(np.isfinite(losses))
