"""Sharded Engram tables and ZeRO-1 of their row-sparse AdamW (EngramSparseAdamW; docs/training.md,
"DeepSeek-V4.1"), with simulated ranks: each rank of a dp x tp layout is a thread holding its own
EngramSparseAdamW, and the host collectives it calls (the tp all-reduce of the lookup, the dp exchange of updated
rows, the checkpoint gathers) meet at thread barriers. The msrun proofs are in tests/v41/test_msrun_v41.py (slow).

Expected values: the lookup is NumPy fancy indexing of the full tables; the update is a float64 NumPy row-sparse
AdamW written here (per-row moments and update count), and every layout must equal the unsharded optimiser bit
for bit (each row's update is the same float32 operations, wherever it runs).
"""
import threading

import numpy as np
import pytest

from ascend_v4.config import V41_PRESETS
from ascend_v4.parallel import ParallelContext

CFG = V41_PRESETS["v4.1-tiny"].validate()
D = CFG.engram_head_dim
B1, B2, EPS, WD = 0.9, 0.95, 1e-8, 0.01


class _Group:
    """One communication group of simulated ranks: every member deposits its value, then reads all of them."""

    def __init__(self, n):
        self.barrier = threading.Barrier(n, timeout=30)
        self.slots = [None] * n

    def exchange(self, me, value):
        self.slots[me] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out


class _Comm:
    """EngramComm's interface over _Group's (tp: same dp rank; dp: same tp rank)."""

    def __init__(self, groups, ctx):
        self.groups, self.ctx = groups, ctx
        self.calls = []

    def _group(self, kind):
        c = self.ctx
        return (self.groups[("tp", c.dp_rank)], c.tp_rank) if kind == "tp" else (self.groups[("dp", c.tp_rank)],
                                                                                  c.dp_rank)

    def tp_sum(self, buf):
        self.calls.append("tp_sum")
        g, me = self._group("tp")
        got = g.exchange(me, buf)
        out = np.zeros_like(buf)
        for x in got:
            out = out + x
        return out

    def gather(self, arrays, kind):
        self.calls.append(kind)
        g, me = self._group(kind)
        return [[a.copy() for a in member] for member in g.exchange(me, [np.array(a) for a in arrays])]


def _tables(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, D)).astype(np.float32) for n in CFG.engram_num_embeddings]


