"""The real MoE AscendC kernel bodies run on the CPU over the MoE parity cases (ops/moe/cases.py) and match the float64
NumPy reference (ops/moe/reference.py): moe_finalize_routing (every case) and moe_gating_topk (every case).

Same machinery as test_mhc_ascendc_emu.py: real asc-devkit headers in CPU-debug mode over the project's intrinsic
emulator with its pipe/race model (ops/ascendc_common/emu), host tiling from ops/moe/ascendc/tiling/moe_tiling.cc,
one forked process per core (ops/moe/ascendc/emu/moe_emu.cc); moe_init_routing with SyncAll across the forked
cores. grouped_matmul (the Cube unit) runs in test_gmm_ascendc_emu.py. Needs the CANN source trees in the cache;
skipped otherwise, saying so."""
import os
import shutil
import subprocess

import numpy as np
import pytest

from ascend_v4.ops.moe import reference as R
from ascend_v4.ops.moe.cases import CASES
from ascendc_trees import GXX, ROOT, needs_trees, rhc

DRIVER = os.path.join(ROOT, "ops", "moe", "ascendc", "emu", "moe_emu.cc")
pytestmark = needs_trees("to run kernels on CPU")
CORES, UB = 48, 196608


@pytest.fixture(scope="module")
def emu():
    out = os.path.join(rhc.generated_dir(), "emu_bin")
    os.makedirs(out, exist_ok=True)
    return {"f32": rhc.build_emulator(DRIVER, ["DTYPE_X=float"], os.path.join(out, "moe_float"), cxx=GXX),
            "bf16": rhc.build_emulator(DRIVER, ["DTYPE_X=bfloat16_t"], os.path.join(out, "moe_bfloat16_t"), cxx=GXX)}


def _bf16(a):
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def _save(d, **arrays):
    for k, v in arrays.items():
        if v is not None:
            v = np.asarray(v)
            v.astype(np.int32 if v.dtype.kind in "iu" else np.float32).tofile(str(d / f"{k}.bin"))


def _run(exe, *args):
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=600)


FINALIZE = [c for c in CASES if c.op == "moe_finalize_routing"]
GATING = [c for c in CASES if c.op == "moe_gating_topk"]


@pytest.mark.parametrize("dt", ["f32", "bf16"])
@pytest.mark.parametrize("case", FINALIZE, ids=lambda c: c.name)
def test_finalize_matches_reference(emu, tmp_path, case, dt):
    (ex, scales, row, x1, x2, bias, eidx), kw = case.make(np.random.default_rng(case.seed))
    if dt == "bf16":                      # data tensors in bf16; scales stay float32
        ex, x1, x2, bias = [None if a is None else _bf16(a) for a in (ex, x1, x2, bias)]
    ref = R.moe_finalize_routing(ex, scales, row, x1, x2, bias, eidx, **kw)
    T, K = scales.shape
    H = ex.shape[-1]
    rows = int(np.prod(ex.shape[:-1]))
    _save(tmp_path, expanded_x=ex, scales=scales, row_idx=row, x1=x1, x2=x2, bias=bias, expert_idx=eidx)
    r = _run(emu[dt], "finalize", tmp_path, T, K, H, rows, kw["drop_pad_mode"], int(x1 is not None),
             int(x2 is not None), int(bias is not None), CORES, UB)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]
    got = np.fromfile(str(tmp_path / "out.bin"), np.float32).reshape(T, H)
    if dt == "f32":
        np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6)
    else:                                 # float32 accumulation, one bf16 rounding of the result
        np.testing.assert_allclose(got, _bf16(ref), rtol=8e-3, atol=8e-3)


@pytest.mark.parametrize("case", GATING, ids=lambda c: c.name)
def test_gating_matches_reference(emu, tmp_path, case):
    (x, bias), kw = case.make(np.random.default_rng(case.seed))
    x = np.asarray(x, np.float32)         # router logits are float32 (the OpDef's only dtype)
    y_ref, idx_ref, s_ref = R.moe_gating_topk(x.astype(np.float64), bias, **kw)
    T, E = x.shape
    k = kw["k"]
    hashed = "tid2eid" in kw
    table = np.asarray(kw["tid2eid"]) if hashed else None
    _save(tmp_path, x=x, bias=bias, ids=kw.get("input_ids"), table=table)
    r = _run(emu["f32"], "gating", tmp_path, T, E, k, R.norm_type_id(kw.get("norm_type", 2)),
             kw.get("group_count", 1), kw.get("k_group", 1), kw.get("group_select_mode", 0), int(bias is not None),
             int(hashed), table.shape[1] if hashed else 0, repr(float(kw.get("routed_scaling_factor", 1.0))),
             "1e-20", CORES, UB)
    if E // kw.get("group_count", 1) % 8:
        # groups must be 32-byte aligned in UB (8 floats): refused by the host tiling, before any launch
        assert r.returncode == 3 and "multiple of 8" in r.stderr, r.stderr
        return
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]
    y = np.fromfile(str(tmp_path / "y.bin"), np.float32).reshape(T, k)
    idx = np.fromfile(str(tmp_path / "idx.bin"), np.int32).reshape(T, k)
    s = np.fromfile(str(tmp_path / "score.bin"), np.float32).reshape(T, E)
    # float32 ln(1 + exp(-|l|)) (the kernel's overflow-free softplus) carries ~1e-6 absolute error for large |l|
    np.testing.assert_allclose(s, s_ref, rtol=1e-5, atol=3e-6)
    np.testing.assert_array_equal(idx, idx_ref)   # the selection, ties -> lowest expert id, exactly
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)


