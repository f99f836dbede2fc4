"""The real GroupedMatmulAv4 kernel body (ops/moe/ascendc/op_kernel/grouped_matmul_av4.cpp) runs on the CPU through
the intrinsic emulator's Cube unit -- GM->L1 ND2NZ, L1->L0A/L0B LoadData (transposing for [K, N] weights), Mmad
with float32 accumulation, Fixpipe NZ->ND with the float32->bf16/fp16 conversion -- over every grouped_matmul parity
case (ops/moe/cases.py) and larger multi-tile shapes, against the float64 NumPy reference (ops/moe/reference.py).

Output buffers start NaN-poisoned: rows past the last group must be written (zero) by the kernel. Operands are
rounded to the kernel's dtype first, so the only error left is the float32 accumulation and one output rounding.
Needs the CANN source trees in the cache; skipped otherwise, saying so."""
import os
import shutil

import numpy as np
import pytest

from ascend_v4.ops.moe import reference as R
from ascend_v4.ops.moe.cases import CASES
from ascendc_trees import GXX, ROOT, needs_trees, rhc

DRIVER = os.path.join(ROOT, "ops", "moe", "ascendc", "emu", "gmm_emu.cc")
pytestmark = needs_trees("to run kernels on CPU")
DTYPES = {"bf16": "bfloat16_t", "f16": "half", "f32": "float"}


def _round(a, dt):
    a = np.asarray(a, np.float32)
    if dt == "f16":
        return a.astype(np.float16).astype(np.float32)
    if dt == "bf16":
        u = a.view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
    return a


def _build(driver, dt, out):
    return rhc.build_emulator(driver, [f"DTYPE_X={DTYPES[dt]}"], out, cxx=GXX, core="AIC")


@pytest.fixture(scope="module")
def emu():
    out = os.path.join(rhc.generated_dir(), "emu_bin")
    os.makedirs(out, exist_ok=True)
    return {dt: _build(DRIVER, dt, os.path.join(out, f"gmm_{DTYPES[dt]}")) for dt in DTYPES}


def run_gmm(exe, d, x, w, gl, ltype, transpose, cores):
    import subprocess
    x.astype(np.float32).tofile(str(d / "x.bin"))
    w.astype(np.float32).tofile(str(d / "weight.bin"))
    np.asarray(gl, np.int64).tofile(str(d / "group_list.bin"))
    M, K = x.shape
    E = w.shape[0]
    N = w.shape[1] if transpose else w.shape[2]
    r = subprocess.run([exe, str(d), *map(str, (M, K, N, E, ltype, int(transpose), cores))],
                       capture_output=True, text=True, timeout=600)
    y = np.fromfile(str(d / "y.bin"), np.float32).reshape(M, N) if r.returncode == 0 else None
    return r, y


def _check(got, ref, dt, K):
    assert not np.isnan(got).any(), "unwritten (NaN-poisoned) output left"
    if dt == "f32":   # float32 products and sums in k order vs float64
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.sqrt(K))
    else:             # float32 accumulation, one rounding to the output type
        eps = 2.0 ** -8 if dt == "bf16" else 2.0 ** -11
        np.testing.assert_allclose(got, ref, rtol=eps, atol=eps * 1e-2)


GMM = [c for c in CASES if c.op == "grouped_matmul"]


@pytest.mark.parametrize("dt", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("case", GMM, ids=lambda c: c.name)
def test_grouped_matmul_matches_reference(emu, tmp_path, case, dt):
    (x, w, gl), kw = case.make(np.random.default_rng(case.seed))
    if dt == "f32" and not kw["transpose_weight"]:
        w = np.swapaxes(w, 1, 2)          # float32 weights go to the Cube as [E, N, K] (the host refuses [K, N])
        kw = dict(kw, transpose_weight=True)
    x, w = _round(x, dt), _round(w, dt)
    ref = R.grouped_matmul(x, w, gl, **kw)
    r, y = run_gmm(emu[dt], tmp_path, x, w, gl, kw["group_list_type"], kw["transpose_weight"], 3)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]
    _check(y, ref, dt, x.shape[1])


# multi-tile shapes: several baseM / baseN tiles per group, K tails (not a multiple of C0 or baseK), more tiles
# than cores (round-robin), unaligned N, an empty tail of rows
SHAPES = [([130, 0, 37], 300, 272, 0, False, 180), ([5, 140], 144, 40, 1, True, None),
          ([0, 17, 3, 0], 33, 129, 0, False, 30)]


