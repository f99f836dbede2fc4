"""Inventory vs the released checkpoints (the published V4-Flash and V4-Pro tensor lists, written out here) - shapes only."""
import math

import pytest

from ascend_v4.checkpoint.inventory import (StoredEntry, TensorSpec, official_inventory, stored_entries,
                                            stored_inventory)
from ascend_v4.checkpoint.safetensors_io import STORAGE_DTYPES
from ascend_v4.config import PRESETS


@pytest.fixture(scope="module")
def flash():
    return stored_inventory(PRESETS["v4-flash"])


@pytest.fixture(scope="module")
def pro():
    return stored_inventory(PRESETS["v4-pro"])


def entry(inv, name):
    e = inv[name]
    return e.dtype, list(e.shape)


def test_flash_common_layer_tensors(flash):
    L = "layers.5."
    expect = {
        "attn_norm.weight": ("BF16", [4096]), "ffn_norm.weight": ("BF16", [4096]),
        "hc_attn_fn": ("F32", [24, 16384]), "hc_ffn_fn": ("F32", [24, 16384]),
        "hc_attn_base": ("F32", [24]), "hc_ffn_scale": ("F32", [3]),
        "attn.wq_a.weight": ("F8_E4M3", [1024, 4096]), "attn.wq_a.scale": ("F8_E8M0", [8, 32]),
        "attn.q_norm.weight": ("BF16", [1024]),
        "attn.wq_b.weight": ("F8_E4M3", [32768, 1024]), "attn.wq_b.scale": ("F8_E8M0", [256, 8]),
        "attn.wkv.weight": ("F8_E4M3", [512, 4096]), "attn.wkv.scale": ("F8_E8M0", [4, 32]),
        "attn.kv_norm.weight": ("BF16", [512]),
        "attn.wo_a.weight": ("F8_E4M3", [8192, 4096]), "attn.wo_a.scale": ("F8_E8M0", [64, 32]),
        "attn.wo_b.weight": ("F8_E4M3", [4096, 8192]), "attn.wo_b.scale": ("F8_E8M0", [32, 64]),
        "attn.attn_sink": ("F32", [64]),
        "ffn.gate.weight": ("BF16", [256, 4096]), "ffn.gate.bias": ("F32", [256]),
        "ffn.experts.0.w1.weight": ("I8", [2048, 2048]), "ffn.experts.0.w1.scale": ("F8_E8M0", [2048, 128]),
        "ffn.experts.255.w3.weight": ("I8", [2048, 2048]), "ffn.experts.255.w3.scale": ("F8_E8M0", [2048, 128]),
        "ffn.experts.7.w2.weight": ("I8", [4096, 1024]), "ffn.experts.7.w2.scale": ("F8_E8M0", [4096, 64]),
        "ffn.shared_experts.w1.weight": ("F8_E4M3", [2048, 4096]), "ffn.shared_experts.w1.scale": ("F8_E8M0", [16, 32]),
        "ffn.shared_experts.w2.weight": ("F8_E4M3", [4096, 2048]), "ffn.shared_experts.w2.scale": ("F8_E8M0", [32, 16]),
    }
    for k, v in expect.items():
        assert entry(flash, L + k) == v, k
    assert "layers.5.ffn.experts.256.w1.weight" not in flash


def test_flash_layer_kinds(flash):
    csa = {"attn.compressor.wkv.weight": ("BF16", [1024, 4096]), "attn.compressor.wgate.weight": ("BF16", [1024, 4096]),
           "attn.compressor.ape": ("F32", [4, 1024]), "attn.compressor.norm.weight": ("BF16", [512]),
           "attn.indexer.wq_b.weight": ("F8_E4M3", [8192, 1024]), "attn.indexer.wq_b.scale": ("F8_E8M0", [64, 8]),
           "attn.indexer.weights_proj.weight": ("BF16", [64, 4096]),
           "attn.indexer.compressor.wkv.weight": ("BF16", [256, 4096]),
           "attn.indexer.compressor.wgate.weight": ("BF16", [256, 4096]),
           "attn.indexer.compressor.ape": ("F32", [4, 256]), "attn.indexer.compressor.norm.weight": ("BF16", [128])}
    hca = {"attn.compressor.wkv.weight": ("BF16", [512, 4096]), "attn.compressor.wgate.weight": ("BF16", [512, 4096]),
           "attn.compressor.ape": ("F32", [128, 512]), "attn.compressor.norm.weight": ("BF16", [512])}
    for L in (2, 4, 42):
        for k, v in csa.items():
            assert entry(flash, f"layers.{L}.{k}") == v, (L, k)
    for L in (3, 41):
        for k, v in hca.items():
            assert entry(flash, f"layers.{L}.{k}") == v, (L, k)
        assert f"layers.{L}.attn.indexer.wq_b.weight" not in flash
    for p in ("layers.0.", "layers.1.", "mtp.0."):
        assert not any(k.startswith(p + "attn.compressor") or k.startswith(p + "attn.indexer") for k in flash)
    for L in (0, 1, 2):                        # hash layers: tid2eid instead of bias
        assert entry(flash, f"layers.{L}.ffn.gate.tid2eid") == ("I64", [129280, 6])
        assert f"layers.{L}.ffn.gate.bias" not in flash
    assert "layers.3.ffn.gate.tid2eid" not in flash and "mtp.0.ffn.gate.bias" in flash


