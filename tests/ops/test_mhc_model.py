"""The foundation model runs with either mHC backend and gives the same logits (within float32 noise)."""
import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from ascend_v4 import load_config  # noqa: E402
from ascend_v4.model import Transformer  # noqa: E402
from ascend_v4.ops import registry  # noqa: E402
from ascend_v4.ops.mhc import cpp  # noqa: E402
from ascend_v4.weights import load_into  # noqa: E402

COMPOSITE = "*=composite"
CPP = "*=composite,hc_pre=cpp,hc_post=cpp,hc_head=cpp"    # only mHC differs between the two runs


def _random_weights(model, cfg, seed=0):
    rng = np.random.default_rng(seed)
    weights = {}
    for p in model.get_parameters():
        if p.dtype == ms.int32:   # hash-routing table: distinct experts per token id
            a = np.stack([rng.permutation(cfg.n_routed_experts)[:cfg.n_activated_experts] for _ in range(p.shape[0])])
        elif p.name.endswith("norm.weight"):
            a = 1 + 0.1 * rng.standard_normal(p.shape)
        elif "hc_" in p.name and p.name.endswith("scale"):
            a = 0.5 + 0.1 * rng.standard_normal(p.shape)
        else:
            a = rng.standard_normal(p.shape) * (1 / np.sqrt(p.shape[-1]) if len(p.shape) > 1 else 0.1)
        weights[p.name] = a.astype(np.int64 if p.dtype == ms.int32 else np.float32)
    load_into(model, weights)
    return model


@pytest.mark.skipif(not cpp.available(), reason="C++ library not built (python ops/build.py mhc)")
@pytest.mark.slow   # > 20 s: runs in .ci/run, so the default suite stays under 10 minutes
def test_tiny_model_same_logits_with_cpp_and_composite(monkeypatch):
    cfg = load_config("tiny")
    ids = ms.Tensor(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 16)).astype(np.int32))
    logits = {}
    for name, pins in (("composite", COMPOSITE), ("cpp", CPP)):
        monkeypatch.setenv("ASCEND_V4_BACKENDS", pins)      # Cells resolve their backends at construction
        model = _random_weights(Transformer(cfg, max_seq_len=32, with_mtp=False), cfg)
        assert registry.selected()["hc_pre"] == name and registry.selected()["hc_head"] == name
        logits[name] = model(ids).asnumpy()
    a, b = logits["composite"], logits["cpp"]
    assert a.shape == (2, 16, cfg.vocab_size) and np.isfinite(b).all()
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    assert (a.argmax(-1) == b.argmax(-1)).all()
