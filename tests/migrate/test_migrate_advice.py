"""Advice is right: kernel-name hints keep quantise/dequantise, forward/backward and op families apart,
helpers are not blockers, and every torch_npu name the advice gives exists in torch_npu (read from its wheel)."""
import os
import re
import textwrap

import pytest

from ascend_v4.tools.migrate import load_rules
from ascend_v4.tools.migrate.pyscan import scan_python

HERE = os.path.dirname(os.path.abspath(__file__))
MIGRATE = os.path.join(HERE, "..", "..", "tools", "migrate")


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def advice(rules, kernel, moe=False):
    h = rules.hint_for(kernel, moe)
    return " ".join(h.replacement.values()) if h else ""


@pytest.mark.parametrize("kernel, moe, want, never", [
    ("dequant_fp8_kernel", False, "npu_anti_quant", "npu_dynamic_quant"),
    ("weight_dequant_kernel", False, "npu_anti_quant", "npu_dynamic_quant"),
    ("act_quant_kernel", False, "npu_dynamic_quant", "npu_anti_quant"),
    ("w4a16_dequant_gemm_kernel", False, "npu_weight_quant_batchmatmul", "npu_dynamic_quant"),
    ("fp8_gemm_kernel", False, "npu_quant_matmul", "npu_anti_quant"),
    ("matmul_kernel", False, "torch.matmul", "quant"),
    ("_flash_attn_bwd_kernel", False, "npu_fusion_attention", "npu_fused_infer_attention_score"),
    ("_attn_bwd_dkdv", False, "npu_fusion_attention", "npu_fused_infer_attention_score"),
    ("paged_attention_decode_kernel", False, "npu_fused_infer_attention_score", "sparse_attention"),
    ("_attn_fwd", False, "npu_fusion_attention", "sparse_attention"),
    ("_layer_norm_fwd_1pass_kernel", False, "layer_norm", "moe_combine"),
    ("_layer_norm_fwd_combine", True, "layer_norm", "moe_combine"),  # a norm stays a norm in MoE code
    ("_layer_norm_bwd_kernel", False, "LayerNormGrad", "npu_layer_norm_eval"),
    ("_chunk_scan_fwd_kernel", False, "chunked scan", "npu_chunk_gated_delta_rule"),
    ("chunk_gated_delta_rule_fwd_kernel", False, "npu_chunk_gated_delta_rule", "moe"),
    ("_bmm_chunk_fwd_kernel", False, "chunked scan", "Matmul"),
    ("_causal_conv1d_fwd_kernel", False, "npu_fused_causal_conv1d", "moe"),
    ("combine_kernel", False, "", "moe_combine"),
    ("combine_kernel", True, "moe_combine", "grouped_matmul"),
    ("top_k_sampling_kernel", False, "", "moe_route"),
    ("topk_gating_kernel", True, "moe_route", "grouped_matmul"),
    ("fused_moe_kernel", False, "grouped_matmul", "moe_combine"),
    ("_rms_norm_bwd", False, "npu_rms_norm", "moe"),
])
def test_kernel_hints(rules, kernel, moe, want, never):
    text = advice(rules, kernel, moe)
    if want:
        assert want in text, (kernel, text)
    else:
        assert text == "" or "moe" not in text, (kernel, text)
    assert never not in text, (kernel, text)


def _scan(rules, src, rel="m.py"):
    scanner, err = scan_python(rules, rel, textwrap.dedent(src))
    assert err is None
    return scanner.findings


def test_moe_hints_only_in_moe_code(rules):
    src = """
        import triton
        @triton.jit
        def combine_tokens_kernel(x):
            pass
    """
    kernel = lambda fs: next(f for f in fs if f.rule_id == "triton-kernel")
    plain = kernel(_scan(rules, src, "ops/norm.py"))
    assert "moe_combine" not in plain.replacement_text()
    moe = kernel(_scan(rules, src.replace("pass", "num_experts = 8"), "moe/kernels.py"))
    assert "moe_combine" in moe.replacement_text()


