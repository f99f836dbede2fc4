"""Optimiser split by parameter role (docs/training.md) over every parameter of the 'tiny' Transformer."""
import re

import numpy as np
import pytest

from ascend_v4.train.param_groups import ADAMW, FROZEN, MUON, classify, describe, format_table, split, summarize


@pytest.fixture(scope="module")
def tiny_model(tiny_cfg):
    from ascend_v4.model import Transformer
    return Transformer(tiny_cfg, max_seq_len=64)


def _expected(name, shape):
    """An independent statement of the rule, by name pattern, for cross-checking classify()."""
    if name.endswith("ffn.gate.bias") or name.endswith("tid2eid"):
        return FROZEN
    if name in ("embed.weight", "head.weight") or name.endswith("norm.weight"):
        return ADAMW
    if re.search(r"hc_(attn|ffn|head)_(base|scale)$", name) or name.endswith(("attn_sink", "compressor.ape")):
        return ADAMW
    assert len(shape) == 2, name
    return MUON


def test_every_tiny_parameter_in_exactly_one_group(tiny_model, tiny_cfg):
    params = list(tiny_model.get_parameters())
    groups = split(tiny_model, strict=True)
    names = [p.name for g in groups.values() for p in g]
    assert sorted(names) == sorted(p.name for p in params) and len(set(names)) == len(names)
    for g, ps in groups.items():
        for p in ps:
            assert _expected(p.name, tuple(p.shape)) == g, (p.name, g)
    by = {p.name: g for g, ps in groups.items() for p in ps}

    # AdamW: embedding, head, every RMSNorm gain, mHC biases and gates, sinks, compressor ape
    for n in ["embed.weight", "head.weight", "norm.weight", "hc_head_base", "hc_head_scale",
              "layers.0.attn_norm.weight", "layers.0.ffn_norm.weight", "layers.0.attn.q_norm.weight",
              "layers.0.attn.kv_norm.weight", "layers.1.attn.compressor.norm.weight",
              "layers.1.attn.indexer.compressor.norm.weight", "layers.2.hc_attn_base", "layers.2.hc_ffn_scale",
              "layers.3.attn.attn_sink", "layers.1.attn.compressor.ape", "layers.3.attn.indexer.compressor.ape",
              "mtp.0.enorm.weight", "mtp.0.hnorm.weight", "mtp.0.norm.weight", "mtp.0.hc_head_base"]:
        assert by[n] == ADAMW, n
    # frozen: balancer-owned router bias, hash table
    for n in ["layers.0.ffn.gate.tid2eid", "layers.1.ffn.gate.bias", "mtp.0.ffn.gate.bias"]:
        assert by[n] == FROZEN, n
    assert len(groups[FROZEN]) == 5     # tid2eid of hash layer 0, gate.bias of layers 1-3 and of the MTP block
    # Muon: all matrices incl. mHC W_*, router, compressor/indexer projections, MTP projections
    for n in ["hc_head_fn", "layers.0.hc_attn_fn", "mtp.0.hc_head_fn", "layers.0.attn.wq_a.weight",
              "layers.0.attn.wo_b.weight", "layers.0.ffn.gate.weight", "layers.1.attn.compressor.wkv.weight",
              "layers.1.attn.compressor.wgate.weight", "layers.1.attn.indexer.wq_b.weight",
              "layers.1.attn.indexer.weights_proj.weight", "layers.1.attn.indexer.compressor.wgate.weight",
              "layers.0.ffn.shared_experts.w2.weight", "mtp.0.e_proj.weight", "mtp.0.h_proj.weight"]:
        assert by[n] == MUON, n
    # each routed expert matrix is its own Muon parameter
    experts = [p for p in groups[MUON] if ".ffn.experts." in p.name]
    assert len(experts) == (tiny_cfg.n_layers + tiny_cfg.n_mtp_layers) * tiny_cfg.n_routed_experts * 3
    assert all(len(p.shape) == 2 for p in experts)
    # every parameter that gradients may move is float; every 1-D one is AdamW
    for p in params:
        if len(p.shape) < 2 and by[p.name] != FROZEN:
            assert by[p.name] == ADAMW, p.name


def test_describe_rows_and_table(tiny_model):
    rows = describe(tiny_model, strict=True)
    assert len(rows) == len(list(tiny_model.get_parameters()))
    name, shape, group, reason = rows[0]                       # rows iterate as (name, shape, group, reason)
    assert (name, group) == (rows[0].name, rows[0].group)
    r = {x.name: x for x in rows}
    assert r["layers.0.ffn.experts.3.w2.weight"].reason == "routed expert 3 matrix, orthogonalised on its own"
    assert r["layers.1.ffn.gate.bias"].group == FROZEN and "balancer" in r["layers.1.ffn.gate.bias"].reason
    ape = r["layers.1.attn.compressor.ape"]
    assert ape.group == ADAMW and "position bias" in ape.reason
    assert r["embed.weight"].shape == (512, 64) and r["embed.weight"].numel == 512 * 64
    assert not any(x.reason.startswith("default") for x in rows)
    s = summarize(rows)
    assert sum(v["numel"] for v in s.values()) == sum(int(np.prod(p.shape)) for p in tiny_model.get_parameters())
    assert s[FROZEN]["tensors"] == 5
    text = format_table(rows)
    assert "layers.0.hc_attn_fn" in text and text.rstrip().splitlines()[-3].startswith("muon")
    only = format_table(rows, FROZEN)
    assert "embed.weight" not in only and "tid2eid" in only


def test_classify_guards_and_defaults():
    import mindspore as ms
    assert classify("layers.0.attn.wq_a.weight", (4, 8)) == (MUON, "attention projection")
    assert classify("model.layers.0.attn.wq_a.weight", (4, 8))[0] == MUON          # a wrapper prefix is fine
    assert classify("layers.0.attn.wq_a.weight", (4, 8), requires_grad=False)[0] == FROZEN
    assert classify("layers.0.ffn.gate.tid2eid", (8, 2), dtype=ms.int32)[0] == FROZEN
    assert classify("x.counter", (4,), dtype=np.int64)[0] == FROZEN
    assert classify("layers.0.ffn.gate.bias", (8,), requires_grad=True)[0] == FROZEN   # by role, even if trainable
    assert classify("layers.0.ffn.experts.w1", (8, 4, 6))[0] == MUON                 # stacked experts
    assert classify("hc_head_fn", (4, 256))[0] == MUON
    assert classify("hc_head_base", (4,))[0] == ADAMW
    assert classify("head.weight", (10, 4))[0] == ADAMW
    assert classify("layers.0.hc_attn_fn", (24, 256))[0] == MUON
    g, r = classify("new.proj.weight", (3, 5))
    assert g == MUON and r.startswith("default")
    g, r = classify("new.bias", (3,))
    assert g == ADAMW and r.startswith("default")
    with pytest.raises(ValueError, match="no known optimiser role"):
        classify("new.proj.weight", (3, 5), strict=True)
    assert classify("new.frozen", (3,), requires_grad=False, strict=True)[0] == FROZEN
    with pytest.raises(ValueError, match="does not fit its role"):
        classify("layers.0.attn_norm.weight", (4, 4))
    with pytest.raises(ValueError, match="does not fit its role"):
        classify("layers.0.attn.wq_a.weight", (4,))
