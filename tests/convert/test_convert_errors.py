"""Bad input and bad destinations: one clear line naming file and tensor, exit 2, and nothing that
looks complete left behind; `verify` listing what is wrong."""
import json
import os
import resource
import shutil
import signal

import numpy as np
import pytest
from click.testing import CliRunner

from ascend_v4.checkpoint.safetensors_io import SafeTensorFile, write_safetensors
from ascend_v4.convert.cli import convert, verify
from cvt_helpers import all_files, cli, read_json


def run(cmd, *args):
    r = CliRunner().invoke(cmd, list(args))
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture
def src(release, tmp_path):
    d = tmp_path / "src"
    shutil.copytree(release[0], d)
    return str(d)


def shard_of(d, name):
    return os.path.join(d, read_json(os.path.join(d, "model.safetensors.index.json"))["weight_map"][name])


def rewrite(path, fn):
    """Rewrite a shard with fn(entries dict) applied."""
    st = SafeTensorFile(path)
    ents = {k: (st.meta(k)[0], np.array(st.raw(k))) for k in st.keys()}
    fn(ents)
    write_safetensors(path, ents, metadata={"format": "pt"})


def expect_error(src, dst, *match, extra=(), clean=True):
    rc, out, err = run(convert, src, dst, "--workers", "2", "--no-progress", *extra)
    assert rc == 2, (rc, out, err)
    errors = [x for x in err.strip().splitlines() if x.startswith("error")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    line = errors[0]
    for m in match:
        assert m in line, line
    if clean and os.path.exists(dst):
        assert "manifest.json" not in os.listdir(dst)
        assert not [f for f in all_files(dst) if f.endswith(".tmp")]
    return line


def test_truncated_shard(src, tmp_path):
    p = shard_of(src, "norm.weight")
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 100)
    expect_error(src, str(tmp_path / "out"), os.path.basename(p), "truncated")


def test_corrupt_and_oversized_header(src, tmp_path):
    p = shard_of(src, "embed.weight")
    with open(p, "r+b") as f:
        f.seek(12)
        f.write(b"\xff{{garbage")
    expect_error(src, str(tmp_path / "out"), os.path.basename(p), "not valid UTF-8 JSON")
    with open(p, "r+b") as f:
        f.write((1 << 40).to_bytes(8, "little"))
    expect_error(src, str(tmp_path / "out"), os.path.basename(p), "header length")


def test_tensor_in_index_but_missing_from_shard(src, tmp_path):
    p = shard_of(src, "layers.1.attn.wq_a.weight")
    rewrite(p, lambda e: e.pop("layers.1.attn.wq_a.weight"))
    expect_error(src, str(tmp_path / "out"), "layers.1.attn.wq_a.weight", os.path.basename(p), "missing")


@pytest.mark.parametrize("what", ["dtype", "shape"])
def test_dtype_or_shape_not_matching_the_config(src, tmp_path, what):
    name = "layers.2.attn.wq_a.weight" if what == "dtype" else "layers.2.attn.attn_sink"
    p = shard_of(src, name)

    def change(e):
        dt, a = e[name]
        e[name] = ("BF16", a.astype(np.uint16)) if what == "dtype" else (dt, np.zeros(a.shape[0] + 1, a.dtype))
    rewrite(p, change)
    line = expect_error(src, str(tmp_path / "out"), name, os.path.basename(p), "config expects")
    assert ("BF16" in line) if what == "dtype" else ("F32[5]" in line)


@pytest.mark.parametrize("target", ["../escape.safetensors", "/etc/passwd.safetensors", "sub/../../x.safetensors"])
def test_index_names_escaping_the_directory(src, tmp_path, target):
    ip = os.path.join(src, "model.safetensors.index.json")
    idx = read_json(ip)
    idx["weight_map"]["norm.weight"] = target
    with open(ip, "w") as f:
        json.dump(idx, f)
    expect_error(src, str(tmp_path / "out"), "norm.weight", "inside the checkpoint directory")


@pytest.mark.parametrize("case", ["fp8", "fp4", "bf16"])
def test_nan_inf_after_dequantisation_reported_with_counts(src, tmp_path, case):
    name, sub = {"fp8": ("layers.3.attn.wq_b.weight", None), "fp4": ("layers.2.ffn.experts.5.w1.weight", "scale"),
                 "bf16": ("layers.1.attn.compressor.wkv.weight", None)}[case]
    key = name if sub is None else name[: -len("weight")] + "scale"
    p = shard_of(src, key)

    def poison(e):
        dt, a = e[key]
        a = a.copy()
        if case == "fp8":
            a.reshape(-1)[[3, 50, 70]] = [0x7F, 0xFF, 0x7F]       # E4M3 NaN codes
        elif case == "fp4":
            a[1, 0] = 0xFF                                        # E8M0 NaN scale: its 32 values
        else:
            a.reshape(-1)[[1, 9]] = [0x7F80, 0xFFC0]               # +Inf, NaN
        e[key] = (dt, a)
    rewrite(p, poison)
    want = {"fp8": "3 NaN and 0 Inf", "fp4": "32 NaN and 0 Inf", "bf16": "1 NaN and 1 Inf"}[case]
    dst = str(tmp_path / "out")
    expect_error(src, dst, name, os.path.basename(p), want, "after dequantisation")
    files = [f for f in all_files(dst) if f.endswith(".safetensors")]
    state = os.path.join(dst, ".convert-state", "journal.jsonl")
    done = {json.loads(x)["file"] for x in open(state)} if os.path.exists(state) else set()
    assert done <= set(files)
    for f in files:             # complete files only (one finished as the run stopped may be unjournaled)
        SafeTensorFile(os.path.join(dst, f))


