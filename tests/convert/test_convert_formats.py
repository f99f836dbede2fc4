"""Converted tensors against an independent NumPy reference of the release formats: exact BF16 for
every FP8 / MXFP4 tensor, FP32 / BF16 / int64 untouched, int8 / int4 within half a step per channel;
TP/EP rank shards that reassemble to the single-rank result; identical bytes for any worker count;
manifest, name map, and the loaders."""
import functools
import hashlib
import json
import os

import numpy as np
import pytest

from ascend_v4.checkpoint.inventory import official_inventory, scale_name
from ascend_v4.checkpoint.safetensors_io import SafeTensorFile, ShardedCheckpoint
from ascend_v4.convert import converted_plan, load_any_checkpoint, load_converted, quantize as Q, verify_dir
from ascend_v4.convert.sharding import routed_expert_index
from ascend_v4.dump import compare_arrays
from cvt_helpers import AUX, TINY, all_files, read_json

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float64)


# ------------------------------------------------------------ independent reference of the formats ----
def ref_e4m3(c):
    c = c.astype(np.int64)
    s, e, m = c >> 7, (c >> 3) & 15, c & 7
    v = np.where(e == 0, m * 2.0 ** -9, (1 + m / 8.0) * np.exp2(e - 7.0))
    v = np.where((c & 0x7F) == 0x7F, np.nan, v)
    return np.where(s == 1, -v, v)


def ref_dequant(spec_fmt, raw, sc=None):
    """float64 values of one release tensor (fp8: 128x128 E8M0 blocks; fp4: 1x32, low nibble first)."""
    if spec_fmt == "fp8":
        q = ref_e4m3(raw.view(np.uint8))
        S = np.exp2(sc.astype(np.float64) - 127)
        S = np.repeat(np.repeat(S, 128, 0), 128, 1)[: q.shape[0], : q.shape[1]]
        return q * S
    if spec_fmt == "fp4":
        b = raw.view(np.uint8).astype(np.int64)
        codes = np.empty((b.shape[0], 2 * b.shape[1]), np.int64)
        codes[:, 0::2], codes[:, 1::2] = b & 15, b >> 4
        v = E2M1[codes & 7] * np.where(codes & 8, -1.0, 1.0)
        return v * np.repeat(np.exp2(sc.astype(np.float64) - 127), 32, axis=1)
    raise AssertionError(spec_fmt)


def _int4_by_hand(packed):
    """Packed W4A8 bytes -> values in [-8, 7]: low nibble = even column, two's complement per nibble."""
    b = packed.view(np.uint8).astype(np.int64)
    n = np.empty(b.shape[:-1] + (2 * b.shape[-1],), np.int64)
    n[..., 0::2], n[..., 1::2] = b & 15, b >> 4
    return np.where(n >= 8, n - 16, n).astype(np.float64)


def to_bf16_bits(v64):
    f32 = v64.astype(np.float32)
    assert np.array_equal(f32.astype(np.float64), v64), "value not exact in float32"
    bits = f32.view(np.uint32)
    assert not (bits & 0xFFFF).any(), "value not exact in bf16"
    return (bits >> 16).astype(np.uint16)


@functools.lru_cache(maxsize=None)
def _files(d):
    idx = read_json(os.path.join(d, "model.safetensors.index.json"))["weight_map"]
    sts = {fn: SafeTensorFile(os.path.join(d, fn)) for fn in set(idx.values())}
    return {n: sts[fn] for n, fn in idx.items()}


def dest_raw(d, name):
    """{entry name: (dtype, raw array)} of one tensor of a single-rank conversion."""
    files = _files(d)
    return {n: (files[n].meta(n)[0], np.array(files[n].raw(n))) for n in (name, name + "_scale") if n in files}


# ------------------------------------------------------------------------------------------- tests ----
def test_bf16_is_exact_for_every_tensor(release, converted):
    src = ShardedCheckpoint(release[0])
    d = converted("bf16")
    inv = official_inventory(TINY)
    seen = set()
    for name, spec in inv.items():
        (dt, got), = dest_raw(d, name).values()
        if spec.fmt in ("fp8", "fp4"):
            want = to_bf16_bits(ref_dequant(spec.fmt, src.raw(name), np.array(src.raw(scale_name(name)))))
            assert dt == "BF16" and np.array_equal(got, want), name
        else:                                        # FP32 stays FP32, BF16 stays BF16, tid2eid int64
            assert dt == src.meta(name)[0] == {"bf16": "BF16", "f32": "F32", "i64": "I64"}[spec.fmt], name
            assert got.tobytes() == np.asarray(src.raw(name)).tobytes(), name
        seen.add(spec.fmt)
    assert seen == {"fp8", "fp4", "bf16", "f32", "i64"}