@pytest.mark.parametrize("dt", ["bf16", "f16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s[0])}x{s[1]}x{s[2]}{'T' if s[4] else ''}")
def test_grouped_matmul_multi_tile(emu, tmp_path, shape, dt):
    counts, K, N, ltype, transpose, M = shape
    rng = np.random.default_rng(7)
    c = np.asarray(counts)
    M = M or int(c.sum())
    gl = np.cumsum(c) if ltype == 0 else c
    x = _round(rng.standard_normal((M, K)), dt)
    w = _round(rng.standard_normal((len(c), N, K) if transpose else (len(c), K, N)) / np.sqrt(K), dt)
    ref = R.grouped_matmul(x, w, gl, ltype, transpose)
    r, y = run_gmm(emu[dt], tmp_path, x, w, gl, ltype, transpose, 4)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]
    _check(y, ref, dt, K)


def test_float32_weight_must_be_transposed(emu, tmp_path):
    rng = np.random.default_rng(0)
    r, _ = run_gmm(emu["f32"], tmp_path, rng.standard_normal((4, 8)), rng.standard_normal((1, 8, 16)), [4], 0,
                   False, 2)
    assert r.returncode == 3 and "transpose_weight" in r.stderr, r.stderr


# Each Cube synchronisation of the kernel removed in turn from a copy of the source: the pipe model must report the
# race it opens, naming the pipes (the emulator sees what the device would get wrong).
MUTANTS = {
    "mte1_m": ("      WaitFlag<HardEvent::MTE1_M>(ev_.l0Ready[b]);\n", "Mmad (L0A) (pipe M) reads"),
    "mte2_mte1": ("      WaitFlag<HardEvent::MTE2_MTE1>(ev_.l1Ready[b]);\n", "(pipe MTE1) reads"),
    "m_fix": ("    WaitFlag<HardEvent::M_FIX>(ev_.cReady);\n    Fixpipe(yGm_[row * g.n + col]",
              "Fixpipe L0C->GM (pipe FIX) reads"),
    "m_mte1": ("      WaitFlag<HardEvent::M_MTE1>(ev_.l0Free[b]);\n", "(pipe MTE1) overwrites"),
}


def _mutant(name, cut, keep=""):
    from pathlib import Path
    base = Path(rhc.generated_dir()) / "emu_mutants" / f"gmm_{name}"
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "ops", "moe", "ascendc"), base / "ascendc",
                    ignore=shutil.ignore_patterns("__pycache__"))
    k = base / "ascendc" / "op_kernel" / "grouped_matmul_av4.cpp"
    text = k.read_text()
    assert text.count(cut) == 1, name
    k.write_text(text.replace(cut, keep))
    return _build(str(base / "ascendc" / "emu" / "gmm_emu.cc"), "bf16", str(base / "gmm_emu"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_removed_cube_sync_is_reported_as_a_race(tmp_path, name):
    cut, message = MUTANTS[name]
    exe = _mutant(name, cut, "    Fixpipe(yGm_[row * g.n + col]" if name == "m_fix" else "")
    rng = np.random.default_rng(1)
    x = _round(rng.standard_normal((40, 300)), "bf16")
    w = _round(rng.standard_normal((2, 300, 48)), "bf16")
    r, _ = run_gmm(exe, tmp_path, x, w, [20, 40], 0, False, 1)
    assert r.returncode == 3 and "emu: race:" in r.stderr and message in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_unpadded_k_tail_is_caught(tmp_path):
    """without the zero fill of the K tail, Mmad multiplies L1 padding into the result: the real TPipe fills on-chip
    memory with pseudo-random words in CPU-debug mode, so the result is garbage"""
    exe = _mutant("no_k_fill", "      if (kc != kp) {\n", "      if (false) {\n")
    rng = np.random.default_rng(2)
    x = _round(rng.standard_normal((20, 40)), "bf16")
    w = _round(rng.standard_normal((1, 40, 32)), "bf16")
    ref = R.grouped_matmul(x, w, [20])
    r, y = run_gmm(exe, tmp_path, x, w, [20], 0, False, 1)
    assert r.returncode == 0, r.stderr[-2000:]
    bad = ~np.isclose(y, ref, rtol=2.0 ** -8, atol=1e-3)
    assert bad.mean() > 0.9, bad.mean()
