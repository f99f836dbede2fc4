"""INT8 Engram tables (what `convert --engram-dtype int8` writes): the host ships the stored INT8 rows + float32
group scales and the model's Engram read decodes them on the device through the `engram_dequant` op
(docs/ascendc.md, "Engram on Ascend"). Expected values: the tables quantised and dequantised here in NumPy
(float64 product rounded once to float32, which is what the float32 multiply of an int8 and a float32 scale
yields exactly), the float64 golden (ascend_v4/numpy_model_v41.py) on those dequantised tables, and the logits of
today's host-decoded float32 path, which the device decode must equal bit for bit."""
import numpy as np
import pytest

from ascend_v4.config import V41_PRESETS
from ascend_v4.ops.engram.host import HostEngramTables
from ascend_v4.ops.engram.reference import NgramHashState
from helpers import v41_ids

CFG = V41_PRESETS["v4.1-tiny"].validate()
G = 16                                          # group size: two scales per 32-wide row


def _quantise(t):
    """float table [n, d] -> (int8 codes, float32 scales [n, d / G]): symmetric, max |x| of a group -> 127."""
    x = np.asarray(t, np.float64).reshape(t.shape[0], -1, G)
    s = (np.abs(x).max(-1) / 127).astype(np.float32)
    q = np.clip(np.rint(x / np.where(s == 0, 1, s)[..., None].astype(np.float64)), -127, 127).astype(np.int8)
    return q.reshape(t.shape), s


def _dequant(q, s):
    return (q.astype(np.float64).reshape(q.shape[0], -1, G) * s.astype(np.float64)[..., None]).reshape(
        q.shape).astype(np.float32)


def _int8_tables(rng):
    tabs = [rng.standard_normal((n, CFG.engram_head_dim)).astype(np.float32) for n in CFG.engram_num_embeddings]
    qs = [_quantise(t) for t in tabs]
    return qs, [_dequant(q, s) for q, s in qs]


