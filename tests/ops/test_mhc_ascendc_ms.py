"""mHC backend "ascendc", MindSpore side on CPU: the registry rule (Ascend only, only with the CANN custom op
package installed) and the MindSpore-op backward used as its bprop, checked against the C++ backward kernels."""
import json

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from ascend_v4.ops import ascendc_package, registry  # noqa: E402
from ascend_v4.ops.mhc import ascendc, cpp  # noqa: E402
from ascend_v4.ops.mhc.ascendc import vjp  # noqa: E402


def test_registry_picks_ascendc_only_on_ascend_with_package(tmp_path, monkeypatch):
    monkeypatch.delenv("ASCEND_V4_BACKENDS", raising=False)
    monkeypatch.delenv("ASCEND_OPP_PATH", raising=False)
    monkeypatch.setenv("ASCEND_CUSTOM_OPP_PATH", str(tmp_path / "missing"))
    assert not ascendc.available()
    assert registry.resolve("hc_pre", device="Ascend").name == "composite"
    want = "needs an Ascend device and the installed CANN package 'ascend_v4_mhc'"
    with pytest.raises(registry.BackendError, match=want):
        registry.resolve("hc_pre", backend="ascendc")
    cfg = tmp_path / "vendor" / "op_impl" / "ai_core" / "tbe" / "config" / "ascend910b"
    cfg.mkdir(parents=True)
    (cfg / "aic-ascend910b-ops-info.json").write_text(json.dumps({t: {} for t in ascendc.OP_TYPES.values()}))
    monkeypatch.setenv("ASCEND_CUSTOM_OPP_PATH", str(tmp_path / "vendor"))
    assert ascendc.package_installed() and not ascendc.available()       # a package on a CPU machine: not picked
    monkeypatch.setattr(ascendc_package, "on_ascend", lambda: True)      # same rule as moe / attention: device too
    assert ascendc.available()
    for op in ("hc_pre", "hc_post", "hc_head"):
        assert registry.resolve(op, device="Ascend").name == "ascendc"
        assert registry.resolve(op, device="CPU").name != "ascendc"


@pytest.mark.skipif(not cpp.available(), reason="C++ library not built")
def test_ascend_bprop_matches_cpp_backward():
    """vjp.py (the Ascend bprop, MindSpore ops) against the C++ backward kernels, same forward residuals."""
    rng = np.random.default_rng(7)
    T, hc, D = 9, 4, 48
    M = (2 + hc) * hc
    t = lambda a: ms.Tensor(np.asarray(a, np.float32))  # noqa: E731
    x, fn = t(rng.standard_normal((T, hc, D))), t(rng.standard_normal((M, hc * D)) * 0.5)
    scale, base = t([0.8, 0.6, 1.2]), t(rng.standard_normal(M) * 0.3)
    cfg = t([20, 1e-6, 1e-6])
    y, post, comb, mix, rstd = cpp._PRE(x, fn, scale, base, cfg)
    gy, gp, gc = t(rng.standard_normal((T, D))), t(rng.standard_normal((T, hc))), t(rng.standard_normal((T, hc, hc)))
    want = cpp._PRE_BWD(x, fn, scale, base, cfg, mix, rstd, gy, gp, gc)
    got = vjp.hc_pre_backward(x, fn, scale, base, 20, 1e-6, mix, rstd, gy, gp, gc)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-4, atol=1e-4 * np.abs(b.asnumpy()).max())

    hfn, hscale = t(rng.standard_normal((hc, hc * D)) * 0.5), t([0.7])
    hbase, hcfg = t(rng.standard_normal(hc)), t([1e-6, 1e-6])
    _, hmix, hrstd = cpp._HEAD(x, hfn, hscale, hbase, hcfg)
    want = cpp._HEAD_BWD(x, hfn, hscale, hbase, hcfg, hmix, hrstd, gy)
    got = vjp.hc_head_backward(x, hfn, hscale, hbase, 1e-6, hmix, hrstd, gy)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-4, atol=1e-4 * np.abs(b.asnumpy()).max())

    f, res, go = t(rng.standard_normal((T, D))), t(rng.standard_normal((T, hc, D))), t(rng.standard_normal((T, hc, D)))
    want = cpp._POST_BWD(f, res, post, comb, go)
    got = vjp.hc_post_backward(f, res, post, comb, go)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-5 * np.abs(b.asnumpy()).max())