def _run(dp, tp, zero, fn):
    """fn(rank, engram) in one thread per rank of a dp x tp layout; -> [result per rank], engrams."""
    from ascend_v4.train.v41 import EngramSparseAdamW
    groups = {("tp", d): _Group(tp) for d in range(dp)}
    groups.update({("dp", t): _Group(dp) for t in range(tp)})
    engs = []
    for r in range(dp * tp):
        ctx = ParallelContext(dp=dp, tp=tp, rank=r, world=dp * tp, simulated=True)   # any split of the rows
        engs.append(EngramSparseAdamW(CFG, _tables(), betas=(B1, B2), eps=EPS, weight_decay=WD, parallel=ctx,
                                      zero=zero, comm=_Comm(groups, ctx)))
    out, errors = [None] * len(engs), []

    def body(r):
        try:
            out[r] = fn(r, engs[r])
        except BaseException as e:        # noqa: BLE001 - reported below
            errors.append(e)
            for g in groups.values():
                g.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(len(engs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out, engs


def _steps(seed=1, n=3, B=2, S=12):
    """n steps of (hashed ids, row gradients, lr, valid): real n-gram hashes of random ids, so rows repeat
    within and across steps."""
    from ascend_v4.train.v41 import EngramSparseAdamW
    rng = np.random.default_rng(seed)
    eng = EngramSparseAdamW(CFG, _tables())
    out = []
    for i in range(n):
        ids = rng.integers(0, 64, (B, S))         # a small id range: n-grams (and rows) repeat
        hashed = eng.hash(ids)
        grads = [rng.standard_normal((B, S, hashed.shape[-1] * D)).astype(np.float32) for _ in CFG.engram_layer_ids]
        valid = np.ones((B, S), bool)
        valid[1, S - 3:] = False
        out.append((hashed, grads, 1e-2 * (i + 1), valid))
    return out


def _reference(tables, steps):
    """float64 NumPy row-sparse AdamW: (tables, m, v, count) after the steps."""
    t = [x.astype(np.float64) for x in tables]
    m = [np.zeros_like(x) for x in t]
    v = [np.zeros_like(x) for x in t]
    c = [np.zeros(x.shape[0], np.int64) for x in t]
    for hashed, grads, lr, valid in steps:
        for k in range(len(t)):
            ids = hashed[:, :, k][valid].reshape(-1)
            g = np.asarray(grads[k], np.float64).reshape(valid.shape + (-1, D))[valid].reshape(-1, D)
            for row in np.unique(ids):
                gr = g[ids == row].sum(0)
                m[k][row] = B1 * m[k][row] + (1 - B1) * gr
                v[k][row] = B2 * v[k][row] + (1 - B2) * gr * gr
                c[k][row] += 1
                n = c[k][row]
                upd = (m[k][row] / (1 - B1 ** n)) / (np.sqrt(v[k][row] / (1 - B2 ** n)) + EPS) + WD * t[k][row]
                t[k][row] = t[k][row] - lr * upd
    return t, m, v, c


def test_row_ranges_partition_the_rows():
    from ascend_v4.train.v41 import EngramSparseAdamW, row_range
    assert [row_range(10, 3, i) for i in range(3)] == [(0, 3), (3, 6), (6, 10)]     # [i·10/3, (i+1)·10/3)
    assert [row_range(8, 2, i) for i in range(2)] == [(0, 4), (4, 8)]
    ctx = ParallelContext.simulated_rank(CFG, dp=2, tp=2, rank=3)                    # dp rank 1, tp rank 1
    lo, hi, slo, shi = EngramSparseAdamW.ranges(CFG, ctx, zero=True)
    for k, R in enumerate(CFG.engram_num_embeddings):
        assert (lo[k], hi[k]) == (R // 2, R)
        half = R - R // 2
        assert (slo[k], shi[k]) == (R // 2 + half // 2, R)
    assert EngramSparseAdamW.ranges(CFG, ctx, zero=False)[2:] == (lo, hi)          # no ZeRO: state = held rows


@pytest.mark.parametrize("tp", [2, 3])
def test_tp_sharded_lookup_is_the_full_lookup(tp):
    """Each tp rank reads its own rows, zeros elsewhere; the all-reduce gives every rank the full rows."""
    hashed = _steps(n=1)[0][0]
    full = _tables()
    want = [full[k][hashed[:, :, k]].reshape(hashed.shape[:2] + (-1,)) for k in range(len(full))]
    got, engs = _run(1, tp, False, lambda r, e: (e.local_rows(hashed), e.rows(hashed)))
    for r, (local, rows) in enumerate(got):
        e = engs[r]
        assert sum(t.shape[0] for t in e.tables) < sum(t.shape[0] for t in full)      # really a part
        for k in range(len(full)):
            np.testing.assert_array_equal(rows[k], want[k])
            ids = hashed[:, :, k]
            own = ((ids >= e.lo[k]) & (ids < e.hi[k]))[..., None]
            loc = local[k].reshape(ids.shape + (D,))
            np.testing.assert_array_equal(loc, np.where(own, want[k].reshape(ids.shape + (D,)), 0))
        assert e.comm.calls == ["tp_sum"]


LAYOUTS = [(1, 2, False), (2, 1, True), (2, 2, True), (2, 2, False), (3, 1, True)]


@pytest.mark.parametrize("dp,tp,zero", LAYOUTS)
def test_sharded_update_equals_one_process_bit_for_bit(dp, tp, zero):
    """Every rank applies the global batch's row gradients (as V41TrainStep does after its dp gather): its held
    rows equal the unsharded optimiser's tables bit for bit, its state rows the unsharded state, and the union of
    the ranks' state rows is every row once; the unsharded run matches the float64 reference."""
    from ascend_v4.train.v41 import EngramSparseAdamW
    steps = _steps()
    one = EngramSparseAdamW(CFG, _tables(), betas=(B1, B2), eps=EPS, weight_decay=WD)
    for hashed, grads, lr, valid in steps:
        one.update(hashed, grads, lr, valid)
    ref = _reference(_tables(), steps)
    for k in range(len(one.tables)):
        np.testing.assert_allclose(one.tables[k], ref[0][k], rtol=0, atol=2e-6)
        np.testing.assert_allclose(one.m[k], ref[1][k], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(one.count[k], ref[3][k])
        assert (one.count[k] > 0).sum() > 10 and (one.count[k] > 1).any()

    counts = [EngramSparseAdamW(CFG, _tables()).update(*s) for s in steps]     # rows moved per step

    def train(r, e):
        return [e.update(hashed, grads, lr, valid) for hashed, grads, lr, valid in steps]

    moved, engs = _run(dp, tp, zero, train)
    assert all(mv == counts for mv in moved)          # every rank reports the global number of rows moved
    for r, e in enumerate(engs):
        for k in range(len(one.tables)):
            np.testing.assert_array_equal(e.tables[k], one.tables[k][e.lo[k]:e.hi[k]], err_msg=f"rank {r} {k}")
            for mine, full in ((e.m, one.m), (e.v, one.v), (e.count, one.count)):
                np.testing.assert_array_equal(mine[k], full[k][e.slo[k]:e.shi[k]])
        # the state really is split: zero shares it over dp, tp splits everything
        share = (e.shi[0] - e.slo[0]) / CFG.engram_num_embeddings[0]
        assert abs(share - 1 / (tp * (dp if zero else 1))) < 0.01
        assert e.comm.calls.count("dp") == (len(steps) if zero and dp > 1 else 0)
    for k in range(len(one.tables)):       # every state row owned by exactly one rank of a tp group
        owned = np.zeros(CFG.engram_num_embeddings[k], int)
        for e in engs:
            owned[e.slo[k]:e.shi[k]] += 1
        assert np.all(owned == (1 if zero else dp))


@pytest.mark.parametrize("dp,tp,zero", [(2, 2, True), (1, 2, False)])
def test_checkpoint_gathers_full_state_and_resumes_bit_exactly(dp, tp, zero, tmp_path, monkeypatch):
    """state_dict() gathers the unsharded state (root_only: rank 0 only; in chunks, here of 64 rows); load() takes
    each rank's rows of it (in another layout too) and training continues bit for bit like the uninterrupted
    run."""
    from ascend_v4.train.v41 import EngramSparseAdamW
    monkeypatch.setattr(EngramSparseAdamW, "CHUNK_BYTES", 64 * D * 4)
    steps = _steps(n=4)
    one = EngramSparseAdamW(CFG, _tables(), betas=(B1, B2), eps=EPS, weight_decay=WD)
    for s in steps[:2]:
        one.update(*s)
    at2 = {k: a.copy() for k, a in one.state_dict().items()}
    for s in steps[2:]:
        one.update(*s)

    def first(r, e):
        for s in steps[:2]:
            e.update(*s)
        full = e.state_dict()
        root = e.state_dict(root_only=True)
        if r == 0:
            e.save(str(tmp_path), root)
        return full, root

    got, _ = _run(dp, tp, zero, first)
    for r, (full, root) in enumerate(got):
        assert full.keys() == at2.keys()
        for k in at2:
            assert full[k].dtype == at2[k].dtype
            np.testing.assert_array_equal(full[k], at2[k], err_msg=k)
        assert (root is None) == (r != 0)

    def resume(r, e):
        e.load(str(tmp_path))
        for s in steps[2:]:
            e.update(*s)
        return e.state_dict()

    for layout in ((dp, tp, zero), (2, 1, True)):        # the same layout and another one
        got, engs = _run(*layout, resume)
        for full in got:
            for k, a in one.state_dict().items():
                np.testing.assert_array_equal(full[k], a, err_msg=k)


def test_dry_run_counts_the_engram_tables_per_process():
    """--dry-run's host-memory line for V4.1-Flash: 2 tables of 384,006,168 + 384,016,682 = 768,022,850 rows of
    256 float32 (786.2 GB in all); tp 8 splits the rows, ZeRO-1 over dp 16 the two moments (2·256·4 B) and the
    int64 count (8 B) of each row further."""
    from ascend_v4 import load_config
    from ascend_v4.config import MODEL_VERSIONS
    from ascend_v4.train.cluster import dry_run, engram_host_memory
    from ascend_v4.train.loop import TrainConfig
    cfg = load_config("v4.1-flash", versions=MODEL_VERSIONS)
    gib = 2 ** 30

    def tc(**par):
        return TrainConfig.from_dict({"model": "v4.1-flash", "seq_len": 4096, "batch_size": 1, "parallel": par})

    one = engram_host_memory(cfg, tc())
    assert one["engram_tables"] == pytest.approx(196_613_849_600 * 4 / gib)          # 768,022,850 × 256 × 4 B
    assert one["engram_state"] == pytest.approx(1_579_054_979_600 / gib)              # × (2·256·4 + 8) B
    sharded = engram_host_memory(cfg, tc(dp=16, tp=8, ep=16, optimizer_shard=True))
    assert sharded["engram_tables"] == pytest.approx(98_306_924_800 / gib)            # / 8
    assert sharded["engram_state"] == pytest.approx(1_579_054_979_600 / 128 / gib)    # / (8·16)
    assert engram_host_memory(cfg, tc(dp=16, tp=8, ep=16))["engram_state"] == pytest.approx(
        1_579_054_979_600 / 8 / gib)                                                   # no ZeRO: / tp only
    par = tc(dp=2, tp=2, optimizer_shard=True)
    par.model = "v4.1-tiny"
    small = engram_host_memory(CFG, par)          # the line itself, on the tiny model (a quick estimate)
    text = dry_run(CFG, par, "910b").format()
    assert f"engram_tables {small['engram_tables']:.2f}, engram_state {small['engram_state']:.2f}" in text
    assert "rows split over tp 2, their moments and counts over tp·dp = 4 ranks" in text
    assert engram_host_memory(load_config("v4-flash"), tc()) == {}
