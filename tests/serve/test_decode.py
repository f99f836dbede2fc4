"""Serving graphs against a full recompute, on the tiny official-format checkpoint (window 16, ratios 4 and 16).

"Recompute" is the model's own graph-mode forward over the whole sequence: by causality its logits at position t
are a full forward over the prefix 0..t. Every comparison is float32 vs float32 computed in a different order, so
the tolerance is a few 1e-6 relative; a flipped near-tie in the indexer's top-k would show up as a large error.
One Engine (one cache, so each graph compiles once) serves the whole module.
"""
import numpy as np
import pytest
from helpers import rel_l2_rows

S = 64                 # 64 tokens: window 16 wraps 4x, 16 CSA and 4 HCA block boundaries
LENS = (5, 11)         # per-sequence prompt lengths (different on purpose)


@pytest.fixture(scope="module")
def seqs(tiny_cfg):
    return np.random.default_rng(42).integers(2, tiny_cfg.vocab_size, (2, S))


@pytest.fixture(scope="module")
def recompute(ms_graph, tiny_cfg, tiny_weights, seqs):
    from ascend_v4.graph.forward import build_forward
    return build_forward(tiny_cfg, tiny_weights, max_seq_len=S)(seqs)["logits"]


@pytest.fixture(scope="module")
def engine(ms_graph, tiny_cfg, tiny_weights):
    from ascend_v4.serve import Engine
    return Engine(tiny_cfg, tiny_weights, max_batch=2, max_len=128, prefill_chunk=16)


def _teacher_forced(eng, seqs, lens, chunk=16):
    """Prefill each row with its prompt (all prompt logits), then decode the rest of the sequence token by token;
    returns per row the logits of every position [S, V]."""
    pre = eng.prefill([seqs[r, :lens[r]] for r in range(len(lens))], chunk=chunk, return_all=True)
    out = [list(p) for p in pre]
    for t in range(min(lens), seqs.shape[1]):
        act = np.array([t >= lens[r] and t < seqs.shape[1] for r in range(len(lens))])
        if not act.any():
            break
        tok = np.array([seqs[r, t] if act[r] else 0 for r in range(len(lens))])
        lg = eng.decode_step(tok, act)
        for r in range(len(lens)):
            if act[r]:
                out[r].append(lg[r])
    return [np.stack(o) for o in out]


def test_decode_matches_full_recompute_across_window_and_block_boundaries(engine, seqs, recompute):
    got = _teacher_forced(engine, seqs, LENS)
    for r in range(2):
        assert got[r].shape == (S, recompute.shape[-1])
        rel = rel_l2_rows(got[r], recompute[r])
        assert rel.max() < 2e-5, (r, np.argmax(rel), rel.max())
        assert np.abs(got[r] - recompute[r]).max() < 2e-4
        assert np.array_equal(got[r].argmax(-1), recompute[r].argmax(-1))
    assert engine.pos.tolist() == [S, S]


def test_chunked_prefill_equals_one_shot(engine, seqs, recompute):
    L = 40                                  # chunks of 16: boundaries at 16 and 32 cut CSA/HCA blocks mid-way
    chunked = engine.prefill([seqs[0, :L], seqs[1, :L - 7]], chunk=16, return_all=True)
    state_c = engine.cache.arrays()
    one = engine.prefill([seqs[0, :L], seqs[1, :L - 7]], chunk=64, return_all=True)
    state_o = engine.cache.arrays()
    for r, n in enumerate((L, L - 7)):
        assert rel_l2_rows(chunked[r], one[r]).max() < 1e-5
        assert rel_l2_rows(one[r], recompute[r, :n]).max() < 2e-5
    for name in state_c:                    # the caches a decode step reads are the same too
        np.testing.assert_allclose(state_c[name], state_o[name], rtol=1e-5, atol=1e-5, err_msg=name)
    # ... and so is the next decode step
    lg1 = engine.decode_step(np.array([seqs[0, L], seqs[1, L - 7]]))
    np.testing.assert_allclose(lg1[0], recompute[0, L], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lg1[1], recompute[1, L - 7], rtol=1e-4, atol=1e-4)


