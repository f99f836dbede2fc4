"""Muon family (`newton_schulz`): registry selection, parity of every backend against the float64 reference,
thread-count independence of the C++ kernel (bitwise), and the optimiser running it in graph mode."""
import os
import subprocess
import sys

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from ascend_v4.ops import parity, registry  # noqa: E402
from ascend_v4.ops.muon import cpp, reference  # noqa: E402
from ascend_v4.ops.muon.cases import CASES  # noqa: E402

needs_lib = pytest.mark.skipif(not cpp.available(), reason="C++ library not built (python ops/build.py muon)")
pytestmark = pytest.mark.usefixtures("ms_graph")   # device set before any kernel runs


def _ns64(x, steps=reference.NS_COEFFS, eps=1e-7):
    """Written out again here, per matrix: X (transposed if tall) / (||X||_F + eps); X <- aX + (bA + cA^2)X."""
    out = []
    for m in np.asarray(x, np.float64):
        t = m.shape[0] > m.shape[1]
        m = m.T if t else m
        m = m / (np.linalg.norm(m) + eps)
        for a, b, c in steps:
            A = m @ m.T
            m = a * m + (b * A + c * A @ A) @ m
        out.append(m.T if t else m)
    return np.stack(out)


def test_reference_matches_the_written_out_iteration_and_orthogonalises():
    rng = np.random.default_rng(0)
    for shp in [(3, 16, 48), (2, 40, 12)]:
        x = rng.standard_normal(shp)
        y = reference.newton_schulz(x)
        np.testing.assert_allclose(y, _ns64(x), atol=1e-12)
        sv = np.linalg.svd(y, compute_uv=False)
        assert np.all((sv > 0.6) & (sv < 1.25)), sv          # the hybrid iteration's band around 1


@needs_lib
def test_registry_prefers_cpp_on_cpu_and_falls_back(monkeypatch):
    monkeypatch.delenv("ASCEND_V4_BACKENDS", raising=False)
    assert registry.resolve("newton_schulz", device="CPU").name == "cpp"
    assert registry.resolve("newton_schulz", device="Ascend").name == "composite"
    monkeypatch.setattr(cpp, "LIB", "/nonexistent/_muon_cpu.so")
    assert registry.resolve("newton_schulz", device="CPU").name == "composite"


@needs_lib
@pytest.mark.parametrize("backend", ["cpp", "composite"])
def test_parity(backend):
    rows = parity.run(op="newton_schulz", backend=backend)
    assert len(rows) == len(CASES) and all(r.kind == "fwd" for r in rows)
    bad = [r for r in rows if not r.ok]
    assert not bad, parity.format_table(bad)


_CHILD = r"""
import sys, numpy as np
from ascend_v4.runtime import setup
setup("CPU", "pynative")
import mindspore as ms
from ascend_v4.ops.muon import cpp
rng = np.random.default_rng(5)
outs = [cpp.newton_schulz(ms.Tensor(rng.standard_normal(s).astype(np.float32))).asnumpy()
        for s in [(107, 32, 64), (1, 96, 300), (7, 128, 32)]]
np.savez(sys.argv[1], *outs)
"""


@needs_lib
def test_cpp_result_is_bitwise_independent_of_the_thread_count(tmp_path):
    """Bucket split over matrices (k > 1) and column-block split of one matrix's GEMMs (k == 1), 1 vs 3 threads."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    res = {}
    for n in (1, 3):
        env = dict(os.environ, MOE_CPU_THREADS=str(n), GLOG_v="3", OMP_WAIT_POLICY="PASSIVE")
        p = subprocess.run([sys.executable, str(script), str(tmp_path / f"t{n}.npz")], env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        res[n] = np.load(tmp_path / f"t{n}.npz")
    for k in res[1].files:
        np.testing.assert_array_equal(res[1][k], res[3][k], err_msg=k)


@needs_lib
def test_optimiser_uses_the_registry_backend_and_both_backends_agree(ms_graph):
    from mindspore import Parameter, Tensor
    from ascend_v4.train.optim import MuonAdamW
    rng = np.random.default_rng(2)
    shapes = {"layers.0.attn.wq_b.weight": (24, 8), "layers.0.ffn.experts.0.w1.weight": (6, 10),
              "layers.0.ffn.experts.1.w1.weight": (6, 10), "layers.0.attn_norm.weight": (8,)}
    init = {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}
    grads = [rng.normal(size=s).astype(np.float32) for s in shapes.values()]
    got = {}
    for backend in ("cpp", "composite"):
        params = [Parameter(Tensor(init[n]), name=n) for n in shapes]
        opt = MuonAdamW(params, 0.01, ns_backend=None if backend == "cpp" else "composite")
        assert opt.ns_backend.name == backend

        @ms.jit
        def step(*g):
            return opt(g)

        step(*[Tensor(g) for g in grads])
        got[backend] = {p.name: p.asnumpy() for p in params}
    for n in shapes:
        np.testing.assert_allclose(got["cpp"][n], got["composite"][n], atol=1e-6, rtol=0, err_msg=n)
        assert not np.array_equal(got["cpp"][n], init[n])
