"""Shared fixtures. MindSpore runs on CPU in graph mode for the whole session (float32: the CPU reference)."""
import os

os.environ.setdefault("GLOG_v", "3")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see ascend_v4/__init__.py

import numpy as np
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; excluded from the default run (-m 'not slow')")


@pytest.fixture(autouse=True)
def _graph_mode_between_tests():
    """Some tests switch MindSpore to PyNative; every test starts in GRAPH mode (the mode CI exercises)."""
    import sys
    if "mindspore" in sys.modules:
        import mindspore as ms
        ms.set_context(mode=ms.GRAPH_MODE)
    yield


@pytest.fixture(scope="session")
def ms_graph():
    from ascend_v4.runtime import setup
    setup("CPU", "graph")
    import mindspore as ms
    return ms


@pytest.fixture
def policy():
    """ascend_v4.precision, its mixed-precision policy reset to none (fp32) after the test."""
    from ascend_v4 import precision
    yield precision
    precision.set_policy(None)


@pytest.fixture(scope="session")
def tiny_cfg():
    from ascend_v4 import load_config
    return load_config("tiny")


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_cfg, tmp_path_factory):
    """(directory, weights as stored) of a tiny official-format checkpoint: FP8/MXFP4/BF16/FP32/I64 entries."""
    from ascend_v4.checkpoint import random_weights, write_official_checkpoint
    d = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    return d, write_official_checkpoint(tiny_cfg, random_weights(tiny_cfg, seed=1), d)


@pytest.fixture(scope="session")
def tiny_weights(tiny_ckpt):
    return tiny_ckpt[1]


@pytest.fixture(scope="session")
def tiny_ckpt_dir(tiny_ckpt):
    return tiny_ckpt[0]


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(1234)


class ThreadRanks:
    """Ranks of a collective played by threads: `exchange` returns what every member of a group put in (the result
    of a real gather), `run(fn)` runs fn(rank) on every rank and returns the results; an error on any rank aborts the
    others and fails the test with every rank's error."""

    def __init__(self, world: int):
        import threading
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots = [None] * world

    def exchange(self, rank, value, members):
        self.slots[rank] = value
        self.barrier.wait()
        out = [self.slots[m] for m in members]
        self.barrier.wait()
        return out

    def run(self, fn):
        import threading
        results, errors = [None] * self.world, []

        def one(r):
            try:
                results[r] = fn(r)
            except Exception as e:  # pragma: no cover - reported below
                errors.append((r, repr(e)))
                self.barrier.abort()

        threads = [threading.Thread(target=one, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        return results


@pytest.fixture
def thread_ranks():
    return ThreadRanks


@pytest.fixture(scope="session")
def simulated_ep_rank():
    """`simulated_ep_rank(cfg, dp=, tp=, ep=, rank=)`: a ParallelContext.simulated_rank whose model routes through a
    single-process stand-in of an ep rank: this rank's experts applied to the tokens it is given (the other
    experts' assignments fall outside [0, E/ep) and are inactive), plus shared_out. Summed over the ep ranks of one
    token set, the routed parts add up to the whole layer (the shared expert then counts ep times)."""
    import mindspore.nn as nn
    from ascend_v4.ops.moe.layer import MoeExperts
    from ascend_v4.parallel import ParallelContext

    class SimulatedExpertParallel(nn.Cell):
        def __init__(self, num_experts, swiglu_limit, ep, rank, capacity_factor=None):
            super().__init__()
            self.offset = rank * (num_experts // ep)
            self.inner = MoeExperts(num_experts // ep, swiglu_limit, capacity_factor=capacity_factor)

        def construct(self, x, weights, ids, w1, w2, w3, shared_out=None):
            return self.inner(x, weights, ids - self.offset, w1, w2, w3, shared_out)

    def make(cfg, dp=1, tp=1, ep=1, rank=0):
        ctx = ParallelContext.simulated_rank(cfg, dp=dp, tp=tp, ep=ep, rank=rank)
        ctx.routed_experts = lambda c, capacity_factor: SimulatedExpertParallel(
            c.n_routed_experts, c.swiglu_limit, ep, ctx.ep_rank, capacity_factor)
        return ctx
    return make
