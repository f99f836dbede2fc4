"""Host-side sampling: distributions after temperature / top-k / top-p, seeded reproducibility, draft acceptance."""
import numpy as np
import pytest

from ascend_v4.serve.sampling import Sampler, SamplingError, SamplingParams, distribution


def test_distribution_filters():
    z = np.array([3.0, 1.0, 2.0, 0.0, -1.0])
    p = distribution(z, SamplingParams())
    np.testing.assert_allclose(p, np.exp(z) / np.exp(z).sum())
    assert distribution(z, SamplingParams(greedy=True)).tolist() == [1, 0, 0, 0, 0]
    pk = distribution(z, SamplingParams(top_k=2))
    assert set(np.flatnonzero(pk)) == {0, 2} and abs(pk.sum() - 1) < 1e-12
    # top-p: smallest prefix with mass >= p (here the first two tokens hold 0.66 + 0.24)
    pp = distribution(z, SamplingParams(top_p=0.8))
    assert set(np.flatnonzero(pp)) == {0, 2}
    cold = distribution(z, SamplingParams(temperature=0.1))
    assert cold[0] > 0.99
    assert distribution(z, SamplingParams(top_k=1)).tolist() == [1, 0, 0, 0, 0]


def test_seeded_sampling_is_reproducible_and_matches_the_distribution():
    z = np.log(np.array([0.5, 0.3, 0.2]))
    a = Sampler(SamplingParams(seed=7), rows=2)
    b = Sampler(SamplingParams(seed=7), rows=2)
    xa = [a.sample(1, z) for _ in range(3000)]
    xb = [b.sample(1, z) for _ in range(3000)]
    assert xa == xb
    freq = np.bincount(xa, minlength=3) / len(xa)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.03)
    c = Sampler(SamplingParams(seed=8), rows=2)
    assert [c.sample(1, z) for _ in range(100)] != xa[:100]


def test_speculative_acceptance_is_exact_sampling():
    # point-mass draft d accepted with prob p(d), else resampled from p without d: overall a sample from p
    z = np.log(np.array([0.6, 0.25, 0.15]))
    s = Sampler(SamplingParams(seed=1), rows=1)
    out = []
    for _ in range(6000):
        r = s.accept_draft(0, z, 1)
        out.append(1 if r is None else r)
    np.testing.assert_allclose(np.bincount(out, minlength=3) / len(out), [0.6, 0.25, 0.15], atol=0.02)
    g = Sampler(SamplingParams(greedy=True), rows=1)
    assert g.accept_draft(0, z, 0) is None and g.accept_draft(0, z, 2) == 0


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_parameters(kw):
    with pytest.raises(SamplingError):
        SamplingParams(**kw).validate()