def test_int8_tables_ship_stored_rows_other_formats_decode_on_host():
    from ascend_v4.serve.engram import EngramFeed
    rng = np.random.default_rng(0)
    qs, deq = _int8_tables(rng)
    t8 = HostEngramTables([q for q, _ in qs], [s for _, s in qs])
    assert t8.device_dequant and t8.group_count == CFG.engram_head_dim // G
    assert not HostEngramTables(deq).device_dequant                                    # float32
    assert not HostEngramTables([d.view(np.uint32).astype(np.uint16) for d in deq]).device_dequant   # bf16 bits
    assert not HostEngramTables([q for q, _ in qs], [s for _, s in qs],                # e.g. the FP8 codec
                                decode=lambda r, s: r.astype(np.float32)).device_dequant
    ids = rng.integers(0, CFG.engram_compressed_vocab_size, (2, 9))
    nvalid = np.array([9, 5])
    feed = EngramFeed(CFG, t8, batch=2)
    try:
        got = feed.submit(ids, nvalid).result()
        dev = feed.device_rows(got)
    finally:
        feed.close()
    w = CFG.engram_n_columns * CFG.engram_head_dim
    hs = [NgramHashState.for_config(CFG, 1)(ids[r:r + 1, :n])[0] for r, n in enumerate(nvalid)]
    for k, (rows, sc) in enumerate(got):
        assert rows.dtype == np.int8 and rows.shape == (2, 9, w)
        assert sc.dtype == np.float32 and sc.shape == (2, 9, w // G)
        for r, n in enumerate(nvalid):
            q, s = qs[k]
            want = deq[k][hs[r][:, k]].reshape(n, w)                     # rows of the ids, columns concatenated
            flat = (rows[r, :n].astype(np.float64).reshape(n, -1, G) * sc[r, :n, :, None]).reshape(n, w)
            np.testing.assert_array_equal(flat.astype(np.float32), want)
            assert not rows[r, n:].any() and not sc[r, n:].any()        # padding decodes to zero rows
        assert isinstance(dev[k], tuple) and str(dev[k][0].dtype).lower() == "int8"


@pytest.fixture(params=["CPU", "Ascend-emulated"])
def target(request):
    from ascend_v4.ops import registry
    if request.param != "CPU":
        registry.set_target(registry.Target(device="Ascend", emulated=True))
    yield {"CPU": "composite", "Ascend-emulated": "ascendc"}[request.param]
    registry.set_target(None)


def test_engram_cell_decodes_the_pair_bit_identically(ms_graph, target):
    """The model's Engram read on (int8 rows, scales) == on the host-decoded float32 rows, bit for bit, and its
    dequant equals NumPy's; the registry picks the composite on CPU, the AscendC binding on (emulated) Ascend."""
    import mindspore as ms
    from ascend_v4.model import Engram
    from ascend_v4.ops import resolve
    rng = np.random.default_rng(1)
    w = CFG.engram_n_columns * CFG.engram_head_dim
    q = rng.integers(-127, 128, (2, 5, w), dtype=np.int8)
    s = (rng.random((2, 5, w // G)) * 0.1).astype(np.float32)
    want = (q.astype(np.float64).reshape(2, 5, -1, G) * s.astype(np.float64)[..., None]).reshape(2, 5, w)
    assert resolve("engram_dequant").name == target
    cell = Engram(CFG)
    assert cell._dequant is resolve("engram_dequant").fn
    cell.set_train(False)
    for p in cell.get_parameters():
        p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.3))
    h = ms.Tensor(rng.standard_normal((2, 5, CFG.hc_mult, CFG.dim)).astype(np.float32))
    alive = ms.Tensor(np.ones((2, 5), np.float32))
    a = cell(h, (ms.Tensor(q), ms.Tensor(s)), alive).asnumpy()
    b = cell(h, ms.Tensor(want.astype(np.float32)), alive).asnumpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(cell._dequant(ms.Tensor(q), ms.Tensor(s)).asnumpy(), want.astype(np.float32))


def _model_tables(weights):
    """The tiny model's random float tables quantised to INT8 here: (weights without tables, INT8 host tables,
    host-decoded float32 tables, weights with the dequantised tables for the golden)."""
    from ascend_v4.serve.engram import engram_table_names
    names = engram_table_names(CFG)
    qs = [_quantise(np.asarray(weights[n], np.float32)) for n in names]
    deq = [_dequant(q, s) for q, s in qs]
    rest = {k: v for k, v in weights.items() if k not in names}
    return (rest, HostEngramTables([q for q, _ in qs], [s for _, s in qs]), HostEngramTables(deq),
            {**rest, **dict(zip(names, deq))})


def _rel(a, b):
    a = np.asarray(a, np.float64).reshape(-1, np.shape(b)[-1])
    b = np.asarray(b, np.float64).reshape(a.shape)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def tables():
    from ascend_v4.checkpoint.release_v41 import random_weights_v41
    return _model_tables(random_weights_v41(CFG, seed=5))


@pytest.mark.slow      # two 10-layer graph compiles + the golden: ~3.5 min on the shared 2-core host
def test_one_shot_forward_int8_device_dequant_equals_host_decode(ms_graph, tables):
    from ascend_v4.graph.forward import build_forward
    from ascend_v4.numpy_model_v41 import NumpyV41
    rest, t8, tf, golden_w = tables
    ids = v41_ids(CFG, 0, (2, 19))
    a = build_forward(CFG, rest, max_seq_len=32, engram_tables=t8)(ids)["logits"]
    b = build_forward(CFG, rest, max_seq_len=32, engram_tables=tf)(ids)["logits"]
    np.testing.assert_array_equal(a, b)
    r = _rel(a, NumpyV41(CFG, golden_w).forward(ids)["logits"])
    assert np.median(r) < 1e-5 and r.max() < 1e-4, (float(np.median(r)), float(r.max()))


@pytest.mark.slow      # two engines (prefill + decode graphs each): 14.5 min on the shared host at load ~7
def test_engine_int8_device_dequant_equals_host_decode(ms_graph, tables):
    """Chunked prefill (chunks of 8, rows of different lengths) and decode steps, INT8 tables vs the host-decoded
    float32 tables: every logit bit-identical, and near the float64 golden."""
    from ascend_v4.numpy_model_v41 import NumpyV41
    from ascend_v4.serve.engine import Engine
    rest, t8, tf, golden_w = tables
    S, ND = 13, 3
    ids = v41_ids(CFG, 1, (2, S + ND))
    outs = []
    for t in (t8, tf):
        eng = Engine(CFG, rest, max_batch=2, max_len=32, prefill_chunk=8, ctx_min=16, engram_tables=t)
        lg = eng.prefill([ids[0, :S], ids[1, :S - 2]], return_all=True)
        got = [lg[0], lg[1]]
        for j in range(2):
            got.append(eng.decode_step(np.array([0, ids[1, S - 2 + j]]), np.array([False, True]))[1])
        for j in range(ND):
            got.append(eng.decode_step(ids[:, S + j]))
        outs.append(got)
    for x, y in zip(*outs):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    ref = NumpyV41(CFG, golden_w).forward(ids)["logits"]
    r = np.concatenate([_rel(outs[0][0], ref[0, :S]), _rel(outs[0][-1], ref[:, S + ND - 1])])
    assert np.median(r) < 1e-5 and r.max() < 1e-4, (float(np.median(r)), float(r.max()))
