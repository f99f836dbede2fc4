"""DeepSeek-V4.1's DSpark drafter in the serving engine (graph mode, float32) on v4.1-tiny:

* the first block drafted after a prefill (DSparkDraftGraph over the main KV the prefill's StepGraph produced)
  against the float64 golden's dspark_observe + dspark_draft (ascend_v4/numpy_model_v41.py): drafted tokens
  equal, logits and confidence close — two rows, one prompt longer than the window (16) and one shorter;
* generate(speculative=True) on a DSpark engine equals plain greedy decoding token for token (the verify step's
  target logits within ~3e-6 of the decode step's), over enough steps that rejected drafts roll the cache back
  (window ring, ratio-2 / ratio-1 compressor state, entries, index keys, Engram n-gram state) many times;
* a rejected draft's rollback (rewinding the length into the cache's spare slots) leaves every row a later step
  reads bit-identical to a step that never saw the draft, and the two stay bit-identical decoding on.

Tolerances: measured ≤ 3.1e-6 (draft logits vs the golden), ≤ 6.7e-6 (confidence), ≤ 2.6e-6 (verify vs
decode logits) relative L2; bounds 1e-4.
"""
import numpy as np
import pytest

from ascend_v4.checkpoint.release_v41 import random_weights_v41
from ascend_v4.config import V41_PRESETS
from ascend_v4.numpy_model_v41 import NumpyV41
from helpers import rel_l2_rows, v41_ids

CFG = V41_PRESETS["v4.1-tiny"].validate()


@pytest.mark.slow      # prefill, decode, draft and verify graphs: ~140 s on a quiet 2-core host (18 min under load)
@pytest.mark.timeout(3000)
def test_dspark_draft_matches_golden_and_generate_equals_greedy(ms_graph):
    from ascend_v4.serve.engine import Engine, ServeError
    from ascend_v4.serve.sampling import SamplingParams
    weights = random_weights_v41(CFG, seed=7)
    prompts = [v41_ids(CFG, 11, 21), v41_ids(CFG, 12, 9)]
    eng = Engine(CFG, weights, max_batch=2, max_len=64, prefill_chunk=32, ctx_min=16, dspark=True)

    # the first draft after a prefill vs the golden
    last = eng.prefill(prompts)
    y = last.argmax(-1)
    tok, lg, conf = eng.dspark_draft(y)
    gold = NumpyV41(CFG, weights)
    for r, p in enumerate(prompts):
        st = gold.new_state(1)
        out = gold.forward(p[None], st)
        assert out["logits"][0, -1].argmax() == y[r]
        gold.dspark_observe(out, st)
        ref = gold.dspark_draft(np.array([y[r]]), st)
        np.testing.assert_array_equal(tok[r], ref["tokens"][0])
        assert rel_l2_rows(lg[r], ref["logits"][0]).max() < 1e-4, rel_l2_rows(lg[r], ref["logits"][0])
        assert rel_l2_rows(conf[r], ref["confidence"][0]) < 1e-4, (conf[r], ref["confidence"][0])
        print(f"row {r}: draft logits max rel L2 {rel_l2_rows(lg[r], ref['logits'][0]).max():.1e}, confidence rel "
              f"{float(rel_l2_rows(conf[r], ref['confidence'][0])):.1e}")

    # speculative (DSpark) generation == plain greedy generation
    n_new = 24
    plain = eng.generate(prompts, max_new_tokens=n_new, eos_id=None)
    spec = eng.generate(prompts, max_new_tokens=n_new, eos_id=None, speculative=True)
    np.testing.assert_array_equal(spec.tokens, plain.tokens)
    assert rel_l2_rows(spec.logits, plain.logits).max() < 1e-4
    print(f"DSpark verify logits vs decode logits: max rel L2 {rel_l2_rows(spec.logits, plain.logits).max():.1e}")
    s = spec.stats
    bs = CFG.dspark_block_size
    row_steps = s["drafts"] // bs                    # (row, step) pairs that drafted a block
    assert s["drafts"] % bs == 0 and s["steps"] <= row_steps <= 2 * s["steps"]
    # each row step emits its accepted drafts + the target's token (the last may overshoot the budget)
    assert s["accepted"] + row_steps >= 2 * (n_new - 1)
    # every step emits accepted + 1 tokens per row (until a row's budget is reached)
    assert spec.lengths.tolist() == [n_new, n_new]
    print("DSpark steps", s["steps"], "acceptance", s["acceptance_rate"])

    with pytest.raises(ServeError, match="greedily"):
        eng.generate(prompts, max_new_tokens=2, speculative=True,
                     sampling=SamplingParams(greedy=False, temperature=1.0))
    with pytest.raises(ServeError, match="DSpark block"):
        eng.generate(prompts, max_new_tokens=64 - 21 - 1, speculative=True)


def _save(eng):
    """Test-side host copy of everything a step reads: cache buffers, lengths, Engram n-gram states."""
    eng.engram.submit(np.zeros((eng.max_batch, 1), np.int64), np.zeros(eng.max_batch, np.int64)).result()  # drain
    return ([p.asnumpy().copy() for p in eng.cache.params], eng.pos.copy(),
            [(s.history.copy(), s.length.copy()) for s in eng.engram.states])


def _load(eng, snap):
    import mindspore as ms
    bufs, pos, eng_states = snap
    for p, a in zip(eng.cache.params, bufs):
        p.set_data(ms.Tensor(a))
    eng.pos[:] = pos
    for s, (h, n) in zip(eng.engram.states, eng_states):
        s.history, s.length = h.copy(), n.copy()


def _rows_by_name(eng, bufs):
    return {e.name: a.reshape(e.shape) for e, a in zip(eng.cache.layout.entries, bufs)}


