"""Ascend bindings: every contract equals its OpDef (parsed from the op_host C++ sources), reg_info names every OpDef
input and output, bindings create primitives only through ops/ascend_call.py, and the CPU contract stand-ins reject
the binding bugs they exist to catch (missing reg_info, a dropped optional input, a wrong dtype, an attribute or
shape outside the contract) while computing the reference's numbers through graph mode and the binding's bprop."""
import ast
import glob
import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINDING_SOURCES = ["ops/mhc/ascendc/binding.py", "ops/moe/ascendc/binding.py", "ops/attention/ascendc.py",
                   "ops/moe/aclnn.py", "ops/engram/ascendc/binding.py"]


def _opdefs():
    """{op type: (inputs [(name, optional)], outputs [name], attrs [(name, required)])} from every op_host source."""
    defs = {}
    for src in glob.glob(os.path.join(ROOT, "ops", "*", "ascendc", "op_host", "*.cpp")):
        text = open(src).read()
        for m in re.finditer(r"class (\w+) : public [\w:]*OpDef\w* \{(.*?)\n\};", text, re.S):
            body = m.group(2)
            ins = [(n, p == "OPTIONAL") for n, p in
                   re.findall(r'Input\("(\w+)"\)\)?(?:,\s*\w+\))?(?:\.ParamType\((\w+)\))?', body)]
            outs = re.findall(r'Output\("(\w+)"\)', body)
            attrs = [(n, p == "REQUIRED") for n, p in re.findall(r'Attr\("(\w+)"\)\.AttrType\((\w+)\)', body)]
            defs[m.group(1)] = (ins, outs, attrs)
    return defs


def _contracts():
    from ascend_v4.ops.attention import ascendc as att
    from ascend_v4.ops.mhc.ascendc import binding as mhc
    from ascend_v4.ops.engram.ascendc import binding as engram
    from ascend_v4.ops.moe.ascendc import binding as moe
    return {**mhc.CONTRACTS, **moe.CONTRACTS, **att.CONTRACTS, **engram.CONTRACTS}


def test_contracts_equal_the_opdefs_in_the_op_host_sources():
    defs = _opdefs()
    contracts = _contracts()
    assert len(defs) == 12 and sorted(defs) == sorted(contracts)
    for op, (ins, outs, attrs) in defs.items():
        c = contracts[op]
        assert [(i.name, i.optional) for i in c.inputs] == ins, op
        assert list(c.outputs) == outs, op
        assert [(a.name, a.required) for a in c.attrs] == attrs, op


def test_reg_info_names_every_opdef_input_and_output_in_order():
    from ascend_v4.ops.ascend_call import ContractError, check_reg_info, reg_info
    for op, c in _contracts().items():
        info = reg_info(c, {a.name: {"int": 1, "float": 1.0, "bool": True}[a.kind] for a in c.attrs})
        check_reg_info(c, info)
        assert [x["name"] for x in info["inputs"]] == [i.name for i in c.inputs]
        assert [x["paramType"] for x in info["inputs"]] == ["optional" if i.optional else "required" for i in c.inputs]
        with pytest.raises(ContractError, match="no reg_info"):
            check_reg_info(c, None)
        bad = dict(info, inputs=[x for x in info["inputs"] if x["paramType"] == "required"])
        if len(bad["inputs"]) != len(info["inputs"]):
            with pytest.raises(ContractError, match="reg_info inputs"):
                check_reg_info(c, bad)


def test_bindings_create_primitives_only_through_ascend_call():
    from ascend_v4.ops import _PUBLIC as PUBLIC_OPS
    for rel in BINDING_SOURCES:
        src = open(os.path.join(ROOT, rel)).read()
        calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                 for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call)}
        assert not calls & {"Custom", "CustomRegOp"}, rel
        assert "primitive(CONTRACTS[" in src, rel
        assert "prepare_" not in src, rel         # no set-up step a caller can forget
        # graph mode cannot parse import statements inside the functions it compiles (the backends)
        for m in re.finditer(r"\ndef (\w+)\(.*?(?=\ndef |\Z)", src, re.S):
            if m.group(1) in PUBLIC_OPS:
                assert "\n    import " not in m.group(0) and "\n    from " not in m.group(0), (rel, m.group(1))


@pytest.fixture
def emulated():
    from ascend_v4.ops import registry
    registry.set_target(registry.Target(device="Ascend", emulated=True))
    yield registry
    registry.set_target(None)


def _t(a):
    import mindspore as ms
    return ms.Tensor(np.asarray(a))


