"""KVCache: the per-batch serving cache (window rings, compressed entries, indexer keys, compressor state).

The buffers are MindSpore Parameters that the compiled step graphs update in place; their layout (names, shapes,
dtypes, which layer reads which buffer) is `ascend_v4.graph.decode.CacheLayout`. One cache serves `batch`
sequences of up to `max_len` tokens; `reset(rows)` starts new sequences in those rows (the compressor state goes
back to kv 0 / score -1e30 — the reference never resets it; we must, or a second sequence pools the first
one's tail into its first entry).
"""
from __future__ import annotations

import itertools
from typing import Dict, Iterable, Optional

import numpy as np

from ..config import ModelConfig

_UID = itertools.count()


class KVCache:
    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, kv_int8: bool = False, mtp: bool = False):
        import mindspore as ms
        from mindspore import Parameter, Tensor
        from ascend_v4.graph.decode import CacheLayout

        self.cfg = cfg
        self.layout = CacheLayout(cfg, batch, max_len, kv_int8=kv_int8, mtp=mtp, shadow=mtp)
        self.batch, self.max_len, self.kv_int8, self.mtp = batch, max_len, kv_int8, self.layout.mtp
        uid = next(_UID)
        self.params = tuple(
            Parameter(Tensor(np.full(e.param_shape, e.fill, dtype=e.dtype)), name=f"kvcache{uid}.{e.name}",
                      requires_grad=False)
            for e in self.layout.entries)
        self._ms = ms

    # ------------------------------------------------------------------------------------------ reset
    def reset(self, rows: Optional[Iterable[int]] = None, full: bool = False) -> None:
        """Start new sequences in `rows` (default: all). Resets the compressor state (and shadows); with
        full=True also zeroes rings, entries and indexer keys (never needed for correctness: every read is
        masked by position, so stale rows are invisible)."""
        from mindspore import Tensor
        rows = list(range(self.batch)) if rows is None else [int(r) for r in rows]
        for r in rows:
            if not 0 <= r < self.batch:
                raise ValueError(f"cache row {r} outside [0, {self.batch})")
        if not rows:
            return
        for e, p in zip(self.layout.entries, self.params):
            if e.role in ("state", "shadow") or full:
                a = p.asnumpy().reshape(e.shape).copy()
                a[rows] = e.fill
                p.set_data(Tensor(a.reshape(e.param_shape)))

    def arrays(self) -> Dict[str, np.ndarray]:
        """Host copies of every buffer, by layout name, in the logical [batch, rows, width] shape."""
        return {e.name: p.asnumpy().reshape(e.shape) for e, p in zip(self.layout.entries, self.params)}

    # ------------------------------------------------------------------------------------------ sizes
    def entry_bytes(self) -> int:
        """Bytes of one stored KV row (window or compressed entry) in this cache's format."""
        c = self.cfg
        if self.kv_int8:
            return (c.head_dim - c.rope_head_dim) * 1 + c.rope_head_dim * 4 + 4
        return c.head_dim * 4

    def bytes_per_token_formula(self) -> Dict[str, float]:
        """Cache bytes per token of context for ONE sequence, by layer kind (the window and the compressor state
        are fixed per sequence): CSA (entry + indexer key) / 4, HCA entry / 128, SWA and MTP 0."""
        c = self.cfg
        out = {"SWA": 0.0, "CSA": 0.0, "HCA": 0.0, "MTP": 0.0}
        key = c.index_head_dim * 4
        for i in range(c.n_layers):
            r = c.ratio(i)
            if r:
                out[c.layer_kind(i)] += self.entry_bytes() / r + (key / r if r == 4 else 0.0)
        out["total"] = sum(out.values())
        return out

    def report(self) -> Dict[str, Dict[str, float]]:
        """Per layer kind: layers, bytes per token (formula), fixed bytes per sequence, and the bytes actually
        allocated (all rows); plus totals."""
        c = self.cfg
        per_tok = self.bytes_per_token_formula()
        kinds: Dict[str, Dict[str, float]] = {}
        n_layers = {"SWA": 0, "CSA": 0, "HCA": 0, "MTP": c.n_mtp_layers if self.mtp else 0}
        for i in range(c.n_layers):
            n_layers[c.layer_kind(i)] += 1
        for k in ("SWA", "CSA", "HCA", "MTP"):
            kinds[k] = {"layers": n_layers[k], "bytes_per_token": per_tok[k], "fixed_bytes_per_seq": 0.0,
                        "allocated_bytes": 0.0}
        for e in self.layout.entries:
            nbytes = float(np.prod(e.shape)) * np.dtype(e.dtype).itemsize
            kinds[e.kind]["allocated_bytes"] += nbytes
            if e.per_row_tokens:      # entries / index keys: one scratch row per sequence is fixed overhead
                kinds[e.kind]["fixed_bytes_per_seq"] += nbytes / e.shape[1] / self.batch
            else:
                kinds[e.kind]["fixed_bytes_per_seq"] += nbytes / self.batch
        total = {"bytes_per_token": per_tok["total"],
                 "fixed_bytes_per_seq": sum(v["fixed_bytes_per_seq"] for v in kinds.values()),
                 "allocated_bytes": sum(v["allocated_bytes"] for v in kinds.values()),
                 "batch": self.batch, "max_len": self.max_len, "kv_format": "int8" if self.kv_int8 else "float32"}
        return {"kinds": kinds, "total": total}

    def allocated_bytes(self) -> int:
        return int(sum(int(np.prod(e.shape)) * np.dtype(e.dtype).itemsize for e in self.layout.entries))


def format_report(rep: Dict) -> str:
    lines = [f"KV cache ({rep['total']['kv_format']}, batch {rep['total']['batch']}, max_len {rep['total']['max_len']}):"]
    for k, v in rep["kinds"].items():
        if v["layers"]:
            lines.append(f"  {k}: {v['layers']} layer(s), {v['bytes_per_token']:.1f} B/token, fixed "
                         f"{v['fixed_bytes_per_seq'] / 1024:.1f} KiB/seq, allocated {v['allocated_bytes'] / 2**20:.2f} MiB")
    t = rep["total"]
    lines.append(f"  total: {t['bytes_per_token']:.1f} B/token + {t['fixed_bytes_per_seq'] / 1024:.1f} KiB/seq fixed; "
                 f"allocated {t['allocated_bytes'] / 2**20:.2f} MiB")
    return "\n".join(lines)
