"""Engram on Ascend, host side (ops/engram/ascend_host.py) and what `ascend-v4 plan` says runs for it.

On CPU the staging runs with HostTransport (no pinned memory, no copy stream): these tests check the parts that are
the same code on the NPU -- the ring of staging buffers (a buffer is refilled only after its previous copy's event
was synchronised; the compute stream waits on exactly the event of the tensor it reads), the data path through the
prefetcher (device rows equal the host gather, float and stored INT8 form) -- with a recording transport standing
in for the MindSpore stream / event calls, plus the plan rows for a V4.1 config."""
import numpy as np
import pytest

from ascend_v4.ops.engram import reference as R
from ascend_v4.ops.engram.ascend_host import DeviceRowStager, HostTransport, LayerStagers, engram_lookup_host
from ascend_v4.ops.engram.host import EngramPrefetcher, HostEngramTables


class Recording(HostTransport):
    """HostTransport that names each copy's event and logs syncs (host waits) and compute-stream waits."""

    def __init__(self):
        self.log, self.n = [], 0

    def copy(self, staged, view):
        dev, _ = super().copy(staged, view)
        self.n += 1
        self.log.append(("copy", self.n))
        return dev, self.n

    def sync(self, event):
        self.log.append(("sync", event))

    def wait_on_compute(self, event):
        self.log.append(("wait", event))


def test_ring_reuses_a_buffer_only_after_its_copy_and_waits_on_the_right_event():
    tr = Recording()
    s = DeviceRowStager(3, 4, np.float32, depth=2, transport=tr)
    xs = [np.full((3, 4), k, np.float32) for k in range(3)]
    devs = [s.stage(x) for x in xs]
    # the third stage reuses buffer 0: it first synchronises copy 1 (buffer 0's previous copy)
    assert tr.log == [("sync", None), ("copy", 1), ("sync", None), ("copy", 2), ("sync", 1), ("copy", 3)]
    s.ready(devs[1])
    assert tr.log[-1] == ("wait", 2)
    for d, x in zip(devs, xs):
        np.testing.assert_array_equal(d.asnumpy(), x)      # each copy holds its own batch (no later overwrite)
    assert s.bytes_copied == 3 * 3 * 4 * 4
    with pytest.raises(ValueError, match="holds"):
        s.stage(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="depth"):
        DeviceRowStager(1, 1, np.float32, depth=1, transport=tr)


