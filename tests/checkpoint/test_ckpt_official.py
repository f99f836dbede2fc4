"""Random weights -> official checkpoint -> loader, on the 'tiny' preset."""
import filecmp
import json
import os

import numpy as np
import pytest

from ascend_v4.checkpoint import formats as F
from ascend_v4.checkpoint import official
from ascend_v4.checkpoint.inventory import official_inventory
from ascend_v4.checkpoint.official import load_official_weights, random_weights, write_official_checkpoint
from ascend_v4.checkpoint.safetensors_io import CheckpointError, SafeTensorFile, write_safetensors
from ascend_v4.config import PRESETS, ModelConfig

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny_weights():
    return random_weights(TINY, seed=0)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_weights):
    d = str(tmp_path_factory.mktemp("ck") / "tiny")
    stored = write_official_checkpoint(TINY, tiny_weights, d, max_shard_bytes=200_000)
    return d, stored


def test_random_weights_deterministic_and_sane(tiny_weights):
    inv = official_inventory(TINY)
    assert list(tiny_weights) == list(inv)
    for n, spec in inv.items():
        w = tiny_weights[n]
        assert w.shape == spec.shape and w.dtype == (np.int64 if spec.fmt == "i64" else np.float32), n
        assert spec.fmt == "i64" or np.isfinite(w).all()
    again = random_weights(TINY, seed=0, names=["layers.1.attn.wq_b.weight"])
    assert np.array_equal(again["layers.1.attn.wq_b.weight"], tiny_weights["layers.1.attn.wq_b.weight"])
    assert not np.array_equal(random_weights(TINY, seed=1, names=["embed.weight"])["embed.weight"],
                              tiny_weights["embed.weight"])
    t = tiny_weights["layers.0.ffn.gate.tid2eid"]
    assert t.shape == (TINY.vocab_size, TINY.n_activated_experts) and t.min() >= 0 and t.max() < TINY.n_routed_experts
    assert all(len(set(row)) == len(row) for row in t.tolist())
    assert abs(tiny_weights["norm.weight"].mean() - 1) < 0.05
    wq = tiny_weights["layers.1.attn.wq_b.weight"]
    assert abs(wq.std() * np.sqrt(wq.shape[1]) - 1) < 0.1                   # variance preserving
    assert abs(tiny_weights["embed.weight"].std() - 0.02) < 0.002
    s = tiny_weights["layers.2.hc_attn_scale"]
    assert ((s >= 0.1) & (s <= 1)).all()


def test_write_layout(tiny_ckpt):
    d, _ = tiny_ckpt
    files = sorted(os.listdir(d))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(files) == set(shards) | {"model.safetensors.index.json", "config.json"}
    assert not [f for f in os.listdir(os.path.dirname(d)) if f.startswith(".")]           # no temp leftovers
    index = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    wm = index["weight_map"]
    assert wm["layers.1.attn.wq_a.weight"] == wm["layers.1.attn.wq_a.scale"]         # weight + scale together
    files = [SafeTensorFile(os.path.join(d, s)) for s in shards]
    assert index["metadata"]["total_size"] == sum(f.nbytes(k) for f in files for k in f.keys())
    cfg = ModelConfig.from_json(d)
    assert cfg.replace(name="tiny") == TINY
    st = SafeTensorFile(os.path.join(d, wm["layers.0.ffn.experts.1.w2.weight"]))
    assert st.meta("layers.0.ffn.experts.1.w2.weight") == ("I8", (64, 16))
    assert st.meta("layers.0.ffn.experts.1.w2.scale") == ("F8_E8M0", (64, 1))


def test_load_round_trip(tiny_ckpt, tiny_weights):
    d, stored = tiny_ckpt
    loaded = load_official_weights(d)
    assert list(loaded) == list(stored)
    inv = official_inventory(TINY)
    for n, w in loaded.items():
        assert w.dtype == stored[n].dtype and np.array_equal(w.view(np.uint8), stored[n].view(np.uint8)), n
        src = tiny_weights[n]
        fmt = inv[n].fmt
        if fmt in ("f32", "i64"):
            assert np.array_equal(w, src)
        elif fmt == "bf16":
            assert np.array_equal(w, F.bf16_round(src))
        else:                               # quantised: within half a step of the format
            tol = (np.abs(src) / (16 if fmt == "fp8" else 4)) + 0.25 * np.abs(src).max()
            assert (np.abs(w - src) <= tol).all(), n
    part = load_official_weights(d, TINY, names=["head.weight", "layers.0.ffn.gate.tid2eid"])
    assert list(part) == ["head.weight", "layers.0.ffn.gate.tid2eid"]
    assert part["layers.0.ffn.gate.tid2eid"].dtype == np.int64


