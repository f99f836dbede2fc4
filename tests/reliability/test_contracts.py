"""Each root cause of the reliability issue, pinned by a direct test: value contracts of stored tensors, token
files, compare's gate, and the smaller convert/verify cases. The property suite (test_properties.py) generates
the wider space of such inputs."""
import json
import os
import shutil
import struct

import numpy as np
import pytest

from conftest import assert_contract, cli, final_names


def patch_tensor(ckpt, name, fn):
    """Apply fn(array view of the stored bytes) to tensor `name` of a release-format checkpoint, in place."""
    idx = json.load(open(os.path.join(ckpt, "model.safetensors.index.json")))["weight_map"]
    path = os.path.join(ckpt, idx[name])
    b = bytearray(open(path, "rb").read())
    n = struct.unpack("<Q", b[:8])[0]
    e = json.loads(b[8:8 + n])[name]
    dt = {"I64": "<i8", "F8_E8M0": "u1", "F32": "<f4", "BF16": "<u2", "F8_E4M3": "u1", "I8": "i1"}[e["dtype"]]
    s, t = e["data_offsets"]
    a = np.frombuffer(bytes(b[8 + n + s:8 + n + t]), dt).copy()
    fn(a)
    b[8 + n + s:8 + n + t] = a.tobytes()
    open(path, "wb").write(b)
    return idx[name]


@pytest.fixture
def ck(tmp_path, tiny_ckpt_dir):
    d = tmp_path / "ck"
    shutil.copytree(tiny_ckpt_dir, d)
    return d


def _tokens(tmp_path, arr, name="t.npy"):
    p = tmp_path / name
    np.save(p, arr)
    return p


# ----------------------------------------------------------------------------- value contracts ----------------
@pytest.mark.parametrize("value", [8, -1, 2 ** 40])
def test_out_of_range_tid2eid_is_refused_everywhere(ck, tmp_path, value):
    def bad(a):
        a[5] = value
    shard = patch_tensor(ck, "layers.0.ffn.gate.tid2eid", bad)
    r = cli("verify", ck, "--workers", "1")
    assert r.exit_code == 1
    assert f"FAIL {ck / shard}: tensor 'layers.0.ffn.gate.tid2eid' has 1 expert ids outside [0, 8)" in r.output
    out = tmp_path / "out"
    assert_contract(cli("convert", ck, out, "--workers", "1", "--no-progress"), 2, "layers.0.ffn.gate.tid2eid")
    assert not (out / "config.json").exists() and not (out / "manifest.json").exists()
    toks = _tokens(tmp_path, np.zeros((1, 4), np.int64))
    assert_contract(cli("dump", ck, "--tokens", toks, "--out", tmp_path / "d.npz", "--backend", "numpy"), 2,
                    "expert ids outside [0, 8)")
    assert not (tmp_path / "d.npz").exists()


def test_nan_e8m0_scale_is_refused(ck, tmp_path):
    def bad(a):
        a[0] = 0xFF
    patch_tensor(ck, "layers.1.attn.wq_a.scale", bad)
    r = cli("verify", ck, "--workers", "1")
    assert r.exit_code == 1 and "scale 'layers.1.attn.wq_a.scale' has 1 NaN codes (0xFF)" in r.output
    toks = _tokens(tmp_path, np.zeros((1, 4), np.int64))
    assert_contract(cli("dump", ck, "--tokens", toks, "--out", tmp_path / "d.npz", "--backend", "numpy"), 2,
                    "layers.1.attn.wq_a.scale")


def test_values_of_the_contract_by_hand():
    from ascend_v4.checkpoint.values import has_contract, value_problem
    ok = np.array([[0, 7], [3, 3]], np.int64)
    assert value_problem("layers.0.ffn.gate.tid2eid", "I64", ok, 8) is None
    assert "2 expert ids outside [0, 8)" in value_problem("x.tid2eid", "I64", np.array([[8, -1]]), 8)
    assert "holds float64" in value_problem("x.tid2eid", "F64", np.zeros(2), 8)
    codes = np.arange(255, dtype=np.uint8)                    # every finite E8M0 code: 2^-127 .. 2^127
    assert value_problem("w.scale", "F8_E8M0", codes, 8) is None
    assert "1 NaN codes" in value_problem("w.scale", "F8_E8M0", np.array([0, 255], np.uint8), 8)
    assert value_problem("w.weight_scale", "F32", np.array([1e-30, 3.0], np.float32), 8) is None
    for bad in (0.0, -1.0, np.nan, np.inf):
        assert "not finite and > 0" in value_problem("w.weight_scale", "F32", np.array([1.0, bad], np.float32), 8)
    assert not has_contract("layers.0.attn_norm.weight", "BF16") and has_contract("a.scale", "F8_E8M0")


