"""DeepSeek-V4.1 release format: FP8 32×32 weights, MXFP4 experts and FP8 Engram rows against hand-built bytes,
make-checkpoint -> the one loader -> info / dump, and the refusals."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from ascend_v4.checkpoint import ShardedCheckpoint, write_official_checkpoint
from ascend_v4.checkpoint.official import decode_tensor, encode_tensor
from ascend_v4.checkpoint.release_v41 import (random_weights_v41, v41_inventory, v41_stored_inventory,
                                              release_token_map)
from ascend_v4.checkpoint.safetensors_io import CheckpointError
from ascend_v4.cli import main
from ascend_v4.config import MODEL_VERSIONS, V41_PRESETS, ConfigError
from ascend_v4.numpy_model_v41 import NumpyV41
from ascend_v4.weights import load_checkpoint

CFG = V41_PRESETS["v4.1-tiny"].validate()
T = 2.0 ** -12          # 2^-9 (the smallest E4M3 subnormal, code 0x01) at scale 2^-3: never halves exactly

# --------------------------------------------------------------------------- hand-built tensors and bytes
# E4M3: sign | exponent (bias 7) | 3 mantissa bits. 448 = 1.75·2^8 -> 0x7E, 384 = 1.5·2^8 -> 0x7C, 224 -> 0x76,
# 8 = 2^3 -> 0x50, 4 -> 0x48, -4 -> 0xC8, 32 = 2^5 -> 0x60. E8M0: 2^e -> e + 127.


def hand_fp8_weight():
    """[64, 64]: block (0,0) amax 56 -> scale 2^-3; block (0,1) amax 3 -> 2^-7; block (1,0) all zero -> the 1e-4
    amax floor, 2^ceil(log2(1e-4/448)) = 2^-22; block (1,1) amax 448 with all codes halvable -> canonical
    (q/2, 2·scale): 448 -> 224 at 2^1, 8 -> 4."""
    w = np.zeros((64, 64), np.float32)
    w[0, 0], w[0, 1], w[5, 31], w[31, 7] = 56.0, 1.0, -0.5, T
    w[3, 40] = 3.0
    w[40, 40], w[63, 63] = 448.0, 8.0
    codes = np.zeros((64, 64), np.uint8)
    codes[0, 0], codes[0, 1], codes[5, 31], codes[31, 7] = 0x7E, 0x50, 0xC8, 0x01
    codes[3, 40] = 0x7C
    codes[40, 40], codes[63, 63] = 0x76, 0x48
    scales = np.array([[127 - 3, 127 - 7], [127 - 22, 127 + 1]], np.uint8)
    return w, codes, scales


def hand_engram_rows():
    """[3, 32] rows, one E8M0 scale each: amax 3 -> 2^-7 (3 -> 384 0x7C, 0.25 -> 32 0x60); amax 448 with a
    subnormal -> 2^0 (0x7E, 0x01); 448 and 8 only -> canonical 2^1 (0x76, 0x48)."""
    w = np.zeros((3, 32), np.float32)
    w[0, 0], w[0, 31] = 3.0, 0.25
    w[1, 2], w[1, 3] = 448.0, 2.0 ** -9
    w[2, 0], w[2, 1] = 448.0, 8.0
    codes = np.zeros((3, 32), np.uint8)
    codes[0, 0], codes[0, 31], codes[1, 2], codes[1, 3], codes[2, 0], codes[2, 1] = 0x7C, 0x60, 0x7E, 0x01, 0x76, 0x48
    return w, codes, np.array([[120], [127], [128]], np.uint8)


def hand_mxfp4_expert():
    """[32, 64] routed-expert weight: row 0 block 0 amax 3 -> scale 2^ceil(log2(3/6)) = 2^-1; 3 -> 6 (code 7),
    0.25 -> 0.5 (code 1), -1 -> -2 (code 0b1100); low nibble = even column. Other blocks zero -> floor scale
    2^ceil(log2(6·2^-126 / 6)) = 2^-126 (code 1)."""
    w = np.zeros((32, 64), np.float32)
    w[0, 0], w[0, 1], w[0, 2] = 3.0, 0.25, -1.0
    packed = np.zeros((32, 32), np.int8)
    packed[0, 0] = 0x17                    # col 0 = 7 (low), col 1 = 1 (high)
    packed[0, 1] = 0x0C                    # col 2 = 12 (-2), col 3 = 0
    scales = np.full((32, 2), 1, np.uint8)
    scales[0, 0] = 126
    return w, packed, scales


def test_codecs_match_hand_built_bytes():
    inv = v41_inventory(CFG)
    for name, (w, codes, scales), want_fmt in (
            ("layers.0.attn.wq_b.weight", hand_fp8_weight(), "fp8"),
            ("layers.1.engram.embed.weight", hand_engram_rows(), "fp8_row"),
            ("layers.0.ffn.experts.0.w1.weight", hand_mxfp4_expert(), "fp4")):
        spec = inv[name]._replace(shape=w.shape)
        assert spec.fmt == want_fmt
        enc = encode_tensor(name, spec, w, 32)
        scale = name[:-len("weight")] + "scale"
        assert enc[name][0] == ("I8" if want_fmt == "fp4" else "F8_E4M3") and enc[scale][0] == "F8_E8M0"
        np.testing.assert_array_equal(enc[name][1], codes)
        np.testing.assert_array_equal(enc[scale][1], scales)
        np.testing.assert_array_equal(decode_tensor(name, spec, {name: codes, scale: scales}, 32), w)


def test_inventory_names_and_shapes_as_released():
    st = v41_stored_inventory(V41_PRESETS["v4.1-flash"])
    assert st["layers.0.attn.wkv.weight"] == ("layers.0.attn.wkv.weight", "F8_E4M3", (512, 5120))
    assert st["layers.0.attn.wkv.scale"].shape == (16, 160)
    assert (st["layers.0.ffn.experts.0.w1.weight"].dtype, st["layers.0.ffn.experts.0.w1.weight"].shape) == \
        ("I8", (2304, 2560))
    assert st["layers.0.ffn.experts.0.w1.scale"].shape == (2304, 160)
    assert st["layers.14.engram.embed.scale"].shape == (384016682, 8)
    assert st["layers.1.engram.wkv.scale"].shape == (800, 192)
    assert "layers.20.attn.compressor.wgate.weight" not in st and "layers.2.attn.compressor.wgate.weight" in st
    assert "layers.24.attn.indexer.wk.weight" not in st and "layers.24.attn.indexer.wq_b.scale" in st
    assert not any(k.startswith("mtp.") and k.endswith((".embed.weight", ".head.weight")) and "markov" not in k
                   for k in st)
    assert len(st) == 96085


def test_make_checkpoint_layout_and_the_one_loader(release, tmp_path):
    assert sorted(os.listdir(release)) == ["config.json", "inference", "model-00001-of-00001.safetensors",
                                           "model.safetensors.index.json", "tokenizer.json"]
    with open(os.path.join(release, "config.json")) as f:
        assert json.load(f)["quantization_config"]["weight_block_size"] == [32, 32]
    cfg, w = load_checkpoint(release, versions=MODEL_VERSIONS)
    assert cfg.version == "v4.1" and sorted(w) == sorted(v41_inventory(cfg))
    tmap = release_token_map(release, cfg)          # the config names its tokenizer's compressed vocabulary
    assert len(tmap) == cfg.vocab_size and tmap.max() + 1 == cfg.engram_compressed_vocab_size
    # what the loader returns is exactly what the writer stored (the writer's own decode of its bytes)
    # the release fixture's weights (conftest.py: seed 5) written again
    again = write_official_checkpoint(cfg, random_weights_v41(cfg, 5), str(tmp_path / "again"))
    for k in w:
        np.testing.assert_array_equal(w[k], again[k])
    ck = ShardedCheckpoint(release)
    try:
        dt = {k: ck.meta(k)[0] for k in ck.keys()}
    finally:
        ck.close()
    assert dt["layers.1.engram.embed.weight"] == "F8_E4M3" and dt["layers.1.engram.embed.scale"] == "F8_E8M0"
    assert dt["layers.0.ffn.experts.3.w2.weight"] == "I8" and dt["layers.0.attn.attn_sink"] == "F32"
    with pytest.raises(ConfigError, match="V4.1|v4.1"):
        load_checkpoint(release)                      # paths that do not run V4.1 still refuse it


def test_info_and_dump_of_a_release_directory(release, tmp_path):
    r = CliRunner().invoke(main, ["info", release])
    assert r.exit_code == 0, r.output
    assert "DeepSeek-V4.1" in r.output and "layer roles: S S F2 u2 F2 u2 F1 u1 R1 u1 D D D" in r.output
    ids = np.random.default_rng(2).integers(0, CFG.vocab_size, (2, 12))
    np.save(tmp_path / "t.npy", ids)
    out = str(tmp_path / "d.npz")
    r = CliRunner().invoke(main, ["dump", release, "--tokens", str(tmp_path / "t.npy"), "--out", out,
                                  "--backend", "numpy"])
    assert r.exit_code == 0, r.output
    d = np.load(out)
    assert sorted(d.files) == sorted(["embed", "logits"] + [f"hidden_block{i}" for i in range(CFG.n_layers)])
    cfg, w = load_checkpoint(release, versions=MODEL_VERSIONS)
    want = NumpyV41(cfg, w, token_map=release_token_map(release, cfg)).forward(ids)
    np.testing.assert_array_equal(d["logits"], want["logits"].astype(np.float32))
    r = CliRunner().invoke(main, ["dump", release, "--tokens", str(tmp_path / "t.npy"), "--out", out + "2",
                                  "--mode", "official"])      # V4.1 dumps run exact numerics only
    assert r.exit_code == 2 and "exact numerics" in r.output and not os.path.exists(out + "2")


def test_a_missing_engram_scale_is_named(release, tmp_path):
    from ascend_v4.checkpoint import write_safetensors
    bad = tmp_path / "bad"
    bad.mkdir()
    ck = ShardedCheckpoint(release)
    try:
        entries = {k: (ck.meta(k)[0], ck.raw(k)) for k in ck.keys() if k != "layers.4.engram.embed.scale"}
    finally:
        ck.close()
    write_safetensors(str(bad / "model.safetensors"), entries)
    for f in ("config.json", "tokenizer.json"):
        (bad / f).write_bytes(open(os.path.join(release, f), "rb").read())
    (bad / "inference").mkdir()
    (bad / "inference" / "config.json").write_bytes(open(os.path.join(release, "inference", "config.json"), "rb").read())
    with pytest.raises(CheckpointError, match="missing layers.4.engram.embed.scale"):
        load_checkpoint(str(bad), versions=MODEL_VERSIONS)
