"""Host-resident Engram tables with prefetch: prefetched rows equal a direct lookup, over prefill + decode steps,
from in-memory, INT8 + group-scale and memory-mapped safetensors tables."""
import numpy as np
import pytest
from safetensors.numpy import save_file

from ascend_v4.checkpoint import SafeTensorFile
from ascend_v4.config import V41_PRESETS
from ascend_v4.ops.engram.host import EngramPrefetcher, HostEngramTables, dequant_group_int8
from ascend_v4.ops.engram.reference import NgramHashState, engram_dequant, engram_lookup

CFG = V41_PRESETS["v4.1-tiny"]


def _tables(rng, dtype=np.float32):
    return [rng.standard_normal((n, CFG.engram_head_dim)).astype(dtype) for n in CFG.engram_num_embeddings]


def _steps(rng):
    """A prefill chunk of 7 tokens with a dead span, two more chunks, then 4 single-token decode steps (B = 2)."""
    ids = rng.integers(0, CFG.engram_compressed_vocab_size, (2, 17))
    mask = np.ones_like(ids, bool)
    mask[0, 3:5] = False
    cuts = [0, 7, 10, 13, 14, 15, 16, 17]
    return ids, mask, [(a, b) for a, b in zip(cuts, cuts[1:])]


def _expected(tables, ids, mask):
    h = NgramHashState.for_config(CFG, 2)(ids, mask)               # one-shot hashes
    return [engram_lookup(t, h[:, :, k]) for k, t in enumerate(tables)]


def test_prefetched_rows_equal_direct_lookup_across_prefill_and_decode():
    rng = np.random.default_rng(0)
    tables = _tables(rng)
    ids, mask, chunks = _steps(rng)
    want = _expected(tables, ids, mask)
    with EngramPrefetcher(HostEngramTables(tables), NgramHashState.for_config(CFG, 2)) as pf:
        futs = [pf.submit(ids[:, a:b], mask[:, a:b]) for a, b in chunks]   # queued ahead, consumed in order
        for (a, b), f in zip(chunks, futs):
            got = pf.result(f)
            assert got.ids.shape == (2, b - a, 2, CFG.engram_n_columns)
            for k in range(2):
                np.testing.assert_array_equal(got.rows[k], want[k][:, a:b])
    assert pf.steps == len(chunks) and pf.gather_seconds > 0


