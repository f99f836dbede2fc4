"""AscendC side of the attention family, without hardware or a CANN toolkit (everything skips cleanly without g++):

* host tiling (plain C++) over thousands of shapes and platforms: UB budget, 32-byte alignment, core split, tails;
* op_kernel sources type-check (g++ -fsyntax-only) against the shared AscendC stand-in (ops/ascendc_common/
  kernel_operator.h) plus decls_attention.h, for float32, bfloat16 and float16 GM dtypes; op_host sources against
  the host section of decls_attention.h;
* the kernels *run* on the CPU and match the NumPy reference, float32 and bf16 GM: over the REAL asc-devkit headers
  and the project's intrinsic emulator with its pipe/race model (ops/ascendc_common/emu, one forked process per
  core); these tests need the CANN source trees cached (real_headers_check.py --setup) and skip, saying so, without.
"""
import importlib.util
import os
import shutil
import subprocess

import numpy as np
import pytest

from ascend_v4.ops.attention import reference as R
from ascend_v4.ops.attention.cases import CASES

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ASC = os.path.join(ROOT, "ops", "attention", "ascendc")
DECLS = os.path.join(ROOT, "ops", "ascendc_common", "decls_attention.h")
SHARED_KERNEL = os.path.join(ROOT, "ops", "ascendc_common", "op_kernel")   # pipe_sync.h, cube_tiles.h
GXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
pytestmark = pytest.mark.skipif(GXX is None, reason="g++ not installed")

UB_910B = 196352   # what tiling sees on 910B1 (CANN's platform UB size); 910B3/910_93 report 196608
STANDIN_KERNELS = ["compress_kv"]   # the Cube kernels are checked on the real headers only (test_ascendc_real_headers)
HOSTS = ["av4_sparse_attn_shared_kv", "av4_lightning_indexer", "av4_compress_kv"]


