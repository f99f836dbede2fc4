"""DeepSeek-V4.1 Engram for serving: tables in host memory, hashes carried per cache row, rows gathered ahead.

The rows a step needs follow from its token ids alone (docs/deepseek-v4.1.md, "Engram"), so `EngramFeed` hashes
and gathers them on one background thread: the engine submits a prefill chunk's ids before the previous chunk's
graph runs, and picks the finished rows up when it calls the graph (a decode step's token is known only when the
previous step ends, so decode submits and waits at once). Each cache row has its own n-gram state
(ops/engram/reference.NgramHashState, batch 1), advanced only by that row's valid tokens, so chunked prefill,
decode and a one-shot prefill hash alike; `reset(rows)` starts new sequences. Tables: ops/engram/host.py.
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
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engram-feed")

    def reset(self, rows: Sequence[int]) -> None:
        for r in rows:
            self.states[int(r)].reset()

    def _work(self, ids: np.ndarray, nvalid: np.ndarray) -> Tuple[np.ndarray, ...]:
        B, T = ids.shape
        n_layers = len(self.cfg.engram_layer_ids)
        out = [np.zeros((B, T, self.width), np.float32) for _ in range(n_layers)]
        for r in range(B):
            n = int(nvalid[r])
            if n == 0:
                continue
            h = self.states[r](ids[r:r + 1, :n])                     # [1, n, layers, columns]
            for k in range(n_layers):
                out[k][r, :n] = self.tables.gather(k, h[0, :, k])
        return tuple(out)

    def submit(self, ids: np.ndarray, nvalid: np.ndarray) -> Future:
        return self._pool.submit(self._work, np.array(ids, np.int64), np.array(nvalid, np.int64))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
