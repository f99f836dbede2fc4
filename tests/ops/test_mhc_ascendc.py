"""mHC backend "ascendc" without an NPU or CANN: the host tiling (plain C++) over many shapes, the op_host code run
against the stand-in CANN host headers, and g++ -fsyntax-only of every kernel source against the AscendC
declarations stand-in (ops/ascendc_common) for hc_post (hc_pre / hc_head use the Cube API and are compiled against
the real headers in test_ascendc_real_headers.py). Skips cleanly when g++ is missing; needs no MindSpore."""
import json
import os
import subprocess

import pytest
from ascendc_trees import COMMON, CXX, GXX, ROOT, needs_gxx

ASC = os.path.join(ROOT, "ops", "mhc", "ascendc")

UB = 196608                                     # 192 KB UB per AIV core on 910B / 910C
PLATFORMS = [(48, UB), (40, UB), (48, 196352), (24, UB), (1, UB)]   # 910B1/B2/910C die, 910B3/B4, usable-UB variant
TOKENS = [1, 2, 3, 7, 8, 9, 40, 47, 48, 49, 95, 96, 97, 100, 383, 384, 385, 1000, 4095, 4096, 4097, 65535, 65536,
          100003, 1 << 20]


def _build(tmp_path, name, sources, includes):
    exe = str(tmp_path / name)
    subprocess.run(CXX + ["-O1", *[f"-I{i}" for i in includes], "-o", exe, *sources], check=True,
                   capture_output=True, text=True)
    return exe


