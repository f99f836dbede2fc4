"""The rule table: schema validation, documented header, coverage of the issue's checklist."""
import os
import re

import pytest
import yaml

from ascend_v4.tools.migrate import RuleError, load_rules
from ascend_v4.tools.migrate.rules import DEFAULT_RULES_PATH, expand_braces

OUR_OPS = {"hc_pre", "hc_post", "hc_head", "moe_route", "moe_dispatch", "moe_combine", "grouped_matmul",
           "compress_kv", "lightning_indexer", "sparse_attention"}


def test_builtin_table_loads_and_is_consistent():
    rs = load_rules()
    ids = [r.id for r in rs.rules]
    assert len(ids) == len(set(ids)) > 50
    assert set(rs.our_ops) == OUR_OPS
    for r in rs.rules:
        if "ours" in r.replacement:
            assert {s.strip() for s in r.replacement["ours"].split(",")} <= OUR_OPS, r.id


def test_header_documents_schema():
    head = open(DEFAULT_RULES_PATH, encoding="utf-8").read().split("version: 1")[0]
    for word in ("kind", "severity", "effort", "replacement", "when", "kernel", "apply", "blocker", "change",
                 "fine", "Adding a rule"):
        assert word in head, word


def test_issue_checklist_is_covered():
    """Every item the issue lists maps to at least one rule that matches it."""
    rs = load_rules()
    names = {
        "torch.cuda.synchronize", "torch.cuda.CUDAGraph", "torch.compile", "triton.jit", "tilelang.jit",
        "tilelang.language.prim_func", "torch.utils.cpp_extension.CUDAExtension",
        "torch.utils.cpp_extension.load_inline", "deep_gemm.fp8_gemm_nt", "flash_mla.flash_mla_with_kvcache",
        "deep_ep.Buffer", "fast_hadamard_transform.hadamard_transform", "tile_kernels.modeling.mhc.ops.norm_fn",
        "kernel.act_quant", "kernel.fp4_act_quant", "kernel.fp8_gemm", "kernel.fp4_gemm", "kernel.sparse_attn",
        "kernel.hc_split_sinkhorn", "torch.float8_e4m3fn", "torch.distributed.ReduceOp.AVG",
    }
    for n in names:
        assert rs.name_candidates(n), n
    for mod in ("deep_gemm", "flash_mla", "deep_ep", "fast_hadamard_transform", "tile_kernels", "triton", "tilelang"):
        assert rs.import_rule(mod) is not None, mod
    assert rs.attr_rules["cuda"] and rs.string_rules("cuda:0") and rs.string_rules("nccl")
    assert rs.by_kind["router_gate"]
    assert {t for r in rs.by_kind["text"] + rs.by_kind["file"] for t in r.files} >= {
        "cuda", "cpp", "cmake", "setup", "requirements"}


def test_severity_policy():
    rs = {r.id: r for r in load_rules().rules}
    for rid in ("triton-kernel", "tilelang-kernel", "cuda-global-kernel", "v4-fp8-gemm", "deepgemm-dense", "deepep"):
        assert rs[rid].severity == "blocker", rid
    for rid in ("device-string-cuda", "tensor-cuda-method", "nccl-backend-string", "torch-cuda-amp-import"):
        assert rs[rid].severity == "change" and rs[rid].apply, rid


def test_only_mechanical_rules_rewrite():
    applying = {r.id for r in load_rules().rules if r.apply}
    assert applying == {"torch-cuda-device-api", "torch-cuda-amp-api", "torch-cuda-amp-import", "tensor-cuda-method",
                        "tensor-is-cuda", "device-string-cuda", "nccl-backend-string"}


def test_expand_braces():
    assert expand_braces("a.{b,c}.{d,e}") == ["a.b.d", "a.b.e", "a.c.d", "a.c.e"]
    assert expand_braces("plain") == ["plain"]


BASE = {"id": "x-rule", "kind": "name", "name": "foo.bar", "severity": "change", "category": "c",
        "effort": "small", "message": "m", "replacement": {"action": "a"}}


@pytest.mark.parametrize("patch, error", [
    ({"severity": "fatal"}, "severity"),
    ({"effort": "huge"}, "effort"),
    ({"kind": "regexp"}, "kind"),
    ({"id": "Bad_Id"}, "kebab-case"),
    ({"replacement": {"ours": "flash_attention"}}, "not in our_ops"),
    ({"replacement": {"cuda": "x"}}, "replacement key"),
    ({"kind": "string", "regex": "("}, "not a valid regex"),
    ({"kind": "text", "regex": "x", "files": ["fortran"]}, "unknown file type"),
    ({"apply": {"sub": [["a", "b"]]}}, "apply"),
    ({"when": {"kwarg": {"x": "y"}, "nope": 1}}, "unknown when"),
    ({"colour": "red"}, "unknown field"),
    ({"message": ""}, "missing 'message'"),
])
def test_invalid_rules_rejected_with_rule_id(tmp_path, patch, error):
    raw = dict(BASE, **patch)
    if patch.get("kind") == "string":
        raw.pop("name")
    p = tmp_path / "extra.yaml"
    p.write_text(yaml.safe_dump({"rules": [raw]}))
    with pytest.raises(RuleError, match=re.escape(error)):
        load_rules([str(p)])


def test_missing_and_malformed_rules_files(tmp_path):
    with pytest.raises(RuleError, match="cannot read"):
        load_rules([str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [unclosed\n")
    with pytest.raises(RuleError, match="not valid YAML"):
        load_rules([str(bad)])


def test_readme_exists_and_explains_reports_and_rules():
    readme = os.path.join(os.path.dirname(DEFAULT_RULES_PATH), "README.md")
    text = open(readme, encoding="utf-8").read()
    for needle in ("migrate scan", "--apply", "cuda_op_list.csv", "Adding a rule", "blocker", "expect:"):
        assert needle in text, needle
