"""Engram on Ascend, host side: the tables stay in host memory (V4.1-Flash's are ~197 GB; a 910B/910C has 64 GB of
HBM), the host hashes and gathers the rows a step needs (host.py: `EngramPrefetcher`, on a background thread while
the device computes), and `DeviceRowStager` moves them to the device without blocking the step:

  1. the gathered rows are copied into one of `depth` page-locked staging buffers (`Tensor.pin_memory()`: host
     memory the NPU's DMA engine reads directly, so the copy is asynchronous);
  2. the host-to-device copy is issued on a dedicated copy stream (`mindspore.runtime.Stream()`, entered with
     `mindspore.runtime.StreamCtx`) with `Tensor.move_to("Ascend", blocking=False)`, and the copy stream records a
     `mindspore.runtime.Event` after it;
  3. the step's compute stream waits on that event (`current_stream().wait_event(ev)`: a device-side wait, the host
     does not block) before the graph reads the buffer, so the device step only ever reads a finished
     [tokens, C·d] buffer;
  4. a staging buffer is reused only after its previous copy finished (`Event.synchronize()` on the feed's
     background thread, never on the step's).

The rows travel in their stored form when the device decodes them (INT8 + group scales: `engram_dequant`, the
AscendC EngramDequantAv4 kernel), a quarter of float32's bytes; FP8 release tables are decoded to bf16 on the host
(910B/910C have no FP8 arithmetic; E4M3 × E8M0 is exact in bf16 down to 2^-133). Bytes per step and the link time:
docs/ascendc.md, "Engram on Ascend".

On a CPU host (and for the emulated Ascend resolution) the same code runs with `HostTransport`: no pinned memory,
no streams, the "device" tensor wraps the staged buffer; the ring, its reuse order and the waits are the same code.
NOT RUN on an NPU: the MindSpore calls above are used as MindSpore 2.10 documents them (pin_memory and the copy
stream need an Ascend device context; on CPU pin_memory raises).
"""
from __future__ import annotations

import threading
from typing import List, Sequence, Tuple

import numpy as np


class HostTransport:
    """CPU stand-in of the device side: plain host buffers, copies complete at once, events are markers."""
    name = "host"

    def alloc(self, shape: Tuple[int, ...], dtype) -> Tuple[object, np.ndarray]:
        buf = np.empty(shape, dtype)
        return buf, buf

    def copy(self, staged: object, view: np.ndarray):
        import mindspore as ms
        return ms.Tensor(np.array(view, copy=True)), None          # the "device" copy, no event

    def wait_on_compute(self, event) -> None:
        pass

    def sync(self, event) -> None:
        pass


class AscendTransport:
    """The NPU side: pinned staging tensors, one copy stream, an event per copy."""
    name = "ascend"

    def __init__(self):
        import mindspore as ms
        self.ms = ms
        self.stream = ms.runtime.Stream()

    def alloc(self, shape, dtype):
        t = self.ms.Tensor(np.zeros(shape, dtype)).pin_memory()    # page-locked host memory
        return t, t.asnumpy()                                       # host view the gather writes into

    def copy(self, staged, view):
        with self.ms.runtime.StreamCtx(self.stream):
            dev = staged.move_to("Ascend", blocking=False)          # H2D on the copy stream
            ev = self.stream.record_event()
        return dev, ev

    def wait_on_compute(self, event) -> None:
        if event is not None:
            self.ms.runtime.current_stream().wait_event(event)      # device-side wait: the host does not block

    def sync(self, event) -> None:
        if event is not None:
            event.synchronize()


def default_transport():
    """AscendTransport on an Ascend device (not when the Ascend resolution is emulated on CPU), else HostTransport."""
    from ..registry import target
    t = target()
    if t.device == "Ascend" and not t.emulated and not t.planning:
        return AscendTransport()
    return HostTransport()