def test_official_to_float_to_official_is_byte_identical(tiny_ckpt, tmp_path):
    """official -> (bf16 or f32) -> official reproduces every shard byte for byte. (F32 tensors - hc_*,
    ape, attn_sink, gate.bias - stay F32 in the bf16 copy, as they are F32 in the release.)"""
    d, _ = tiny_ckpt
    loaded = load_official_weights(d)
    inv = official_inventory(TINY)
    via_bf16 = {n: (F.bf16_round(w) if inv[n].fmt in ("fp8", "fp4", "bf16") else w) for n, w in loaded.items()}
    for name, ws in (("f32", loaded), ("bf16", via_bf16)):
        out = str(tmp_path / name)
        write_official_checkpoint(TINY, ws, out, max_shard_bytes=200_000)
        for f in os.listdir(d):
            assert filecmp.cmp(os.path.join(d, f), os.path.join(out, f), shallow=False), (name, f)


@pytest.mark.parametrize("variant", ["fp8-experts", "bf16"])
def test_other_formats_round_trip(tmp_path, variant):
    cfg = TINY.replace(expert_dtype="fp8") if variant == "fp8-experts" else TINY.replace(dtype="bf16")
    w = random_weights(cfg, seed=3)
    stored = write_official_checkpoint(cfg, w, str(tmp_path / "ck"))
    loaded = load_official_weights(str(tmp_path / "ck"))             # geometry from config.json
    assert ModelConfig.from_json(str(tmp_path / "ck")).replace(name=cfg.name) == cfg
    assert all(np.array_equal(loaded[n], stored[n]) for n in stored)
    st = SafeTensorFile(str(tmp_path / "ck" / "model-00001-of-00001.safetensors"))
    want = "F8_E4M3" if variant == "fp8-experts" else "BF16"
    assert st.meta("layers.0.ffn.experts.0.w1.weight")[0] == want


def test_loader_reports_mismatches(tiny_ckpt, tmp_path):
    d, _ = tiny_ckpt
    with pytest.raises(CheckpointError, match=r"tiny: .*\(17 problems\): layers\.0\.attn\.wq_a\.weight is "
                                              r"F8_E4M3\[32, 64\], expected F8_E4M3\[48, 64\];") as ei:
        load_official_weights(d, TINY.replace(q_lora_rank=48))
    assert "\n" not in str(ei.value)
    with pytest.raises(CheckpointError, match=r"unexpected layers\.3\."):
        load_official_weights(d, TINY.replace(n_layers=3, compress_ratios=(0, 4, 16, 0), n_mtp_layers=1))
    # extra tensors are an error unless allowed
    sub = load_official_weights(d, TINY.replace(n_layers=3, compress_ratios=(0, 4, 16, 0)), allow_extra=True,
                                names=["embed.weight"])
    assert list(sub) == ["embed.weight"]
    with pytest.raises(CheckpointError, match="not in the inventory"):
        load_official_weights(d, names=["nope"])


def test_loader_rejects_wrong_dtype_and_nonfinite(tiny_ckpt, tmp_path):
    d, stored = tiny_ckpt
    cfg = TINY
    inv = official_inventory(cfg)
    good = {}
    for n, spec in inv.items():
        good.update(official.encode_tensor(n, spec, stored[n]))
    bad = dict(good)
    bad["norm.weight"] = ("F32", stored["norm.weight"])
    (tmp_path / "a").mkdir()
    write_safetensors(str(tmp_path / "a" / "model.safetensors"), bad)
    with pytest.raises(CheckpointError, match=r"norm\.weight is F32\[64\], expected BF16\[64\]"):
        load_official_weights(str(tmp_path / "a"), cfg)
    nan = dict(good)
    q = good["layers.1.attn.wkv.weight"][1].copy()
    q[0, 0] = 0x7F
    nan["layers.1.attn.wkv.weight"] = ("F8_E4M3", q)
    (tmp_path / "b").mkdir()
    write_safetensors(str(tmp_path / "b" / "model.safetensors"), nan)
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'layers.1.attn.wkv.weight' has 1 non-finite"):
        load_official_weights(str(tmp_path / "b"), cfg)


def test_writer_validates_and_is_atomic(tmp_path, tiny_weights, monkeypatch):
    out = str(tmp_path / "ck")
    w = dict(tiny_weights)
    w.pop("head.weight")
    w["bogus"] = np.zeros(1, np.float32)
    with pytest.raises(CheckpointError, match="missing head.weight.*unexpected bogus"):
        write_official_checkpoint(TINY, w, out)
    assert not os.path.exists(out)

    calls = []

    def flaky(path, tensors, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return write_safetensors(path, tensors, metadata)
    monkeypatch.setattr(official, "write_safetensors", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_official_checkpoint(TINY, tiny_weights, out, max_shard_bytes=200_000)
    assert not os.path.exists(out) and os.listdir(tmp_path) == []           # nothing that looks complete
    monkeypatch.undo()

    write_official_checkpoint(TINY, tiny_weights, out)
    with pytest.raises(CheckpointError, match="already exists"):
        write_official_checkpoint(TINY, tiny_weights, out)
    w2 = random_weights(TINY, seed=5)
    stored = write_official_checkpoint(TINY, w2, out, overwrite=True)
    assert np.array_equal(load_official_weights(out)["embed.weight"], stored["embed.weight"])
    assert sorted(os.listdir(tmp_path)) == ["ck"]