@pytest.mark.slow      # prefill, (block + 1)-token verify and decode graphs: ~3 min on the shared 2-core host
@pytest.mark.timeout(3000)
def test_rejected_draft_leaves_the_cache_as_a_run_that_never_saw_it(ms_graph):
    """A verify step of [y, 3 drafts] whose drafts are rejected after keep tokens, rolled back by the engine
    (Engine._rollback: rewind the length and the Engram state) vs the same step that never saw the rejected
    drafts (nvalid = keep: computed as padding, never written). Right after: every cache row a later step can
    read (window slots of the last W positions, compressor-state slots of the current groups, entries and index
    keys of complete groups) is bit-identical, the rows that differ are exactly slots of rejected positions or
    scratch rows, and the Engram states are equal. Then both decode the same tokens past the rejected positions:
    bit-identical logits, and every buffer bit-identical except the scratch rows."""
    from ascend_v4.serve.engine import Engine
    weights = random_weights_v41(CFG, seed=7)
    prompts = [v41_ids(CFG, 11, 21), v41_ids(CFG, 12, 9)]
    eng = Engine(CFG, weights, max_batch=2, max_len=64, prefill_chunk=32, ctx_min=16, dspark=True)
    bs, W = CFG.dspark_block_size, CFG.window_size
    S = eng.cache.layout.slack
    assert S == bs - 1
    y = eng.prefill(prompts).argmax(-1)
    s0 = _save(eng)
    pos0 = eng.pos.copy()
    rng = np.random.default_rng(3)
    ids = np.concatenate([y[:, None], rng.integers(0, CFG.engram_compressed_vocab_size, (2, bs))], 1)
    lg = eng.run_main(ids, pos0, np.full(2, bs + 1), logits="all", dspark=True)[0].asnumpy()
    # row 0 rejects every draft; row 1 accepts its first (the target's own token) and rejects the rest
    tgt = lg.argmax(-1)
    ids[0, 1] = (tgt[0, 0] + 1) % CFG.engram_compressed_vocab_size
    ids[1, 1] = tgt[1, 0]
    _load(eng, s0)
    lg = eng.run_main(ids, pos0, np.full(2, bs + 1), logits="all", dspark=True)[0].asnumpy()
    tgt = lg.argmax(-1)
    keep = np.array([1, 2])
    assert ids[0, 1] != tgt[0, 0] and ids[1, 1] == tgt[1, 0] and ids[1, 2] != tgt[1, 1], (ids, tgt)
    eng._rollback(pos0, keep, bs + 1)
    a = _save(eng)
    _load(eng, s0)
    eng.run_main(ids, pos0, keep, logits="all", dspark=True)
    eng.pos[:] = pos0 + keep
    b = _save(eng)
    np.testing.assert_array_equal(a[1], b[1])
    for (ha, na), (hb, nb) in zip(a[2], b[2]):
        np.testing.assert_array_equal(ha, hb)
        np.testing.assert_array_equal(na, nb)
    A, Bn = _rows_by_name(eng, a[0]), _rows_by_name(eng, b[0])
    q = pos0 + keep
    checked = set()
    for e in eng.cache.layout.entries:
        base = e.name.split(".")[1].split("_")[0]          # win / ent / ckv / csc / ikey / pub
        for r in range(2):
            rej = np.arange(q[r], pos0[r] + bs + 1)         # the rejected positions
            if base == "win":
                R = W + S
                readable = {x % R for x in range(max(0, q[r] - W + 1), q[r])}
                allowed = {x % R for x in rej} | {R}
            elif base in ("ckv", "csc"):
                ratio = CFG.ratio(int(e.name[1:].split(".")[0]))
                n_s = ratio + S
                readable = {x % n_s for x in range(q[r] // ratio * ratio, q[r])}
                allowed = {x % n_s for x in rej} | {n_s}
            elif base in ("ent", "ikey"):
                ratio = CFG.ratio(int(e.name[1:].split(".")[0]))
                nmax = 64 // ratio
                readable = set(range(q[r] // ratio))
                allowed = {x // ratio for x in rej if (x + 1) % ratio == 0} | {nmax}
            else:
                readable, allowed = set(range(e.shape[1])), set()
            assert not readable & allowed, (e.name, r, readable & allowed)      # the slack at work
            diff = {int(i) for i in np.nonzero((A[e.name][r] != Bn[e.name][r]).reshape(e.shape[1], -1).any(-1))[0]}
            assert diff <= allowed, (e.name, r, sorted(diff - allowed))
            checked.add(base)
    assert checked >= {"win", "ent", "ckv", "csc", "ikey"}, checked
    # continue both past every rejected position with the same tokens: identical logits, identical caches
    cont = rng.integers(0, CFG.engram_compressed_vocab_size, (bs + 1, 2))
    outs = []
    for snap in (a, b):
        _load(eng, snap)
        lgs = [eng.decode_step(t) for t in cont]
        outs.append((np.stack(lgs), _rows_by_name(eng, _save(eng)[0])))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    for e in eng.cache.layout.entries:
        base = e.name.split(".")[1].split("_")[0]
        x, z = outs[0][1][e.name], outs[1][1][e.name]
        last = e.shape[1] - 1 if base in ("win", "ent", "ckv", "csc", "ikey") else e.shape[1]
        np.testing.assert_array_equal(x[:, :last], z[:, :last], err_msg=e.name)


def test_dspark_refuses_the_shipped_decode_index_keys():
    """The shipped decode indexer decides its publisher per step, which a block verify cannot reproduce."""
    from ascend_v4.serve.engine import Engine, ServeError
    with pytest.raises(ServeError, match="index_keys='own'"):
        Engine(CFG, {}, dspark=True, index_keys="shipped")
