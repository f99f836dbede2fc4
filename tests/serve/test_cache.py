"""Cache layout and size accounting (no graph compiles)."""
import numpy as np


def test_bytes_per_token_formula_matches_allocation(tiny_cfg, ms_graph):
    from ascend_v4.info import kv_bytes_per_token
    from ascend_v4.serve.cache import KVCache, format_report
    for int8 in (False, True):
        a, b = KVCache(tiny_cfg, 2, 256, kv_int8=int8), KVCache(tiny_cfg, 2, 512, kv_int8=int8)
        per_token = (b.allocated_bytes() - a.allocated_bytes()) / 256 / 2
        assert per_token == b.bytes_per_token_formula()["total"]
        rep = b.report()
        assert rep["kinds"]["SWA"]["bytes_per_token"] == 0 and rep["kinds"]["SWA"]["layers"] == 1
        assert rep["total"]["allocated_bytes"] == b.allocated_bytes()
        assert "B/token" in format_report(rep)
    f32, i8 = KVCache(tiny_cfg, 1, 256), KVCache(tiny_cfg, 1, 256, kv_int8=True)
    c = tiny_cfg
    assert f32.entry_bytes() == 4 * c.head_dim
    assert i8.entry_bytes() == (c.head_dim - c.rope_head_dim) + 4 * c.rope_head_dim + 4
    # CSA: (entry + indexer key) / 4 per layer, HCA: entry / 16
    want = 2 * (4 * c.head_dim + 4 * c.index_head_dim) / 4 + 4 * c.head_dim / 16
    assert f32.bytes_per_token_formula()["total"] == want
    # the Ascend layouts of `ascend-v4 info` (bf16 RoPE dims) follow the same schedule
    info = kv_bytes_per_token(c)
    assert info["ascend_int8"] < info["ascend_bf16"]


def test_reset_restores_the_compressor_state_of_the_given_rows(tiny_cfg, ms_graph):
    from ascend_v4.serve.cache import KVCache
    k = KVCache(tiny_cfg, 2, 64)
    for p in k.params:
        p.set_data(p + 1 if p.dtype != ms_graph.int8 else p)
    k.reset([1])
    arr = k.arrays()
    for e in k.layout.entries:
        if e.role == "state":
            assert np.all(arr[e.name][1] == e.fill), e.name
            assert np.all(arr[e.name][0] == e.fill + 1) or e.fill < -1e29, e.name
        elif e.dtype == "float32":
            assert np.all(arr[e.name][1] == 1.0), e.name       # rings/entries are not touched (masked by position)