def test_deepgemm_helpers_are_not_gemm_blockers(rules):
    found = {f.symbol: (f.rule_id, f.severity) for f in _scan(rules, """
        import deep_gemm
        from deep_gemm.utils import ceil_div
        n = ceil_div(100, 32)
        m = deep_gemm.get_num_sms()
        deep_gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), out)
        deep_gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, sa), (b, sb), out, idx)
    """)}
    assert found["deep_gemm.utils.ceil_div"] == ("deepgemm-helper", "fine")
    assert found["deep_gemm.get_num_sms"] == ("deepgemm-helper", "fine")
    assert found["deep_gemm.gemm_fp8_fp8_bf16_nt"] == ("deepgemm-dense", "blocker")
    assert found["deep_gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous"][0] == "deepgemm-grouped"


def test_flash_attn_per_call_mapping(rules):
    found = {f.line: f for f in _scan(rules, """
        from flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache
        from flash_mla import flash_mla_with_kvcache
        o1 = flash_attn_func(q, k, v, causal=True)
        o2 = flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, causal=True)
        o3 = flash_attn_varlen_func(q, kc, vc, cu_q, cu_k, mq, mk, block_table=bt)
        o4 = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens)
        o5 = flash_mla_with_kvcache(q, kv, bt, lens, 512, meta, splits)
        o6 = flash_mla_with_kvcache(q, kv, bt, lens, 512, meta, splits, indices=topk)
    """)}
    assert found[4].rule_id == "flash-attn-dense" and "input_layout='BSND'" in found[4].replacement_text()
    assert found[5].rule_id == "flash-attn-varlen" and "input_layout='TND'" in found[5].replacement_text()
    assert found[6].rule_id == "flash-attn-paged" and "npu_fused_infer_attention_score" in found[6].replacement_text()
    assert found[7].rule_id == "flash-attn-kvcache" and "npu_fused_infer_attention_score" in found[7].replacement_text()
    # dense MLA decode is not sparse attention; only the indices= form is
    assert found[8].rule_id == "flashmla" and "sparse_attention" not in found[8].replacement_text()
    assert found[9].rule_id == "flashmla-sparse" and "sparse_attention" in found[9].replacement_text()


def test_cute_dsl_kernels_are_kernel_findings(rules):
    found = _scan(rules, """
        import cutlass
        import cutlass.cute as cute
        @cute.kernel
        def rmsnorm_kernel(gX, gW, gO):
            pass
        @cute.jit
        def launch_gemm(a, b, c):
            pass
    """)
    kernels = [(f.rule_id, f.symbol) for f in found if f.category == "kernel"]
    assert kernels == [("cute-dsl-kernel", "rmsnorm_kernel"), ("cute-dsl-kernel", "launch_gemm")]
    assert "npu_rms_norm" in found[[f.symbol for f in found].index("rmsnorm_kernel")].replacement_text()


def test_every_torch_npu_name_in_the_advice_exists(rules):
    """Advice may only name torch_npu operators torch_npu documents (torch_npu_api.yaml, from its wheel)."""
    ops = set(rules.surface["torch_npu"])
    assert "npu_fusion_attention" in ops and len(ops) > 100
    used = set()
    for name in ("rules.yaml", "cuda_libraries.yaml"):
        used |= set(re.findall(r"torch_npu\.(npu_\w+)", open(os.path.join(MIGRATE, name)).read()))
    assert used and not (used - ops), sorted(used - ops)
    npu_ns = set(rules.surface["torch.npu"])
    for r in rules.rules:
        if r.id == "torch-cuda-device-api":
            assert {p.split(".", 2)[2] for p in r.patterns} <= npu_ns


def test_quack_ops_and_helpers_apart(rules):
    found = {f.symbol: f for f in _scan(rules, """
        from quack.rmsnorm import rmsnorm
        from quack.cross_entropy import cross_entropy
        from quack.compile_utils import make_fake_tensor
        from quack import copy_utils
        y = rmsnorm(x, w)
        l = cross_entropy(logits, target)
        t = make_fake_tensor(dtype, shape)
        c = copy_utils.tiled_copy_2d(a, b)
    """)}
    assert found["quack.rmsnorm.rmsnorm"].rule_id == "quack-norm"
    assert "npu_rms_norm" in found["quack.rmsnorm.rmsnorm"].replacement_text()
    assert "npu_cross_entropy_loss" in found["quack.cross_entropy.cross_entropy"].replacement_text()
    for helper in ("quack.compile_utils.make_fake_tensor", "quack.copy_utils.tiled_copy_2d"):
        assert (found[helper].rule_id, found[helper].severity) == ("quack-helper", "fine")