def test_flash_globals_and_mtp(flash):
    g = {"embed.weight": ("BF16", [129280, 4096]), "head.weight": ("BF16", [129280, 4096]),
         "norm.weight": ("BF16", [4096]), "hc_head_fn": ("F32", [4, 16384]), "hc_head_base": ("F32", [4]),
         "hc_head_scale": ("F32", [1]),
         "mtp.0.e_proj.weight": ("F8_E4M3", [4096, 4096]), "mtp.0.e_proj.scale": ("F8_E8M0", [32, 32]),
         "mtp.0.h_proj.scale": ("F8_E8M0", [32, 32]), "mtp.0.enorm.weight": ("BF16", [4096]),
         "mtp.0.hnorm.weight": ("BF16", [4096]), "mtp.0.norm.weight": ("BF16", [4096]),
         "mtp.0.hc_head_fn": ("F32", [4, 16384]), "mtp.0.hc_head_base": ("F32", [4]),
         "mtp.0.hc_head_scale": ("F32", [1]), "mtp.0.attn.wq_b.scale": ("F8_E8M0", [256, 8])}
    for k, v in g.items():
        assert entry(flash, k) == v, k
    assert not any(k.startswith("layers.43.") or k.startswith("mtp.1.") for k in flash)
    assert not any("emb" in k and k.startswith("mtp.") for k in flash)   # MTP shares embed / head


def test_flash_counts(flash):
    # per block 21 + gate 2 + experts 256*3*2 + shared 6; CSA +11, HCA +4; MTP +10; globals 6
    per = 21 + 2 + 256 * 6 + 6
    assert len(flash) == 43 * per + 21 * 11 + 20 * 4 + (per + 10) + 6 == 69187
    assert len(official_inventory(PRESETS["v4-flash"])) == 35020


def test_pro_matches_released_inventory(pro):
    # the official V4-Pro repo: 145,116 tensors, 805.33 GB (GiB, data + headers), "861.6B parameters"
    assert len(pro) == 145116
    data = sum(math.prod(e.shape) * STORAGE_DTYPES[e.dtype].itemsize for e in pro.values())
    assert 805.30 < data / 2 ** 30 < 805.33
    assert round(sum(math.prod(e.shape) for e in pro.values()) / 1e9, 1) == 861.6
    expect = {"layers.7.attn.wq_a.scale": [12, 56], "layers.7.attn.wq_b.scale": [512, 12],
              "layers.7.attn.wkv.scale": [4, 56], "layers.7.attn.wo_a.scale": [128, 32],
              "layers.7.attn.wo_b.scale": [56, 128], "layers.9.ffn.experts.383.w1.weight": [3072, 3584],
              "layers.9.ffn.experts.383.w1.scale": [3072, 224], "layers.9.ffn.experts.0.w2.weight": [7168, 1536],
              "layers.9.ffn.experts.0.w2.scale": [7168, 96], "layers.9.ffn.shared_experts.w1.scale": [24, 56],
              "layers.9.ffn.shared_experts.w2.scale": [56, 24], "mtp.0.e_proj.scale": [56, 56],
              "layers.0.attn.compressor.ape": [128, 512], "layers.60.attn.indexer.wq_b.scale": [64, 12],
              "layers.1.attn.compressor.wkv.weight": [512, 7168], "layers.2.ffn.gate.tid2eid": [129280, 6]}
    for k, v in expect.items():
        assert list(pro[k].shape) == v, k


def test_stored_entries_formats():
    assert stored_entries("x.weight", TensorSpec((300, 200), "fp8")) == [
        StoredEntry("x.weight", "F8_E4M3", (300, 200)), StoredEntry("x.scale", "F8_E8M0", (3, 2))]
    assert stored_entries("x.weight", TensorSpec((64, 96), "fp4")) == [
        StoredEntry("x.weight", "I8", (64, 48)), StoredEntry("x.scale", "F8_E8M0", (64, 3))]
    assert stored_entries("t", TensorSpec((5, 2), "i64")) == [StoredEntry("t", "I64", (5, 2))]
    with pytest.raises(ValueError, match="unknown tensor format"):
        stored_entries("t", TensorSpec((1,), "f16"))


def test_tiny_variants():
    tiny = PRESETS["tiny"]
    inv = official_inventory(tiny)
    assert inv["layers.1.attn.compressor.ape"] == TensorSpec((4, 64), "f32")        # CSA, 2*head_dim
    assert inv["layers.2.attn.compressor.ape"] == TensorSpec((16, 32), "f32")       # HCA ratio 16
    assert inv["layers.1.attn.indexer.compressor.norm.weight"] == TensorSpec((32,), "bf16")
    assert inv["layers.0.ffn.gate.tid2eid"] == TensorSpec((512, 2), "i64")
    assert inv["layers.0.ffn.experts.3.w2.weight"].fmt == "fp4"
    fp8 = official_inventory(tiny.replace(expert_dtype="fp8"))
    assert fp8["layers.0.ffn.experts.3.w2.weight"].fmt == "fp8"
    bf16 = official_inventory(tiny.replace(dtype="bf16"))
    assert {s.fmt for s in bf16.values()} == {"bf16", "f32", "i64"}
    assert list(bf16) == list(inv)
