"""The real Engram AscendC kernel bodies (ops/engram/ascendc/op_kernel: EngramGateAv4, EngramDequantAv4) run on the
CPU over the Engram parity cases (ops/engram/cases.py) plus V4.1-Flash and multi-core shapes, and match the float64
NumPy reference (ops/engram/reference.py).

How: the real asc-devkit headers in their CPU-debug mode over the project's intrinsic emulator
(ops/ascendc_common/emu), host tiling from ops/engram/ascendc/tiling/engram_tiling.cc, one forked process per core
(ops/engram/ascendc/emu/engram_emu.cc); a race between pipes fails the run. Needs the CANN source trees in the cache
(see test_ascendc_real_headers.py); skipped otherwise, saying so. Marked slow (CI budget): run with -m slow."""
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ascend_v4.ops.engram import reference as R
from ascend_v4.ops.engram.cases import CASES
from ascendc_trees import GXX, ROOT, mutant_copy, needs_trees, rhc

DRIVER = os.path.join(ROOT, "ops", "engram", "ascendc", "emu", "engram_emu.cc")
# slow: building the two emulator binaries takes ~1.5 min uncached (the runs themselves ~5 s); `pytest -m slow`
pytestmark = needs_trees("to run kernels on CPU") + [pytest.mark.slow]
CORES, UB = 48, 196608          # 910B1 / 910C die: 48 AIV cores, 192 KB UB


def _build(dtype, driver=DRIVER, name=None):
    out = os.path.join(rhc.generated_dir(), "emu_bin", name or f"engram_{dtype}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    return rhc.build_emulator(driver, [f"DTYPE_H={dtype}", f"DTYPE_Y={dtype}"], out, cxx=GXX)


@pytest.fixture(scope="module")
def emu():
    return {"f32": _build("float"), "bf16": _build("bfloat16_t")}


def _bf16(a):
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32).astype(np.float64)


def _save(d, **arrays):
    for k, v in arrays.items():
        np.ascontiguousarray(v, np.float32).tofile(str(d / f"{k}.bin"))


