"""Fixture projects: every expected finding present, nothing unexpected, zero findings on plain code.

Expectations are written by hand next to the code they describe: a comment ``expect: rule-a, rule-b``
on the line where each finding must be reported (repeat an id for two findings on one line). Files that
cannot hold comments (config.json) are listed in the fixture's EXPECTED.txt as ``path:line rule``.
The comparison is exact (a multiset), so a new false positive fails as loudly as a missed finding.
"""
import os
import re
from collections import Counter

import pytest

from ascend_v4.tools.migrate import load_rules, scan_path

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
_EXPECT = re.compile(r"expect:\s*([a-z0-9][a-z0-9\-, ]*)")


def expected_findings(root):
    want = Counter()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if rel == "EXPECTED.txt":
                for line in open(path, encoding="utf-8"):
                    line = line.strip()
                    if line and not line.startswith("#"):
                        loc, rule = line.split()
                        f, ln = loc.rsplit(":", 1)
                        want[(f, int(ln), rule)] += 1
                continue
            with open(path, encoding="utf-8") as fh:
                for i, line in enumerate(fh, 1):
                    m = _EXPECT.search(line)
                    if m:
                        for rule in (r.strip() for r in m.group(1).split(",")):
                            if rule:
                                want[(rel, i, rule)] += 1
    return want


def found_findings(result):
    return Counter((f.file, f.line, f.rule_id) for f in result.findings)


@pytest.fixture(scope="module")
def rules():
    return load_rules()


@pytest.mark.parametrize("fixture", ["moe_triton", "cuda_ext", "deepseek_fp8"])
def test_fixture_findings_exact(fixture, rules):
    root = os.path.join(FIXTURES, fixture)
    result = scan_path(root, rules)
    want = expected_findings(root)
    got = found_findings(result)
    assert want, "fixture has no expectations"
    missing = want - got
    unexpected = got - want
    assert not missing and not unexpected, f"missing={sorted(missing)} unexpected={sorted(unexpected)}"
    assert result.warnings == []


def test_plain_cpu_has_zero_findings(rules):
    result = scan_path(os.path.join(FIXTURES, "plain_cpu"), rules)
    assert result.files_scanned >= 8  # py, cpp, CMake, setup.py, requirements, shell, config.json
    assert result.findings == [], [f"{f.location} {f.rule_id} {f.symbol}" for f in result.findings]
    assert result.warnings == []


def test_severity_and_replacements_on_deepseek_fixture(rules):
    result = scan_path(os.path.join(FIXTURES, "deepseek_fp8"), rules)
    by_rule = {}
    for f in result.findings:
        by_rule.setdefault(f.rule_id, f)
    # the reference kernels map to our operators by registry name
    assert by_rule["v4-sparse-attn"].replacement["ours"] == "sparse_attention"
    assert "hc_pre" in by_rule["v4-hc-split-sinkhorn"].replacement["ours"]
    assert by_rule["v4-fp4-gemm"].replacement["ours"] == "grouped_matmul"
    assert by_rule["deepgemm-grouped"].replacement["ours"] == "grouped_matmul"
    assert by_rule["deepgemm-mqa-logits"].replacement["ours"] == "lightning_indexer"
    assert by_rule["deepep"].replacement["ours"] == "moe_dispatch, moe_combine"
    assert "ascend-v4 convert" in by_rule["v4-fp8-gemm"].replacement["tool"]
    assert by_rule["router-bf16-gate"].replacement["ours"] == "moe_route"
    # blockers: kernels without drop-in, FP8 GEMMs, DeepEP
    for rid in ("tilelang-kernel", "v4-fp8-gemm", "deepep", "fp8-dtype", "deepgemm-grouped"):
        assert by_rule[rid].severity == "blocker", rid
    for rid in ("nccl-backend-string", "device-string-cuda", "torch-cuda-device-api"):
        assert by_rule[rid].severity == "change", rid
    # kernel-name hints refine the generic "write an AscendC op" advice
    kernels = {f.symbol: f for f in result.findings if f.rule_id == "tilelang-kernel"}
    assert set(kernels) == {"act_quant_kernel", "fp8_gemm_kernel", "sparse_attn_kernel", "hc_split_sinkhorn_kernel"}
    assert kernels["sparse_attn_kernel"].replacement["ours"] == "sparse_attention"
    assert "hc_pre" in kernels["hc_split_sinkhorn_kernel"].replacement["ours"]


def test_kernel_names_and_hints_on_triton_and_cuda(rules):
    moe = scan_path(os.path.join(FIXTURES, "moe_triton"), rules)
    kernels = {f.symbol: f for f in moe.findings if f.rule_id == "triton-kernel"}
    assert set(kernels) == {"fused_moe_kernel", "silu_and_mul_kernel"}
    assert kernels["fused_moe_kernel"].replacement["ours"] == "grouped_matmul"
    assert kernels["silu_and_mul_kernel"].replacement["torch_npu"] == "torch_npu.npu_swiglu"
    ext = scan_path(os.path.join(FIXTURES, "cuda_ext"), rules)
    cu = {f.symbol: f for f in ext.findings if f.rule_id == "cuda-global-kernel"}
    assert set(cu) == {"rms_norm_kernel", "fp8_quant_kernel"}
    assert cu["rms_norm_kernel"].replacement["torch_npu"] == "torch_npu.npu_rms_norm"
    assert all(f.severity == "blocker" for f in cu.values())


def test_every_finding_has_location_explanation_replacement_effort(rules):
    for fixture in ("moe_triton", "cuda_ext", "deepseek_fp8"):
        for f in scan_path(os.path.join(FIXTURES, fixture), rules).findings:
            assert f.line >= 1 and f.col >= 1
            assert f.message and "{symbol}" not in f.message
            assert f.replacement_text()
            assert f.effort in ("trivial", "small", "medium", "large")
            assert f.severity in ("blocker", "change", "fine")
