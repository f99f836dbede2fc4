"""Training DeepSeek-V4.1 (docs/training.md, "DeepSeek-V4.1"): the model's own Cells, on one process or under
msrun with dp / tp / ep and ZeRO-1 (V41TrainStep) and pp / micro-batches (train/pipeline.py
V41PipelineTrainStep; ZeRO-1 is not combined with the pipeline schedule, as for V4).

    loss = lm + dspark_weight · (draft + confidence_weight · confidence) + balance_alpha · Σ_layers balance

* lm: next-token cross entropy of the backbone (Transformer.run_layers_v41 / logits_v41, the forward serving runs).
* draft: the DSpark drafter's block-drafting cross entropy. At every anchor p the block [y, noise, ...] at positions
  p+1 .. p+bs (y = the true next token) runs the drafter stages (Transformer.dspark_forward); row i predicts token
  p+2+i with the Markov bias of the true token before it (teacher forcing). Rows whose label lies past the row,
  outside the loss mask or in another document are masked (`dspark_batch`).
* confidence: binary cross entropy (with logits) of the raw confidence head against "row i's argmax equals its
  label" (no gradient through the label): what a verify loop thresholds.
* balance: V3's sequence-wise balance loss over the backbone's and the drafter's routed layers (train/losses.py);
  the aux-loss-free router biases move from the expert loads as for V4 (train/step.py BiasBalancer).

Packed rows (docs/training.md, "DeepSeek-V4.1"): the step runs each document piece of a packed batch as its own
sequence (`document_rows`): its tokens at positions 0.., its Engram n-grams hashed from its own start (the
lookback of its first tokens is blocked, pad-filled, exactly as at position 0 of a sequence), its compressed KV,
indexer candidates and DSpark windows from its own tokens only. The result equals the model run on each document
alone; the balance loss is per document (`seq_rows`).

Engram tables live in host memory, as in serving (`EngramSparseAdamW`): the step hashes the ids, gathers the rows
on the host and feeds them to the graph, the graph returns the gradient w.r.t. those rows, and the host applies a
row-sparse AdamW: only rows hashed in the step move, each with its own moments and its own update count for the
bias correction (a row touched in 10 of 1000 steps is corrected as a 10-step Adam, not decayed by 990 missed
steps). Gradient clipping counts the Engram row gradients in the global norm. Weight decay applies to touched rows
only (decoupled, scaled by lr). Under tp the tables' rows are split over the tp ranks, and with ZeRO-1 their
optimiser state over dp (EngramSparseAdamW); checkpoints hold the full tables.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from .losses import expert_load, masked_ce, seq_balance

ENGRAM_STATE = "engram_state.npz"


def dspark_batch(targets: np.ndarray, loss_mask: np.ndarray, segment_ids: np.ndarray, block: int):
    """The drafter's teacher-forced inputs and labels of a packed batch: anchor p's row i has Markov token
    o = targets[p+i] (token p+1+i), label targets[p+1+i] (token p+2+i), and counts only if positions p .. p+1+i
    are all in the loss mask and in one document. -> (markov ids [B, S, bs] int32, labels [B, S, bs] int32,
    mask [B, S, bs] float32)."""
    B, S = targets.shape
    o = np.zeros((B, S, block), np.int32)
    lab = np.zeros((B, S, block), np.int32)
    mask = np.zeros((B, S, block), np.float32)
    lm = np.asarray(loss_mask) > 0
    seg = np.asarray(segment_ids)
    for i in range(block):
        n_o, n_l = S - i, S - 1 - i
        o[:, :n_o, i] = targets[:, i:]
        if n_l <= 0:
            continue
        lab[:, :n_l, i] = targets[:, 1 + i:]
        ok = np.ones((B, n_l), bool)
        for j in range(i + 2):                      # positions p .. p+1+i
            ok &= lm[:, j:j + n_l] & (seg[:, j:j + n_l] == seg[:, :n_l])
        mask[:, :n_l, i] = ok
    return o, lab, mask


def document_rows(batch: Dict[str, np.ndarray], pad_id: int, min_rows: int = 0):
    """A packed batch [B, S] -> (the batch with one document piece per row, number of pieces). Piece k (row b,
    segment s >= 0, in row-major order) becomes row k: its tokens, targets and loss mask at columns 0 .. n-1,
    segment id 0 and positions 0 .. n-1 there; the rest of the row is padding (token pad_id, loss mask 0, segment
    -1). The row count is B times a power of two (at least the number of pieces and min_rows), so the compiled step sees few
    distinct shapes; rows past the pieces are all padding. A row's padding follows its tokens and the model is
    causal: nothing a piece computes reads it."""
    seg = np.asarray(batch["segment_ids"])
    B, S = seg.shape
    pieces = []
    for b in range(B):
        for s_id in np.unique(seg[b]):
            if s_id >= 0:
                pieces.append(np.nonzero(seg[b] == s_id)[0] + b * S)
    R = B
    while R < max(len(pieces), min_rows):
        R *= 2
    out = {"input_ids": np.full((R, S), pad_id, np.int64), "targets": np.full((R, S), pad_id, np.int64),
           "loss_mask": np.zeros((R, S), np.float32), "segment_ids": np.full((R, S), -1, np.int32),
           "positions": np.zeros((R, S), np.int32)}
    for r, cols in enumerate(pieces):
        n = cols.size
        for key in ("input_ids", "targets", "loss_mask"):
            out[key][r, :n] = np.asarray(batch[key]).reshape(-1)[cols]
        out["segment_ids"][r, :n] = 0
        out["positions"][r, :n] = np.arange(n)
    return out, len(pieces)


class V41Loss(nn.Cell):
    """construct(input_ids, engram_rows [n_engram_layers, B, S, columns·d] (one tensor: its gradient is the rows'),
    targets, loss_mask, markov_ids, draft_labels, draft_mask, dspark_weight,
    lm_denom, draft_denom, seq_rows) -> (loss, lm, draft, confidence, balance, backbone loads [L, E], drafter loads
    [stages, E_d], dropped). auto_prefix=False keeps the release names in gradients and optimiser state.
    seq_rows: how many rows are sequences (document_rows' piece count; the rest are all padding): the balance loss
    is averaged over those (None: every row)."""

    def __init__(self, model, balance_alpha: float = 1e-4, confidence_weight: float = 0.1):
        super().__init__(auto_prefix=False)
        self.model = model
        cfg = model.cfg
        self.E, self.K = cfg.n_routed_experts, cfg.n_activated_experts
        self.Ed, self.Kd = cfg.dspark_n_routed_experts, cfg.dspark_n_activated_experts
        self.alpha, self.conf_w = balance_alpha, confidence_weight
        self.with_dspark = model.with_dspark
        self.n_stages = cfg.n_mtp_layers
        self.n_engram = len(model.engram_layers)              # the Engram layers this process holds

    def construct(self, input_ids, engram_rows, targets, loss_mask, markov_ids, draft_labels, draft_mask,
                  dspark_weight, lm_denom=None, draft_denom=None, seq_rows=None):
        _, h = self.model.embed_streams(input_ids)
        out = self.layers(h, None, input_ids, engram_rows)
        return self.terms(out, input_ids.shape[0], targets, loss_mask, markov_ids, draft_labels, draft_mask,
                          dspark_weight, lm_denom, draft_denom, seq_rows)

    def layers(self, h, pre, input_ids, engram_rows):
        """run_layers_v41 of this process's blocks with the MoE stats (and DSpark's targets where it runs)."""
        rows = tuple(engram_rows[k] for k in range(self.n_engram))
        return self.model.run_layers_v41(h, input_ids, rows, stats=True, targets=self.with_dspark, pre=pre)

    def terms(self, out, B, targets, loss_mask, markov_ids, draft_labels, draft_mask, dspark_weight, lm_denom,
              draft_denom, seq_rows):
        """The loss terms of run_layers_v41's `out`: the lm term where this process holds the head (a pipeline's
        last stage), the drafter's where it holds DSpark, the balance of its own routed layers. -> construct's
        tuple (a stage's share: the terms of the stages add up to the whole model's)."""
        h, pre, routes = out[0], out[1], out[3]
        zero = ops.zeros((), ms.float32)
        lm = zero
        if self.model.last_stage:
            lm = masked_ce(self.model.logits_v41(h, pre), targets, loss_mask, lm_denom)
        balance = zero
        dropped = ops.zeros((), ms.int32)
        loads = ()
        for aff, ids, drop in routes:
            balance = balance + seq_balance(aff, ids, self.E, self.K, B, loss_mask)
            loads = loads + (expert_load(ids, self.E, loss_mask),)
            dropped = dropped + drop
        draft, conf = zero, zero
        dloads = ops.zeros((max(self.n_stages, 1), self.Ed), ms.float32)
        if self.with_dspark:
            logits, c, droutes = self.model.dspark_forward(out[4], markov_ids)
            draft = masked_ce(logits, draft_labels, draft_mask, draft_denom)
            hit = ops.stop_gradient(ops.cast(ops.argmax(logits, -1) == draft_labels, ms.float32))
            bce = ops.softplus(c) - hit * c                         # BCE with logits, stable for any c
            den = ops.sum(draft_mask) if draft_denom is None else draft_denom
            conf = ops.sum(bce * draft_mask) / ops.maximum(den, 1.0)
            dmask = draft_mask.reshape(B, -1)
            dl = ()
            for aff, ids, drop in droutes:
                balance = balance + seq_balance(aff, ids, self.Ed, self.Kd, B, dmask)
                dl = dl + (expert_load(ids, self.Ed, dmask),)
                dropped = dropped + drop
            dloads = ops.stack(dl)
        if seq_rows is not None:          # seq_balance averages over all B rows; all-padding rows add 0
            balance = balance * (B / ops.maximum(seq_rows, 1.0))
        loss = lm + dspark_weight * (draft + self.conf_w * conf) + self.alpha * balance
        return loss, lm, draft, conf, balance, ops.stack(loads), dloads, dropped


def row_range(n: int, parts: int, i: int):
    """Rows [lo, hi) of part i when n rows are cut into `parts` contiguous ranges: [i·n/parts, (i+1)·n/parts)."""
    return n * i // parts, n * (i + 1) // parts


class EngramComm:
    """The host collectives a sharded EngramSparseAdamW uses (ParallelContext groups, eager): `tp_sum` (AllReduce
    sum over tp of a float32 buffer: the lookup), `gather(arrays, kind)` (ParallelContext.host_gather over "dp" or
    "tp": the ZeRO row exchange and the checkpoint gather). Tests replace it with simulated ranks."""

    def __init__(self, parallel):
        self.parallel = parallel

    def tp_sum(self, buf: np.ndarray) -> np.ndarray:
        group = self.parallel.group("tp")
        if group is None:
            return buf
        return ops.AllReduce(ops.ReduceOp.SUM, group)(ms.Tensor(buf)).asnumpy()

    def gather(self, arrays: List[np.ndarray], kind: str) -> List[List[np.ndarray]]:
        return self.parallel.host_gather(arrays, kind)


class EngramSparseAdamW:
    """The Engram tables of a V4.1 model in host memory (float32 [rows, engram_head_dim] per Engram layer) and
    their row-sparse AdamW (module docstring). `rows(hash_ids)` gathers a step's rows; `update(hash_ids, grads,
    lr)` moves only the rows hashed in that step.

    Placement (docs/training.md, "DeepSeek-V4.1"). tp ranks (tp > 1) split each table's rows: tp rank t holds rows
    [t·R/tp, (t+1)·R/tp) (`lo`, `hi`); a lookup reads its own rows, zeros for the others, and an all-reduce (sum)
    over tp gives every tp rank the full rows (one contributor per value: exact); in the update each tp rank moves
    only its own rows (the row gradients are the same on every tp rank). ZeRO-1 (`zero`, dp > 1): the optimiser
    state (moments, counts) of the rank's rows is split over dp, dp rank r owning the r-th of dp contiguous ranges
    of them (`slo`, `shi`); each owner updates the touched rows it owns, and the dp ranks all-gather the updated
    rows so every rank's table stays identical. Each row's update is the unsharded one (elementwise, the same
    operations), so the tables are bit-identical to one process's. `tables`, `m`, `v`, `count` hold this rank's
    rows; `state_dict()` gathers the full state (a collective), `load` takes this rank's rows of a full state."""

    def __init__(self, cfg, tables: Sequence[np.ndarray], betas=(0.9, 0.95), eps: float = 1e-20,
                 weight_decay: float = 0.0, token_map: Optional[np.ndarray] = None, parallel=None,
                 zero: bool = False, comm=None):
        self.cfg = cfg
        self.tp, self.tp_rank = (parallel.tp, parallel.tp_rank) if parallel is not None else (1, 0)
        self.rank, self.dp_rank = (parallel.rank, parallel.dp_rank) if parallel is not None else (0, 0)
        zero = bool(zero) and parallel is not None and parallel.dp > 1
        self.zdp, self.zrank = (parallel.dp, parallel.dp_rank) if zero else (1, 0)
        self.comm = comm if comm is not None else (EngramComm(parallel) if parallel is not None else None)
        self.lo, self.hi, self.slo, self.shi = self.ranges(cfg, parallel, zero)
        self.tables = []
        for k, (L, t) in enumerate(zip(cfg.engram_layer_ids, tables)):
            full = (cfg.engram_num_embeddings[k], cfg.engram_head_dim)
            mine = (self.hi[k] - self.lo[k], cfg.engram_head_dim)
            if tuple(t.shape) == full and mine != full:      # a copy of this rank's rows: the full table can go
                t = np.array(t[self.lo[k]:self.hi[k]], np.float32, order="C")
            elif tuple(t.shape) != mine:
                raise ValueError(f"Engram table of layer {L} has shape {tuple(t.shape)}, the config needs {full}")
            self.tables.append(np.ascontiguousarray(t, np.float32))
        self.m = [np.zeros((h - l, cfg.engram_head_dim), np.float32) for l, h in zip(self.slo, self.shi)]
        self.v = [np.zeros_like(m) for m in self.m]
        self.count = [np.zeros(h - l, np.int64) for l, h in zip(self.slo, self.shi)]
        self.b1, self.b2 = float(betas[0]), float(betas[1])
        self.eps, self.wd = float(eps), float(weight_decay)
        self.token_map = token_map
        self.last_touched = 0

    @staticmethod
    def ranges(cfg, parallel=None, zero: bool = False):
        """(lo, hi, slo, shi) per Engram layer: the table rows this rank holds and the rows whose optimiser state
        it owns (see the class docstring)."""
        tp, t = (parallel.tp, parallel.tp_rank) if parallel is not None else (1, 0)
        zdp, z = (parallel.dp, parallel.dp_rank) if zero and parallel is not None and parallel.dp > 1 else (1, 0)
        lo, hi, slo, shi = [], [], [], []
        for n in cfg.engram_num_embeddings:
            a, b = row_range(int(n), tp, t)
            c, d = row_range(b - a, zdp, z)
            lo.append(a)
            hi.append(b)
            slo.append(a + c)
            shi.append(a + d)
        return lo, hi, slo, shi

    def host_bytes(self) -> int:
        """Bytes of this rank's tables and optimiser state."""
        return sum(a.nbytes for a in self.tables + self.m + self.v + self.count)

    def hash(self, ids: np.ndarray) -> np.ndarray:
        """Row ids [B, S, n_engram_layers, columns] of full sequences from position 0."""
        from ascend_v4.ops.engram.reference import NgramHashState
        return NgramHashState.for_config(self.cfg, ids.shape[0], self.token_map)(np.asarray(ids, np.int64))

    def local_rows(self, hashed: np.ndarray) -> List[np.ndarray]:
        """Per Engram layer [B, S, columns·d]: the rows this rank holds, zeros for the others (the whole lookup
        when the tables are not split)."""
        B, S = hashed.shape[:2]
        out = []
        for k, t in enumerate(self.tables):
            ids = hashed[:, :, k]
            if self.tp == 1:
                out.append(t[ids.reshape(-1)].reshape(B, S, -1))
                continue
            r = np.zeros(ids.shape + (t.shape[1],), np.float32)
            own = (ids >= self.lo[k]) & (ids < self.hi[k])
            r[own] = t[ids[own] - self.lo[k]]
            out.append(r.reshape(B, S, -1))
        return out

    def rows(self, hashed: np.ndarray) -> List[np.ndarray]:
        """Per Engram layer the rows [B, S, columns·d] in column order (the layout the model reads). With the
        tables split over tp a collective: every tp rank calls it with the same ids."""
        parts = self.local_rows(hashed)
        if self.tp == 1:
            return parts
        flat = self.comm.tp_sum(np.concatenate([p.reshape(-1) for p in parts]))
        out, o = [], 0
        for p in parts:
            out.append(flat[o:o + p.size].reshape(p.shape))
            o += p.size
        return out

    def update(self, hashed: np.ndarray, grads: Sequence[np.ndarray], lr: float,
               valid: Optional[np.ndarray] = None) -> int:
        """One AdamW step on the rows hashed in the step; grads: d loss / d rows per layer [B, S, columns·d]
        (a row read at several places sums their gradients). valid [B, S] bool: the positions that count (None:
        all; padding is left out, so the rows only padding hashed to are not touched). Returns the number of rows
        moved (over all ranks). With ZeRO-1 a collective over dp (the exchange of the updated rows)."""
        d = self.cfg.engram_head_dim
        moved = 0
        sent = []
        for k, t in enumerate(self.tables):
            ids = hashed[:, :, k]
            gk = np.asarray(grads[k], np.float64).reshape(ids.shape[:2] + (-1,))
            if valid is not None:
                ids, gk = ids[valid], gk[valid]
            ids = ids.reshape(-1)
            uniq, inv = np.unique(ids, return_inverse=True)
            moved += uniq.size
            g = np.zeros((uniq.size, d), np.float64)
            np.add.at(g, inv, gk.reshape(-1, d))
            g = g.astype(np.float32)
            own = (uniq >= self.slo[k]) & (uniq < self.shi[k])
            u, g = uniq[own], g[own]
            j = u - self.slo[k]
            m = self.m[k][j] * np.float32(self.b1) + np.float32(1 - self.b1) * g
            v = self.v[k][j] * np.float32(self.b2) + np.float32(1 - self.b2) * g * g
            n = self.count[k][j] + 1
            c1 = (1.0 - self.b1 ** n).astype(np.float32)[:, None]
            c2 = (1.0 - self.b2 ** n).astype(np.float32)[:, None]
            w = t[u - self.lo[k]]
            upd = (m / c1) / (np.sqrt(v / c2) + np.float32(self.eps)) + np.float32(self.wd) * w
            new = w - np.float32(lr) * upd
            self.m[k][j], self.v[k][j], self.count[k][j] = m, v, n
            if self.zdp == 1:
                t[u - self.lo[k]] = new
            else:       # this rank's share of the touched rows it holds, in their order, zeros for the others
                held = uniq[(uniq >= self.lo[k]) & (uniq < self.hi[k])]
                buf = np.zeros((held.size, d), np.float32)
                buf[np.searchsorted(held, u)] = new
                sent.append((held, buf))
        # every dp rank's updated rows to every dp rank (the dp ranks hold the same rows and hash the same ids, so
        # they agree on the sizes, and all skip when none of their rows was touched)
        if self.zdp > 1 and any(h.size for h, _ in sent):
            got = self.comm.gather([b for _, b in sent], "dp")
            for k, (held, _) in enumerate(sent):
                t = self.tables[k]
                for q in range(self.zdp):
                    a, b = row_range(self.hi[k] - self.lo[k], self.zdp, q)
                    sel = (held >= self.lo[k] + a) & (held < self.lo[k] + b)
                    t[held[sel] - self.lo[k]] = got[q][k][sel]
        self.last_touched = moved
        return moved

    # ------------------------------------------------------------------ state (resume bit-exact)
    def local_state(self) -> Dict[str, np.ndarray]:
        """This rank's rows (tables) and owned rows (moments, counts) under the checkpoint names."""
        out = {}
        for k, L in enumerate(self.cfg.engram_layer_ids):
            p = f"layers.{L}.engram.embed."
            out[p + "weight"], out[p + "exp_avg"] = self.tables[k], self.m[k]
            out[p + "exp_avg_sq"], out[p + "count"] = self.v[k], self.count[k]
        return out

    def state_dict(self, root_only: bool = False) -> Optional[Dict[str, np.ndarray]]:
        """The full tables and optimiser state (every row), as one process holds them. A collective over tp and dp
        when they are split (every rank calls it); root_only: only rank 0 keeps the result (the others get None and
        hold one chunk at a time, CHUNK_BYTES; the tables, the same on every dp rank, travel over dp rank 0's tp
        group only)."""
        if self.tp == 1 and self.zdp == 1:
            return self.local_state()
        first = self.dp_rank == 0           # this rank's tp group gathers (root_only)
        out = {} if self.rank == 0 or not root_only else None
        for k, L in enumerate(self.cfg.engram_layer_ids):
            p = f"layers.{L}.engram.embed."
            R = int(self.cfg.engram_num_embeddings[k])
            if first or not root_only:
                t = self._gather_rows(self.tables[k], "tp", R, self.tp, keep=out is not None)
                if out is not None:
                    out[p + "weight"] = t
            for key, a in (("exp_avg", self.m[k]), ("exp_avg_sq", self.v[k]), ("count", self.count[k])):
                is_count = a.dtype == np.int64
                if is_count:
                    if a.size and a.max() >= 1 << 24:
                        raise ValueError("an Engram row count exceeds 2^24: it cannot travel as float32")
                    a = a.astype(np.float32)
                held = self._gather_rows(a, "dp", self.hi[k] - self.lo[k], self.zdp, keep=first or not root_only)
                if first or not root_only:
                    full = self._gather_rows(held, "tp", R, self.tp, keep=out is not None)
                    if out is not None:
                        out[p + key] = full.astype(np.int64) if is_count else full
        return out

    CHUNK_BYTES = 64 << 20

    def _gather_rows(self, local: np.ndarray, kind: str, total: int, parts: int, keep: bool):
        """Collective over `kind` (parts members, member i holding rows row_range(total, parts, i) as `local`):
        the `total` rows in order (keep) or None, gathered in chunks of CHUNK_BYTES per member."""
        if parts == 1:
            return local
        width = local.shape[1:] if local.ndim > 1 else ()
        per_row = int(np.prod(width, dtype=np.int64)) * 4 if width else 4
        most = max(b - a for a, b in (row_range(total, parts, i) for i in range(parts)))
        step = max(1, self.CHUNK_BYTES // per_row)
        out = np.zeros((total,) + tuple(width), np.float32) if keep else None
        for c in range(0, most, step):
            piece = np.zeros((min(step, most - c),) + tuple(width), np.float32)
            mine = local[c:c + piece.shape[0]]
            piece[:mine.shape[0]] = mine
            got = self.comm.gather([piece], kind)
            if keep:
                for i in range(parts):
                    a, b = row_range(total, parts, i)
                    n = max(0, min(piece.shape[0], b - a - c))
                    out[a + c:a + c + n] = got[i][0][:n]
        return out

    def save(self, ckpt_dir: str, state: Optional[Dict[str, np.ndarray]] = None) -> str:
        """Write the full state (state_dict(), or `state` gathered before) as ckpt_dir/engram_state.npz."""
        from ascend_v4.atomic import atomic_write
        path = os.path.join(ckpt_dir, ENGRAM_STATE)
        with atomic_write(path, "wb") as fh:
            np.savez(fh, **(state if state is not None else self.state_dict()))
        return path

    def checkpoint_writer(self):
        """A collective (every rank calls it before train/state.py's save): gathers the full state to rank 0 and
        returns the function that writes it into the checkpoint directory (state.save's `extra`; only rank 0
        calls it)."""
        state = self.state_dict(root_only=True)
        return lambda ckpt_dir: self.save(ckpt_dir, state)

    def load(self, ckpt_dir: str) -> None:
        """This rank's rows of a checkpoint's full state (any layout wrote it: the file holds every row)."""
        from .state import TrainStateError
        path = os.path.join(ckpt_dir, ENGRAM_STATE)
        if not os.path.isfile(path):
            raise TrainStateError(f"{ckpt_dir}: no {ENGRAM_STATE} (the Engram tables and their optimiser state); "
                                  f"the checkpoint is incomplete - resume from an earlier one or start a new --out")
        with np.load(path) as z:
            for k, L in enumerate(self.cfg.engram_layer_ids):
                p = f"layers.{L}.engram.embed."
                R, d = int(self.cfg.engram_num_embeddings[k]), self.cfg.engram_head_dim
                for dst, key, a, b in ((self.tables, "weight", self.lo[k], self.hi[k]),
                                       (self.m, "exp_avg", self.slo[k], self.shi[k]),
                                       (self.v, "exp_avg_sq", self.slo[k], self.shi[k]),
                                       (self.count, "count", self.slo[k], self.shi[k])):
                    arr = z[p + key]
                    want = (R,) if key == "count" else (R, d)
                    if arr.shape != want:
                        raise TrainStateError(f"{path}: {p + key} has shape {arr.shape}, this run needs "
                                              f"{want}; the checkpoint was written for another config")
                    dst[k][...] = arr[a:b]


def stage_biases(model) -> list:
    """The router biases the balancer moves, in V41Loss's load order: backbone layers, then DSpark stages."""
    out = [model.layers[i].ffn.gate.bias for i in model.local_layers]
    if model.with_dspark:
        out += [stage.ffn.gate.bias for stage in model.mtp]
    return out


class V41TrainStep:
    """step(batch, dspark_weight, lm_denom) -> (loss, lm, draft, balance, grad_norm, imbalance, dropped),
    the tuple train/loop.py logs (its `mtp_loss` column holds the drafter loss). The graph computes the loss, the
    gradients of the parameters and of the gathered Engram rows, clips them by one global norm, runs Muon/AdamW and
    the router-bias update; the host then updates the Engram rows (EngramSparseAdamW) with the step's lr.

    With a ParallelContext (msrun dp / tp / ep; docs/training.md, "DeepSeek-V4.1"), as train/step.py's TrainStep:
    parameter gradients through GradReducer, losses / expert loads / drops all-reduced over dp (the router-bias
    update sees the global load), the clip norm counting every shard once (ShardedClip). Each rank's loss share
    is normalised by the global batch's counts / dp, so a position's gradient in the global loss is its rank's
    Engram row gradient / dp: the clip counts Σ_dp ‖g_rows / dp‖², and after the step every rank gathers the dp
    ranks' clipped row gradients (ParallelContext.host_gather) and applies the same sparse update to the rows of
    the whole global batch (which every rank hashes) that it holds (its tp row range; with ZeRO-1 its dp share of
    them, then the dp exchange: EngramSparseAdamW), so every rank's rows equal one process's. With dp > 1 (ZeRO-1
    or not) the gradients and the step's statistics go through one FlatGradReducer collective."""

    def __init__(self, loss_net: V41Loss, optimizer, engram: Optional[EngramSparseAdamW], schedule,
                 max_grad_norm: float = 1.0, bias_speed: float = 1e-3, engram_lr_scale: float = 1.0,
                 parallel=None):
        from .optim import clip_by_global_norm, sq_sum
        from .step import BiasBalancer, imbalance, layer_imbalance
        self.loss_net, self.optimizer, self.engram = loss_net, optimizer, engram
        self.schedule, self.engram_lr_scale = schedule, float(engram_lr_scale)
        model = loss_net.model
        self.params = optimizer.parameters
        self.balancer = BiasBalancer(model, bias_speed, biases=stage_biases(model))
        n_back = len(model.local_layers)
        n_stage = model.cfg.n_mtp_layers if model.with_dspark else 0
        self.grad_fn = ms.value_and_grad(loss_net, 1, self.params, has_aux=True)
        n_params = len(self.params)
        self.parallel = parallel if parallel is not None and parallel.world > 1 else None
        self.dp = self.parallel.dp if self.parallel is not None else 1
        reducer = allreduce = None
        clip = None
        # dp > 1: one collective for the gradients and the step's statistics (FlatGradReducer), sharded (ZeRO-1)
        # or not. ZeRO-1 needs it (its dp ranks compile different graphs, each updating its own parameters). The
        # unsharded run takes the same path so both compile the same graph: with the per-gradient reducer the
        # compiled backward summed in another float32 order (step-1 gradients of the layers below the last block's
        # FFN differed by ~1e-8; docs/training.md "DeepSeek-V4.1").
        flat = self.parallel is not None and (getattr(optimizer, "shard", None) is not None
                                              or self.parallel.group("dp") is not None)
        if self.parallel is not None:
            from ascend_v4.parallel import FlatGradReducer, GradReducer, ShardedClip
            reducer = (FlatGradReducer if flat else GradReducer)(self.parallel, self.params)
            if self.parallel.group("dp") is not None:
                allreduce = ops.AllReduce(ops.ReduceOp.SUM, self.parallel.group("dp"))
            clip = ShardedClip(self.parallel, self.params, max_grad_norm)
        dp = float(self.dp)

        def step(input_ids, rows, targets, loss_mask, markov, labels, dmask, w, lm_denom, draft_denom, seq_rows):
            out, (g_rows, grads) = self.grad_fn(input_ids, rows, targets, loss_mask, markov, labels, dmask, w,
                                                lm_denom, draft_denom, seq_rows)
            loss, lm, draft, conf, bal, loads, dloads, dropped = out
            dropped = ops.cast(dropped, ms.float32)
            if reducer is not None:
                g_rows = g_rows / dp                   # this rank's positions' share of the global gradient
                esq = sq_sum(g_rows)
                if flat:          # losses, loads, drops and the rows' squared norm summed in the gradients' buffer
                    one = (1,)
                    stats = ops.concat((ops.reshape(loads, (-1,)), ops.reshape(dloads, (-1,)),
                                        ops.reshape(dropped, one), ops.reshape(loss, one), ops.reshape(lm, one),
                                        ops.reshape(draft, one), ops.reshape(conf, one), ops.reshape(bal, one),
                                        ops.reshape(esq, one)), 0)
                    grads, stats = reducer(grads, stats)
                    n, nd = loads.size, dloads.size
                    loads = ops.reshape(stats[:n], loads.shape)
                    dloads = ops.reshape(stats[n:n + nd], dloads.shape)
                    n += nd
                    dropped, loss, lm, draft = stats[n], stats[n + 1] / dp, stats[n + 2] / dp, stats[n + 3] / dp
                    conf, bal, esq = stats[n + 4] / dp, stats[n + 5] / dp, stats[n + 6]
                else:
                    grads = reducer(grads)
                if allreduce is not None and not flat:
                    loads, dloads, dropped = allreduce(loads), allreduce(dloads), allreduce(dropped)
                    loss, lm, draft = allreduce(loss) / dp, allreduce(lm) / dp, allreduce(draft) / dp
                    conf, bal = allreduce(conf) / dp, allreduce(bal) / dp
                    esq = allreduce(esq)
                # the rows ride along to be scaled; ShardedClip counts them through esq only
                both, gnorm = clip(tuple(grads) + (g_rows,), esq)
            else:
                both, gnorm = clip_by_global_norm(tuple(grads) + (g_rows,), max_grad_norm)
            self.optimizer(both[:n_params], None, out)     # out: the fused (in-place) update waits for it
            per = tuple(loads[i] for i in range(n_back)) + tuple(dloads[k] for k in range(n_stage))
            self.balancer(per)
            return (loss, lm, draft, conf, bal, gnorm, imbalance(loads), dropped,
                    layer_imbalance(loads), both[n_params])

        self._step = ms.jit(step)
        self._eval = ms.jit(loss_net)

    def _inputs(self, batch, lm_denom, full=None):
        """A packed batch -> (Engram hashes, graph inputs, lm / draft denominators, sequence rows, valid positions)
        of its document rows (document_rows). full: the global batch of a dp run (`batch` is this rank's slice of
        it): every rank lays out every dp rank's slice the same way (deterministic, one row count for all, so the
        shapes agree) and hashes all of them, so it can apply every rank's Engram row gradients; hashes and valid
        positions are then the global batch's, graph inputs this rank's."""
        cfg = self.loss_net.model.cfg
        dp = self.dp if full is not None and full is not batch else 1
        b, r = batch["input_ids"].shape[0], (self.parallel.dp_rank if dp > 1 else 0)
        src = full if dp > 1 else batch
        parts = [{k: v[q * b:(q + 1) * b] for k, v in src.items()} for q in range(dp)]
        laid = [document_rows(part, cfg.engram_pad_id) for part in parts]
        R = max(d["input_ids"].shape[0] for d, _ in laid)
        laid = [document_rows(part, cfg.engram_pad_id, R) for part in parts]
        n_seq = sum(n for _, n in laid)
        every = {k: np.concatenate([d[k] for d, _ in laid]) for k in laid[0][0]}
        mine = slice(r * R, (r + 1) * R)
        batch = laid[r][0]
        ids = batch["input_ids"].astype(np.int64)
        hashed = self.engram.hash(every["input_ids"].astype(np.int64)) if self.engram is not None else None
        # the rows of the Engram layers this process holds (a pipeline stage: its own; all of them otherwise)
        local = [list(cfg.engram_layer_ids).index(L) for L in self.loss_net.model.engram_layers]
        rows = np.zeros((1, 1, 1, 1), np.float32)
        if self.engram is not None and local:
            every_layer = self.engram.rows(hashed[mine])
            rows = np.stack([every_layer[k] for k in local])
        rows = ms.Tensor(rows)
        o, lab, dm = dspark_batch(every["targets"], every["loss_mask"], every["segment_ids"],
                                  cfg.dspark_block_size if cfg.n_mtp_layers else 1)
        # the drafter rows that count in the global batch, shared by its dp ranks (as lm_denom)
        draft_denom = max(float(dm.sum()), 1.0) / dp
        t = ms.Tensor
        args = (t(ids.astype(np.int32)), rows, t(batch["targets"].astype(np.int32)),
                t(batch["loss_mask"].astype(np.float32)), t(o[mine]), t(lab[mine]), t(dm[mine]))
        # sequence rows per rank such that the dp mean of the balance loss is the global batch's (as lm_denom)
        return (hashed, args, t(np.float32(lm_denom)), t(np.float32(draft_denom)), t(np.float32(n_seq / dp)),
                every["segment_ids"] >= 0)

    def __call__(self, batch, dspark_weight: float, lm_denom: float, mtp_denom: Optional[float] = None,
                 full=None):
        """mtp_denom (V4's MTP mask count, which train/loop.py passes) is not used: the drafter's rows are counted
        from its own mask (dspark_batch). full: the global batch of a dp run (see _inputs)."""
        hashed, args, lmd, dd, n_seq, valid = self._inputs(batch, lm_denom, full)
        t = int(self.optimizer.step.asnumpy()) + 1           # the update the optimiser is about to make
        *out, layers, g_rows = self._step(*args, ms.Tensor(np.float32(dspark_weight)), lmd, dd, n_seq)
        if self.engram is not None:
            g = g_rows.asnumpy()
            if self.parallel is not None and self.parallel.group("dp") is not None:   # every dp rank's positions
                g = np.concatenate([part[0] for part in self.parallel.host_gather([g], "dp")], 1)
            self.engram.update(hashed, list(g), float(self.schedule.lr_at(t)) * self.engram_lr_scale, valid)
        self.last_layer_imbalance = layers.asnumpy()
        loss, lm, draft, conf, bal, gnorm, imb, dropped = out
        self.last_confidence_loss = float(conf.asnumpy())
        return loss, lm, draft, bal, gnorm, imb, dropped

    def losses(self, batch, dspark_weight: float, lm_denom: float):
        """The loss terms of a batch without a step (eval): (loss, lm, draft, confidence, balance) as floats."""
        _, args, lmd, dd, n_seq, _ = self._inputs(batch, lm_denom)
        out = self._eval(*args, ms.Tensor(np.float32(dspark_weight)), lmd, dd, n_seq)
        return tuple(float(x.asnumpy()) for x in out[:5])

    def eval_lm(self, batch, lm_denom: float) -> float:
        return self.losses(batch, 0.0, lm_denom)[1]


# ------------------------------------------------------------------------------------ run set-up (train/loop.py)
def check_v41_run(tc, world: int, cfg=None) -> None:
    """What a V4.1 run does not do yet, refused with one line each (docs/training.md, "DeepSeek-V4.1"); cfg: the
    run's model config (a pp split with too few stage starts, parallel.v41_stage_starts)."""
    from .run_config import TrainConfigError
    p = tc.parallel
    if cfg is not None and p.pp > 1:
        from ascend_v4.parallel import ParallelConfigError, v41_stage_starts
        try:
            v41_stage_starts(cfg, p.pp)
        except ParallelConfigError as e:
            raise TrainConfigError(f"parallel: {e}") from None


def engram_table_names(cfg) -> List[str]:
    return [f"layers.{L}.engram.embed.weight" for L in cfg.engram_layer_ids]


def engram_table_init(cfg, seed: int) -> List[np.ndarray]:
    """Random Engram tables of a from-scratch run: the same deterministic init as every other release tensor."""
    from ascend_v4.checkpoint.release_v41 import random_weights_v41
    w = random_weights_v41(cfg, seed, names=engram_table_names(cfg))
    return [w[n] for n in engram_table_names(cfg)]


def load_engram_tables(cfg, path: str, rows: Optional[Sequence] = None) -> List[np.ndarray]:
    """The Engram tables of an init_from source as float32 host arrays: a release / converted directory (its FP8 /
    INT8 / BF16 rows decoded one table at a time) or a V4.1 training run (its engram_state.npz). rows: per table
    the (lo, hi) row range to keep (a tensor-parallel rank's rows, EngramSparseAdamW.ranges); None: every row."""
    keep = (lambda k, a: a) if rows is None else (lambda k, a: np.array(a[rows[k][0]:rows[k][1]], np.float32))
    from .init_from import RunSource, open_source
    from .state import TrainStateError
    src = open_source(path)
    try:
        if isinstance(src, RunSource):
            p = os.path.join(src.path, ENGRAM_STATE)
            if not os.path.isfile(p):
                raise TrainStateError(f"init_from: {src.path} has no {ENGRAM_STATE}; it is not a DeepSeek-V4.1 run")
            with np.load(p) as z:
                return [keep(k, np.array(z[n], np.float32)) for k, n in enumerate(engram_table_names(cfg))]
        missing = [n for n in engram_table_names(cfg) if n not in src.names()]
        if missing:
            raise TrainStateError(f"init_from: {src.path} lacks the Engram table(s) {', '.join(missing)}")
        return [keep(k, np.asarray(src.read(n), np.float32)) for k, n in enumerate(engram_table_names(cfg))]
    finally:
        src.close()


def engram_token_map(tok, cfg, from_weights: bool):
    """The Engram compressed-token map of the run's tokenizer (docs/deepseek-v4.1.md, "Engram": decode each id,
    normalise, number distinct keys in first-seen order) -> (cfg, map, note). Its number of distinct ids must be
    the config's engram_compressed_vocab_size (it sets the hash multipliers), as DeepSeek's code asserts: a run
    from init_from weights is refused on a mismatch; a run from random weights takes the tokenizer's count (the
    note says so)."""
    from ascend_v4.ops.engram.reference import compressed_token_map, compressed_token_map_from_tokenizer
    from .run_config import TrainConfigError
    inner = getattr(tok, "_tok", None)
    if inner is not None and hasattr(inner, "get_vocab_size"):          # a HF `tokenizers` tokenizer
        tmap = compressed_token_map_from_tokenizer(inner)
    else:                                                                  # sentencepiece: pieces as raw keys
        n = int(tok.vocab_size)
        tmap = compressed_token_map([tok.decode([i]) for i in range(n)], [tok.id_to_piece(i) for i in range(n)])
    n_c = int(tmap.max()) + 1
    if n_c == cfg.engram_compressed_vocab_size:
        return cfg, tmap, None
    if from_weights:
        raise TrainConfigError(f"the tokenizer's Engram compressed vocabulary has {n_c} ids but the weights' config "
                               f"says engram_compressed_vocab_size {cfg.engram_compressed_vocab_size}; train with "
                               f"the tokenizer the weights were trained with (data.tokenizer)")
    return (cfg.replace(engram_compressed_vocab_size=n_c), tmap,
            f"engram: the tokenizer's compressed vocabulary has {n_c} ids; engram_compressed_vocab_size "
            f"{cfg.engram_compressed_vocab_size} -> {n_c} (random init)")