def test_converted_int8_scale_that_is_not_positive_fails_verify(tmp_path, tiny_ckpt_dir):
    from ascend_v4.checkpoint.safetensors_io import SafeTensorFile
    out = tmp_path / "w8"
    assert cli("convert", tiny_ckpt_dir, out, "--dtype", "w8a8", "--workers", "1", "--no-progress").exit_code == 0
    f = next(p for p in sorted(out.rglob("*.safetensors")) if "source" not in p.parts
             and any(k.endswith("_scale") for k in SafeTensorFile(str(p)).keys()))
    st = SafeTensorFile(str(f))
    name = next(k for k in st.keys() if k.endswith("_scale"))
    b = bytearray(f.read_bytes())
    n = struct.unpack("<Q", b[:8])[0]
    s = json.loads(b[8:8 + n])[name]["data_offsets"][0]
    b[8 + n + s:8 + n + s + 4] = struct.pack("<f", -2.0)
    st.close()
    f.write_bytes(bytes(b))
    r = cli("verify", out, "--workers", "1")
    assert r.exit_code == 1 and f"scale '{name}' has 1 values that are not finite and > 0" in r.output


# ----------------------------------------------------------------------------- token files --------------------
@pytest.mark.parametrize("case, fragment", [
    ("npz_named_npy", "is an .npz archive, not an .npy array"),
    ("float", "tokens must be an integer [seq] or [batch, seq] array, got float32"),
    ("bool", "got bool"),
    ("3d", "got int64 (1, 2, 3)"),
    ("scalar", "got int64 ()"),
    ("empty", "the token array is empty"),
    ("pickled_objects", "is not a readable .npy array"),
    ("garbage", "is not a readable .npy array"),
    ("directory", "is a directory"),
    ("too_long", "sequences of 4097 tokens exceed max_position_embeddings (4096)"),
    ("oov", "token ids span [0, 512] but the vocabulary has 512 entries"),
    ("negative", "token ids span [-3, 0]"),
])
def test_bad_token_files_give_one_error_line(tmp_path, tiny_ckpt_dir, case, fragment):
    p = tmp_path / "t.npy"
    if case == "npz_named_npy":
        with open(p, "wb") as fh:
            np.savez(fh, ids=np.zeros((1, 4), np.int64))
    elif case == "pickled_objects":
        np.save(p, np.array([[1, "x"]], dtype=object), allow_pickle=True)
    elif case == "garbage":
        p.write_bytes(b"\x93NUMPY\x01\x00garbage")
    elif case == "directory":
        p.mkdir()
    else:
        arr = {"float": np.zeros((1, 4), np.float32), "bool": np.ones((1, 4), bool),
               "3d": np.zeros((1, 2, 3), np.int64), "scalar": np.array(3, np.int64),
               "empty": np.zeros((1, 0), np.int64), "too_long": np.zeros((1, 4097), np.int64),
               "oov": np.array([[0, 512]]), "negative": np.array([[0, -3]])}[case]
        np.save(p, arr)
    out = tmp_path / "d.npz"
    assert_contract(cli("dump", tiny_ckpt_dir, "--tokens", p, "--out", out, "--backend", "numpy"), 2, fragment)
    assert not out.exists()


