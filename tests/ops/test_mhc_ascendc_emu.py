"""The real mHC AscendC kernel bodies (ops/mhc/ascendc/op_kernel: hc_pre, hc_post, hc_head) run on the CPU over every
mHC parity case (ops/mhc/cases.py) and match the float64 NumPy reference (ops/mhc/reference.py).

How: the real asc-devkit headers in their CPU-debug mode (TPipe, TQue, DataCopyPad, Muls, WholeReduceSum, ... are
the real code) over the project's intrinsic emulator (ops/ascendc_common/emu), host tiling from
ops/mhc/ascendc/tiling/hc_tiling.cc, one forked process per core (ops/mhc/ascendc/emu/mhc_emu.cc). The emulator's
pipe model fails the run on a race (a vector op reading a result of another without PipeBarrier<PIPE_V>, a copy
reading UB that another pipe wrote with no SetFlag/WaitFlag). Needs the CANN source trees in the cache (see
test_ascendc_real_headers.py); skipped otherwise, saying so."""
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ascend_v4.ops.mhc import reference as R
from ascend_v4.ops.mhc.cases import CASES
from ascendc_trees import GXX, ROOT, mutant_copy, needs_trees, rhc

DRIVER = os.path.join(ROOT, "ops", "mhc", "ascendc", "emu", "mhc_emu.cc")
pytestmark = needs_trees("to run kernels on CPU")
CORES, UB = 48, 196608          # 910B1 / 910C die: 48 AIV cores, 192 KB UB


def _build(dtype, driver=DRIVER, name=None):
    out = os.path.join(rhc.generated_dir(), "emu_bin", name or f"mhc_{dtype}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    return rhc.build_emulator(driver, [f"DTYPE_F={dtype}", f"DTYPE_X={dtype}"], out, cxx=GXX, core="MIX")


@pytest.fixture(scope="module")
def emu():
    return {"f32": _build("float"), "bf16": _build("bfloat16_t")}


def _bf16(a):
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def _run(exe, op, d, T, D, hc):
    return subprocess.run([exe, op, str(d), str(T), str(D), str(hc), str(CORES), str(UB)], capture_output=True,
                          text=True, timeout=600)


def _save(d, **arrays):
    for k, v in arrays.items():
        np.ascontiguousarray(v, np.float32).tofile(str(d / f"{k}.bin"))


def _load(d, name, shape):
    return np.fromfile(str(d / f"{name}.bin"), np.float32).reshape(shape)


SLOW = {("hc_pre", "T33_D4096"), ("hc_pre", "T4096_D16_large_T")}    # ~10 s each in the emulator


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if (c.op, c.name) in SLOW else c
                                  for c in CASES if c.op != "hc_mixes"],          # hc_mixes: no kernel (V4.1)
                         ids=lambda c: f"{c.op}-{c.name}")
def test_kernel_matches_reference(emu, tmp_path, case):
    args, kw = case.make(np.random.default_rng(case.seed))
    args = [np.asarray(a, np.float64) for a in args]
    if case.bf16_inputs:              # Ascend feeds bf16 activations: round, run the bf16 kernel binary
        args = [_bf16(a).astype(np.float64) for a in args]
    exe, dt = (emu["bf16"], "bf16") if case.bf16_inputs else (emu["f32"], "f32")
    if case.op == "hc_post":
        f, residual, post, comb = args
        T, hc, D = residual.shape
        _save(tmp_path, f=f, residual=residual, post=post, comb=comb)
        outs = {"out": R.hc_post(f, residual, post, comb)}
        op = "post"
    else:
        x, fn, scale, base = args
        T, hc, D = x.shape
        if case.op == "hc_pre":
            y, post, comb = R.hc_pre(x, fn, scale, base, **kw)
            outs = {"y": y, "post": post, "comb": comb}
            cfg = [kw["iters"], kw["hc_eps"], kw["norm_eps"]]
            op = "pre"
        else:
            outs = {"y": R.hc_head(x, fn, scale, base, **kw)}
            cfg = [kw["hc_eps"], kw["norm_eps"]]
            op = "head"
        _save(tmp_path, x=x, fn=fn, scale=scale, base=base, cfg=np.array(cfg))
    r = _run(exe, op, tmp_path, T, D, hc)
    if D % 16:
        # the AscendC tiling needs 32-byte rows of bf16 (D % 16 == 0): refused on the host, before any launch
        assert r.returncode == 3 and "tiling" in r.stderr and "D % 16" in r.stderr, r.stderr
        return
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]
    for name, ref in outs.items():
        got = _load(tmp_path, "out" if name == "out" else name, ref.shape)
        # float32 outputs (post, comb, mix, rstd) at float32 accuracy with bf16 streams too; bf16 outputs carry one
        # rounding
        tol = case.tol_scale * (2e-5 if dt == "f32" or name not in ("y", "out") else 1e-2)
        if dt == "bf16" and name in ("y", "out"):
            ref = _bf16(ref)               # the kernel writes bf16 (round to nearest even)
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol, err_msg=f"{case.op}/{case.name}: {name}")


