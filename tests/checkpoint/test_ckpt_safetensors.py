"""safetensors reader/writer: interop with the safetensors library and strict validation."""
import json
import os

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

from ascend_v4.checkpoint import formats as F
from ascend_v4.checkpoint.safetensors_io import (CheckpointError, SafeTensorFile, ShardedCheckpoint, load_arrays,
                                                 save_arrays, write_safetensors)

RNG = np.random.default_rng(3)


def _sample_tensors():
    w = RNG.standard_normal((130, 70)).astype(np.float32)
    return {
        "a.f32": ("F32", w),
        "b.bf16": ("BF16", F.bf16_encode(w)),
        "c.fp8": ("F8_E4M3", F.e4m3_encode(w * 100)),
        "c.scale": ("F8_E8M0", np.array([[120, 127], [130, 0]], np.uint8)),
        "d.fp4": ("I8", F.fp4_pack(RNG.integers(0, 16, (4, 64)))),
        "e.tid2eid": ("I64", RNG.integers(0, 8, (16, 2)).astype(np.int64)),
        "f.u8": ("U8", np.arange(7, dtype=np.uint8)),
        "g.f16": ("F16", w[:3, :3].astype(np.float16)),
        "h.bool": ("BOOL", np.array([True, False, True])),
        "i.scalar": ("F32", np.array(2.5, np.float32)),
        "j.empty": ("F32", np.zeros((0, 4), np.float32)),
        "k.i32": ("I32", np.arange(5, dtype=np.int32)),
        "l.f64": ("F64", np.arange(3, dtype=np.float64)),
    }


def _torch_bytes(t: torch.Tensor) -> np.ndarray:
    if not t.numel():
        return np.zeros(0, np.uint8)
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def test_written_file_reads_back_and_in_safetensors_library(tmp_path):
    path = str(tmp_path / "x.safetensors")
    tensors = _sample_tensors()
    write_safetensors(path, tensors, metadata={"format": "pt"})
    assert os.listdir(tmp_path) == ["x.safetensors"]                   # no temporary file left beside it
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        hdr = json.loads(f.read(n))
    assert (8 + n) % 8 == 0 and hdr["__metadata__"] == {"format": "pt"}
    names = [k for k in hdr if k != "__metadata__"]
    assert names == sorted(tensors)
    assert [hdr[k]["data_offsets"][0] for k in names] == sorted(hdr[k]["data_offsets"][0] for k in names)

    st = SafeTensorFile(path)
    assert sorted(st.keys()) == sorted(tensors) and st.metadata == {"format": "pt"}
    for k, (dt, arr) in tensors.items():
        assert st.meta(k) == (dt, arr.shape)
        got = st.raw(k)
        assert got.dtype == arr.dtype and np.array_equal(got, arr), k
    with pytest.raises(ValueError):
        st.raw("a.f32")[0, 0] = 1          # read-only view of the file

    # torch via safetensors: F8_E4M3 / F8_E8M0 become float8 dtypes holding the same bytes
    torch_dt = {"F8_E4M3": torch.float8_e4m3fn, "F8_E8M0": torch.float8_e8m0fnu, "BF16": torch.bfloat16,
                "I8": torch.int8, "F32": torch.float32, "I64": torch.int64}
    with safetensors.safe_open(path, framework="pt") as f:
        assert sorted(f.keys()) == sorted(tensors)
        for k, (dt, arr) in tensors.items():
            t = f.get_tensor(k)
            if dt in torch_dt:
                assert t.dtype == torch_dt[dt], k
            assert list(t.shape) == list(arr.shape)
            assert np.array_equal(_torch_bytes(t), np.ascontiguousarray(arr).view(np.uint8).reshape(-1)), k
        assert torch.equal(f.get_tensor("c.fp8").float(), torch.from_numpy(F.e4m3_decode(tensors["c.fp8"][1])))
        assert torch.equal(f.get_tensor("b.bf16").float(), torch.from_numpy(F.bf16_decode(tensors["b.bf16"][1])))


def test_numpy_reader_reads_standard_dtypes(tmp_path):
    path = str(tmp_path / "std.safetensors")
    std = {k: v for k, v in _sample_tensors().items() if v[0] not in ("BF16", "F8_E4M3", "F8_E8M0")}
    write_safetensors(path, std)
    loaded = safetensors.numpy.load_file(path)
    for k, (_, arr) in std.items():
        assert loaded[k].dtype == arr.dtype and np.array_equal(loaded[k], arr)


def test_reads_torch_written_fp8_file(tmp_path):
    path = str(tmp_path / "t.safetensors")
    w = torch.randn(64, 48)
    src = {"w": w.to(torch.float8_e4m3fn), "s": torch.tensor([[0.5, 4.0]]).to(torch.float8_e8m0fnu),
           "b": w.to(torch.bfloat16), "i": torch.arange(6, dtype=torch.int64).reshape(2, 3)}
    safetensors.torch.save_file(src, path)
    st = SafeTensorFile(path)
    assert st.meta("w") == ("F8_E4M3", (64, 48)) and st.meta("s") == ("F8_E8M0", (1, 2))
    for k, t in src.items():
        assert np.array_equal(st.raw(k).view(np.uint8).reshape(-1), _torch_bytes(t)), k
    assert np.array_equal(F.e4m3_decode(st.raw("w")), src["w"].float().numpy())
    assert F.e8m0_decode(st.raw("s")).tolist() == [[0.5, 4.0]]


