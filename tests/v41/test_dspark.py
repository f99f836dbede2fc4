"""DeepSeek-V4.1's DSpark drafter in the serving engine (graph mode, float32) on v4.1-tiny:

* the first block drafted after a prefill (DSparkDraftGraph over the main KV the prefill's StepGraph produced)
  against the float64 golden's dspark_observe + dspark_draft (ascend_v4/numpy_model_v41.py): drafted tokens
  equal, logits and confidence close — two rows, one prompt longer than the window (16) and one shorter;
* generate(speculative=True) on a DSpark engine equals plain greedy decoding token for token (the verify step's
  target logits within ~3e-6 of the decode step's), over enough steps that rejected drafts roll the cache back
  (window ring, ratio-2 / ratio-1 compressor state, entries, Engram n-gram state) many times.

Tolerances: measured ≤ 3.1e-6 (draft logits vs the golden), ≤ 6.7e-6 (confidence), ≤ 2.6e-6 (verify vs
decode logits) relative L2; bounds 1e-4.
"""
import numpy as np
import pytest

from ascend_v4.checkpoint.release_v41 import random_weights_v41
from ascend_v4.config import V41_PRESETS
from ascend_v4.numpy_model_v41 import NumpyV41

CFG = V41_PRESETS["v4.1-tiny"].validate()


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def _ids(seed, n):
    ids = np.random.default_rng(seed).integers(0, CFG.engram_compressed_vocab_size, n)
    return np.where(ids == CFG.image_token_id, 0, ids)


@pytest.mark.slow      # prefill, decode, draft and verify graphs: ~140 s on a quiet 2-core host (18 min under load)
@pytest.mark.timeout(3000)
def test_dspark_draft_matches_golden_and_generate_equals_greedy(ms_graph):
    from ascend_v4.serve.engine import Engine, ServeError
    from ascend_v4.serve.sampling import SamplingParams
    weights = random_weights_v41(CFG, seed=7)
    prompts = [_ids(11, 21), _ids(12, 9)]
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
        assert _rel(lg[r], ref["logits"][0]).max() < 1e-4, _rel(lg[r], ref["logits"][0])
        assert _rel(conf[r], ref["confidence"][0]) < 1e-4, (conf[r], ref["confidence"][0])
        print(f"row {r}: draft logits max rel L2 {_rel(lg[r], ref['logits'][0]).max():.1e}, confidence rel "
              f"{float(_rel(conf[r], ref['confidence'][0])):.1e}")

    # speculative (DSpark) generation == plain greedy generation
    n_new = 24
    plain = eng.generate(prompts, max_new_tokens=n_new, eos_id=None)
    spec = eng.generate(prompts, max_new_tokens=n_new, eos_id=None, speculative=True)
    np.testing.assert_array_equal(spec.tokens, plain.tokens)
    assert _rel(spec.logits, plain.logits).max() < 1e-4
    print(f"DSpark verify logits vs decode logits: max rel L2 {_rel(spec.logits, plain.logits).max():.1e}")
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