def test_int8_group_scales_and_memmapped_safetensors(tmp_path):
    rng = np.random.default_rng(1)
    q = [rng.integers(-127, 128, (n, CFG.engram_head_dim), dtype=np.int8) for n in CFG.engram_num_embeddings]
    s = [rng.random((n, CFG.engram_head_dim // 8), dtype=np.float32) for n in CFG.engram_num_embeddings]
    # dequantisation by hand: value j of a row uses scale j // 8
    r = q[0][5].astype(np.float64) * np.repeat(s[0][5].astype(np.float64), 8)
    np.testing.assert_array_equal(dequant_group_int8(q[0][5:6], s[0][5:6])[0], r.astype(np.float32))
    path = str(tmp_path / "engram.safetensors")
    save_file({f"layers.{L}.engram.embed.{p}": a for L, qq, ss in zip(CFG.engram_layer_ids, q, s)
               for p, a in (("weight", qq), ("scale", ss))}, path)
    mm = [SafeTensorFile(path).raw(f"layers.{L}.engram.embed.weight") for L in CFG.engram_layer_ids]
    ms_ = [SafeTensorFile(path).raw(f"layers.{L}.engram.embed.scale") for L in CFG.engram_layer_ids]
    assert isinstance(mm[0].base, np.memmap) and not mm[0].flags.writeable      # mapped in place, not read
    assert np.array_equal(mm[1], q[1]) and np.array_equal(ms_[0], s[0])
    assert np.array_equal(dequant_group_int8(q[1], s[1]), engram_dequant(q[1], s[1]).astype(np.float32))
    ids, mask, chunks = _steps(rng)
    want = _expected([dequant_group_int8(a, b) for a, b in zip(q, s)], ids, mask)
    with EngramPrefetcher(HostEngramTables(mm, ms_), NgramHashState.for_config(CFG, 2)) as pf:
        for a, b in chunks:
            got = pf.result(pf.submit(ids[:, a:b], mask[:, a:b]))
            for k in range(2):
                np.testing.assert_array_equal(got.rows[k], want[k][:, a:b])


def test_a_table_that_does_not_match_the_layout_is_named():
    rng = np.random.default_rng(2)
    small = [t[:100] for t in _tables(rng)]
    with EngramPrefetcher(HostEngramTables(small), NgramHashState.for_config(CFG, 1)) as pf:
        with pytest.raises(IndexError, match=r"row ids must lie in \[0, 100\)"):
            pf.result(pf.submit(np.array([[1, 2, 3]])))
    with pytest.raises(TypeError, match="need a decode function"):
        HostEngramTables([np.zeros((4, 8), np.int8)]).gather(0, np.array([[1]]))


def test_release_fp8_tables_memmapped_and_bf16_tables(tmp_path):
    """The release's FP8 Engram tables (E4M3 codes + one E8M0 scale per 32 values) mapped in place from a
    safetensors shard and decoded by the checkpoint codec; BF16 tables widened from their bits."""
    from ascend_v4.checkpoint.formats import bf16_decode, bf16_encode, e4m3_decode, e8m0_decode
    from ascend_v4.checkpoint.safetensors_io import write_safetensors
    rng = np.random.default_rng(3)
    d = CFG.engram_head_dim
    codes = [rng.integers(0, 256, (n, d), dtype=np.uint8) for n in CFG.engram_num_embeddings]
    for c in codes:
        c[(c & 0x7F) == 0x7F] = 0                                    # E4M3 NaN codes never appear in a table
    exps = [rng.integers(120, 131, (n, d // 32), dtype=np.uint8) for n in CFG.engram_num_embeddings]
    path = str(tmp_path / "model-00048-of-00048.safetensors")
    write_safetensors(path, {f"layers.{L}.engram.embed.{p}": a for L, c, e in zip(CFG.engram_layer_ids, codes, exps)
                             for p, a in (("weight", ("F8_E4M3", c)), ("scale", ("F8_E8M0", e)))})
    w = [SafeTensorFile(path).raw(f"layers.{L}.engram.embed.weight") for L in CFG.engram_layer_ids]
    s = [SafeTensorFile(path).raw(f"layers.{L}.engram.embed.scale") for L in CFG.engram_layer_ids]

    def fp8_rows(rows, sc):
        v = e4m3_decode(rows).reshape(rows.shape[0], -1, 32) * e8m0_decode(sc)[..., None]
        return v.reshape(rows.shape).astype(np.float32)
    # expected: the definition, value = E4M3(code) · 2^(exp − 127), over the whole table in float64
    full = [(e4m3_decode(c).astype(np.float64).reshape(c.shape[0], -1, 32)
             * np.exp2(e.astype(np.float64) - 127)[..., None]).reshape(c.shape) for c, e in zip(codes, exps)]
    ids, mask, chunks = _steps(rng)
    want = _expected(full, ids, mask)
    with EngramPrefetcher(HostEngramTables(w, s, decode=fp8_rows), NgramHashState.for_config(CFG, 2)) as pf:
        for a, b in chunks:
            got = pf.result(pf.submit(ids[:, a:b], mask[:, a:b]))
            for k in range(2):
                np.testing.assert_array_equal(got.rows[k], want[k][:, a:b])
    bf = [bf16_encode(t) for t in _tables(rng)]
    ids, mask, chunks = _steps(rng)
    want = _expected([bf16_decode(t) for t in bf], ids, mask)
    with EngramPrefetcher(HostEngramTables(bf), NgramHashState.for_config(CFG, 2)) as pf:
        got = pf.result(pf.submit(ids, mask))
        for k in range(2):
            np.testing.assert_array_equal(got.rows[k], want[k])


def test_rows_shipped_raw_and_dequantised_on_the_device_side():
    """decode_on_host=False hands over the stored INT8 rows + scales; engram_dequant (composite) turns them into
    the same rows the host decode gives."""
    import mindspore as ms
    from ascend_v4.ops.engram.composite import engram_dequant as device_dequant
    rng = np.random.default_rng(4)
    q = [rng.integers(-127, 128, (n, CFG.engram_head_dim), dtype=np.int8) for n in CFG.engram_num_embeddings]
    s = [rng.random((n, CFG.engram_head_dim // 32), dtype=np.float32) for n in CFG.engram_num_embeddings]
    ids, mask, chunks = _steps(rng)
    want = _expected([dequant_group_int8(a, b) for a, b in zip(q, s)], ids, mask)
    with EngramPrefetcher(HostEngramTables(q, s), NgramHashState.for_config(CFG, 2), decode_on_host=False) as pf:
        for a, b in chunks:
            got = pf.result(pf.submit(ids[:, a:b], mask[:, a:b]))
            for k in range(2):
                rows, sc = got.rows[k]
                assert rows.dtype == np.int8 and rows.shape == want[k][:, a:b].shape
                dev = device_dequant(ms.Tensor(rows), ms.Tensor(sc)).asnumpy()
                np.testing.assert_array_equal(dev, want[k][:, a:b])
