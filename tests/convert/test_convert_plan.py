"""The official converter's split rules (docs/formats.md), the TP/EP rank layout and the destination formats of the plan."""
import pytest

from ascend_v4.checkpoint.inventory import official_inventory
from ascend_v4.config import PRESETS
from ascend_v4.convert import ConvertError
from ascend_v4.convert.plan import dest_kind, is_int8_linear
from ascend_v4.convert.sharding import Layout, routed_expert_index, split_dim

FLASH = PRESETS["v4-flash"]


def test_split_rules_on_the_flash_inventory():
    inv = official_inventory(FLASH)
    dim0 = {"embed.weight", "head.weight", "layers.2.attn.wq_b.weight", "layers.2.attn.indexer.wq_b.weight",
            "layers.2.attn.wo_a.weight", "layers.2.attn.attn_sink", "layers.2.attn.indexer.weights_proj.weight",
            "layers.5.ffn.shared_experts.w1.weight", "layers.5.ffn.shared_experts.w3.weight",
            "mtp.0.attn.wq_b.weight"}
    dim1 = {"layers.2.attn.wo_b.weight", "layers.5.ffn.shared_experts.w2.weight", "mtp.0.ffn.shared_experts.w2.weight"}
    rep = {"layers.2.attn.wq_a.weight", "layers.2.attn.wkv.weight", "layers.2.attn.q_norm.weight",
           "layers.2.attn.compressor.wkv.weight", "layers.2.attn.compressor.ape", "layers.2.attn.indexer.compressor.wgate.weight",
           "layers.5.ffn.gate.weight", "layers.5.ffn.gate.bias", "layers.0.ffn.gate.tid2eid", "layers.5.hc_attn_fn",
           "hc_head_fn", "norm.weight", "mtp.0.e_proj.weight", "mtp.0.h_proj.weight", "mtp.0.enorm.weight"}
    for n in dim0:
        assert n in inv and split_dim(n) == 0, n
    for n in dim1:
        assert n in inv and split_dim(n) == 1, n
    for n in rep:
        assert n in inv and split_dim(n) is None, n
    assert routed_expert_index("layers.7.ffn.experts.255.w2.weight") == 255
    assert routed_expert_index("layers.7.ffn.shared_experts.w2.weight") is None
    assert split_dim("layers.7.attn.wq_b.scale") == 0          # the release's scale follows its weight


def test_int8_set_is_exactly_the_910b_linears():
    inv = official_inventory(FLASH)
    dense = {n.split(".", 2)[2] for n in inv if is_int8_linear(n) and ".experts." not in n}   # layers.L.* / mtp.0.*
    assert dense == {"attn.wq_b.weight", "attn.wo_b.weight", "attn.indexer.wq_b.weight",
                     "ffn.shared_experts.w1.weight", "ffn.shared_experts.w2.weight", "ffn.shared_experts.w3.weight"}
    assert all(is_int8_linear(f"layers.3.ffn.experts.{e}.w{k}.weight") for e in (0, 255) for k in (1, 2, 3))
    kinds = {p: {n: dest_kind(n, s, p) for n, s in inv.items()} for p in ("bf16", "w8a8", "w4a8")}
    assert kinds["bf16"]["layers.3.attn.wq_a.weight"] == "bf16"
    assert kinds["w8a8"]["layers.3.attn.wq_a.weight"] == "bf16"          # not an int8 linear on 910B
    assert kinds["w8a8"]["layers.3.attn.wo_a.weight"] == "bf16"
    assert kinds["w8a8"]["layers.3.ffn.experts.9.w1.weight"] == "int8"
    assert kinds["w4a8"]["layers.3.ffn.experts.9.w1.weight"] == "int4"
    assert kinds["w4a8"]["layers.3.ffn.shared_experts.w1.weight"] == "int8"
    for p in kinds:
        assert kinds[p]["embed.weight"] == "copy" and kinds[p]["layers.3.hc_ffn_fn"] == "copy"
        assert kinds[p]["layers.0.ffn.gate.tid2eid"] == "copy" and kinds[p]["layers.3.ffn.gate.weight"] == "copy"


def test_rank_layout():
    lay = Layout(4, 4)
    assert lay.world == 4 and [lay.tp_rank(r) for r in range(4)] == [0, 1, 2, 3]
    assert [list(lay.local_experts(r, 256))[:2] for r in range(4)] == [[0, 1], [64, 65], [128, 129], [192, 193]]
    lay = Layout(2, 8)
    assert lay.world == 8 and [lay.tp_rank(r) for r in range(8)] == [0, 1] * 4
    assert lay.local_experts(5, 256) == range(160, 192)
    lay = Layout(8, 2)
    assert [lay.ep_rank(r) for r in range(8)] == [0, 1] * 4
    assert lay.local_experts(3, 256) == range(128, 256)
    with pytest.raises(ConvertError, match="multiple"):
        Layout(3, 2)
    with pytest.raises(ConvertError, match="positive"):
        Layout(0, 1)
    with pytest.raises(ConvertError, match="divide"):
        Layout(1, 3).check_experts(256)


def test_plan_places_every_tensor_on_the_right_ranks(release):
    from ascend_v4.convert.plan import build_plan
    from ascend_v4.convert.source import open_source
    src = open_source(release[0])
    inv = src.inventory
    plan = build_plan(src, "w8a8", Layout(2, 4))
    assert [f.path for f in plan.rank_files][:2] == ["rank000/model-00001-of-00001.safetensors",
                                                     "rank001/model-00001-of-00001.safetensors"]
    for name, spec in inv.items():
        gs = plan.groups_of(name)
        e = routed_expert_index(name)
        if e is not None:
            assert [g.rank for _, g in gs] == [e // 2]                   # 8 experts over EP 4
            continue
        assert sorted(g.rank for _, g in gs) == [0, 1, 2, 3], name
        for _, g in gs:
            dim = split_dim(name)
            w = g.entries[0]
            if dim is None:
                assert g.split is None and tuple(w.shape) == spec.shape
            else:
                assert g.split == (dim, g.rank % 2, 2)
                want = list(spec.shape)
                want[dim] //= 2
                assert list(w.shape) == want, name
            if g.kind == "int8":
                assert w.dtype == "I8" and g.entries[1].name == name + "_scale"
                assert g.entries[1].shape == ((w.shape[0],) if dim != 1 else (spec.shape[0],))
    scales = [g.source for f in plan.sidecar_files for g in f.groups]
    assert len(scales) == sum(1 for s in inv.values() if s.fmt in ("fp8", "fp4"))
    with pytest.raises(ConvertError, match="does not split"):
        build_plan(src, "bf16", Layout(3, 1))
    with pytest.raises(ConvertError, match="n_routed_experts"):
        build_plan(src, "bf16", Layout(1, 16))
