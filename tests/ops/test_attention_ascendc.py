"""AscendC side of the attention family, without hardware or a CANN toolkit (everything skips cleanly without g++):

* host tiling (plain C++) over thousands of shapes and platforms: UB budget, 32-byte alignment, core split, tails;
* op_kernel sources type-check (g++ -fsyntax-only) against the shared AscendC stand-in (ops/ascendc_common/
  kernel_operator.h) plus decls_attention.h, for float32, bfloat16 and float16 GM dtypes; op_host sources against
  the host section of decls_attention.h;
* the kernels *run* on the CPU and match the NumPy reference, float32 and bf16 GM: over the REAL asc-devkit headers
  and the project's intrinsic emulator with its pipe/race model (ops/ascendc_common/emu, one forked process per
  core) when the CANN source trees are cached (real_headers_check.py --setup), else over the API-level twin
  ops/attention/ascendc/tests/ascendc_emu.h (UB arena of the platform's size, alignment and queue-depth checks).
"""
import importlib.util
import os
import shutil
import subprocess

import numpy as np
import pytest

from ascend_v4.ops.attention import reference as R

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ASC = os.path.join(ROOT, "ops", "attention", "ascendc")
DECLS = os.path.join(ROOT, "ops", "ascendc_common", "decls_attention.h")
GXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
pytestmark = pytest.mark.skipif(GXX is None, reason="g++ not installed")

UB_910B = 196352   # what tiling sees on 910B1 (CANN's platform UB size); 910B3/910_93 report 196608
KERNELS = ["sparse_attn_shared_kv", "lightning_indexer_v4", "compress_kv"]
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


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", ["float", "bfloat16_t", "half"])
def test_kernel_sources_type_check(kernel, dtype):
    # against the shared stand-in (kernel_operator.h -> decls_core/mhc/moe) plus the attention additions
    r = _gxx(["-fsyntax-only", "-Wall", "-Wextra", "-Werror", f"-DDTYPE_QUERY={dtype}", f"-DDTYPE_KV_PROJ={dtype}",
              "-I", os.path.dirname(DECLS), "-include", DECLS, os.path.join(ASC, "op_kernel", kernel + ".cpp")])
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


@pytest.fixture(scope="module")
def emu(build_dir):
    """the kernels over the real asc-devkit headers + the intrinsic emulator when the CANN trees are cached
    (ops/attention/ascendc/emu/attention_emu.cc), else over the API-level twin tests/ascendc_emu.h"""
    exes = {}
    if REAL:
        out = os.path.join(rhc.cache_dir(), "_generated", "emu_bin")
        os.makedirs(out, exist_ok=True)
        for name, dt in (("f32", "float"), ("bf16", "bfloat16_t")):
            exes[name] = rhc.build_emulator(os.path.join(ASC, "emu", "attention_emu.cc"), [f"DTYPE_QUERY={dt}"],
                                            os.path.join(out, f"attention_{dt}"), cxx=GXX)
        return exes
    for name, dt in (("f32", "float"), ("bf16", "bfloat16_t")):
        exe = str(build_dir / f"kernel_emu_{name}")
        r = _gxx(["-O1", "-Wall", "-Wextra", f"-DDTYPE_QUERY={dt}", "-I", os.path.join(ASC, "op_host"),
                  os.path.join(ASC, "tests", "kernel_emu.cc"), "-o", exe])
        assert r.returncode == 0, r.stderr
        exes[name] = exe
    return exes


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


INDEXER_CASES = [
    # B, S, H, d, ratio, topk, start_pos, ub, cores
    (2, 32, 4, 16, 4, 4, 0, UB_910B, 5),
    (1, 20, 2, 16, 4, 64, 0, UB_910B, 3),      # topk > visible: -1 padding
    (1, 3, 2, 16, 4, 4, 0, UB_910B, 2),        # first tokens: nothing visible
    (1, 6, 4, 40, 4, 5, 18, UB_910B, 4),       # ragged d, start_pos
    (1, 300, 3, 32, 4, 40, 0, UB_910B, 6),     # several key blocks per row: streaming top-k merges
    (1, 64, 64, 128, 4, 8, 0, UB_910B, 8),     # V4 indexer heads x dim
]


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
    # float32 accumulation order differs from the float64 reference: compare selected *sets*, allowing a swap only
    # between entries whose reference scores tie within rounding
    scores = R.indexer_scores(q, k, w)
    for b in range(B):
        for t in range(S):
            g, r = got[b, t], ref[b, t]
            assert np.all(np.diff(g[g >= 0]) > 0) and np.all(g[np.argmax(g < 0):] < 0 if (g < 0).any() else True), info
            if np.array_equal(g, r):
                continue
            sg, sr = scores[b, t][g[g >= 0]], scores[b, t][r[r >= 0]]
            assert len(sg) == len(sr) and abs(np.sort(sg).sum() - np.sort(sr).sum()) < 1e-3 * (1 + np.abs(sr).sum()), \
                f"row {t}: {g} vs {r}\n{info}"


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
    base = Path(rhc.cache_dir()) / "_generated" / "emu_mutants" / "attention_ape_no_wait"
    _sh.rmtree(base, ignore_errors=True)
    _sh.copytree(ASC, base / "ascendc", ignore=_sh.ignore_patterns("__pycache__", "tests"))
    k = base / "ascendc" / "op_kernel" / "compress_kv.cpp"
    text = k.read_text()
    old = "    PipeSync<HardEvent::V_MTE2>();   // apeBuf_ is a plain buffer: the previous Pool's Add must have read it\n"
    assert old in text
    k.write_text(text.replace(old, ""))
    exe = rhc.build_emulator(str(base / "ascendc" / "emu" / "attention_emu.cc"), ["DTYPE_QUERY=float"],
                             str(base / "attention_emu"), cxx=GXX)
    rng = np.random.default_rng(0)
    B, S, c, ratio = 1, 8, 512, 4
    _save(tmp_path, kvp=rng.standard_normal((B, S, 2 * c)).astype(np.float32),
          scp=rng.standard_normal((B, S, 2 * c)).astype(np.float32),
          ape=rng.standard_normal((ratio, 2 * c)).astype(np.float32), nw=np.ones(c, np.float32))
    # a 40 KB UB budget splits the 512 channels into groups: ape is reloaded between two Pools of one block
    r = subprocess.run([exe, "compress", str(tmp_path), str(B), str(S), str(c), str(ratio), "1", "1e-6", "40000",
                        "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 3 and "race:" in r.stderr and "(pipe MTE2) overwrites UB" in r.stderr, r.stderr[-2000:]