def test_writer_is_atomic_and_checks_storage_dtype(tmp_path, monkeypatch):
    path = str(tmp_path / "a.safetensors")
    write_safetensors(path, {"x": ("F32", np.ones(3, np.float32))})
    before = open(path, "rb").read()
    with pytest.raises(CheckpointError, match="storage dtype"):
        write_safetensors(path, {"x": ("BF16", np.ones(3, np.float32))})
    with pytest.raises(CheckpointError, match="unknown dtype"):
        write_safetensors(path, {"x": ("F4", np.ones(3, np.uint8))})

    def crash(src, dst):
        raise OSError("disk gone")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_safetensors(path, {"y": ("F32", np.zeros(5, np.float32))})
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["a.safetensors"]


def test_plain_arrays_round_trip_with_the_safetensors_package(tmp_path):
    """save_arrays / load_arrays (what training checkpoints use) against the package as the independent side."""
    arrays = {"w": RNG.standard_normal((3, 4)).astype(np.float32), "step": np.array(7, np.int32),
              "ids": RNG.integers(-5, 5, (6,)).astype(np.int64), "mask": np.array([True, False]),
              "h": RNG.standard_normal(5).astype(np.float16), "d": RNG.standard_normal(2)}
    ours = str(tmp_path / "ours.safetensors")
    save_arrays(ours, arrays)
    theirs = safetensors.numpy.load_file(ours)
    pkg = str(tmp_path / "pkg.safetensors")
    safetensors.numpy.save_file(arrays, pkg)
    back = load_arrays(pkg)
    for got in (theirs, back):
        assert got.keys() == arrays.keys()
        for k, a in arrays.items():
            assert got[k].dtype == a.dtype and got[k].shape == a.shape and np.array_equal(got[k], a), k
    assert back["w"].flags.writeable                       # copies: the file may be replaced afterwards
    with pytest.raises(CheckpointError, match="no plain safetensors tag"):
        save_arrays(str(tmp_path / "c.safetensors"), {"z": np.ones(2, np.complex64)})
    fp8 = str(tmp_path / "fp8.safetensors")
    write_safetensors(fp8, {"q": ("F8_E4M3", np.zeros(4, np.uint8))})
    with pytest.raises(CheckpointError, match="F8_E4M3.*decode"):
        load_arrays(fp8)


# ---------------------------------------------------------------------------- bad input ------
def _make(path, header, data: bytes, n_override=None):
    blob = json.dumps(header).encode() if not isinstance(header, bytes) else header
    n = len(blob) if n_override is None else n_override
    with open(path, "wb") as f:
        f.write(n.to_bytes(8, "little") + blob + data)
    return str(path)


def _bad(path, match):
    with pytest.raises(CheckpointError, match=match) as ei:
        SafeTensorFile(path)
    msg = str(ei.value)
    assert os.path.basename(path) in msg and "\n" not in msg
    return msg


def test_rejects_truncated_file(tmp_path):
    good = str(tmp_path / "good.safetensors")
    write_safetensors(good, {"a": ("F32", np.ones((4, 4), np.float32))})
    raw = open(good, "rb").read()
    for cut, what in ((20, "trunc1"), (len(raw) - 3, "trunc2"), (5, "trunc3")):
        p = tmp_path / f"{what}.safetensors"
        p.write_bytes(raw[:cut])
        _bad(str(p), "truncated|too short|outside")
    p = tmp_path / "longer.safetensors"
    p.write_bytes(raw + b"\0" * 8)
    _bad(str(p), "trailing")


def test_rejects_header_length_beyond_file(tmp_path):
    _bad(_make(tmp_path / "hl.safetensors", {}, b"", n_override=10 ** 6), "runs past the end")
    _bad(_make(tmp_path / "hl2.safetensors", {}, b"", n_override=2 ** 63), "runs past the end")


def test_rejects_bad_json(tmp_path):
    _bad(_make(tmp_path / "j.safetensors", b"{not json", b""), "JSON")
    _bad(_make(tmp_path / "u.safetensors", b"\xff\xfe{}", b""), "JSON")
    _bad(_make(tmp_path / "l.safetensors", b"[1, 2]", b""), "not an object")
    _bad(_make(tmp_path / "m.safetensors", {"__metadata__": {"a": 1}}, b""), "metadata")
    dup = b'{"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, ' \
          b'"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
    _bad(_make(tmp_path / "dup.safetensors", dup, b"\0"), "more than once")


def test_rejects_overlapping_and_holey_spans(tmp_path):
    e = lambda a, b: {"dtype": "U8", "shape": [b - a], "data_offsets": [a, b]}
    msg = _bad(_make(tmp_path / "o.safetensors", {"x": e(0, 8), "y": e(4, 12)}, b"\0" * 12), "overlap")
    assert "'x'" in msg and "'y'" in msg
    _bad(_make(tmp_path / "h.safetensors", {"x": e(0, 4), "y": e(8, 12)}, b"\0" * 12), "unindexed")
    _bad(_make(tmp_path / "r.safetensors", {"x": e(0, 16)}, b"\0" * 12), "outside")


