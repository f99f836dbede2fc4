"""Compiled forward graphs of the model: one compile per (batch, length) shape, reused afterwards.

Shapes are static (the layer schedule, compressed-entry counts and index widths are Python ints derived from
the sequence length), so each new (B, S) compiles once — the "bucketed" strategy; pad prompts to a few bucket
lengths when serving many lengths.
"""
from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np
import mindspore as ms

from ascend_v4.config import ModelConfig
from ascend_v4.model import Transformer
from ascend_v4.weights import load_into


class CompiledForward:
    """Wraps a Transformer built with return_hidden=True; __call__(ids) -> dict of float32 arrays.

    DeepSeek-V4.1: the Engram tables stay in host memory (ascend_v4/serve/engram.py); each call hashes the ids
    from position 0 (token_map: raw -> compressed ids, None when the ids already are compressed ids) and feeds
    the gathered rows to the graph. Its DSpark drafter is not part of the dump (with_mtp refused; it drafts in
    `generate --dspark` and trains in `train`)."""

    def __init__(self, cfg: ModelConfig, weights: Dict[str, np.ndarray], max_seq_len: int = 4096,
                 with_mtp: bool = False, token_map: Optional[np.ndarray] = None, engram_tables=None):
        self.cfg = cfg
        self.with_mtp = with_mtp
        self.v41 = cfg.version == "v4.1"
        self.tables, self.token_map = None, token_map
        if self.v41:
            if with_mtp:
                raise ValueError("DeepSeek-V4.1's DSpark drafter is not dumped (generate --dspark runs it); "
                                 "dump without --mtp")
            if cfg.engram_layer_ids and engram_tables is not None:   # e.g. memory-mapped (serve/engram.load_v41)
                self.tables = engram_tables
            elif cfg.engram_layer_ids:
                from ascend_v4.serve.engram import split_engram_tables
                weights, self.tables = split_engram_tables(cfg, weights)
        self.model = Transformer(cfg, max_seq_len=max_seq_len, return_hidden=True,
                                 with_mtp=with_mtp and cfg.n_mtp_layers > 0)
        self.model.set_train(False)
        load_into(self.model, weights)
        self.compile_seconds: Dict[tuple, float] = {}

    def _engram_rows(self, ids: np.ndarray):
        from ascend_v4.ops.engram.reference import NgramHashState
        h = NgramHashState.for_config(self.cfg, ids.shape[0], self.token_map)(ids)
        got = [self.tables.gather_device(k, h[:, :, k]) for k in range(h.shape[2])]   # INT8: (rows, scales)
        return tuple(tuple(ms.Tensor(x) for x in g) if isinstance(g, tuple) else ms.Tensor(g) for g in got)

    def __call__(self, ids: np.ndarray) -> Dict[str, np.ndarray]:
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"token array must be [batch, seq], got shape {ids.shape}")
        if ids.shape[1] > self.model.max_seq_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_seq_len {self.model.max_seq_len}; "
                             f"rebuild with a larger max_seq_len")
        if ids.min() < 0 or ids.max() >= self.cfg.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}), got [{ids.min()}, {ids.max()}]")
        t0 = time.perf_counter()
        if self.tables is not None:
            out = self.model(ms.Tensor(ids.astype(np.int32)), self._engram_rows(ids))
        else:
            out = self.model(ms.Tensor(ids.astype(np.int32)))
        dt = time.perf_counter() - t0
        self.compile_seconds.setdefault(ids.shape, dt)
        res = {"logits": out[0].asnumpy(), "embed": out[1].asnumpy()}
        hidden = out[2].asnumpy()
        for i in range(hidden.shape[0]):
            res[f"hidden_block{i}"] = hidden[i]
        if len(out) > 3:
            res["mtp_logits"] = out[3].asnumpy()
        return res


def build_forward(cfg: ModelConfig, weights: Dict[str, np.ndarray], max_seq_len: Optional[int] = None,
                  with_mtp: bool = False, token_map: Optional[np.ndarray] = None,
                  engram_tables=None) -> CompiledForward:
    return CompiledForward(cfg, weights, max_seq_len or 4096, with_mtp, token_map, engram_tables)