def _gate(exe, d, h, kv, q, k, alive, eps, cores=CORES, ub=UB):
    T, hc, D = h.shape
    weight = q.astype(np.float32) * k.astype(np.float32)          # what the binding passes (float32 product)
    _save(d, h=h, kv=kv, weight=weight, alive=alive)
    r = subprocess.run([exe, "gate", str(d), str(T), str(D), str(hc), repr(float(eps)), str(cores), str(ub)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]
    return np.fromfile(str(d / "out.bin"), np.float32).reshape(T, hc, D), r.stdout


def _dequant(exe, d, rows, scales, cores=CORES, ub=UB):
    N, L = rows.shape
    np.ascontiguousarray(rows, np.int8).tofile(str(d / "rows.bin"))
    _save(d, scales=scales)
    return subprocess.run([exe, "dequant", str(d), str(N), str(L), str(scales.shape[1]), str(cores), str(ub)],
                          capture_output=True, text=True, timeout=600)


def _inputs(case):
    args, kw = case.make(np.random.default_rng(case.seed))
    args = [np.asarray(a, np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a) for a in args]
    if case.bf16_inputs:
        args = [_bf16(a) if a.dtype.kind == "f" else a for a in args]
    return [a.astype(np.float32).astype(np.float64) if a.dtype.kind == "f" else a for a in args], kw


GATE_CASES = [c for c in CASES if c.op == "engram_gate"]


@pytest.mark.parametrize("case", GATE_CASES, ids=lambda c: c.name)
def test_gate_kernel_matches_reference(emu, tmp_path, case):
    (h, kv, q, k, alive), kw = _inputs(case)
    ref = R.engram_gate(h, kv, q, k, alive, **kw)
    if case.bf16_inputs:      # Ascend feeds bf16 streams: the bf16 kernel binary, output rounded once
        got, _ = _gate(emu["bf16"], tmp_path, h, kv, q, k, alive, kw["eps"])
        np.testing.assert_allclose(got, _bf16(ref), rtol=8e-3, atol=8e-3)
        return
    got, _ = _gate(emu["f32"], tmp_path, h, kv, q, k, alive, kw["eps"])
    np.testing.assert_allclose(got, ref, rtol=2e-5 * case.tol_scale, atol=2e-5 * case.tol_scale)
    dead = alive == 0
    np.testing.assert_array_equal(got[dead], h[dead].astype(np.float32))     # dead tokens: streams unchanged


def test_gate_kernel_v41_flash_width_chunks_and_tiles(emu, tmp_path):
    """V4.1-Flash's width (hc 4, D 4096) in float32 with a UB small enough that D is split into chunks, and more
    tokens per core than one statistics tile (16): every path of the tiling at once, against the reference."""
    rng = np.random.default_rng(7)
    T, hc, D = 40, 4, 4096
    h = rng.standard_normal((T, hc, D)).astype(np.float32).astype(np.float64)
    kv = rng.standard_normal((T, (hc + 1) * D)).astype(np.float32).astype(np.float64)
    q = (1 + 0.3 * rng.standard_normal((hc, D))).astype(np.float32).astype(np.float64)
    k = (1 + 0.3 * rng.standard_normal((hc, D))).astype(np.float32).astype(np.float64)
    alive = (rng.random(T) > 0.2).astype(np.float64)
    ref = R.engram_gate(h, kv, q, k, alive, eps=1e-20)
    got, out = _gate(emu["f32"], tmp_path, h, kv, q, k, alive, 1e-20, cores=2, ub=96 * 1024)
    assert "tileT=16" in out and "dChunks=1 " not in out, out
    np.testing.assert_allclose(got, ref, rtol=4e-5, atol=4e-5)


DEQUANT_CASES = [c for c in CASES if c.op == "engram_dequant"]


@pytest.mark.parametrize("case", DEQUANT_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_dequant_kernel_matches_reference(emu, tmp_path, case, dt):
    (rows, scales), _ = _inputs(case)
    rows = np.asarray(rows).astype(np.int8)
    ref = R.engram_dequant(rows, scales)
    r = _dequant(emu[dt], tmp_path, rows, scales)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]
    got = np.fromfile(str(tmp_path / "y.bin"), np.float32).reshape(rows.shape)
    if dt == "f32":     # int8 x float32 scale: one float32 rounding
        np.testing.assert_allclose(got, ref, rtol=1e-7, atol=0)
    else:               # then one bf16 rounding (nearest even)
        np.testing.assert_array_equal(got, _bf16(ref.astype(np.float32)))


@pytest.mark.parametrize("g", [8, 16, 32, 64])
def test_dequant_kernel_group_sizes_multi_core_and_chunks(emu, tmp_path, g):
    """V4.1-Flash row width (24 columns x 256) for a prefill-sized batch, every supported group size, a UB small
    enough for several chunks per core and a group count that is not a multiple of 8 per core."""
    rng = np.random.default_rng(g)
    N, L = 37, 24 * 256 // (2 if g == 8 else 1)
    rows = rng.integers(-127, 128, (N, L)).astype(np.int8)
    scales = (rng.random((N, L // g)) * 0.02).astype(np.float32).astype(np.float64)
    r = _dequant(emu["f32"], tmp_path, rows, scales, cores=7, ub=48 * 1024)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]
    got = np.fromfile(str(tmp_path / "y.bin"), np.float32).reshape(N, L)
    np.testing.assert_allclose(got, R.engram_dequant(rows, scales), rtol=1e-7, atol=0)


def test_dequant_refuses_unsupported_groups(emu, tmp_path):
    rows = np.zeros((2, 48), np.int8)
    r = _dequant(emu["f32"], tmp_path, rows, np.ones((2, 4)))          # g = 12: not a multiple of 8
    assert r.returncode == 3 and "tiling" in r.stderr and "g % 8" in r.stderr, r.stderr


def test_emulator_reports_a_missing_vector_barrier(tmp_path):
    """The pipe model has teeth on this kernel: the gate's output without the PipeBarrier<PIPE_V> between the Muls
    producing g * value and the Add reading it fails with a race report."""
    dst = Path(mutant_copy("engram", "engram_no_barrier"))
    k = dst / "op_kernel" / "engram_gate_av4.cpp"
    text = k.read_text()
    old = "      Muls(acc, vf, gate_[j * hc + s], dLen);\n      PipeBarrier<PIPE_V>();\n"
    assert text.count(old) == 1
    k.write_text(text.replace(old, "      Muls(acc, vf, gate_[j * hc + s], dLen);\n"))
    exe = _build("float", driver=str(dst / "emu" / "engram_emu.cc"), name="engram_mutant_no_barrier")
    rng = np.random.default_rng(0)
    h, kv = rng.standard_normal((3, 4, 64)), rng.standard_normal((3, 5 * 64))
    _save(tmp_path, h=h, kv=kv, weight=np.ones((4, 64)), alive=np.ones(3))
    r = subprocess.run([exe, "gate", str(tmp_path), "3", "64", "4", "1e-20", "48", str(UB)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 3 and "race:" in r.stderr and "PipeBarrier<PIPE_V>" in r.stderr, r.stderr[-2000:]