def test_rejects_unknown_dtype_and_bad_entries(tmp_path):
    msg = _bad(_make(tmp_path / "d.safetensors", {"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}},
                     b"\0"), "unknown dtype")
    assert "'w'" in msg
    _bad(_make(tmp_path / "s.safetensors", {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
               b"\0" * 8), "needs 12 bytes")
    _bad(_make(tmp_path / "n.safetensors", {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
               b"\0" * 4), "shape")
    _bad(_make(tmp_path / "k.safetensors", {"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "exactly")
    for bad in ("../etc/passwd", "/abs", "a/b", "a..b", "", "x" * 600, "tab\tname", "nl\n"):
        _bad(_make(tmp_path / "p.safetensors", {bad: {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}},
                   b"\0"), "not a plain dotted name")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.safetensors"):
        SafeTensorFile(str(tmp_path / "nope.safetensors"))


# ---------------------------------------------------------------------------- sharded --------
def _sharded(tmp_path, weight_map=None):
    d = tmp_path / "ck"
    d.mkdir()
    write_safetensors(str(d / "s1.safetensors"), {"a": ("F32", np.ones(2, np.float32)),
                                                  "b": ("BF16", F.bf16_encode(np.ones(3)))})
    write_safetensors(str(d / "s2.safetensors"), {"c": ("I64", np.arange(4, dtype=np.int64))})
    wm = weight_map or {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return d


def test_sharded_checkpoint_reads_index(tmp_path):
    ck = ShardedCheckpoint(str(_sharded(tmp_path)))
    assert sorted(ck.keys()) == ["a", "b", "c"] and "c" in ck
    assert ck.meta("b") == ("BF16", (3,)) and ck.raw("c").tolist() == [0, 1, 2, 3]
    assert ck.file_of("c").endswith("s2.safetensors")
    with pytest.raises(CheckpointError, match="no tensor 'z'"):
        ck.raw("z")


def test_sharded_without_index(tmp_path):
    d = _sharded(tmp_path)
    os.remove(d / "model.safetensors.index.json")
    assert sorted(ShardedCheckpoint(str(d)).keys()) == ["a", "b", "c"]
    write_safetensors(str(d / "s3.safetensors"), {"c": ("F32", np.ones(1, np.float32))})
    with pytest.raises(CheckpointError, match="s3.safetensors.*'c'.*duplicate"):
        ShardedCheckpoint(str(d))
    single = tmp_path / "single"
    single.mkdir()
    write_safetensors(str(single / "model.safetensors"), {"q": ("U8", np.zeros(1, np.uint8))})
    write_safetensors(str(single / "other.safetensors"), {"q": ("U8", np.zeros(1, np.uint8))})
    assert ShardedCheckpoint(str(single)).keys() == ["q"]       # model.safetensors wins
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        ShardedCheckpoint(str(empty))


def test_sharded_rejects_missing_tensor_file_and_escapes(tmp_path):
    cases = [
        ({"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors", "zz": "s2.safetensors"},
         r"s2.safetensors: tensor 'zz' is listed"),
        ({"a": "s1.safetensors", "b": "s1.safetensors", "c": "s9.safetensors"}, "s9.safetensors.*does not exist"),
        ({"a": "s1.safetensors", "b": "s1.safetensors", "c": "../s2.safetensors"}, r"\.\./s2.safetensors"),
        ({"a": "s1.safetensors", "b": "s1.safetensors", "c": "/tmp/s2.safetensors"}, "/tmp/s2.safetensors"),
        ({"a": "s1.safetensors", "b": "s1.safetensors", "c": "sub/../../s2.safetensors"}, "inside"),
        ({"a": "s1.safetensors", "c": "s2.safetensors"}, r"s1.safetensors: tensor 'b' is not mapped"),
    ]
    for i, (wm, match) in enumerate(cases):
        sub = tmp_path / f"case{i}"
        sub.mkdir()
        with pytest.raises(CheckpointError, match=match) as ei:
            ShardedCheckpoint(str(_sharded(sub, wm)))
        assert "\n" not in str(ei.value) and ".safetensors" in str(ei.value)
    bad = _sharded(tmp_path)
    (bad / "model.safetensors.index.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="model.safetensors.index.json"):
        ShardedCheckpoint(str(bad))


def test_sharded_follows_symlinks_inside_directory(tmp_path):
    """HF hub snapshots are symlinks into ../../blobs; the index names stay inside the directory."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    write_safetensors(str(blobs / "abc"), {"a": ("F32", np.ones(2, np.float32))})
    snap = tmp_path / "snap"
    snap.mkdir()
    os.symlink(os.path.relpath(blobs / "abc", snap), snap / "model-00001-of-00001.safetensors")
    (snap / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors"}}))
    assert ShardedCheckpoint(str(snap)).raw("a").tolist() == [1.0, 1.0]
