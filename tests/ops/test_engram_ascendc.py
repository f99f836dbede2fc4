"""Engram backend "ascendc" without an NPU or CANN: the op_host code (OpDefs, shape / dtype inference, typed
attributes, tiling) run against the stand-in CANN host headers, plus the plain-C++ tiling swept over many shapes
and platforms (tiling/host_check.cc: UB within budget, aligned chunks, every token / group on exactly one core), and
g++ -fsyntax-only of both kernel sources against the AscendC declarations stand-in (ops/ascendc_common). The real
headers compile them in test_ascendc_real_headers.py; their bodies run in test_engram_ascendc_emu.py. Needs g++."""
import os
import subprocess

import pytest
from ascendc_trees import COMMON, CXX, ROOT, needs_gxx

ASC = os.path.join(ROOT, "ops", "engram", "ascendc")


@needs_gxx
@pytest.mark.slow       # ~9 s of g++ -O1 on a loaded 2-core host
def test_op_host_and_tiling_sweep(tmp_path):
    srcs = [os.path.join(ASC, "tiling", "host_check.cc"), os.path.join(ASC, "tiling", "engram_tiling.cc"),
            os.path.join(ASC, "op_host", "engram_av4_def.cpp"), os.path.join(ASC, "op_host", "engram_av4_tiling.cpp")]
    exe = str(tmp_path / "host_check")
    subprocess.run(CXX + ["-O1", f"-I{os.path.join(COMMON, 'host')}", "-o", exe, *srcs], check=True,
                   capture_output=True, text=True)
    out = subprocess.run([exe], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr


@needs_gxx
@pytest.mark.parametrize("dtype", ["float", "bfloat16_t"])
def test_kernel_sources_compile_against_ascendc_declarations(dtype):
    kdir = os.path.join(ASC, "op_kernel")
    sources = sorted(f for f in os.listdir(kdir) if f.endswith(".cpp"))
    assert sources == ["engram_dequant_av4.cpp", "engram_gate_av4.cpp"]
    for f in sources:
        cmd = CXX + ["-fsyntax-only", "-DAV4_ASCENDC_STANDIN", f"-DDTYPE_H={dtype}", f"-DDTYPE_Y={dtype}",
                     f"-I{COMMON}", f"-I{os.path.join(COMMON, 'op_kernel')}", f"-I{kdir}", os.path.join(kdir, f)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, f + "\n" + res.stderr