def test_emulator_reports_a_missing_vector_barrier(tmp_path):
    """The pipe model has teeth: hc_post without the PipeBarrier<PIPE_V> between Muls and the Axpy that reads its
    result fails with a race report (and the unmodified kernel passes the same inputs above)."""
    dst = Path(mutant_copy("mhc", "mhc_no_barrier"))
    k = dst / "op_kernel" / "hc_post_kernel.h"
    text = k.read_text()
    old = "      Muls(acc, ff, post_[k], dLen);\n      PipeBarrier<PIPE_V>();\n"
    assert old in text
    k.write_text(text.replace(old, "      Muls(acc, ff, post_[k], dLen);\n"))
    exe = _build("float", driver=str(dst / "emu" / "mhc_emu.cc"), name="mhc_mutant_no_barrier")
    rng = np.random.default_rng(0)
    _save(tmp_path, f=rng.standard_normal((3, 64)), residual=rng.standard_normal((3, 4, 64)),
          post=rng.random((3, 4)), comb=rng.random((3, 4, 4)))
    r = _run(exe, "post", tmp_path, 3, 64, 4)
    assert r.returncode == 3 and "race: vaxpy (pipe V) reads UB" in r.stderr and "PipeBarrier<PIPE_V>" in r.stderr, \
        r.stderr[-2000:]


# hc_pre's projection runs on the Cube unit (hc_pre_cube.h): each of its Cube waits removed in turn is a race
CUBE_MUTANTS = {
    "mte1_m": ("      WaitFlag<HardEvent::MTE1_M>(ev_.l0Ready[b]);\n", "Mmad (L0A) (pipe M) reads"),
    "m_fix": ("    WaitFlag<HardEvent::M_FIX>(ev_.cReady);\n", "Fixpipe L0C->GM (pipe FIX) reads"),
    "mte2_mte1": ("      WaitFlag<HardEvent::MTE2_MTE1>(ev_.l1Ready[b]);\n", "(pipe MTE1) reads"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CUBE_MUTANTS))
def test_hc_pre_cube_sync_removed_is_a_race(tmp_path, name):
    cut, message = CUBE_MUTANTS[name]
    dst = Path(mutant_copy("mhc", f"mhc_cube_{name}"))
    k = dst / "op_kernel" / "hc_pre_cube.h"
    text = k.read_text()
    assert text.count(cut) == 1, name
    k.write_text(text.replace(cut, ""))
    exe = _build("float", driver=str(dst / "emu" / "mhc_emu.cc"), name=f"mhc_cube_{name}")
    rng = np.random.default_rng(0)
    T, hc, D = 5, 4, 64
    M = (2 + hc) * hc
    _save(tmp_path, x=rng.standard_normal((T, hc, D)), fn=rng.standard_normal((M, hc * D)) * 0.1,
          scale=np.ones(3), base=np.zeros(M), cfg=np.array([3, 1e-6, 1e-6]))
    r = _run(exe, "pre", tmp_path, T, D, hc)
    assert r.returncode == 3 and "emu: race:" in r.stderr and message in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("T", [3, 40])
def test_hc_pre_bf16_streams_with_float32_fn(emu, tmp_path, T):
    """The real situation: bf16 streams, float32 fn. T=40: the Cube multiplies bf16 by bf16, so the kernel splits fn
    into bf16 hi + lo and projects onto both; T=3 (decode): the vector cores cast x to float32 and the Cube projects
    onto fn itself (tiling xCast). The float32 outputs must match the float64 reference at float32 accuracy, where
    projecting onto bf16(fn) alone would be off by far more (checked on the reference itself)."""
    rng = np.random.default_rng(T)
    hc, D = 4, 256
    M = (2 + hc) * hc
    x = _bf16(rng.standard_normal((T, hc, D))).astype(np.float64)
    fn = rng.standard_normal((M, hc * D)) / np.sqrt(hc * D)
    scale, base = np.array([0.7, 1.3, 2.1]), rng.standard_normal(M) * 0.1
    kw = dict(iters=20, hc_eps=1e-6, norm_eps=1e-6)
    fn32 = fn.astype(np.float32).astype(np.float64)
    y, post, comb = R.hc_pre(x, fn32, scale, base, **kw)
    _, post_b, comb_b = R.hc_pre(x, _bf16(fn32).astype(np.float64), scale, base, **kw)
    assert np.abs(comb_b - comb).max() > 1e-4            # a bf16 fn is visibly off
    _save(tmp_path, x=x, fn=fn32, scale=scale, base=base, cfg=np.array([kw["iters"], kw["hc_eps"], kw["norm_eps"]]))
    r = _run(emu["bf16"], "pre", tmp_path, T, D, hc)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]
    np.testing.assert_allclose(_load(tmp_path, "post", post.shape), post, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(_load(tmp_path, "comb", comb.shape), comb, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(_load(tmp_path, "y", y.shape), _bf16(y), rtol=1e-2, atol=1e-2)
