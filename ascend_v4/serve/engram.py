"""DeepSeek-V4.1 Engram for serving: tables in host memory, hashes carried per cache row, rows gathered ahead.

The rows a step needs follow from its token ids alone (docs/deepseek-v4.1.md, "Engram"), so `EngramFeed` hashes
and gathers them on one background thread: the engine submits a prefill chunk's ids before the previous chunk's
graph runs, and picks the finished rows up when it calls the graph (a decode step's token is known only when the
previous step ends, so decode submits and waits at once). Each cache row has its own n-gram state
(ops/engram/reference.NgramHashState, batch 1), advanced only by that row's valid tokens, so chunked prefill,
decode and a one-shot prefill hash alike; `reset(rows)` starts new sequences, `rewind({row: keep})` takes back
all but the first `keep` tokens of a row's last submission (a speculative verify's rejected tail). Tables:
ops/engram/host.py.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..ops.engram.host import HostEngramTables
from ..ops.engram.reference import NgramHashState


def engram_table_names(cfg) -> List[str]:
    """The release names of the Engram tables (one per Engram layer), which stay out of the model's parameters."""
    return [f"layers.{L}.engram.embed.weight" for L in cfg.engram_layer_ids]


def split_engram_tables(cfg, weights: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], HostEngramTables]:
    """weights (release names, floats) -> (the model's weights without the tables, the tables in host memory)."""
    names = engram_table_names(cfg)
    missing = [n for n in names if n not in weights]
    if missing:
        raise KeyError(f"Engram table(s) {', '.join(missing)} missing from the weights")
    return ({k: v for k, v in weights.items() if k not in names},
            HostEngramTables([weights[n] for n in names]))


def load_v41(path: str, cfg):
    """A DeepSeek-V4.1 directory for running: (weights without the Engram tables, the tables memory-mapped as
    HostEngramTables, the compressed-token map of its tokenizer). The tables are never decoded whole (V4.1-Flash's
    are ~197 GB): rows are decoded after each gather (ascend_v4/checkpoint/release_v41.py open_engram_tables)."""
    from ..checkpoint.release_v41 import open_engram_tables, release_token_map, v41_inventory
    from ..config import MODEL_VERSIONS
    from ..weights import load_checkpoint
    if not cfg.engram_layer_ids:
        return load_checkpoint(path, versions=MODEL_VERSIONS)[1], None, None
    skip = set(engram_table_names(cfg))
    names = [n for n in v41_inventory(cfg) if n not in skip]
    _, weights = load_checkpoint(path, names=names, versions=MODEL_VERSIONS)
    return weights, open_engram_tables(path, cfg), release_token_map(path, cfg)


class EngramFeed:
    """Hash + gather of the Engram rows of a step for every cache row, on one background thread (in submission
    order, so each row's hash state advances as sequential calls would)."""

    def __init__(self, cfg, tables: HostEngramTables, batch: int, token_map: Optional[np.ndarray] = None):
        self.cfg, self.tables = cfg, tables
        self.width = cfg.engram_n_columns * tables.row_dim
        self.states = [NgramHashState.for_config(cfg, 1, token_map) for _ in range(batch)]
        self._last: List[Optional[tuple]] = [None] * batch   # per row: (history, length) before its last ids, ids
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engram-feed")
        # on an Ascend device the feed thread also stages the rows in pinned buffers and issues their H2D copies on
        # a copy stream (ops/engram/ascend_host.py; docs/ascendc.md, "Engram on Ascend"); on CPU: host arrays
        from ..ops.engram.ascend_host import AscendTransport, LayerStagers, default_transport
        tr = default_transport()
        self.stagers = LayerStagers(transport=tr) if isinstance(tr, AscendTransport) else None

    def device_rows(self, rows) -> tuple:
        """The graph's Engram input from a finished submission: on Ascend the staged device tensors, after ordering
        the compute stream behind their copies; else MindSpore tensors of the host arrays."""
        if self.stagers is not None:
            return tuple(self.stagers.ready(list(rows)))
        import mindspore as ms
        return tuple(ms.Tensor(r) for r in rows)

    def reset(self, rows: Sequence[int]) -> None:
        for r in rows:
            self.states[int(r)].reset()
            self._last[int(r)] = None

    def _work(self, ids: np.ndarray, nvalid: np.ndarray) -> Tuple[np.ndarray, ...]:
        B, T = ids.shape
        n_layers = len(self.cfg.engram_layer_ids)
        out = [np.zeros((B, T, self.width), np.float32) for _ in range(n_layers)]
        for r in range(B):
            n = int(nvalid[r])
            if n == 0:
                continue
            st = self.states[r]
            self._last[r] = (st.history.copy(), st.length.copy(), ids[r:r + 1, :n])
            h = st(ids[r:r + 1, :n])                                 # [1, n, layers, columns]
            for k in range(n_layers):
                out[k][r, :n] = self.tables.gather(k, h[0, :, k])
        return tuple(out) if self.stagers is None else tuple(self.stagers.stage(out))

    def submit(self, ids: np.ndarray, nvalid: np.ndarray) -> Future:
        return self._pool.submit(self._work, np.array(ids, np.int64), np.array(nvalid, np.int64))

    def _rewind(self, keep: Dict[int, int]) -> None:
        for r, k in keep.items():
            hist, length, ids = self._last[r]
            if not 0 <= k <= ids.shape[1]:
                raise ValueError(f"row {r}: cannot keep {k} of the {ids.shape[1]} tokens last submitted")
            st = self.states[r]
            st.history, st.length = hist.copy(), length.copy()
            if k:
                st(ids[:, :k])
            self._last[r] = (hist, length, ids[:, :k])

    def rewind(self, keep: Dict[int, int]) -> Future:
        """Per row r: keep only the first keep[r] tokens of its last submission (the hash state as if only those had
        been submitted). Runs on the feed's thread after every earlier submission, like a submit."""
        return self._pool.submit(self._rewind, {int(r): int(k) for r, k in keep.items()})

    def close(self) -> None:
        self._pool.shutdown(wait=True)
