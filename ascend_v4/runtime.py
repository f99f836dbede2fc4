"""Process-level MindSpore setup: device, graph mode, threads, quiet logs. Call once before building Cells."""
from __future__ import annotations

import os

os.environ.setdefault("GLOG_v", "3")

_DONE = {}


def setup(device: str = "CPU", mode: str = "graph", threads: int = 0, deterministic: bool = True) -> str:
    """Select the device and execution mode. Returns the device target actually set.

    threads=0 keeps MindSpore's default CPU pool; on shared 2-core machines 1-2 threads give the most stable
    timings (see shared notes). Never enables the compile cache: it computes wrong results on 2.10 CPU.
    """
    import mindspore as ms

    # the mode is cheap to set and other code may have changed it: always apply; the device only once
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    key = (device, threads)
    if _DONE.get("key") == key:
        return device
    ms.set_device(device)
    if threads:
        try:
            ms.device_context.cpu.op_tuning.threads_num(threads)
        except Exception:  # already initialised: the pool size is fixed for the process
            pass
    if deterministic:
        try:
            ms.set_deterministic(True)
        except Exception:  # pragma: no cover
            pass
    _DONE["key"] = key
    return device
