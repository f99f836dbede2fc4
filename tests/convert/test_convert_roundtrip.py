"""release -> bf16 -> release is byte-identical, for our own checkpoints and for foreign ones whose
FP8 / MXFP4 block encodings our quantisers would not choose (the release's E8M0 scales travel in the
converted directory's source/ sidecar)."""
import os
import shutil

import numpy as np
import pytest

from ascend_v4.checkpoint import formats as F
from ascend_v4.checkpoint.inventory import official_inventory, scale_name
from ascend_v4.checkpoint.official import load_official_weights
from ascend_v4.checkpoint.safetensors_io import SafeTensorFile, write_safetensors
from ascend_v4.convert import ConvertError, convert_checkpoint, to_official
from cvt_helpers import TINY, cli, make_release, same_tree


@pytest.mark.parametrize("tp,ep,workers", [(1, 1, 1), (2, 2, 2)])
def test_bf16_round_trip_is_byte_identical(release, converted, tmp_path, tp, ep, workers):
    out = str(tmp_path / "hf")
    to_official(converted("bf16", tp, ep, workers), out, workers=workers, progress=False)
    files = same_tree(release[0], out)                    # shards, index, config.json, tokenizer files
    assert any(f.endswith(".safetensors") for f in files) and "tokenizer.json" in files


def _foreign_release(path, seed=5):
    """A tiny release whose every FP8 / MXFP4 tensor holds random codes on random scales - blocks
    no quantiser of ours would produce (non-canonical, codes that all halve, maxima far below 448)."""
    make_release(path, shard_bytes=200_000)
    rng = np.random.default_rng(seed)
    inv = official_inventory(TINY)
    for fn in sorted(os.listdir(path)):
        if not fn.endswith(".safetensors"):
            continue
        st = SafeTensorFile(os.path.join(path, fn))
        ents = {k: (st.meta(k)[0], np.array(st.raw(k))) for k in st.keys()}
        for k in list(ents):
            spec = inv.get(k)
            if spec is None or spec.fmt not in ("fp8", "fp4"):
                continue
            dt, w = ents[k]
            if spec.fmt == "fp8":                     # |values| <= 30 scale units: the rule would pick a finer scale
                q = rng.integers(0, 0x60, w.shape, dtype=np.uint8) | (rng.integers(0, 2, w.shape, dtype=np.uint8) << 7)
                q[:2] = q[:2] & 0xEE                   # a few rows of codes that all halve exactly
                ents[k] = (dt, q)
            else:                                      # E2M1 magnitudes <= 2 (codes 0..4): same for MXFP4
                nib = rng.integers(0, 5, (w.shape[0], 2 * w.shape[1]), dtype=np.uint8) | \
                    (rng.integers(0, 2, (w.shape[0], 2 * w.shape[1]), dtype=np.uint8) << 3)
                ents[k] = (dt, F.fp4_pack(nib))
            sdt, s = ents[scale_name(k)]
            ents[scale_name(k)] = (sdt, rng.integers(100, 135, s.shape, dtype=np.uint8))
        write_safetensors(os.path.join(path, fn), ents, metadata={"format": "pt"})


def test_foreign_release_round_trips_byte_for_byte(tmp_path):
    src = str(tmp_path / "foreign")
    _foreign_release(src)
    # these encodings are not what our (canonical) quantisers produce from the same values ...
    w = load_official_weights(src)
    st = {k: SafeTensorFile(os.path.join(src, f)) for f in os.listdir(src) if f.endswith(".safetensors")
          for k in SafeTensorFile(os.path.join(src, f)).keys()}
    differ = 0
    for name, spec in official_inventory(TINY).items():
        if spec.fmt == "fp8":
            q, s = F.quant_fp8_block(w[name])
        elif spec.fmt == "fp4":
            q, s = F.quant_mxfp4(w[name])
        else:
            continue
        differ += not (np.array_equal(q.view(np.uint8), st[name].raw(name).view(np.uint8))
                       and np.array_equal(s, st[scale_name(name)].raw(scale_name(name))))
    assert differ >= 0.9 * sum(1 for s in official_inventory(TINY).values() if s.fmt in ("fp8", "fp4"))
    # ... but the round trip through bf16 carries the release's scales and reproduces every byte
    conv, back = str(tmp_path / "bf16"), str(tmp_path / "back")
    convert_checkpoint(src, conv, "bf16", 2, 2, workers=2, progress=False)
    to_official(conv, back, workers=2, progress=False)
    same_tree(src, back)


def test_w8a8_back_to_release_format(release, converted, tmp_path):
    out = str(tmp_path / "hf")
    rc, _, err = cli("convert", converted("w8a8"), out, "--to-official", "--workers", "2")
    assert rc == 0, err
    back = load_official_weights(out)                     # a valid release checkpoint again ...
    ref = release[1]
    for n, w in ref.items():
        if w.dtype == np.float32:
            assert np.abs(back[n] - w).max() <= 0.02 * np.abs(w).max() + 1e-6, n   # ... with int8-rounded values
    a = SafeTensorFile(os.path.join(out, "model-00001-of-00003.safetensors"))
    b = SafeTensorFile(os.path.join(release[0], "model-00001-of-00003.safetensors"))
    for k in a.keys():
        if k.endswith(".scale"):
            assert np.array_equal(a.raw(k), b.raw(k))      # the release's block scales, unchanged


def test_to_official_refuses_bad_targets(release, converted, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(ConvertError, match="not empty"):
        to_official(converted("bf16"), str(busy), progress=False)
    with pytest.raises(ConvertError, match="manifest"):
        to_official(release[0], str(tmp_path / "o"), progress=False)
    half = tmp_path / "half"
    shutil.copytree(converted("bf16"), half)
    os.remove(half / "manifest.json")
    rc, _, err = cli("convert", str(half), str(tmp_path / "o2"), "--to-official")
    assert rc == 2 and err.startswith("error: ") and "manifest" in err and len(err.strip().splitlines()) == 1