INIT = [c for c in CASES if c.op == "moe_init_routing"]


@pytest.mark.parametrize("dt", ["f32", "bf16"])
@pytest.mark.parametrize("case", INIT, ids=lambda c: c.name)
def test_init_routing_matches_reference(emu, tmp_path, case, dt):
    """multi-core counting sort with SyncAll between the histogram and the scatter (forked cores, shared GM)"""
    (x, ids), kw = case.make(np.random.default_rng(case.seed))
    if dt == "bf16":
        x = _bf16(x)
    ex_ref, row_ref, cnt_ref, before_ref = R.moe_init_routing(np.asarray(x, np.float64), ids, **kw)
    T, k = ids.shape
    H = x.shape[1]
    _save(tmp_path, x=x, expert_idx=ids)
    r = _run(emu[dt], "init", tmp_path, T, k, H, kw["expert_num"], kw["expert_capacity"], kw["active_num"],
             kw["drop_pad_mode"], kw["expert_tokens_count_or_cumsum_flag"], CORES, UB)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]
    np.testing.assert_array_equal(np.fromfile(str(tmp_path / "row_idx.bin"), np.int32), row_ref)
    np.testing.assert_array_equal(np.fromfile(str(tmp_path / "count.bin"), np.int32), cnt_ref)
    np.testing.assert_array_equal(np.fromfile(str(tmp_path / "before.bin"), np.int32), before_ref)
    ex = np.fromfile(str(tmp_path / "expanded_x.bin"), np.float32).reshape(ex_ref.reshape(-1, H).shape)
    np.testing.assert_array_equal(ex, ex_ref.reshape(-1, H).astype(np.float32))   # a pure copy: exact


# The defects of issue #15 that the pipe model sees, put back one at a time into a copy of the sources: each run
# must fail with a race report naming the pipes (failing-before tests of the fixes).
OLD_FORMS = {
    "init_routing_vecin_tque": (
        "moe_init_routing_av4.cpp",
        "TQueBind<TPosition::VECIN, TPosition::VECOUT, 2> copyQue_;", "TQue<TPosition::VECIN, 2> copyQue_;",
        ("init", 12, 2, 16, 4, 0, 0, 0, 1), "(pipe MTE3) reads UB"),
    "gating_score_no_barrier": (
        "moe_gating_topk_av4.cpp",
        "      Abs(tmp_, l, E);\n      Maxs(s, l, 0.0f, E);\n      PipeBarrier<PIPE_V>();\n",
        "      Abs(tmp_, l, E);\n      Maxs(s, l, 0.0f, E);\n",
        ("gating", 8, 16, 4, 2, 1, 1, 0, 0, 0, 0, "1.0", "1e-20"), "with no PipeBarrier<PIPE_V>"),
    "finalize_accumulate_no_barrier": (
        "moe_finalize_routing_av4.cpp",
        "    PipeBarrier<PIPE_V>();   // the previous Accumulate / Duplicate on acc_ (and its read of castBuf_) is done\n",
        "", ("finalize", 3, 2, 16, 6, 2, 1, 0, 0), "with no PipeBarrier<PIPE_V>"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OLD_FORMS))
def test_old_form_is_reported_as_a_race(tmp_path, name):
    from pathlib import Path
    fname, new, old, args, message = OLD_FORMS[name]
    src = os.path.join(ROOT, "ops", "moe", "ascendc")
    base = Path(rhc.generated_dir()) / "emu_mutants" / f"moe_{name}"
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(src, base / "ascendc", ignore=shutil.ignore_patterns("__pycache__"))
    k = base / "ascendc" / "op_kernel" / fname
    text = k.read_text()
    assert new in text, name
    k.write_text(text.replace(new, old))
    exe = rhc.build_emulator(str(base / "ascendc" / "emu" / "moe_emu.cc"), ["DTYPE_X=float"],
                             str(base / "moe_emu"), cxx=GXX)
    rng = np.random.default_rng(0)
    op = args[0]
    if op == "init":
        _save(tmp_path, x=rng.standard_normal((12, 16)), expert_idx=rng.integers(0, 4, (12, 2)).astype(np.int32))
    elif op == "gating":
        _save(tmp_path, x=rng.standard_normal((8, 16)))
    else:
        _save(tmp_path, expanded_x=rng.standard_normal((6, 16)), scales=rng.random((3, 2)),
              row_idx=rng.permutation(6).astype(np.int32), x1=rng.standard_normal((3, 16)))
    r = _run(exe, op, tmp_path, *args[1:], CORES, UB)
    assert r.returncode == 3 and "emu: race:" in r.stderr and message in r.stderr, r.stderr[-2000:]
