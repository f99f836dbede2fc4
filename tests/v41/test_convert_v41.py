"""`convert` of a DeepSeek-V4.1 release: BF16 / W8A8 / W4A8 in the ranks layout, the Engram tables to BF16 (exact) or
INT8 with one scale per 32 values (hand-derived codes), TP/EP row splits read back, --to-official byte-exact, and
the refusals (serving layout; V4-only paths)."""
import os
import shutil

import numpy as np
import pytest

from ascend_v4.checkpoint import ShardedCheckpoint, write_official_checkpoint
from ascend_v4.checkpoint.release_v41 import random_weights_v41
from ascend_v4.config import MODEL_VERSIONS, V41_PRESETS, ConfigError
from ascend_v4.convert import convert_checkpoint
from ascend_v4.convert.errors import ConvertError
from ascend_v4.convert.reverse import to_official
from ascend_v4.checkpoint.safetensors_io import CheckpointError
from ascend_v4.weights import load_checkpoint

CFG = V41_PRESETS["v4.1-tiny"].validate()
TABLE = "layers.1.engram.embed.weight"
# Row 0, group 0 of layer 1's table. Every value is E4M3 at the group's release scale 2^-4 (15 -> 240, 1 -> 16,
# -2.5 -> -40, 0.0625 -> 1, 3.75 -> 60), so the release stores it exactly. INT8 per group of 32: scale =
# amax / 127 = 15/127, codes rint(v · 127/15) = 127, 8.47 -> 8, -21.17 -> -21, 0.53 -> 1, 31.75 -> 32.
ROW0 = [15.0, 1.0, -2.5, 0.0625, 3.75]
ROW0_INT8 = [127, 8, -21, 1, 32]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("v41cvt") / "release")
    w = random_weights_v41(CFG, seed=11)
    w[TABLE][0, :32] = 0.0
    w[TABLE][0, :5] = ROW0
    stored = write_official_checkpoint(CFG, w, d)
    return d, stored


def _convert(release, tmp_path, precision, **kw):
    dst = str(tmp_path / f"{precision}-{kw.get('tp', 1)}-{kw.get('ep', 1)}")
    convert_checkpoint(release, dst, precision, workers=1, progress=False, **kw)
    return dst


def _raw(d, name):
    ck = ShardedCheckpoint(d)
    try:
        return ck.meta(name)[0], np.array(ck.raw(name))
    finally:
        ck.close()


def test_engram_table_to_int8_groups_matches_the_hand_codes(release, tmp_path):
    src, stored = release
    np.testing.assert_array_equal(stored[TABLE][0, :5], np.float32(ROW0))      # the release holds it exactly
    dst = _convert(src, tmp_path, "w8a8")
    dt, q = _raw(dst, TABLE)
    dts, s = _raw(dst, TABLE + "_scale")
    assert (dt, q.shape, dts, s.shape) == ("I8", (6126, 32), "F32", (6126, 1))
    assert q[0, :5].tolist() == ROW0_INT8 and not q[0, 5:].any()
    assert s[0, 0] == np.float32(15.0) / np.float32(127.0)
    cfg, w = load_checkpoint(dst, versions=MODEL_VERSIONS)
    assert cfg.version == "v4.1"
    t = stored[TABLE].reshape(-1, 32).astype(np.float64)
    got = w[TABLE].reshape(-1, 32).astype(np.float64)
    step = np.abs(t).max(-1, keepdims=True) / 127      # half a code step (+ the float32 scale rounding, 127 ulp)
    assert (np.abs(got - t) <= step / 2 * (1 + 2e-5)).all()
    assert np.abs(got - t).max() > 0                                           # and it is not a copy
    with pytest.raises(ConfigError, match="v4.1"):
        load_checkpoint(dst)                                                    # V4-only paths refuse it


def test_bf16_is_exact_split_over_ranks_and_returns_byte_exact(release, tmp_path):
    src, stored = release
    dst = _convert(src, tmp_path, "bf16", tp=2, ep=2)
    assert sorted(x for x in os.listdir(dst) if x.startswith("rank")) == ["rank000", "rank001"]
    cfg, w = load_checkpoint(dst, versions=MODEL_VERSIONS)
    assert sorted(w) == sorted(stored)
    for k in stored:                                                            # every release value is BF16-exact
        np.testing.assert_array_equal(w[k], stored[k], err_msg=k)
    back = str(tmp_path / "back")
    to_official(dst, back, workers=1, progress=False)
    for rel in ("config.json", os.path.join("inference", "config.json"), "model.safetensors.index.json",
                "model-00001-of-00001.safetensors"):
        with open(os.path.join(src, rel), "rb") as a, open(os.path.join(back, rel), "rb") as b:
            assert a.read() == b.read(), rel