@pytest.mark.parametrize("precision", ["w8a8", "w4a8"])
def test_int_formats_within_half_a_step(release, converted, precision):
    src = ShardedCheckpoint(release[0])
    d = converted(precision)
    inv = official_inventory(TINY)
    n_int = {"I8": 0, "int4": 0}
    for name, spec in inv.items():
        raw = dest_raw(d, name)
        if name + "_scale" not in raw:
            (dt, _), = raw.values()
            assert dt in ("BF16", "F32", "I64"), name
            continue
        (wdt, q), (sdt, s) = raw[name], raw[name + "_scale"]
        w = ref_dequant(spec.fmt, src.raw(name), np.array(src.raw(scale_name(name))))
        int4 = precision == "w4a8" and routed_expert_index(name) is not None
        if int4:                   # per group of 32 inputs, -8..7, clip ratio searched: the error of the group
            assert wdt == "I8" and sdt == "F32" and s.shape == (spec.shape[0], spec.shape[1] // 32)
            assert q.shape == (spec.shape[0], spec.shape[1] // 2)
            vals = _int4_by_hand(q)
            assert vals.min() >= -8 and vals.max() <= 7
            deq = (vals.reshape(spec.shape[0], -1, 32) * s.astype(np.float64)[..., None]).reshape(spec.shape)
            assert np.linalg.norm(deq - w) / np.linalg.norm(w) < 0.09, name
            n_int["int4"] += 1
            continue
        assert wdt == "I8" and sdt == "F32" and s.shape == (spec.shape[0],)
        assert q.shape == spec.shape
        vals, qmax = q.astype(np.float64), 127
        n_int["I8"] += 1
        assert np.abs(vals).max() <= qmax
        np.testing.assert_allclose(s, np.abs(w).max(axis=1) / qmax, rtol=1e-6)
        err = np.abs(vals * s.astype(np.float64)[:, None] - w)
        assert (err <= s.astype(np.float64)[:, None] * (0.5 + 1e-5)).all(), name
    assert n_int["I8"] > 0 and (n_int["int4"] > 0) == (precision == "w4a8")


@pytest.mark.parametrize("precision,tp,ep", [("bf16", 2, 2), ("w8a8", 2, 4), ("w4a8", 4, 2), ("bf16", 1, 8)])
def test_rank_shards_reassemble_to_the_single_rank_result(converted, precision, tp, ep):
    d = converted(precision, tp, ep, workers=2)
    world = max(tp, ep)
    assert sorted(x for x in os.listdir(d) if x.startswith("rank")) == [f"rank{r:03d}" for r in range(world)]
    _, full = load_converted(converted(precision))
    _, split = load_converted(d)
    assert list(split) == list(full)
    for n in full:
        assert np.array_equal(split[n], full[n]), n
    conf = read_json(os.path.join(d, "config.json"))["conversion"]
    per = TINY.n_routed_experts // ep
    for r in range(world):
        st = [SafeTensorFile(os.path.join(d, f"rank{r:03d}", f)) for f in os.listdir(os.path.join(d, f"rank{r:03d}"))
              if f.endswith(".safetensors")]
        names = {k for s in st for k in s.keys()}
        experts = {routed_expert_index(k) for k in names} - {None}
        lo = (r % ep) * per
        assert experts == set(range(lo, lo + per)) and conf["local_experts"][str(r)] == [lo, lo + per]
        meta = {k: s.meta(k) for s in st for k in s.keys()}
        if tp > 1:
            assert meta["embed.weight"][1] == (TINY.vocab_size // tp, TINY.dim)
            assert meta["layers.1.attn.wo_b.weight"][1] == (TINY.dim, TINY.o_groups * TINY.o_lora_rank // tp)
            assert meta["layers.1.attn.attn_sink"][1] == (TINY.n_heads // tp,)
        idx = read_json(os.path.join(d, f"rank{r:03d}", "model.safetensors.index.json"))["weight_map"]
        assert set(idx) == names
    assert verify_dir(d, progress=False)[0] == []


def test_output_bytes_do_not_depend_on_worker_count(converted):
    a, b = converted("w8a8", 2, 2, workers=1), converted("w8a8", 2, 2, workers=3)
    fa = all_files(a)
    assert fa == all_files(b)
    for rel in fa:
        x, y = open(os.path.join(a, rel), "rb").read(), open(os.path.join(b, rel), "rb").read()
        if rel == "manifest.json":
            mx, my = json.loads(x), json.loads(y)
            assert "--workers 1" in mx.pop("command") and "--workers 3" in my.pop("command")
            assert mx == my
        else:
            assert x == y, rel


def test_layout_manifest_and_name_map(release, converted):
    d = converted("w4a8")
    files = all_files(d)
    assert {"config.json", "model.safetensors.index.json", "param_name_map.json", "manifest.json",
            "source/config.json", "source/source.json", "source/model.safetensors.index.json"} <= set(files)
    assert set(AUX) <= set(files) and not [f for f in files if ".convert-state" in f or f.endswith(".tmp")]
    man = read_json(os.path.join(d, "manifest.json"))
    assert set(man["files"]) == set(files) - {"manifest.json"}
    for rel, info in man["files"].items():
        data = open(os.path.join(d, rel), "rb").read()
        assert info["size"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest(), rel
        if rel.endswith(".safetensors"):
            st = SafeTensorFile(os.path.join(d, rel))
            assert {k: [dt, list(sh)] for k in st.keys() for dt, sh in [st.meta(k)]} == info["tensors"]
    assert man["command"].startswith("ascend-v4 convert ") and "--dtype w4a8" in man["command"]
    assert {"python", "numpy", "ascend_v4"} <= set(man["versions"]) and man["precision"] == "w4a8"
    # the release's E8M0 scales, unchanged, under their own names
    src = ShardedCheckpoint(release[0])
    scale_files = [f for f in files if f.startswith("source/scales-")]
    kept = {k: np.array(SafeTensorFile(os.path.join(d, f)).raw(k)) for f in scale_files
            for k in SafeTensorFile(os.path.join(d, f)).keys()}
    want = [k for k in src.keys() if k.endswith(".scale")]
    assert sorted(kept) == sorted(want) and all(np.array_equal(kept[k], src.raw(k)) for k in want)
    nm = read_json(os.path.join(d, "param_name_map.json"))
    assert set(nm["params"]) == set(src.keys())
    rec = nm["params"]["layers.1.ffn.experts.3.w2.weight"]
    assert [(r["name"], r["dtype"], r["shape"], r["rank"]) for r in rec] == [
        ("layers.1.ffn.experts.3.w2.weight", "I8", [TINY.dim, TINY.moe_inter_dim // 2], 0),
        ("layers.1.ffn.experts.3.w2.weight_scale", "F32", [TINY.dim, TINY.moe_inter_dim // 32], 0)]
    assert "low nibble = even column" in rec[0]["encoding"]
    assert nm["params"]["layers.1.ffn.experts.3.w2.scale"][0]["file"].startswith("source/scales-")
    conf = read_json(os.path.join(d, "config.json"))
    assert conf["conversion"]["precision"] == "w4a8" and "-8..7" in conf["conversion"]["int4"]


def test_load_any_checkpoint_official_and_converted(release, converted):
    cfg_o, w_o = load_any_checkpoint(release[0])
    cfg_c, w_c = load_any_checkpoint(converted("bf16", 2, 2, workers=2))
    assert cfg_c.replace(name="x") == cfg_o.replace(name="x")
    assert list(w_c) == list(w_o) and all(np.array_equal(w_c[n], w_o[n]) for n in w_o)
    assert w_c["layers.0.ffn.gate.tid2eid"].dtype == np.int64
    _, w8 = load_any_checkpoint(converted("w8a8"))
    rel = max(float(np.abs(w8[n] - w_o[n]).max() / (np.abs(w_o[n]).max() + 1e-30)) for n in w_o
              if w_o[n].dtype == np.float32)
    assert 0 < rel < 0.01
    assert converted_plan(converted("w8a8")).precision == "w8a8"


def test_converted_weights_run_in_the_model(ms_graph, converted, release):
    """The model loader takes a converted (w4a8, tp/ep) directory; the float64 golden model gives
    the same logits from a bf16 conversion as from the release, and close ones from w8a8."""
    from ascend_v4.model import Transformer
    from ascend_v4.numpy_model import NumpyV4
    from ascend_v4.weights import load_into
    cfg, w4 = load_any_checkpoint(converted("w4a8", 4, 2, workers=2))
    load_into(Transformer(cfg, max_seq_len=16, with_mtp=True), w4)          # strict: names, shapes, dtypes
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 12))
    ref = NumpyV4(cfg, release[1]).forward(ids)
    bf = NumpyV4(cfg, load_converted(converted("bf16"))[1]).forward(ids)
    assert all(np.array_equal(bf[k], ref[k]) for k in ref)
    w8 = {r["key"]: r for r in compare_arrays(NumpyV4(cfg, load_converted(converted("w8a8"))[1]).forward(ids), ref)}
    # int8 per-channel on random Gaussian weights: ~1% per block, routing flips compound it over 4 blocks
    assert w8["hidden_block0"]["median_rel"] < 0.03 and w8["logits"]["cosine"] > 0.95


@pytest.mark.parametrize("how", ["buffered", "refused"])
def test_buffered_writes_give_the_same_bytes(release, converted, tmp_path, monkeypatch, how):
    """O_DIRECT is an optimisation only: forced off, or refused by the filesystem at the first write
    (EINVAL), the bytes are the same."""
    import errno
    from ascend_v4.convert import convert_checkpoint
    from ascend_v4.convert import writer as W
    if how == "buffered":
        monkeypatch.setenv("ASCEND_V4_CONVERT_NO_DIRECT", "1")
    else:
        real = W._SequentialSink._write_all
        refused = []

        def write_all(self, mv):
            if self.direct:
                refused.append(1)
                raise OSError(errno.EINVAL, "Invalid argument")
            return real(self, mv)
        monkeypatch.setattr(W._SequentialSink, "_write_all", write_all)
    d = str(tmp_path / "b")
    convert_checkpoint(release[0], d, "bf16", workers=1, progress=False)
    assert how == "buffered" or refused
    ref = converted("bf16")
    for rel in all_files(ref):
        if rel != "manifest.json":
            assert open(os.path.join(ref, rel), "rb").read() == open(os.path.join(d, rel), "rb").read(), rel