@pytest.fixture(scope="module")
def tiling_rows(tmp_path_factory):
    if GXX is None:
        pytest.skip("g++ not installed")
    tmp = tmp_path_factory.mktemp("tiling")
    exe = _build(tmp, "tiling_cli", [os.path.join(ASC, "tiling", f) for f in ("tiling_cli.cc", "hc_tiling.cc")], [])
    lines = [f"{op} {T} {D} 4 {xb} {cores} {ub}" for op in ("pre", "head", "post") for T in TOKENS
             for D in (4096, 7168) for xb in (2, 4) for cores, ub in PLATFORMS]
    out = subprocess.run([exe], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == len(lines)
    for row, line in zip(rows, lines):
        row["cores"], row["ub"] = int(line.split()[5]), int(line.split()[6])
    return rows


def _a32(n):
    return (n + 31) // 32 * 32


@needs_gxx
def test_tiling_fits_ub_and_is_aligned(tiling_rows):
    for r in tiling_rows:
        assert r["ok"], r
        ub = r["ub"]
        if r["op"] == "post":
            sizes = [r["fInBytes"], r["resInBytes"], r["castBytes"], r["outBytes"]]
            total = 2 * r["fInBytes"] + 2 * r["resInBytes"] + r["castBytes"] + 2 * r["outBytes"]
            dc, xb, hc = r["dChunk"], r["xBytes"], r["hc"]
            assert r["fInBytes"] >= _a32(dc * xb) and r["resInBytes"] >= hc * _a32(dc * xb)
            assert r["castBytes"] >= (hc + 2) * dc * 4 and r["outBytes"] >= hc * _a32(dc * xb)
        else:
            names = ["rawInBytes", "sqInBytes", "coefBytes", "stageBytes", "yInBytes", "yCastBytes", "yOutBytes",
                     "splitBytes"]
            sizes = [r[n] for n in names]
            total = (2 * r["rawInBytes"] + 2 * r["sqInBytes"] + r["coefBytes"] + r["stageBytes"] + 2 * r["yInBytes"]
                     + r["yCastBytes"] + 2 * r["yOutBytes"] + r["splitBytes"])
            t, dc, xb, M, hc = r["tileT"], r["dChunk"], r["xBytes"], r["M"], r["hc"]
            n16, K = r["n16"], r["K"]
            # every buffer holds what the kernel puts in it
            assert r["rawInBytes"] >= t * n16 * 4 and r["sqInBytes"] >= t * 8 * 4
            assert r["coefBytes"] >= (2 * (M + 1) + 4) * r["lanes"] * 4 + t * n16 * 4 + t * 8 * 4
            assert r["splitBytes"] == (0 if xb == 4 else 2 * _a32(r["splitChunk"] * 4) + 2 * _a32(r["splitChunk"] * 2))
            assert r["yInBytes"] >= hc * _a32(dc * xb) and r["yOutBytes"] >= _a32(dc * xb)
            assert r["yCastBytes"] >= ((1 if xb == 4 else hc + 1) * dc * 4)
            assert r["lanes"] % 8 == 0 and r["lanes"] >= t and 1 <= t <= 8 and K == hc * r["D"] and K % 64 == 0
            # Cube projection: groups of one AIC + two AIV, tiles fitting L0A / L0B (ping-pong) and L0C
            # bf16 x: fn split (12 M K bytes) unless casting x to float32 (10 T K bytes) is cheaper
            assert r["xCast"] == (1 if xb == 2 and 10 * r["T"] < 12 * M else 0)
            eb = 4 if r["xCast"] else xb                    # element size the Cube works in
            assert r["groups"] == max(1, r["cores"] // 2) and r["nCols"] == (M if eb == 4 else 2 * M)
            assert n16 % 16 == 0 and n16 >= r["nCols"] and r["baseM"] % 16 == 0 and r["baseM"] <= 128
            bm, bk = r["baseM"], r["baseK"]                 # L0B and L0C hold B and x^T, raw and x x^T
            assert 2 * bm * bk * eb <= 65536 and 2 * bk * (n16 + bm) * eb <= 65536 and bm * (n16 + bm) * 4 <= 131072
            assert bk * eb <= 256 and bk % (32 // eb) == 0 and bm % 16 == 0
            assert r["kPart"] % bk == 0 and (r["kSplit"] - 1) * r["kPart"] < K <= r["kSplit"] * r["kPart"]
            tiles = -(-r["T"] // bm)
            assert r["tiles"] == tiles
            assert r["kSplit"] == 1 or tiles * (r["kSplit"] - 1) < r["groups"]    # K split only to fill the cores
            assert r["wsRawOffset"] >= (0 if xb == 4 else r["T"] * K * 4 if r["xCast"] else 2 * M * K * 2)
            assert r["wsSqOffset"] >= r["wsRawOffset"] + r["kSplit"] * r["T"] * n16 * 4
            assert r["wsBytes"] == r["wsSqOffset"] + r["kSplit"] * tiles * bm * bm * 4
        assert total == r["ubBytes"] <= ub <= UB, r     # UB budget, recomputed from the fields
        assert all(s % 32 == 0 for s in sizes), r         # 32-byte aligned buffers
        assert r["dChunk"] % 64 == 0 and r["dTail"] % 16 == 0 and 0 < r["dTail"] <= r["dChunk"]
        assert (r["dChunks"] - 1) * r["dChunk"] + r["dTail"] == r["D"]


@needs_gxx
def test_tiling_covers_every_token_once_balanced(tiling_rows):
    for r in tiling_rows:
        T, ranges = r["T"], r["ranges"]
        cores = r["cores"] if r["op"] == "post" else 2 * max(1, r["cores"] // 2)   # hc_pre: the groups' AIV cores
        assert r["usedCores"] == len(ranges) == min(T, cores)
        pos = 0
        for start, count in ranges:                   # contiguous, disjoint, in order
            assert start == pos and count >= 1
            pos += count
        assert pos == T
        counts = [c for _, c in ranges]
        assert max(counts) - min(counts) <= 1         # balanced split


@needs_gxx
def test_tiling_rejects_unsupported_shapes(tmp_path):
    exe = _build(tmp_path, "cli", [os.path.join(ASC, "tiling", f) for f in ("tiling_cli.cc", "hc_tiling.cc")], [])
    out = subprocess.run([exe], input="pre 8 4100 4 2 48 196608\npost 8 4100 4 2 48 196608\npre 8 4096 4 2 48 4096\n",
                         capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["ok"] for r in rows] == [False, False, False]
    assert "D % 16" in rows[0]["why"] and "UB" in rows[2]["why"]


@needs_gxx
def test_op_host_runs_against_standin(tmp_path):
    srcs = [os.path.join(ASC, "tiling", "host_check.cc"), os.path.join(ASC, "tiling", "hc_tiling.cc"),
            os.path.join(ASC, "op_host", "mhc_av4_def.cpp"), os.path.join(ASC, "op_host", "mhc_av4_tiling.cpp")]
    exe = _build(tmp_path, "host_check", srcs, [os.path.join(COMMON, "host")])
    out = subprocess.run([exe], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr


def _syntax(src, defines=(), includes=()):
    cmd = CXX + ["-fsyntax-only", "-DAV4_ASCENDC_STANDIN", *[f"-D{d}" for d in defines],
                 f"-I{COMMON}", f"-I{os.path.join(COMMON, 'op_kernel')}", *[f"-I{i}" for i in includes], src]
    return subprocess.run(cmd, capture_output=True, text=True)


@needs_gxx
@pytest.mark.parametrize("dtype", ["float", "bfloat16_t"])
def test_kernel_sources_compile_against_ascendc_declarations(dtype):
    kdir = os.path.join(ASC, "op_kernel")
    sources = sorted(f for f in os.listdir(kdir) if f.endswith(".cpp"))
    assert sources == ["hc_head_av4.cpp", "hc_post_av4.cpp", "hc_pre_av4.cpp"]
    for f in sources:
        if f != "hc_post_av4.cpp":   # hc_pre / hc_head use the Cube API: the real-header check compiles them
            continue
        res = _syntax(os.path.join(kdir, f), [f"DTYPE_X={dtype}", f"DTYPE_F={dtype}"], [kdir])
        assert res.returncode == 0, f + "\n" + res.stderr


@needs_gxx
def test_standin_rejects_api_misuse(tmp_path):
    """The check has teeth: a wrong argument list, an undeclared API and a type error all fail."""
    bad = {
        "args": "DataCopyPad(x, g, DataCopyExtParams(1, 32, 0, 0, 0));",          # GM<-UB overload takes (GM, UB)
        "undeclared": "ReduceSumTypo(x, x, x, 8);",
        "type": "Muls(x, x, 1.0, 8);",                                            # scalar must be T (float)
    }
    for name, stmt in bad.items():
        src = tmp_path / f"bad_{name}.cpp"
        src.write_text('#include "kernel_operator.h"\nusing namespace AscendC;\n'
                       "void f(LocalTensor<float> x, GlobalTensor<float> g) { " + stmt + " }\n")
        assert _syntax(str(src)).returncode != 0, name