def test_standin_rejects_a_dropped_optional_a_wrong_dtype_and_limits(emulated):
    import mindspore as ms
    from ascend_v4.ops.ascend_call import ContractError
    from ascend_v4.ops.attention import ascendc as att
    ms.set_context(mode=ms.PYNATIVE_MODE)
    rng = np.random.default_rng(0)
    B, S, H, D = 1, 6, 2, 8
    q = _t(rng.standard_normal((B, S, H, D)).astype(np.float32))
    kv = _t(rng.standard_normal((B, S + 1, D)).astype(np.float32))
    sink = _t(np.zeros(H, np.float32))
    win = _t(np.tile(np.arange(S, dtype=np.int32)[None, :, None], (B, 1, 1)))
    prim = att._attention(0.5, 4, -1, 0)
    # the old binding dropped the absent cmp_idx: 4 inputs for an OpDef of 5 shifts every later position
    with pytest.raises(ContractError, match="called with 4 inputs, the OpDef has 5"):
        prim(q, kv, sink, win)
    with pytest.raises(ContractError, match="window_idx' is int64"):
        prim(q, kv, sink, _t(np.zeros((B, S, 1), np.int64)), None)
    with pytest.raises(ContractError, match="required input 'window_idx' is absent"):
        prim(q, kv, sink, None, None)
    with pytest.raises(ContractError, match=r"sinks must be \[H=2\]"):
        prim(q, kv, _t(np.zeros(3, np.float32)), win, None)
    with pytest.raises(ContractError, match="unknown attribute"):
        from ascend_v4.ops.ascend_call import primitive
        primitive(att.CONTRACTS["AV4LightningIndexer"], {"sparse_count": 4, "cmp_ratio": 4, "topk": 4},
                  None, None, None, att._emulate_indexer)
    with pytest.raises(ContractError, match="required attribute 'sparse_count' missing"):
        primitive(att.CONTRACTS["AV4LightningIndexer"], {"cmp_ratio": 4}, None, None, None, att._emulate_indexer)
    # the correct call: positional None for the absent optional; numbers = the float64 reference (HCA layout)
    out = prim(q, kv, sink, win, None)[0].asnumpy()
    from ascend_v4.ops.attention import reference as R
    want = R.hca_attention(q.asnumpy(), kv.asnumpy(), sink.asnumpy(), win.asnumpy(), 4, 0.5)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_moe_gating_standin_checks_hash_inputs_positionally(emulated):
    import mindspore as ms
    from ascend_v4.ops.ascend_call import ContractError
    from ascend_v4.ops.moe import reference as R
    from ascend_v4.ops.moe.ascendc import binding as moe
    ms.set_context(mode=ms.PYNATIVE_MODE)
    rng = np.random.default_rng(1)
    T, E, K, V = 5, 8, 2, 16
    x = rng.standard_normal((T, E)).astype(np.float32)
    ids = rng.integers(0, V, T).astype(np.int32)
    table = rng.integers(0, E, (V, K)).astype(np.int32)
    y, idx, s = moe.moe_gating_topk(_t(x), None, K, norm_type="sqrtsoftplus", routed_scaling_factor=1.5,
                                    input_ids=_t(ids), tid2eid=_t(table))
    wy, widx, ws = R.moe_gating_topk(x, None, K, norm_type=2, routed_scaling_factor=1.5, input_ids=ids,
                                     tid2eid=table)
    np.testing.assert_array_equal(idx.asnumpy(), widx)
    np.testing.assert_allclose(y.asnumpy(), wy, rtol=1e-6)
    prim = moe._gating(K, 1, 1, 0, 2, 1.5, 1e-20)
    with pytest.raises(ContractError, match="hash routing needs both"):
        prim(_t(x), None, _t(ids), None)
    with pytest.raises(ContractError, match="called with 3 inputs"):      # bias dropped instead of None
        prim(_t(x), _t(ids), _t(table))


def test_mhc_standins_in_graph_mode_with_the_bindings_bprop_match_the_composite(emulated):
    import mindspore as ms
    from mindspore import nn
    from ascend_v4.ops.mhc import composite as C
    ms.set_context(mode=ms.GRAPH_MODE)
    b = emulated.resolve("hc_pre")
    assert b.name == "ascendc"

    class Net(nn.Cell):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def construct(self, x, fn, scale, base):
            y, post, comb = self.f(x, fn, scale, base)
            return y.sum() + (post * 2).sum() + (comb * comb).sum()

    rng = np.random.default_rng(2)
    args = [_t(rng.standard_normal((2, 3, 4, 8)).astype(np.float32)),
            _t((rng.standard_normal((24, 32)) * 0.1).astype(np.float32)),
            _t(np.array([0.5, 0.7, 0.9], np.float32)), _t((rng.standard_normal(24) * 0.1).astype(np.float32))]
    got = ms.grad(Net(b.fn), (0, 1, 2, 3))(*args)
    want = ms.grad(Net(C.hc_pre), (0, 1, 2, 3))(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.asnumpy(), w.asnumpy(), rtol=1e-4, atol=2e-6)


def test_device_primitives_check_shape_limits_at_compile_time_too():
    """On the NPU the aot primitive's shape inference runs the same limits (graph compile, before any launch)."""
    from ascend_v4.ops import registry
    from ascend_v4.ops.ascend_call import ContractError
    from ascend_v4.ops.moe.ascendc import binding as moe
    registry.set_target(registry.Target(device="Ascend"))       # a device target: real aot primitives
    try:
        prim = moe._gating(3, 1, 1, 0, 2, 1.0, 1e-20)
        assert type(prim).__name__ == "Custom" and prim.func_type == "aot"
        assert prim.out_shape([5, 8], None, None, None) == ([5, 3], [5, 3], [5, 8])
        with pytest.raises(ContractError, match=r"k=3 must be in \[1, E=2\]"):
            prim.out_shape([5, 2], None, None, None)
        with pytest.raises(ContractError, match="renorm must be 0"):
            moe._gating(3, 1, 1, 0, 2, 1.0, 1e-20, 1).out_shape([5, 8], None, None, None)
    finally:
        registry.set_target(None)
