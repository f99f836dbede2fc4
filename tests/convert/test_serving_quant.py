"""The serving layout's quantisers against hand derivations and a float64 brute force."""
import numpy as np
import pytest

from ascend_v4.checkpoint.formats import dequant_mxfp4, quant_mxfp4
from ascend_v4.convert import quantize as Q


def _fp4_weight(rng, out_f=64, in_f=256):
    w = rng.standard_t(8, (out_f, in_f)) * np.exp(rng.normal(0, 0.3, (1, in_f))) * 0.02
    p, s = quant_mxfp4(w.astype(np.float32))
    return p, s, dequant_mxfp4(p, s).astype(np.float32)


def test_pack_int4_out_by_hand():
    q = np.array([[1, -8, 7], [-1, 3, 0], [2, 2, -2], [-3, -4, 5]], np.int8)
    p = Q.pack_int4_out(q)
    # byte = (row 2j & 0xF) | (row 2j+1 << 4): (1, -1) -> 0xF1, (-8, 3) -> 0x38, (7, 0) -> 0x07, ...
    assert p.view(np.uint8).tolist() == [[0xF1, 0x38, 0x07], [0xD2, 0xC2, 0x5E]]
    assert np.array_equal(Q.unpack_int4_out(p), q)
    with pytest.raises(ValueError, match="even number of output rows"):
        Q.pack_int4_out(q[:3])


def test_scale_bias_by_hand():
    q = np.array([[1, 2, 3, 4], [-1, 0, 0, 7]], np.int8)
    s = np.array([[0.5, 2.0], [1.0, 0.25]], np.float32)           # group 2
    # 8 * sum_k q * scale: row 0 = 8 * (0.5 * 3 + 2 * 7) = 124; row 1 = 8 * (-1 + 0.25 * 7) = 6
    assert Q.int4_scale_bias(q, s, 1).tolist() == [[124.0], [6.0]]
    # two parts: the sums of each half of the input dim
    assert Q.int4_scale_bias(q, s, 2).tolist() == [[12.0, 112.0], [-8.0, 14.0]]


def test_group_search_is_the_best_candidate_per_group():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 64)) * np.exp(rng.normal(0, 1, (8, 64)))).astype(np.float32)
    q, s = Q.int4_group_search(w, 16)
    assert q.min() >= -8 and q.max() <= 7 and s.shape == (8, 4)
    assert np.array_equal(s.astype(np.float16).astype(np.float32), s)          # FP16-exact scales
    wg = w.astype(np.float64).reshape(8, 4, 16)
    err = ((wg - q.reshape(8, 4, 16) * s[..., None].astype(np.float64)) ** 2).sum(-1)
    amax = np.abs(wg).max(-1)
    for r in Q.CLIP_RATIOS:                                  # float64 brute force over the same candidates
        c = (amax * r / 7).astype(np.float32).astype(np.float16).astype(np.float64)
        e = ((wg - np.clip(np.rint(wg / c[..., None]), -8, 7) * c[..., None]) ** 2).sum(-1)
        assert np.all(err <= e * (1 + 1e-6) + 1e-30)
    # and never worse than plain absmax / 7 per channel
    sc = np.abs(w).max(1, keepdims=True) / 7
    e_ch = np.linalg.norm(w - np.clip(np.rint(w / sc), -7, 7) * sc)
    assert np.sqrt(err.sum()) < e_ch


def test_fp4_fast_path_matches_the_float_search():
    p, s8, w = _fp4_weight(np.random.default_rng(1))
    q1, s1 = Q.int4_group_search(w, 32)
    q2, s2 = Q.int4_group32_from_fp4(p, s8)
    def err(q, s):
        return np.linalg.norm((q.reshape(64, -1, 32) * s[..., None]).reshape(64, -1) - w)
    assert err(q2, s2) <= err(q1, s1) * (1 + 1e-6)
    assert np.mean(s1 == s2) > 0.99                          # differs only where two candidates tie


def test_fp4_fast_path_outside_fp16_range():
    """Block scales so small that the int4 scale hits FP16's smallest normal: the code lookup's identity
    w / scale = value / c fails there, and those groups take the float path."""
    rng = np.random.default_rng(3)
    p = rng.integers(-128, 128, (4, 32), dtype=np.int16).astype(np.int8)   # random E2M1 pairs: [4, 64] values
    e = np.array([[127 - 20, 127], [127 - 14, 127 - 3], [127 - 16, 127 + 5], [127, 127 - 30]], np.uint8)
    from ascend_v4.checkpoint.formats import dequant_mxfp4
    w = dequant_mxfp4(p, e).astype(np.float32)
    q1, s1 = Q.int4_group_search(w, 32)
    q2, s2 = Q.int4_group32_from_fp4(p, e)
    assert np.array_equal(s1, s2) and np.array_equal(q1, q2)
    assert (s1 == np.float32(2.0 ** -14)).any()             # the clamp was exercised


def test_exact_int8_path_holds_every_fp4_value():
    p, s8, w = _fp4_weight(np.random.default_rng(2))
    q, s = Q.int8_group32_exact(p, s8)
    assert q.dtype == np.int8 and np.abs(q).max() <= 12
    assert np.array_equal((q.reshape(64, -1, 32) * s[..., None]).reshape(64, -1), w)


def test_serving_output_does_not_depend_on_worker_count(converted):
    import os
    a, b = converted("w4a8", layout="serving"), converted("w4a8", layout="serving", workers=2)
    fa = sorted(f for f in os.listdir(a) if f.endswith(".safetensors"))
    assert fa == sorted(f for f in os.listdir(b) if f.endswith(".safetensors"))
    for f in fa:
        assert open(os.path.join(a, f), "rb").read() == open(os.path.join(b, f), "rb").read()


@pytest.mark.parametrize("tp,ep", [(1, 1), (2, 4), (4, 2)])
def test_rank_layout_reports_the_same_errors_for_any_split(release, converted, tp, ep):
    """The manifest's per-tensor error of a ranks-layout w8a8 conversion is the error of the whole tensor, summed
    over TP parts and not double-counted over replicas: the error of the reassembled weights vs the release."""
    import os
    from ascend_v4.checkpoint import load_official_weights
    from ascend_v4.config import load_config
    from ascend_v4.convert import load_converted
    from cvt_helpers import read_json
    d = converted("w8a8", tp, ep, workers=2)
    errs = read_json(os.path.join(d, "manifest.json"))["quant_relative_error"]
    names = sorted(errs)
    assert any("wq_b" in n for n in names) and any("wo_b" in n for n in names)     # dim-0 and dim-1 splits
    ref = load_official_weights(release[0], load_config(release[0]), names=names)
    _, got = load_converted(d, names)
    for n in names:
        want = np.linalg.norm(got[n].astype(np.float64) - ref[n]) / np.linalg.norm(ref[n])
        assert abs(errs[n] - want) <= 1e-4 * want, n