def test_second_sequence_after_reset_equals_fresh_run(engine, seqs):
    a, b = seqs[0, :30], seqs[1, :30]

    def run(prompt, steps=20):
        last = engine.prefill([prompt], rows=[1])[0]
        out = [last]
        for t in range(steps):
            act = np.array([False, True])
            out.append(engine.decode_step(np.array([0, seqs[1, 30 + t] if t < 30 else 0]), act)[1])
        return np.stack(out)

    engine.reset()
    fresh = run(b)
    run(a)
    again = run(b)                           # prefill() resets the row
    np.testing.assert_array_equal(fresh, again)
    # negative control: the reference's quirk (compressor state NOT reset) gives a different second sequence
    run(a)
    engine.pos[1] = 0
    stale = engine.prefill([b], rows=[1], reset=False)[0]
    assert np.abs(stale - fresh[0]).max() > 1e-3


def test_batched_rows_equal_individual_runs(engine, tiny_cfg):
    from ascend_v4.serve import SamplingParams
    rng = np.random.default_rng(9)
    prompts = [rng.integers(2, tiny_cfg.vocab_size, 7), rng.integers(2, tiny_cfg.vocab_size, 21)]
    sp = SamplingParams(temperature=0.9, top_p=0.95, seed=3)
    both = engine.generate(prompts, max_new_tokens=12, sampling=sp, eos_id=None)
    one = engine.generate(prompts[:1], max_new_tokens=12, sampling=sp, eos_id=None)
    assert np.array_equal(both.row(0), one.row(0))
    np.testing.assert_allclose(both.logits[0], one.logits[0], rtol=1e-5, atol=1e-5)
    assert both.lengths.tolist() == [12, 12] and both.prompt_lengths.tolist() == [7, 21]


def test_sampling_is_deterministic_per_seed_and_eos_stops(engine, tiny_cfg):
    from ascend_v4.serve import SamplingParams
    p = [np.arange(2, 14) % tiny_cfg.vocab_size]
    g1 = engine.generate(p, max_new_tokens=10, sampling=SamplingParams(temperature=1.2, top_k=50, seed=5), eos_id=None)
    g2 = engine.generate(p, max_new_tokens=10, sampling=SamplingParams(temperature=1.2, top_k=50, seed=5), eos_id=None)
    g3 = engine.generate(p, max_new_tokens=10, sampling=SamplingParams(temperature=1.2, top_k=50, seed=6), eos_id=None)
    assert np.array_equal(g1.tokens, g2.tokens)
    assert not np.array_equal(g1.tokens, g3.tokens)
    greedy = engine.generate(p, max_new_tokens=10, sampling=SamplingParams(greedy=True), eos_id=None)
    assert np.array_equal(greedy.row(0), greedy.logits[0].argmax(-1))
    # EOS: make the 4th greedy token the end-of-sequence id
    eos = int(greedy.row(0)[3])
    first = int(np.flatnonzero(greedy.row(0) == eos)[0])
    stopped = engine.generate(p, max_new_tokens=10, sampling=SamplingParams(greedy=True), eos_id=eos)
    assert stopped.stop == ["eos"] and stopped.lengths[0] == first + 1
    assert np.array_equal(stopped.row(0), greedy.row(0)[:first + 1])
    assert (stopped.tokens[0, first + 1:] == -1).all()
    assert greedy.stop == ["length"]


def test_requests_that_cannot_be_served_are_rejected(engine, tiny_cfg):
    from ascend_v4.serve import ServeError
    with pytest.raises(ServeError, match="vocabulary"):
        engine.prefill([np.array([1, tiny_cfg.vocab_size])])
    with pytest.raises(ServeError, match="empty"):
        engine.prefill([np.array([], np.int64)])
    with pytest.raises(ServeError, match="max_len"):
        engine.generate([np.arange(120)], max_new_tokens=20)
    with pytest.raises(ServeError, match="mtp=True"):
        engine.generate([np.arange(4)], max_new_tokens=2, speculative=True)