def test_generate_refuses_a_prompt_longer_than_the_positions(tmp_path, tiny_ckpt_dir):
    toks = _tokens(tmp_path, np.zeros((1, 4090), np.int64))
    out = tmp_path / "g.npz"
    assert_contract(cli("generate", tiny_ckpt_dir, "--tokens", toks, "--max-new-tokens", 16, "--out", out), 2,
                    "a prompt of 4090 tokens + --max-new-tokens 16 exceeds max_position_embeddings (4096)")
    with open(toks, "wb") as fh:
        np.savez(fh, ids=np.zeros((1, 4), np.int64))
    assert_contract(cli("generate", tiny_ckpt_dir, "--tokens", toks, "--out", out), 2, "is an .npz archive")
    assert not out.exists()


# ----------------------------------------------------------------------------- compare ------------------------
def _dump(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture
def dumps(tmp_path):
    rng = np.random.default_rng(0)
    base = {"embed": rng.normal(size=(1, 6, 8)).astype(np.float32),
            "hidden_block0": rng.normal(size=(1, 6, 4, 8)).astype(np.float32),
            "hidden_block1": rng.normal(size=(1, 6, 4, 8)).astype(np.float32),
            "logits": rng.normal(size=(1, 6, 16)).astype(np.float32)}
    a = _dump(tmp_path / "a.npz", **base)

    def b(**change):
        d = dict(base)
        for k, v in change.items():
            if v is None:
                d.pop(k)
            else:
                d[k] = v
        return _dump(tmp_path / "b.npz", **d)
    return a, b, base


def test_compare_passes_identical_dumps(dumps):
    a, b, base = dumps
    r = cli("compare", a, b(), "--max-median-rel", "0")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("threshold", [None, "0.1", "1e9"])
def test_compare_never_passes_nan_in_b(dumps, threshold):
    a, b, base = dumps
    x = base["hidden_block1"].copy()
    x[0, 2, 1, 3] = np.nan
    args = ["compare", a, b(hidden_block1=x)] + (["--max-median-rel", threshold] if threshold else [])
    r = cli(*args)
    assert r.exit_code == 1
    assert "FAIL: first failing key hidden_block1: non-finite values (A 0, B 1)" in r.stderr


def test_compare_json_stays_valid_json_with_nan(dumps):
    a, b, base = dumps
    x = base["logits"].copy()
    x[:] = np.nan
    r = cli("compare", a, b(logits=x), "--json")

    def refuse(c):
        raise AssertionError(f"invalid JSON constant {c}")
    rep = json.loads(r.stdout, parse_constant=refuse)
    assert r.exit_code == 1 and rep["failed_keys"] == ["logits"]
    assert next(row for row in rep["rows"] if row["key"] == "logits")["median_rel"] is None


@pytest.mark.parametrize("bad", ["nan", "-1", "inf"])
def test_compare_rejects_a_threshold_that_disables_the_gate(dumps, bad):
    a, b, _ = dumps
    assert_contract(cli("compare", a, b(), "--max-median-rel", bad), 2, "--max-median-rel must be a finite number")


def test_compare_points_to_the_first_key_over_the_threshold(dumps):
    a, b, base = dumps
    r = cli("compare", a, b(hidden_block0=base["hidden_block0"] * 1.5, logits=base["logits"] * 1.5),
            "--max-median-rel", "0.1")
    assert r.exit_code == 1
    assert "FAIL: first failing key hidden_block0: median rel 3.333e-01 > 0.1; 1 more: logits" in r.stderr


def test_compare_fails_on_missing_keys_and_names_shape_mismatches(dumps):
    a, b, base = dumps
    r = cli("compare", a, b(hidden_block1=None))
    assert r.exit_code == 1 and "hidden_block1: missing from B" in r.stderr and "only in A: hidden_block1" in r.stdout
    r = cli("compare", a, b(logits=base["logits"][:, :5]), "--max-median-rel", "1")
    assert r.exit_code == 1 and "logits: shape mismatch: A [1, 6, 16] vs B [1, 5, 16]" in r.stderr
    r = cli("compare", a, b(embed=None, logits=base["logits"][:, :5]))           # failures in dump order
    assert r.exit_code == 1 and "first failing key embed: missing from B; 1 more: logits" in r.stderr


@pytest.mark.parametrize("case, fragment", [
    ("strings", "key 'logits' in B holds <U3 data, not real numbers"),
    ("empty", "key 'logits' in B is an empty array (0, 16)"),
    ("npy", "is a single .npy array, not an .npz dump"),
    ("objects", "is not a readable .npz dump"),
    ("disjoint", "have no key in common"),
])
def test_compare_unreadable_input_is_an_error_line(dumps, tmp_path, case, fragment):
    a, b, base = dumps
    if case == "strings":
        p = b(logits=np.array(["abc", "def"]))
    elif case == "empty":
        p = b(logits=np.zeros((0, 16), np.float32))
    elif case == "npy":
        p = tmp_path / "x.npy"
        np.save(p, np.zeros(3))
    elif case == "objects":
        p = tmp_path / "o.npz"
        np.savez(p, logits=np.array([{"a": 1}], dtype=object))
    else:
        p = _dump(tmp_path / "d.npz", other=np.zeros(3))
    assert_contract(cli("compare", a, p), 2, fragment)


# ----------------------------------------------------------------------------- convert / verify ---------------
def test_pickles_beside_the_shards_are_never_copied(ck, tmp_path):
    import pickle as real_pickle
    (ck / "extra.bin").write_bytes(real_pickle.dumps({"a": 1}))
    (ck / "evil.json").write_bytes(real_pickle.dumps([1]))         # a pickle under an innocent name
    (ck / "model.pt").write_bytes(b"PK\x03\x04torch zip")
    (ck / "tokenizer_config.json").write_text("{}")
    out = tmp_path / "out"
    r = cli("convert", ck, out, "--workers", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    assert f"warning: {ck}: not copied (not a tokenizer/config/text file; pickles are never carried over): " \
           f"evil.json, extra.bin, model.pt" in r.stderr
    names = final_names(out)
    assert "tokenizer_config.json" in names
    assert not any(n.endswith(("extra.bin", "evil.json", "model.pt")) for n in names)
    assert cli("verify", out, "--workers", "1").exit_code == 0


@pytest.mark.parametrize("size", ["infGB", "nanGB", "-1GB", "0", "1e400B", "lots"])
def test_convert_refuses_impossible_shard_sizes(tmp_path, tiny_ckpt_dir, size):
    out = tmp_path / "out"
    assert_contract(cli("convert", tiny_ckpt_dir, out, "--shard-size", size), 2, "--shard-size")
    assert not out.exists() or final_names(out) == []


def test_verify_names_the_tensor_a_flipped_byte_belongs_to(tmp_path, tiny_ckpt_dir):
    out = tmp_path / "w8"
    assert cli("convert", tiny_ckpt_dir, out, "--dtype", "w8a8", "--tp", "2", "--workers", "1",
               "--no-progress").exit_code == 0
    rel = "rank001/model-00001-of-00001.safetensors"
    f = out / rel
    b = bytearray(f.read_bytes())
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    name = sorted(k for k in head if k != "__metadata__")[3]           # chosen from the header, by hand
    s, t = head[name]["data_offsets"]
    b[8 + n + (s + t) // 2] ^= 0x10
    f.write_bytes(bytes(b))
    r = cli("verify", out, "--workers", "1")
    assert r.exit_code == 1 and f"{rel}: sha256" in r.output and "rerun with --source RELEASE_DIR" in r.output
    r = cli("verify", out, "--workers", "1", "--source", tiny_ckpt_dir)
    named = [ln for ln in r.output.splitlines() if "differs from a fresh conversion" in ln]
    assert r.exit_code == 1 and named == [f"FAIL {rel}: tensor '{name}' differs from a fresh conversion of "
                                          f"{tiny_ckpt_dir}"], r.output
    b[20] ^= 0x01                                                      # inside the JSON header
    f.write_bytes(bytes(b))
    r = cli("verify", out, "--workers", "1", "--source", tiny_ckpt_dir)
    assert f"FAIL {rel}: the safetensors header differs from a fresh conversion" in r.output
    other = tmp_path / "other"
    assert cli("make-checkpoint", other, "--config", "tiny", "--seed", "7").exit_code == 0
    r = cli("verify", out, "--workers", "1", "--source", other)
    assert r.exit_code == 1 and f"--source {other} is not the release {out} was converted from" in r.output
