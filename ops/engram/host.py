"""Engram tables in host memory with prefetch.

V4.1-Flash's two tables hold 768M rows (~197 GB in FP8): they never fit a 64 GB NPU. Their rows are addressed by
hashes of token ids alone, so the rows a step needs are known as soon as its ids are: `EngramPrefetcher` hashes
and gathers them on a background thread while the device computes (the preceding blocks, or the previous step),
and the step only picks up a finished buffer. Tables are numpy arrays (np.memmap works: a release shard is
memory-mapped in place by `ascend_v4.checkpoint.SafeTensorFile(path).raw(name)`). Rows are decoded after the gather by `decode`, so storage stays
in its compact format: float (BF16 as uint16 bits handled by the caller's decode), INT8 with per-group scales
(what `convert` writes), or the release's FP8 codes with a decode the checkpoint codec provides.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence

import numpy as np

from .reference import NgramHashState

def dequant_group_int8(rows: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """INT8 rows [..., d] with float scales [..., d / g] → float32 (each scale covers g consecutive values): the
    host's float32 form of the `engram_dequant` op (tested equal to it). One fused multiply into the output (the
    int8 → float32 cast happens inside the ufunc loop)."""
    g = rows.shape[-1] // scales.shape[-1]
    out = np.empty(rows.shape, np.float32)
    grouped = rows.shape[:-1] + (scales.shape[-1], g)
    np.multiply(rows.reshape(grouped), scales.astype(np.float32, copy=False)[..., None], out=out.reshape(grouped))
    return out


class HostEngramTables:
    """One table per Engram layer, kept in host memory; `gather(k, ids)` returns the rows of layer k's ids as
    float32 [..., C·d] in column order (the layout `engram_lookup` returns).

    tables[k]: [rows, d] array (any dtype; memory-mapped is fine). scales[k]: optional [rows, d/g] array gathered
    alongside. decode(rows, scales) → float32 rows; default: float tables as is, BF16 (uint16 bits) widened, INT8
    tables × group scales. The release's FP8 tables (E4M3 codes + E8M0 scales) take the checkpoint codec's
    decoders as `decode`, so the format has one implementation."""

    def __init__(self, tables: Sequence[np.ndarray], scales: Optional[Sequence[Optional[np.ndarray]]] = None,
                 decode: Optional[Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray]] = None):
        self.tables = list(tables)
        self.scales = list(scales) if scales is not None else [None] * len(self.tables)
        if len(self.scales) != len(self.tables):
            raise ValueError(f"{len(self.tables)} tables but {len(self.scales)} scale arrays")
        self.decode = decode or self._default_decode

    @staticmethod
    def _default_decode(rows, scales):
        if scales is not None and rows.dtype == np.int8:
            return dequant_group_int8(rows, scales)
        if scales is None and rows.dtype == np.uint16:             # BF16 bits: widen exactly
            return (rows.astype(np.uint32) << 16).view(np.float32)
        if scales is None and np.issubdtype(rows.dtype, np.floating):
            return rows.astype(np.float32, copy=False)
        raise TypeError(f"{rows.dtype} table rows{' with scales' if scales is not None else ''} need a decode "
                        f"function (defaults: float, BF16 bits as uint16, INT8 with group scales)")

    @property
    def row_dim(self) -> int:
        return self.tables[0].shape[1]

    def gather_raw(self, k: int, ids: np.ndarray):
        """Rows of layer k's ids in their stored format: ([..., C·d] stored dtype, [..., C·d/g] scales or None).
        What a device that dequantises itself (`engram_dequant`) is sent: INT8 rows are a quarter of float32."""
        ids = np.asarray(ids, np.int64)
        t = self.tables[k]
        if ids.size and (ids.min() < 0 or ids.max() >= t.shape[0]):
            raise IndexError(f"Engram layer {k}: row ids must lie in [0, {t.shape[0]}), got "
                             f"[{ids.min()}, {ids.max()}]; the table does not match the config's Engram layout")
        flat = ids.reshape(-1)
        rows = np.take(t, flat, axis=0)
        sc = None if self.scales[k] is None else np.take(self.scales[k], flat, axis=0)
        lead = ids.shape[:-1]
        return rows.reshape(*lead, -1), (None if sc is None else sc.reshape(*lead, -1))

    def gather(self, k: int, ids: np.ndarray) -> np.ndarray:
        """Rows of layer k's ids decoded to float32 [..., C·d] on the host."""
        ids = np.asarray(ids, np.int64)
        rows, sc = self.gather_raw(k, ids)
        n = int(np.prod(ids.shape))
        out = self.decode(rows.reshape(n, -1), None if sc is None else sc.reshape(n, -1))
        return out.reshape(*ids.shape[:-1], -1)


class EngramPrefetch:
    """What a step picks up: the hash ids [B, S, n_layers, C] and each Engram layer's rows: float32 [B, S, C·d],
    or with decode_on_host=False the stored (rows, scales) pair for the device to dequantise. With a device stager
    (Ascend: ops/engram/ascend_host.py LayerStagers) `rows` are device tensors whose copies the step's stream waits
    for (`EngramPrefetcher.result` orders it), else host arrays."""

    def __init__(self, ids: np.ndarray, rows: List[np.ndarray], seconds: float):
        self.ids, self.rows, self.seconds = ids, rows, seconds


class EngramPrefetcher:
    """Hashes and gathers the Engram rows of a chunk on one background thread (submissions run in order, so the
    carried hash state is advanced exactly as by sequential calls).

        fut = pf.submit(ids_next, mask)   # as soon as the ids are known
        ...                               # the device computes meanwhile
        got = pf.result(fut)              # at the Engram layer: returns at once when the copy finished in time

    `wait_seconds` / `gather_seconds` accumulate how long steps waited and how long the background work took; a
    step never waits when wait_seconds stays ~0."""

    def __init__(self, tables: HostEngramTables, state: NgramHashState, decode_on_host: bool = True, stagers=None):
        self.tables, self.state, self.decode_on_host = tables, state, decode_on_host
        self.stagers = stagers            # LayerStagers: the background thread also issues the H2D copies
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engram-prefetch")
        self._lock = threading.Lock()
        self.wait_seconds = 0.0
        self.gather_seconds = 0.0
        self.gather_cpu_seconds = 0.0     # CPU time of the background thread (less disturbed by other jobs)
        self.steps = 0

    def _work(self, ids, text_mask) -> EngramPrefetch:
        t0, c0 = time.perf_counter(), time.thread_time()
        h = self.state(ids, text_mask)
        get = self.tables.gather if self.decode_on_host else self.tables.gather_raw
        rows = [get(k, h[:, :, k]) for k in range(h.shape[2])]
        if self.stagers is not None:      # pinned staging + async H2D on the copy stream (ascend_host.py)
            rows = self.stagers.stage(rows)
        dt = time.perf_counter() - t0
        with self._lock:
            self.gather_seconds += dt
            self.gather_cpu_seconds += time.thread_time() - c0
        return EngramPrefetch(h, rows, dt)

    def submit(self, ids: np.ndarray, text_mask: Optional[np.ndarray] = None) -> Future:
        return self._pool.submit(self._work, np.asarray(ids), None if text_mask is None else np.asarray(text_mask))

    def result(self, fut: Future) -> EngramPrefetch:
        t0 = time.perf_counter()
        got = fut.result()
        if self.stagers is not None:      # the compute stream waits for the copies (a device-side wait)
            got.rows = self.stagers.ready(got.rows)
        with self._lock:
            self.wait_seconds += time.perf_counter() - t0
            self.steps += 1
        return got

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