def test_not_enough_disk_is_checked_before_starting(src, tmp_path, monkeypatch):
    import ascend_v4.convert.run as R
    monkeypatch.setattr(R.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9 - 4096, 4096))
    dst = str(tmp_path / "out")
    expect_error(src, dst, "not enough disk space", "MB", "free")
    assert not os.path.exists(dst)


def test_write_failure_mid_run_leaves_nothing_that_looks_complete(src, tmp_path):
    """A real write failure (RLIMIT_FSIZE -> EFBIG) in the middle of a file; rerun finishes."""
    dst = str(tmp_path / "out")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))
    rc, _, err = cli("convert", src, dst, "--workers", "1", "--shard-size", "400KB", preexec_fn=limit)
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error: cannot write"), err
    assert "File too large" in err or "file size limit" in err
    files = all_files(dst)
    assert "manifest.json" not in files and not [f for f in files if f.endswith(".tmp")]
    for f in files:                           # whatever got its final name is complete
        if f.endswith(".safetensors"):
            SafeTensorFile(os.path.join(dst, f))
    rc, _, err = cli("convert", src, dst, "--workers", "1", "--shard-size", "400KB")
    assert rc == 0, err
    rc, out, _ = cli("verify", dst)
    assert rc == 0 and out.startswith("OK")


def test_destination_and_option_errors(src, converted, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    expect_error(src, str(busy), "not empty")
    done = converted("bf16")
    expect_error(src, done, "already holds a finished conversion", extra=("--dtype", "w8a8"), clean=False)
    rc, out, err = run(convert, src, done, "--no-progress")          # same source, same options: no-op
    assert rc == 0 and "already a complete conversion" in err
    expect_error(done, str(tmp_path / "o"), "already a converted checkpoint")
    expect_error(src, str(tmp_path / "o"), "does not split", extra=("--tp", "3"))
    expect_error(src, str(tmp_path / "o"), "n_routed_experts", extra=("--ep", "3"))
    expect_error(src, str(tmp_path / "o"), "--shard-size", extra=("--shard-size", "lots"))
    expect_error(src, os.path.join(src, "inside"), "inside")
    expect_error(str(tmp_path / "nope"), str(tmp_path / "o"), "does not exist")


# ------------------------------------------------------------------------------------ verify ----
def test_verify_ok_and_each_kind_of_damage(converted, release, tmp_path):
    rc, out, _ = run(verify, converted("w8a8", 2, 2, workers=2), "--workers", "2", "--no-progress")
    assert rc == 0 and out.startswith("OK") and "converted" in out
    rc, out, _ = run(verify, release[0])
    assert rc == 0 and "official" in out

    d = str(tmp_path / "c")
    shutil.copytree(converted("w8a8", 2, 2, workers=2), d)
    man = read_json(os.path.join(d, "manifest.json"))
    shard = "rank001/model-00001-of-00001.safetensors"
    with open(os.path.join(d, shard), "r+b") as f:                       # flip one data byte
        f.seek(-10, 2)
        b = f.read(1)
        f.seek(-10, 2)
        f.write(bytes([b[0] ^ 1]))
    os.remove(os.path.join(d, "source", "scales-00002-of-00003.safetensors"))
    open(os.path.join(d, "rank000", "stray.safetensors"), "wb").close()
    # a shard rewritten with a wrong dtype, its manifest entry updated so only the tensor check sees it
    p0 = os.path.join(d, "rank000", "model-00001-of-00001.safetensors")
    rewrite(p0, lambda e: e.__setitem__("layers.1.attn.wq_b.weight", ("U8", e["layers.1.attn.wq_b.weight"][1].view(np.uint8))))
    from ascend_v4.convert.manifest import sha256_path
    sha, size = sha256_path(p0)
    man["files"]["rank000/model-00001-of-00001.safetensors"].update(sha256=sha, size=size)
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(man, f)
    ip = os.path.join(d, "rank001", "model.safetensors.index.json")
    idx = read_json(ip)
    idx["weight_map"].pop("norm.weight")
    with open(ip, "w") as f:
        json.dump(idx, f)
    rc, out, err = run(verify, d, "--no-progress")
    assert rc == 1
    lines = out.strip().splitlines()
    assert all(x.startswith("FAIL ") for x in lines)
    text = "\n".join(lines)
    assert f"{shard}: sha256" in text
    assert "source/scales-00002-of-00003.safetensors: missing" in text
    assert "rank000/stray.safetensors: not listed in the manifest" in text
    assert "tensor 'layers.1.attn.wq_b.weight' is U8" in text and "config expects I8" in text
    assert "rank001/model.safetensors.index.json: 20" in text and "'norm.weight' is not in the index" in text
    assert "problems" in err

    rc, out, _ = run(verify, str(tmp_path / "missing"))
    assert rc == 2