def _tables(rng, d=32, g=32):
    sizes = [int(p.sum()) for p in R.engram_primes(2, 50, 3, 2)]
    tabs = [rng.integers(-127, 128, (n, d)).astype(np.int8) for n in sizes]
    scales = [(rng.random((n, d // g)) * 0.02).astype(np.float32) for n in sizes]
    return tabs, scales


@pytest.mark.parametrize("decode_on_host", [True, False])
def test_prefetcher_with_device_stagers_returns_the_host_gather(decode_on_host):
    rng = np.random.default_rng(0)
    tabs, scales = _tables(rng)
    tables = HostEngramTables(tabs, scales)
    ids = rng.integers(0, 40, (2, 5))
    plain = R.NgramHashState(2, (1, 3), 50, 3, 2, 0, 40)
    want_ids = plain(ids)
    tr = Recording()
    stagers = LayerStagers(transport=tr)
    pf = EngramPrefetcher(tables, R.NgramHashState(2, (1, 3), 50, 3, 2, 0, 40), decode_on_host, stagers=stagers)
    with pf:
        got = pf.result(pf.submit(ids))
    np.testing.assert_array_equal(got.ids, want_ids)
    for k in range(2):
        if decode_on_host:
            np.testing.assert_array_equal(got.rows[k].asnumpy(), tables.gather(k, want_ids[:, :, k]))
        else:
            rows, sc = tables.gather_raw(k, want_ids[:, :, k])
            np.testing.assert_array_equal(got.rows[k][0].asnumpy(), rows)
            np.testing.assert_array_equal(got.rows[k][1].asnumpy(), sc)
    copies = [e for e in tr.log if e[0] == "copy"]
    waits = [e for e in tr.log if e[0] == "wait"]
    assert len(copies) == len(waits) == (2 if decode_on_host else 4)     # every copy is waited for before use
    # 10 tokens x 2 layers x 4 columns ((3 - 1) n-gram sizes x 2 heads) of 32 values: float32, or int8 + 1 scale
    per_column = 32 * 4 if decode_on_host else 32 + 4
    assert stagers.bytes_copied == 10 * 2 * 4 * per_column


def test_lookup_host_backend_equals_the_reference():
    rng = np.random.default_rng(1)
    table = rng.standard_normal((97, 16)).astype(np.float32)
    ids = rng.integers(0, 97, (2, 3, 6))
    got = engram_lookup_host(table, ids).asnumpy()
    np.testing.assert_array_equal(got, R.engram_lookup(table, ids).astype(np.float32))


def test_plan_shows_engram_on_ascend_for_v41():
    from ascend_v4.config import MODEL_VERSIONS, load_config
    from ascend_v4.plan import plan
    cfg = load_config("v4.1-tiny", versions=MODEL_VERSIONS)
    n = len(cfg.engram_layer_ids)
    for soc in ("910b", "910c"):
        p = plan(cfg, soc, "8.5")
        for phase in ("prefill", "decode"):
            rows = {r["op"]: r for r in p["phases"][phase]["calls"]}
            assert {op: (rows[op]["calls"], rows[op]["backend"]) for op in ("engram_lookup", "engram_gate")} == \
                {"engram_lookup": (n, "host"), "engram_gate": (n, "ascendc")}
            assert "engram_dequant" not in rows          # not in the step graph yet: the plan lists what runs
            assert "pin_memory" in rows["engram_lookup"]["runs"] and "move_to" in rows["engram_lookup"]["runs"]
            assert "EngramGateAv4" in rows["engram_gate"]["runs"] and "hc_mixes" in rows and "hc_pre" not in rows
        train = {r["op"]: r for r in p["phases"]["train"]["calls"]}
        assert train["engram_gate"]["backend"] == "ascendc" and "engram_lookup" not in train


@pytest.fixture
def emulated():
    from ascend_v4.ops import registry
    registry.set_target(registry.Target(device="Ascend", emulated=True))
    yield registry
    registry.set_target(None)


@pytest.mark.slow       # ~6 s: two graph compiles
def test_gate_binding_in_graph_mode_with_its_bprop_matches_the_composite(emulated):
    """The engram_gate Ascend binding (contract stand-in + the hand-written VJP as bprop) inside a graph-mode Cell
    with batch dims and float32 inputs: values and gradients of every input equal the composite's
    autodiff; the contract refuses a ragged D (the kernel's 32-byte bf16 rows) at compile time."""
    import mindspore as ms
    from mindspore import nn
    from ascend_v4.ops.ascend_call import ContractError
    from ascend_v4.ops.engram import composite as C
    ms.set_context(mode=ms.GRAPH_MODE)
    b = emulated.resolve("engram_gate")
    assert b.name == "ascendc"

    class Net(nn.Cell):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def construct(self, h, kv, q, k, alive):
            out = self.f(h, kv, q, k, alive, 1e-20)
            return (out * out).sum() + out.sum()

    rng = np.random.default_rng(3)
    hc, D = 4, 32
    alive = np.ones((2, 3), np.float32)
    alive[1, 2] = 0
    args = [ms.Tensor(rng.standard_normal((2, 3, hc, D)).astype(np.float32)),
            ms.Tensor(rng.standard_normal((2, 3, (hc + 1) * D)).astype(np.float32)),
            ms.Tensor((1 + 0.3 * rng.standard_normal((hc, D))).astype(np.float32)),
            ms.Tensor((1 + 0.3 * rng.standard_normal((hc, D))).astype(np.float32)), ms.Tensor(alive)]
    got = ms.grad(Net(b.fn), (0, 1, 2, 3))(*args)
    want = ms.grad(Net(C.engram_gate), (0, 1, 2, 3))(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.asnumpy(), w.asnumpy(), rtol=1e-4, atol=2e-5)
    ragged = [ms.Tensor(np.zeros((3, hc, 40), np.float32)), ms.Tensor(np.zeros((3, (hc + 1) * 40), np.float32)),
              ms.Tensor(np.ones((hc, 40), np.float32)), ms.Tensor(np.ones((hc, 40), np.float32)),
              ms.Tensor(np.ones(3, np.float32))]
    with pytest.raises((ContractError, RuntimeError, ValueError), match="multiple of 16"):
        Net(b.fn)(*ragged)
