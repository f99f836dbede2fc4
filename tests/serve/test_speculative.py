"""MTP speculative decoding: draft one token with the MTP block, verify with the main model, accept or roll back.

The demo checkpoint's random MTP block almost never agrees with the main model, so acceptance is exercised with an
oracle draft too (the main model's own greedy continuation, with every third draft deliberately wrong): greedy
speculative decoding must reproduce plain greedy decoding token for token, whatever is accepted or rejected.
"""
import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spec_engine(ms_graph, tiny_cfg, tiny_weights):
    from ascend_v4.serve import Engine
    return Engine(tiny_cfg, tiny_weights, max_batch=2, max_len=128, prefill_chunk=16, mtp=True)


def _prompts(cfg):
    rng = np.random.default_rng(21)
    return [rng.integers(2, cfg.vocab_size, 9), rng.integers(2, cfg.vocab_size, 19)]


def test_mtp_draft_greedy_equals_plain_greedy(spec_engine, tiny_cfg):
    from ascend_v4.serve import SamplingParams
    p = _prompts(tiny_cfg)
    plain = spec_engine.generate(p, max_new_tokens=30, sampling=SamplingParams(greedy=True), eos_id=None)
    spec = spec_engine.generate(p, max_new_tokens=30, sampling=SamplingParams(greedy=True), eos_id=None,
                                speculative=True)
    assert np.array_equal(plain.tokens, spec.tokens)
    np.testing.assert_allclose(spec.logits, plain.logits, rtol=1e-4, atol=1e-4)
    assert spec.stats["drafts"] > 0 and 0.0 <= spec.stats["acceptance_rate"] <= 1.0


def test_accept_and_reject_paths_with_an_oracle_draft(spec_engine, tiny_cfg, monkeypatch):
    from ascend_v4.serve import SamplingParams
    p = _prompts(tiny_cfg)
    plain = spec_engine.generate(p, max_new_tokens=40, sampling=SamplingParams(greedy=True), eos_id=None)
    full = [np.concatenate([p[r], plain.row(r)]) for r in range(2)]
    real = spec_engine.run_mtp
    calls = {"n": 0}

    def oracle(h, next_ids, pos0, nvalid):
        out = real(h, next_ids, pos0, nvalid).asnumpy()
        z = np.zeros_like(out)
        for r in range(2):
            if nvalid[r]:
                t = int(pos0[r] + nvalid[r] - 1) + 2          # the pair at position t predicts token t + 2
                if t < full[r].size:
                    tok = full[r][t] if calls["n"] % 3 else (full[r][t] + 1) % tiny_cfg.vocab_size
                    z[r, tok] = 1.0
        calls["n"] += 1
        import mindspore as ms
        return ms.Tensor(z) if next_ids.shape[1] == 2 else out

    monkeypatch.setattr(spec_engine, "run_mtp", oracle)
    spec = spec_engine.generate(p, max_new_tokens=40, sampling=SamplingParams(greedy=True), eos_id=None,
                                speculative=True)
    assert np.array_equal(plain.tokens, spec.tokens)
    np.testing.assert_allclose(spec.logits, plain.logits, rtol=1e-4, atol=1e-4)
    assert 0.4 < spec.stats["acceptance_rate"] < 0.9        # both paths taken many times
    assert spec.stats["steps"] < plain.stats["steps"]


def test_speculative_sampling_is_seeded(spec_engine, tiny_cfg):
    from ascend_v4.serve import SamplingParams
    p = _prompts(tiny_cfg)
    sp = SamplingParams(temperature=0.7, top_p=0.9, seed=4)
    a = spec_engine.generate(p, max_new_tokens=12, sampling=sp, speculative=True, eos_id=None)
    b = spec_engine.generate(p, max_new_tokens=12, sampling=sp, speculative=True, eos_id=None)
    assert np.array_equal(a.tokens, b.tokens)