def _gxx(args, **kw):
    return subprocess.run([GXX, "-std=c++17", *args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ascendc")


def test_host_tiling_many_shapes(build_dir):
    exe = str(build_dir / "tiling_check")
    r = _gxx(["-O1", "-Wall", "-Wextra", "-Werror", "-I", os.path.join(ASC, "op_host"),
              os.path.join(ASC, "tests", "tiling_check.cc"), "-o", exe])
    assert r.returncode == 0, r.stderr
    r = subprocess.run([exe], capture_output=True, text=True)
    print(r.stdout)
    assert r.returncode == 0, r.stdout
    assert "0 failures" in r.stdout and int(r.stdout.split()[0]) > 1000


@pytest.mark.parametrize("kernel", STANDIN_KERNELS)
@pytest.mark.parametrize("dtype", ["float", "bfloat16_t", "half"])
def test_kernel_sources_type_check(kernel, dtype):
    # against the shared stand-in (kernel_operator.h -> decls_core/mhc/moe) plus the attention additions
    r = _gxx(["-fsyntax-only", "-Wall", "-Wextra", "-Werror", f"-DDTYPE_QUERY={dtype}", f"-DDTYPE_KV_PROJ={dtype}",
              "-I", os.path.dirname(DECLS), "-I", SHARED_KERNEL, "-include", DECLS,
              os.path.join(ASC, "op_kernel", kernel + ".cpp")])
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("host", HOSTS)
def test_host_sources_type_check(host):
    r = _gxx(["-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-DAV4_SYNTAX_ONLY", "-DAV4_HOST_SIDE", "-include",
              DECLS, os.path.join(ASC, "op_host", host + ".cpp")])
    assert r.returncode == 0, r.stderr


_spec = importlib.util.spec_from_file_location("real_headers_check",
                                               os.path.join(ROOT, "ops", "ascendc_common", "real_headers_check.py"))
rhc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rhc)
REAL = rhc.find_trees() is not None      # the CANN source trees are cached: run on the real headers


needs_real = pytest.mark.skipif(not REAL, reason="the kernels run only over the real headers + the intrinsic emulator "
                                                 "(CANN trees not cached: real_headers_check.py --setup)")


@pytest.fixture(scope="module")
def emu():
    """the kernels over the real asc-devkit headers + the intrinsic emulator (ascendc/emu/attention_emu.cc)"""
    if not REAL:
        pytest.skip("the CANN source trees are not cached: real_headers_check.py --setup")
    out = os.path.join(rhc.generated_dir(), "emu_bin")
    os.makedirs(out, exist_ok=True)
    return {name: rhc.build_emulator(os.path.join(ASC, "emu", "attention_emu.cc"), [f"DTYPE_QUERY={dt}"],
                                     os.path.join(out, f"attention_{dt}"), cxx=GXX, core="MIX")
            for name, dt in (("f32", "float"), ("bf16", "bfloat16_t"))}


def _bf16(a):
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def _run(exe, op, d, *args):
    r = subprocess.run([exe, op, str(d), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def _save(d, **arrays):
    for k, v in arrays.items():
        np.ascontiguousarray(v).tofile(str(d / f"{k}.bin"))


ATTN_CASES = [
    # B, S, H, D, W, mode, ratio/topk, start_pos, ub, cores
    (2, 24, 3, 16, 8, "csa", 3, 0, UB_910B, 5),
    (1, 40, 2, 100, 8, "hca", 8, 0, UB_910B, 7),       # ragged D (DataCopyPad tails), HCA range copies
    (1, 6, 2, 16, 4, "hca", 8, 0, UB_910B, 3),         # shorter than one block
    (1, 1, 4, 32, 8, "hca_decode", 4, 37, UB_910B, 2),
    (1, 12, 64, 512, 8, "csa", 4, 0, UB_910B, 4),      # V4 head geometry: head groups, entry blocks
    (1, 9, 5, 40, 4, "window", 0, 0, 40000, 3),        # small UB: forces small head groups
]


@needs_real
@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: f"{c[5]}-S{c[1]}-H{c[2]}-D{c[3]}")
@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_emulated_sparse_attention_matches_reference(emu, tmp_path, case, dt):
    B, S, H, D, W, mode, r, start, ub, cores = case
    rng = np.random.default_rng(S * H + D)
    if mode == "hca_decode":
        raw = min(W, start + S)
        n = (start + S) // r
        win = np.broadcast_to(np.arange(raw, dtype=np.int32), (B, S, raw)).copy()
        off = raw
    else:
        win = np.ascontiguousarray(np.broadcast_to(R.window_indices(S, W), (B, S, min(S, W)))).astype(np.int32)
        n = S // (r if r else 1) if mode != "window" else 0
        off = S
    q = rng.standard_normal((B, S, H, D)).astype(np.float32)
    kv = rng.standard_normal((B, off + n, D)).astype(np.float32)
    sink = rng.standard_normal(H).astype(np.float32)
    if dt == "bf16":
        q, kv = _bf16(q), _bf16(kv)
    scale = D ** -0.5
    K, cidx, ratio = 0, None, 0
    if mode == "csa":
        vis = (np.arange(S) + 1) // 4
        K = r
        cidx = np.full((B, S, K), -1, np.int32)
        for b in range(B):
            for t in range(S):
                k = min(K, vis[t])
                cidx[b, t, :k] = rng.permutation(vis[t])[:k] + S
        ref = R.sparse_attention(q, kv, sink, win, cidx, scale)
    elif mode == "window":
        ref = R.sparse_attention(q, kv, sink, win, None, scale)
    else:
        ratio = r
        ref = R.hca_attention(q, kv, sink, win, ratio, scale, cmp_offset=off, start_pos=start)
    _save(tmp_path, q=q, kv=kv, sink=sink, widx=win, **({"cidx": cidx} if K else {}))
    info = _run(emu[dt], "attn", tmp_path, B, S, H, D, kv.shape[1], win.shape[2], K, ratio, off, start,
                repr(float(scale)), ub, cores)
    out = np.fromfile(str(tmp_path / "out.bin"), np.float32).reshape(ref.shape)
    lse = np.fromfile(str(tmp_path / "lse.bin"), np.float32)
    tol = 2e-5 if dt == "f32" else 1e-2
    np.testing.assert_allclose(out, ref, atol=tol, rtol=tol, err_msg=info)
    assert np.isfinite(lse).all() and not (lse == -12345.0).any(), "every (row, head) lse written"


ATTN_PARITY = [c for c in CASES if c.op in ("sparse_attention", "hca_attention")]


@needs_real
@pytest.mark.parametrize("case", ATTN_PARITY, ids=lambda c: f"{c.op}-{c.name}")
@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_emulated_attention_parity_cases(emu, tmp_path, case, dt):
    """every sparse_attention / hca_attention parity case (ops/attention/cases.py) through the kernel with the
    binding's arguments: float32 runs tiling key 0 (vector cores), bf16 key 1 (Q·Kᵀ and P·V on the Cube); expected:
    the float64 reference on the same (rounded) inputs"""
    args, kw = case.make(np.random.default_rng(case.seed))
    q, kv, sink, win = (np.asarray(a) for a in args[:4])
    q, kv, sink = q.astype(np.float32), kv.astype(np.float32), sink.astype(np.float32)
    if dt == "bf16":
        q, kv = _bf16(q), _bf16(kv)
    B, S, H, D = q.shape
    win = win.astype(np.int32)
    scale = kw["scale"]
    if case.op == "sparse_attention":
        cidx = args[4]
        ref = R.sparse_attention(q, kv, sink, win, cidx, scale)
        K, ratio, off, start = (0 if cidx is None else cidx.shape[-1]), 0, S, 0
        extra = {} if cidx is None else {"cidx": np.asarray(cidx, np.int32)}
    else:
        ratio = kw["ratio"]
        off = kw.get("cmp_offset", None)
        start = kw.get("start_pos", 0)
        ref = R.hca_attention(q, kv, sink, win, ratio, scale, cmp_offset=off, start_pos=start)
        off = S if off is None else off
        K, extra = 0, {}
    _save(tmp_path, q=q, kv=kv, sink=sink, widx=win, **extra)
    info = _run(emu[dt], "attn", tmp_path, B, S, H, D, kv.shape[1], win.shape[2], K, ratio, off, start,
                repr(float(scale)), UB_910B, 8)
    out = np.fromfile(str(tmp_path / "out.bin"), np.float32).reshape(ref.shape)
    tol = 2e-5 if dt == "f32" else 1e-2   # bf16: output rounding + P rounded to bf16 for the Cube
    np.testing.assert_allclose(out, ref, atol=tol, rtol=tol, err_msg=info)


INDEXER_CASES = [
    # B, S, H, d, ratio, topk, start_pos, ub, cores (AIV; groups = cores / 2)
    (2, 32, 4, 16, 4, 4, 0, UB_910B, 6),
    (1, 20, 2, 16, 4, 64, 0, UB_910B, 4),      # topk > visible: -1 padding
    (1, 3, 2, 16, 4, 4, 0, UB_910B, 4),        # first tokens: nothing visible; odd S: a one-row pair
    (1, 7, 4, 48, 4, 5, 18, UB_910B, 4),       # d = 3 fractals, start_pos, odd S
    (1, 600, 3, 32, 4, 40, 0, UB_910B, 6),     # several 128-key blocks per row: the running top-k merges
    (1, 64, 64, 128, 4, 8, 0, UB_910B, 8),     # V4 indexer heads x dim: M = 128, two K passes in float32
]

def _check_indexer(got, ref, scores, info):
    """the kernel's ids: ascending, -1 last; the selected set equal to the reference's, a swap allowed only between
    entries whose float64 scores tie within float32 accumulation-order rounding"""
    B, S = ref.shape[:2]
    for b in range(B):
        for t in range(S):
            g, r = got[b, t], ref[b, t]
            assert np.all(np.diff(g[g >= 0]) > 0) and (g[(g >= 0).sum():] == -1).all(), f"row {t}: {g}\n{info}"
            if np.array_equal(g, r):
                continue
            sg, sr = scores[b, t][g[g >= 0]], scores[b, t][r[r >= 0]]
            assert len(sg) == len(sr) and abs(np.sort(sg).sum() - np.sort(sr).sum()) < 1e-4 * (1 + np.abs(sr).sum()), \
                f"row {t}: {g} vs {r}\n{info}"


@needs_real
@pytest.mark.parametrize("case", INDEXER_CASES, ids=lambda c: f"S{c[1]}-H{c[2]}-d{c[3]}-k{c[5]}-p{c[6]}")
@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_emulated_indexer_matches_reference(emu, tmp_path, case, dt):
    B, S, H, d, ratio, topk, start, ub, cores = case
    rng = np.random.default_rng(S + H + d)
    N = max(1, (start + S) // ratio)
    q = rng.standard_normal((B, S, H, d)).astype(np.float32)
    k = rng.standard_normal((B, N, d)).astype(np.float32)
    w = rng.standard_normal((B, S, H)).astype(np.float32)
    if dt == "bf16":
        q, k, w = _bf16(q), _bf16(k), _bf16(w)
    ref = R.lightning_indexer(q, k, w, ratio, topk, start, fp4=False)   # the kernel scores given q/k
    _save(tmp_path, q=q, k=k, w=w)
    info = _run(emu[dt], "indexer", tmp_path, B, S, H, d, N, topk, ratio, start, ub, cores)
    got = np.fromfile(str(tmp_path / "idx.bin"), np.int32).reshape(ref.shape)
    _check_indexer(got, ref, R.indexer_scores(q, k, w), info)


# per-row start positions (a cached step) take the binding's composite path: the kernel has one scalar start
INDEXER_PARITY = [c for c in CASES if c.op == "lightning_indexer" and "per_row" not in c.name]


@needs_real
@pytest.mark.parametrize("case", INDEXER_PARITY, ids=lambda c: c.name)
def test_emulated_indexer_parity_cases(emu, tmp_path, case):
    """every lightning_indexer parity case (ops/attention/cases.py) through the kernel as the binding launches it:
    with fp4 (the default) the binding rotates and FP4-quantises q and k first (Hadamard + E2M1 fake-quant, the
    NumPy twin of composite.fp4_rotate), the kernel scores what it is given; expected: the float64 reference with
    the same fp4 flag"""
    (q, k, w), kw = case.make(np.random.default_rng(case.seed))
    fp4 = kw.get("fp4", True)
    ref = R.lightning_indexer(q, k, w, kw["ratio"], kw["topk"], kw.get("start_pos", 0), fp4=fp4)
    qk, kk = (R.fp4_rotate(q), R.fp4_rotate(k)) if fp4 else (q, k)
    qk, kk, w = (np.asarray(a, np.float32) for a in (qk, kk, w))
    B, S, H, d = qk.shape
    _save(tmp_path, q=qk, k=kk, w=w)
    info = _run(emu["f32"], "indexer", tmp_path, B, S, H, d, kk.shape[1], kw["topk"], kw["ratio"],
                kw.get("start_pos", 0), UB_910B, 6)
    got = np.fromfile(str(tmp_path / "idx.bin"), np.int32).reshape(ref.shape)
    _check_indexer(got, ref, R.indexer_scores(qk, kk, w), info)


COMPRESS_CASES = [
    # B, S, c, ratio, overlap, ub, cores
    (2, 16, 8, 4, 1, UB_910B, 3),
    (1, 18, 8, 4, 1, UB_910B, 2),          # ragged tail tokens ignored
    (1, 32, 8, 16, 0, UB_910B, 2),
    (1, 9, 100, 4, 1, UB_910B, 2),         # ragged channels (DataCopyPad tails)
    (1, 256, 512, 128, 0, UB_910B, 3),     # HCA geometry: channel groups of a 128-slot block
    (1, 12, 512, 4, 1, UB_910B, 5),        # CSA geometry
    (1, 3, 16, 4, 1, UB_910B, 2),          # shorter than one block: no output
]


@pytest.mark.parametrize("case", COMPRESS_CASES, ids=lambda c: f"S{c[1]}-c{c[2]}-r{c[3]}-o{c[4]}")
@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_emulated_compress_matches_reference(emu, tmp_path, case, dt):
    B, S, c, ratio, overlap, ub, cores = case
    rng = np.random.default_rng(S * c + ratio)
    coff = 2 if overlap else 1
    kvp = rng.standard_normal((B, S, coff * c)).astype(np.float32)
    scp = rng.standard_normal((B, S, coff * c)).astype(np.float32)
    if dt == "bf16":
        kvp, scp = _bf16(kvp), _bf16(scp)
    ape = (rng.standard_normal((ratio, coff * c)) * 0.3).astype(np.float32)
    nw = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
    ref = _pool_reference(kvp, scp, ape, nw, ratio, bool(overlap))
    _save(tmp_path, kvp=kvp, scp=scp, ape=ape, nw=nw)
    info = _run(emu[dt], "compress", tmp_path, B, S, c, ratio, overlap, "1e-6", ub, cores)
    got = np.fromfile(str(tmp_path / "out.bin"), np.float32).reshape(ref.shape)
    tol = 2e-5 if dt == "f32" else 2e-2
    np.testing.assert_allclose(got, ref, atol=tol, rtol=tol, err_msg=info)


def _pool_reference(kvp, scp, ape, nw, ratio, overlap):
    """reference.compress_kv with the projections given: x = [kvp ‖ scp], wkv / wgate select the halves."""
    W = kvp.shape[-1]
    x = np.concatenate([kvp, scp], -1).astype(np.float64)
    sel = np.eye(2 * W)
    return R.compress_kv(x, sel[:W], sel[W:], ape.astype(np.float64), nw.astype(np.float64), ratio, overlap)


@pytest.mark.slow
@pytest.mark.skipif(not REAL, reason="needs the CANN source trees (real headers + intrinsic emulator)")
def test_compress_without_the_ape_reload_wait_is_a_race(tmp_path):
    """The #15 compress_kv defect put back (apeBuf_ reloaded by MTE2 with no V -> MTE2 wait after the previous
    block's Add read it): the emulator's pipe model reports the write-after-read race."""
    import shutil as _sh
    from pathlib import Path
    base = Path(rhc.generated_dir()) / "emu_mutants" / "attention_ape_no_wait"
    _sh.rmtree(base, ignore_errors=True)
    _sh.copytree(ASC, base / "ascendc", ignore=_sh.ignore_patterns("__pycache__", "tests"))
    k = base / "ascendc" / "op_kernel" / "compress_kv.cpp"
    text = k.read_text()
    old = "    PipeSync<HardEvent::V_MTE2>();   // apeBuf_ is a plain buffer: the previous Pool's Add must have read it\n"
    assert old in text
    k.write_text(text.replace(old, ""))
    exe = rhc.build_emulator(str(base / "ascendc" / "emu" / "attention_emu.cc"), ["DTYPE_QUERY=float"],
                             str(base / "attention_emu"), cxx=GXX, core="MIX")
    rng = np.random.default_rng(0)
    B, S, c, ratio = 1, 8, 512, 4
    _save(tmp_path, kvp=rng.standard_normal((B, S, 2 * c)).astype(np.float32),
          scp=rng.standard_normal((B, S, 2 * c)).astype(np.float32),
          ape=rng.standard_normal((ratio, 2 * c)).astype(np.float32), nw=np.ones(c, np.float32))
    # a 40 KB UB budget splits the 512 channels into groups: ape is reloaded between two Pools of one block
    r = subprocess.run([exe, "compress", str(tmp_path), str(B), str(S), str(c), str(ratio), "1", "1e-6", "40000",
                        "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 3 and "race:" in r.stderr and "(pipe MTE2) overwrites UB" in r.stderr, r.stderr[-2000:]


# Cube-side hand-overs of the two mixed kernels, each removed in turn: the pipe model names the race.
CUBE_MUTANTS = {
    # sparse attention (bf16, key 1): q and the gathered kv rows read from L1 before their GM -> L1 copies were
    # waited on (the Gather's MTE2 -> MTE1 hand-over also covers the unit's q load)
    "attn_gather_no_mte2_mte1": (
        "sparse_attn_shared_kv.cpp", "bfloat16_t",
        "      jj += run;\n      id = nxt;\n    }\n    PipeSync<HardEvent::MTE2_MTE1>();\n",
        "      jj += run;\n      id = nxt;\n    }\n",
        "(pipe MTE1) reads UB"),
    # indexer: Mmad overwrites the L0C buffer the Fixpipe of two steps ago may still be reading
    "indexer_no_l0c_free_wait": (
        "lightning_indexer_v4.cpp", "float",
        "    WaitFlag<HardEvent::FIX_M>(cFree_[slot]);   // the Fixpipe of two steps ago has drained this L0C buffer\n",
        "", "(pipe M) overwrites"),
}


@pytest.mark.slow
@needs_real
@pytest.mark.parametrize("name", sorted(CUBE_MUTANTS))
def test_cube_handover_removed_is_a_race(tmp_path, name):
    import shutil as _sh
    from pathlib import Path
    src, dt, old, new, expect = CUBE_MUTANTS[name]
    base = Path(rhc.generated_dir()) / "emu_mutants" / f"attention_{name}"
    _sh.rmtree(base, ignore_errors=True)
    _sh.copytree(ASC, base / "ascendc", ignore=_sh.ignore_patterns("__pycache__", "tests"))
    k = base / "ascendc" / "op_kernel" / src
    text = k.read_text()
    assert text.count(old) == 1, name
    k.write_text(text.replace(old, new))
    exe = rhc.build_emulator(str(base / "ascendc" / "emu" / "attention_emu.cc"), [f"DTYPE_QUERY={dt}"],
                             str(base / "attention_emu"), cxx=GXX, core="MIX")
    rng = np.random.default_rng(0)
    if src.startswith("sparse"):
        B, S, H, D, W = 1, 12, 4, 32, 8
        win = np.ascontiguousarray(np.broadcast_to(R.window_indices(S, W), (B, S, W))).astype(np.int32)
        _save(tmp_path, q=rng.standard_normal((B, S, H, D)).astype(np.float32),
              kv=rng.standard_normal((B, S, D)).astype(np.float32), sink=np.zeros(H, np.float32), widx=win)
        args = ["attn", tmp_path, B, S, H, D, S, W, 0, 0, S, 0, "0.17", UB_910B, 2]
    else:
        B, S, H, d, ratio = 1, 12, 4, 16, 1
        _save(tmp_path, q=rng.standard_normal((B, S, H, d)).astype(np.float32),
              k=rng.standard_normal((B, S, d)).astype(np.float32), w=rng.standard_normal((B, S, H)).astype(np.float32))
        args = ["indexer", tmp_path, B, S, H, d, S, 4, ratio, 0, UB_910B, 2]
    r = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 3 and "race:" in r.stderr and expect in r.stderr, r.stderr[-2000:]
