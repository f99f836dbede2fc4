"""MoE backend "ascendc" without an NPU or CANN toolkit:

* the host tiling (plain C++, ops/moe/ascendc/tiling/moe_tiling.cc) over ~60k shape/platform combinations: UB / L1 /
  L0 budgets, 32-byte alignment, row splits covering every row once and balanced, H tiles and tails, the grouped
  matmul block walk; plus design models (not the kernel sources) of the counting-sort split and the tie-safe top-k
  scheme against stable-sort references (tiling_check.cc) -- the kernel bodies themselves run in
  test_moe_ascendc_emu.py;
* the kernels' actual UB allocations (their Init() run on the host) equal the tiling's figures (ub_probe.cc);
* the op_host code (OpDefs, InferShape/InferDataType, tiling functions) run through the stand-in CANN host API,
  which models typed attributes and IR-vs-instance input indices (host_check.cc: a Bool read as int64 aborts, the
  moe_combine path with no x1/x2/bias finds `scales` by IR index, every tiling sets key 0);
* every kernel source type-checks (g++ -fsyntax-only) against the AscendC declarations stand-in
  (ops/ascendc_common/kernel_operator.h + decls_moe.h) for float, half and bfloat16_t (the real-header compile is
  test_ascendc_real_headers.py);
* the Python binding imports on CPU, registers for Ascend only, and is never selected here.
Skips cleanly when g++ is missing."""
import os
import re
import subprocess

import pytest

from ascendc_trees import COMMON, CXX, ROOT, needs_gxx

ASC = os.path.join(ROOT, "ops", "moe", "ascendc")
SHARED_KERNEL = os.path.join(COMMON, "op_kernel")   # pipe_sync.h, cube_tiles.h
KERNELS = ["grouped_matmul_av4.cpp", "moe_finalize_routing_av4.cpp", "moe_gating_topk_av4.cpp",
           "moe_init_routing_av4.cpp"]


