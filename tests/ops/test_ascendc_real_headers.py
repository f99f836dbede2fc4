"""Every AscendC kernel and host source compiles with g++ against the REAL open-source CANN headers (asc-devkit,
asc-tools, metadef, ge) -- ops/ascendc_common/real_headers_check.py. Runs whenever the trees are in the cache
(`python ops/ascendc_common/real_headers_check.py --setup`); otherwise every test here is skipped, saying so.

Default run: float32 kernels (AIV / AIC as declared) + the op_host sources; passes are cached by source hash, so an
unchanged tree costs nothing. The float16 / bfloat16 sweep is marked slow."""
import os
import shutil

import pytest
from ascendc_trees import GXX, ROOT, needs_trees, rhc

pytestmark = needs_trees("to enable this check")


def _check(files, dtypes):
    lines = []
    results = rhc.run(files, dtypes, cxx=GXX, log=lines.append)
    bad = [r for r in results if not r[1]]
    assert not bad, "\n".join(lines)
    return results


def test_every_source_is_checked():
    kernels = [os.path.relpath(p, ROOT) for p in rhc.kernel_sources()]
    hosts = [os.path.relpath(p, ROOT) for p in rhc.host_sources()]
    assert len(kernels) == 12 and len(hosts) == 9, (kernels, hosts)
    assert rhc.cores_of(os.path.join(ROOT, "ops/moe/ascendc/op_kernel/grouped_matmul_av4.cpp")) == ["AIC"]
    for mixed in ("lightning_indexer_v4.cpp", "sparse_attn_shared_kv.cpp"):   # mixed AIC/AIV: both compiler passes
        assert rhc.cores_of(os.path.join(ROOT, "ops/attention/ascendc/op_kernel", mixed)) == ["AIV", "AIC"], mixed


def _passes(kernels):
    return sum(len(rhc.cores_of(k)) for k in kernels)   # one compile per core type the kernel runs on


@pytest.mark.slow   # > 20 s: runs in .ci/run, so the default suite stays under 10 minutes
def test_kernels_and_host_compile_float():
    results = _check(rhc.kernel_sources() + rhc.host_sources(), ["float"])
    assert len(results) == _passes(rhc.kernel_sources()) + 9


@pytest.mark.slow
def test_kernels_compile_half_and_bfloat16():
    assert len(_check(rhc.kernel_sources(), ["half", "bfloat16_t"])) == 2 * _passes(rhc.kernel_sources())


@pytest.mark.parametrize("name", ["args", pytest.param("member", marks=pytest.mark.slow)])
def test_check_has_teeth(tmp_path, name):
    """API misuse in a kernel fails: a wrong argument list, an unknown member."""
    src = os.path.join(ROOT, "ops", "mhc", "ascendc", "op_kernel")
    text = open(os.path.join(src, "hc_post_kernel.h")).read()
    for old, new in [{"args": ("Muls(", "Muls(1, "), "member": (".EnQue(", ".EnQueue(")}[name]]:
        assert old in text
        d = tmp_path / name / "op_kernel"
        shutil.copytree(src, d)
        (d / "hc_post_kernel.h").write_text(text.replace(old, new, 1))
        results = rhc.run([str(d / "hc_post_av4.cpp")], ["float"], cxx=GXX, use_cache=False, log=lambda *_: None)
        assert not results[0][1] and results[0][2] >= 1, name
