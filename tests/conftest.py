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