def test_w4a8_packs_routed_experts_and_keeps_engram_int8(release, tmp_path):
    src, stored = release
    dst = _convert(src, tmp_path, "w4a8")
    e = "layers.0.ffn.experts.0.w1.weight"
    assert _raw(dst, e)[0] == "I8" and _raw(dst, e)[1].shape == (CFG.moe_inter_dim, CFG.dim // 2)
    assert _raw(dst, TABLE)[1][0, :5].tolist() == ROW0_INT8
    _, w = load_checkpoint(dst, versions=MODEL_VERSIONS)
    rel = np.linalg.norm(w[e] - stored[e]) / np.linalg.norm(stored[e])
    assert 0 < rel < 0.2                                                        # int4 of an MXFP4 expert


def test_serving_layout_is_refused_for_v41(release, tmp_path):
    with pytest.raises(ConvertError, match="--layout ranks"):
        _convert(release[0], tmp_path, "w8a8", layout="serving")
    assert not any(os.scandir(tmp_path))


def test_nested_root_without_inference_config_is_named(release, tmp_path):
    d = tmp_path / "noinf"
    shutil.copytree(release[0], d)
    shutil.rmtree(d / "inference")
    with pytest.raises(ConvertError, match="inference/config.json"):
        _convert(str(d), tmp_path, "bf16")


def test_engram_tables_map_into_host_memory_from_release_and_conversions(release, tmp_path):
    """The prefetcher's tables (ops/engram/host.py) memory-mapped from a release (FP8 rows + E8M0) and from
    bf16 / w8a8 conversions (BF16 rows; INT8 rows + float32 group scales) give the loader's values."""
    from ascend_v4.checkpoint.release_v41 import open_engram_tables
    src, stored = release
    ids = np.array([[[0, 5, 6125, 17, 3000, 4]]])                            # any 6 rows of each table
    for d in (src, _convert(src, tmp_path, "bf16"), _convert(src, tmp_path, "w8a8")):
        _, w = load_checkpoint(d, versions=MODEL_VERSIONS)
        tabs = open_engram_tables(d, CFG)
        assert isinstance(tabs.tables[0].base, np.memmap) and not tabs.tables[0].flags.writeable   # mapped in place
        for k, L in enumerate(CFG.engram_layer_ids):
            want = w[f"layers.{L}.engram.embed.weight"][ids[0, 0]].reshape(1, 1, -1)
            np.testing.assert_array_equal(tabs.gather(k, ids), want)
    with pytest.raises(CheckpointError, match="multi-rank"):
        open_engram_tables(_convert(src, tmp_path, "bf16", tp=2), CFG)


def test_engram_dtype_option_and_its_record(release, tmp_path):
    """--engram-dtype overrides the precision's default (bf16 tables in a w8a8 model, int8 tables in a bf16 one);
    the choice is recorded, so loading and verify rebuild the same plan; a V4 source refuses the option."""
    import json

    from click.testing import CliRunner

    from ascend_v4.cli import main
    src, stored = release
    a = str(tmp_path / "w8a8-bf16tables")
    r = CliRunner().invoke(main, ["convert", src, a, "--dtype", "w8a8", "--engram-dtype", "bf16", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert _raw(a, TABLE)[0] == "BF16" and _raw(a, "layers.0.attn.wq_b.weight")[0] == "I8"
    with open(os.path.join(a, "config.json")) as f:
        assert json.load(f)["conversion"]["engram_dtype"] == "bf16"
    _, w = load_checkpoint(a, versions=MODEL_VERSIONS)
    np.testing.assert_array_equal(w[TABLE], stored[TABLE])
    assert CliRunner().invoke(main, ["verify", a]).exit_code == 0
    b = _convert(src, tmp_path, "bf16", engram_dtype="int8")
    assert _raw(b, TABLE)[1][0, :5].tolist() == ROW0_INT8 and _raw(b, "layers.0.attn.wq_b.weight")[0] == "BF16"
    v4 = str(tmp_path / "v4")
    from ascend_v4.checkpoint import random_weights
    from ascend_v4.config import PRESETS
    write_official_checkpoint(PRESETS["tiny"], random_weights(PRESETS["tiny"]), v4)
    with pytest.raises(ConvertError, match="no Engram tables"):
        convert_checkpoint(v4, str(tmp_path / "v4c"), "w8a8", workers=1, progress=False, engram_dtype="int8")


def test_tp_split_rules_for_v41_names():
    """As DeepSeek's V4.1 converter: Engram tables and the Markov tables split on rows, main_proj / confidence /
    Engram wkv and q/k weights replicated, and the vision tower and aligner replicated (their mlp.w1/w2 are not
    the text model's shared-expert w1/w2)."""
    from ascend_v4.convert.sharding import split_dim
    assert split_dim("layers.1.engram.embed.weight") == 0 and split_dim("mtp.2.markov_head.head.weight") == 0
    for n in ("layers.1.engram.wkv.weight", "layers.1.engram.q_weight", "mtp.0.main_proj.weight",
              "mtp.2.confidence_head.proj.weight", "vision.blocks.0.mlp.w1.weight", "vision.blocks.0.mlp.w2.weight",
              "aligner.w1.weight", "aligner.w2.weight", "image_start"):
        assert split_dim(n) is None, n
    assert split_dim("layers.0.ffn.shared_experts.w2.weight") == 1