class DeviceRowStager:
    """A ring of `depth` staging buffers of [rows, width] elements of one dtype (one ring per step shape: decode and
    each prefill chunk size repeat, so no buffer is ever sliced). `stage(x)` waits for the next buffer's previous
    copy to finish, copies x into it, issues its H2D copy and returns the device tensor; `ready(tensor)` makes the
    compute stream wait for that copy (call it on the step's thread, just before the graph runs)."""

    def __init__(self, rows: int, width: int, dtype, depth: int = 2, transport=None):
        if depth < 2:
            raise ValueError(f"depth must be >= 2 (one buffer copying while the next is filled), got {depth}")
        self.shape, self.dtype, self.depth = (int(rows), int(width)), np.dtype(dtype), int(depth)
        self.transport = transport or default_transport()
        self._slots: List[Tuple[object, np.ndarray]] = [self.transport.alloc(self.shape, self.dtype)
                                                        for _ in range(self.depth)]
        self._events: List[object] = [None] * self.depth
        self._pending = {}
        self._next = 0
        self._lock = threading.Lock()
        self.bytes_copied = 0

    def stage(self, x: np.ndarray):
        x = np.asarray(x)
        if tuple(x.shape) != self.shape:
            raise ValueError(f"this stager holds {list(self.shape)} rows, got {list(x.shape)}")
        with self._lock:
            k = self._next
            self._next = (k + 1) % self.depth
            self.transport.sync(self._events[k])                 # the buffer's previous copy has finished
            staged, view = self._slots[k]
            np.copyto(view, x, casting="same_kind")
            dev, ev = self.transport.copy(staged, view)
            self._events[k] = ev
            self._pending[id(dev)] = ev
            self.bytes_copied += x.nbytes
        return dev

    def ready(self, tensor) -> None:
        with self._lock:
            ev = self._pending.pop(id(tensor), None)
        self.transport.wait_on_compute(ev)


class LayerStagers:
    """The device side of a prefetch: `stage(rows)` (on the prefetch thread) sends each Engram layer's rows
    ([..., C·d] float32 or bf16 bits, or the (INT8 rows, scales) pair) through a stager of its shape and dtype;
    `ready(devs)` (on the step's thread) orders the compute stream after those copies."""

    def __init__(self, depth: int = 2, transport=None):
        self.depth, self.transport = depth, transport or default_transport()
        self._stagers = {}

    def _one(self, x):
        x = np.asarray(x)
        flat = x.reshape(-1, x.shape[-1])
        key = (flat.shape, x.dtype.str)
        s = self._stagers.get(key)
        if s is None:
            s = self._stagers[key] = DeviceRowStager(flat.shape[0], flat.shape[1], x.dtype, self.depth, self.transport)
        return s, s.stage(flat), x.shape          # ready() keys on the staged tensor itself

    def stage(self, rows: Sequence) -> list:
        out = []
        for r in rows:
            if isinstance(r, tuple):     # stored form: (int8 rows, scales)
                out.append(tuple(self._one(x) if x is not None else (None, None, None) for x in r))
            else:
                out.append(self._one(r))
        return out

    @staticmethod
    def ready(staged: list) -> list:
        """Orders the compute stream after every copy; returns the device tensors (pairs stay pairs)."""
        devs = []
        for item in staged:
            if isinstance(item[0], DeviceRowStager):          # float rows: (stager, tensor, shape)
                item[0].ready(item[1])
                devs.append(item[1].reshape(item[2]))
                continue
            pair = []                                         # stored form: (rows triple, scales triple)
            for st, d, shape in item:
                if st is not None:
                    st.ready(d)
                pair.append(None if d is None else d.reshape(shape))
            devs.append(tuple(pair))
        return devs

    @property
    def bytes_copied(self) -> int:
        return sum(s.bytes_copied for s in self._stagers.values())


# ------------------------------------------------------------------------------------------- registry backend
_LOOKUP = []


def engram_lookup_host(table, ids):
    """engram_lookup on Ascend: table [rows, d] in host memory (numpy / np.memmap; a MindSpore tensor is read back
    to the host), ids int [..., C] -> device tensor [..., C·d]: the rows gathered on the host, staged in a pinned
    buffer and copied on the copy stream; the compute stream waits for the copy. No backward here: in training the
    rows are a graph input and their gradient is scatter-added into the host table by the row-sparse optimiser
    (ascend_v4/train/v41.py EngramSparseAdamW)."""
    t = table.asnumpy() if hasattr(table, "asnumpy") else np.asarray(table)
    i = (ids.asnumpy() if hasattr(ids, "asnumpy") else np.asarray(ids)).astype(np.int64)
    rows = np.take(t, i.reshape(-1), axis=0).reshape(i.shape[:-1] + (i.shape[-1] * t.shape[1],))
    if not _LOOKUP:
        _LOOKUP.append(LayerStagers())
    staged = _LOOKUP[0].stage([rows])
    return LayerStagers.ready(staged)[0]


WHAT = ("host gather (ops/engram/host.py) into a pinned buffer (Tensor.pin_memory), H2D on a copy stream "
        "(mindspore.runtime.Stream + StreamCtx, Tensor.move_to('Ascend', blocking=False)); the compute stream waits "
        "on the copy's Event; tables never on the device")