def _run_built(tmp_path, name, sources, flags=()):
    exe = str(tmp_path / name)
    build = subprocess.run(CXX + ["-O1", *flags, "-o", exe, *sources], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    return subprocess.run([exe], capture_output=True, text=True, timeout=300)


@needs_gxx
def test_tiling_many_shapes_and_kernel_algorithms(tmp_path):
    out = _run_built(tmp_path, "tiling_check", [os.path.join(ASC, "tiling", f) for f in ("tiling_check.cc",
                                                                                         "moe_tiling.cc")])
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout[-3000:] + out.stderr[-2000:]
    assert int(out.stdout.split()[1]) > 50000          # shape x platform combinations actually checked


@needs_gxx
@pytest.mark.parametrize("dtype", ["float", "half"])
def test_kernel_ub_allocations_match_tiling(tmp_path, dtype):
    out = _run_built(tmp_path, f"ub_probe_{dtype}",
                     [os.path.join(ASC, "tiling", "ub_probe.cc"), os.path.join(ASC, "tiling", "moe_tiling.cc")],
                     ["-DAV4_ASCENDC_STANDIN", f"-DDTYPE_X={dtype}", f"-I{COMMON}", f"-I{os.path.join(ASC, 'op_kernel')}",
                      f"-I{SHARED_KERNEL}"])
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout[-3000:] + out.stderr[-2000:]


@needs_gxx
def test_op_host_runs_against_standin(tmp_path):
    srcs = [os.path.join(ASC, "tiling", "host_check.cc"), os.path.join(ASC, "tiling", "moe_tiling.cc"),
            os.path.join(ASC, "op_host", "moe_av4_def.cpp"), os.path.join(ASC, "op_host", "moe_av4_tiling.cpp")]
    out = _run_built(tmp_path, "host_check", srcs, ["-DAV4_ASCENDC_STANDIN", f"-I{os.path.join(COMMON, 'host')}"])
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout[-3000:] + out.stderr[-2000:]


def _syntax(src, defines=(), includes=()):
    cmd = CXX + ["-fsyntax-only", "-DAV4_ASCENDC_STANDIN", *[f"-D{d}" for d in defines], f"-I{COMMON}",
                 *[f"-I{i}" for i in includes], src]
    return subprocess.run(cmd, capture_output=True, text=True)


@needs_gxx
@pytest.mark.parametrize("dtype", ["float", "half", "bfloat16_t"])
def test_kernel_sources_compile_against_ascendc_declarations(dtype):
    kdir = os.path.join(ASC, "op_kernel")
    sources = sorted(f for f in os.listdir(kdir) if f.endswith(".cpp"))
    assert sources == KERNELS
    for f in sources:
        if f == "grouped_matmul_av4.cpp":   # basic Cube API: checked against the real headers only
            continue                         # (test_ascendc_real_headers.py) and run in test_gmm_ascendc_emu.py
        res = _syntax(os.path.join(kdir, f), [f"DTYPE_X={dtype}"], [kdir, SHARED_KERNEL])
        assert res.returncode == 0, f + "\n" + res.stderr[-4000:]


@needs_gxx
def test_moe_declarations_reject_misuse(tmp_path):
    """decls_moe.h has teeth: wrong argument lists / types of the MoE-only APIs fail the check."""
    bad = {
        "reducemax_args": "ReduceMax(x, x, 8);",                                  # needs a shared tmp buffer
        "ln_type": "Ln(x, i, 8);",                                                # float dst, int32 src
        "syncall_args": "SyncAll<true>(g);",                                      # hard sync takes no args
        "matmul_tensor": "Matmul<MatmulType<TPosition::GM, CubeFormat::ND, float>, "
                         "MatmulType<TPosition::GM, CubeFormat::ND, float>, "
                         "MatmulType<TPosition::GM, CubeFormat::ND, float>> mm; mm.SetTensorA(gi);",
    }
    for name, stmt in bad.items():
        src = tmp_path / f"bad_{name}.cpp"
        src.write_text('#include "kernel_operator.h"\n#include "decls_moe.h"\nusing namespace AscendC;\n'
                       "void f(LocalTensor<float> x, LocalTensor<int32_t> i, GlobalTensor<float> g, "
                       "GlobalTensor<int32_t> gi) { (void)x; (void)i; (void)g; (void)gi; " + stmt + " }\n")
        assert _syntax(str(src)).returncode != 0, name
    good = tmp_path / "good.cpp"
    good.write_text('#include "kernel_operator.h"\n#include "decls_moe.h"\nusing namespace AscendC;\n'
                    "void f(LocalTensor<float> x, GlobalTensor<float> g) { ReduceMax(x, x, x, 8, true); Ln(x, x, 8);"
                    " SyncAll<true>(); Maxs(x, x, 0.0f, 8); (void)g; }\n")
    res = _syntax(str(good))
    assert res.returncode == 0, res.stderr


def test_python_binding_registers_for_ascend_only():
    pytest.importorskip("mindspore")
    from ascend_v4.ops import registry
    from ascend_v4.ops.moe import aclnn, ascendc
    assert not ascendc.available() and not aclnn.available()          # CPU machine
    for op in ("moe_gating_topk", "moe_init_routing", "moe_finalize_routing", "grouped_matmul", "moe_route",
               "moe_dispatch", "expert_ffn", "moe_combine", "grouped_expert_ffn"):
        names = {b.name: b for b in registry.backends(op)}
        assert names["ascendc"].platforms == ("Ascend",)
        assert registry.resolve(op, device="CPU").name in ("cpp", "composite")
    from ascend_v4.ops.ascend_call import reg_info
    info = reg_info(ascendc.CONTRACTS["MoeInitRoutingAv4"], {"expert_num": 256})
    assert "MoeInitRoutingAv4" in str(info) and "expert_num" in str(info)


def test_build_files_name_every_kernel():
    """op_kernel/CMakeLists.txt pairs each op type with its kernel source (the cross-family checks against the OpDefs
    and the binding are in test_ascendc_packaging.py)."""
    with open(os.path.join(ASC, "op_kernel", "CMakeLists.txt")) as f:
        text = f.read()
    for op, src in (("MoeGatingTopKAv4", "moe_gating_topk_av4.cpp"), ("MoeInitRoutingAv4", "moe_init_routing_av4.cpp"),
                    ("MoeFinalizeRoutingAv4", "moe_finalize_routing_av4.cpp"),
                    ("GroupedMatmulAv4", "grouped_matmul_av4.cpp")):
        assert re.search(rf"^\s*{op}\s+{re.escape(src)}\s*$", text, re.M), op
    with open(os.path.join(ASC, "CMakeLists.txt")) as f:
        assert "av4_opp_package(moe)" in f.read()
