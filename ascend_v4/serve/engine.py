"""Engine: prefill (one-shot or chunked), single-token decode, batched generation, MTP / DSpark speculative decoding.

    eng = Engine(cfg, weights, max_batch=2, max_len=1024)
    gen = eng.generate([prompt_a, prompt_b], max_new_tokens=32, sampling=SamplingParams(greedy=True))
    gen.tokens [n, N] (-1 padded), gen.logits [n, N, V] float32 (the distribution each token was drawn from)

Which graphs compile when (each is compiled once per Engine, on first use; all shapes static):
  prefill   StepGraph(T = bucket, ctx)       T = next power of two >= the longest remaining prompt part, at least
                                             16 and at most `prefill_chunk`; positions are tensors, so a chunk
                                             at any start position reuses the same graph
  decode    StepGraph(T = 1, ctx)            every decode step of every sequence
  verify    StepGraph(T = 2, ctx)            speculative decoding only
  draft     MTPStepGraph(T = 2) + MTPStepGraph(T = prefill bucket)   speculative decoding only
  DSpark    DSparkDraftGraph + StepGraph(T = block + 1, ctx)    DeepSeek-V4.1 speculative decoding (dspark=True)
Rollback (MTP and DSpark alike): the cache is addressed by position and built with spare ring / state slots for
the verify length (KVCache(verify_tokens=...), ascend_v4/serve/cache.py), so a rejected tail is undone by
rewinding the row's length (and, V4.1, its Engram n-gram state on the host) — no copy, no second step.
`ctx` is the context bucket (power of two >= the longest row's end position, at least `ctx_min`, at most
max_len): a step reads ctx // ratio compressed entries, so short contexts do not pay for the cache's capacity.
Crossing a bucket compiles that graph once more (a 1K -> 32K run sees 6 decode compiles).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..config import ModelConfig
from .cache import ctx_bucket
from .sampling import Sampler, SamplingParams


class ServeError(ValueError):
    """A request the engine cannot serve (bad tokens, too long for the cache, ...)."""


@dataclass
class Generation:
    tokens: np.ndarray                  # [n, N] int64, -1 after a row stopped
    logits: Optional[np.ndarray]        # [n, N, V] float32, 0 after a row stopped
    lengths: np.ndarray                 # [n] generated tokens per row
    stop: List[str]                     # "eos" | "length" per row
    prompt_lengths: np.ndarray
    stats: Dict[str, float] = field(default_factory=dict)

    def row(self, i: int) -> np.ndarray:
        return self.tokens[i, :self.lengths[i]]


def _pow2(n: int) -> int:
    b = 1
    while b < n:
        b *= 2
    return b


class Engine:
    def __init__(self, cfg: ModelConfig, weights: Dict[str, np.ndarray], *, max_batch: int = 1, max_len: int = 1024,
                 kv_int8: bool = False, mtp: bool = False, prefill_chunk: int = 256, ctx_min: int = 256,
                 threads: int = 0, model=None, stacked_experts: bool = True, token_map=None, engram_tables=None,
                 index_keys: str = "own", dspark: bool = False):
        from ..runtime import setup
        setup(None, "graph", threads)
        from ..model import Transformer
        from ..weights import load_into
        from .cache import KVCache

        self.v41 = cfg.version == "v4.1"
        if mtp and self.v41:
            raise ServeError("DeepSeek-V4.1 drafts with DSpark, not MTP: build the Engine with dspark=True")
        if dspark and not self.v41:
            raise ServeError(f"config '{cfg.name}' is not DeepSeek-V4.1: DSpark drafting needs a V4.1 model "
                             f"(V4 drafts with its MTP block: mtp=True)")
        if dspark and cfg.n_mtp_layers == 0:
            raise ServeError(f"config '{cfg.name}' has no DSpark stages; run without speculative decoding")
        if dspark and index_keys == "shipped":
            raise ServeError("DSpark verifies a block in one step, which the shipped decode indexer (index_keys="
                             "'shipped': keys of the last publisher, decided per step) cannot reproduce token for "
                             "token; use index_keys='own'")
        if mtp and cfg.n_mtp_layers == 0:
            raise ServeError(f"config '{cfg.name}' has no MTP block; run without speculative decoding")
        self.engram = None
        if self.v41 and cfg.engram_layer_ids:
            # V4.1: the Engram tables stay in host memory (token_map: raw -> compressed ids, None = identity)
            from .engram import EngramFeed, split_engram_tables
            if engram_tables is None:
                weights, engram_tables = split_engram_tables(cfg, weights)
            self.engram = EngramFeed(cfg, engram_tables, int(max_batch), token_map)
        if prefill_chunk < 1:
            raise ServeError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.cfg = cfg
        self.max_batch, self.max_len = int(max_batch), int(max_len)
        self.prefill_chunk, self.ctx_min = int(prefill_chunk), int(ctx_min)
        self.mtp = bool(mtp)
        self.dspark = bool(dspark)
        if model is None:
            model = Transformer(cfg, max_seq_len=self.max_len, with_mtp=self.mtp, index_keys=index_keys,
                                with_dspark=self.dspark)
            model.set_train(False)
            load_into(model, weights)
        elif (model.max_seq_len < self.max_len or (self.mtp and not model.with_mtp)
              or (self.dspark and not getattr(model, "with_dspark", False))):
            raise ServeError("the given model was built with a smaller max_seq_len or without MTP / DSpark")
        self.model = model
        from .graphs import stack_experts
        self.experts = stack_experts(model) if stacked_experts else None
        # the longest verify step: its rejected tail is rolled back by rewinding the length (cache.py)
        verify = 2 if self.mtp else cfg.dspark_block_size + 1 if self.dspark else 1
        self.cache = KVCache(cfg, self.max_batch, self.max_len, kv_int8=kv_int8, mtp=self.mtp, verify_tokens=verify)
        self.kv_int8 = kv_int8
        self.pos = np.zeros(self.max_batch, np.int64)      # tokens held in the cache per row
        self._graphs: Dict[tuple, object] = {}
        self.compile_seconds: Dict[tuple, float] = {}
        self.engram_wait_s = 0.0       # time steps waited for their Engram rows (0 when the prefetch kept up)
        # MTP: the main model's last hidden streams per row (input of the first draft after a prefill)
        self._h_last = np.zeros((self.max_batch, cfg.hc_mult, cfg.dim), np.float32)
        # DSpark: each stage's main KV per row and position (the drafter reads the last window of it)
        self._dkv = (np.zeros((cfg.n_mtp_layers, self.max_batch, self.max_len, cfg.head_dim), np.float32)
                     if self.dspark else None)
        self._draft = None

    # ------------------------------------------------------------------------------------------- graphs
    def _ctx(self, end: int) -> int:
        return ctx_bucket(max(int(end), 1), self.max_len, self.ctx_min)

    def _graph(self, key):
        g = self._graphs.get(key)
        if g is None:
            from .graphs import MTPStepGraph, StepGraph
            if key[0] == "main":
                _, T, ctx, logits, streams, dspark = key
                g = StepGraph(self.model, self.cache.layout, self.cache.params, T, ctx, logits=logits,
                              return_streams=streams, experts=self.experts, dspark=dspark)
            else:
                _, T = key
                g = MTPStepGraph(self.model, self.cache.layout, self.cache.params, T, experts=self.experts)
            g.set_train(False)
            self._graphs[key] = g
        return g

    def _call(self, key, *args):
        import mindspore as ms
        g = self._graph(key)
        targs = [a if isinstance(a, ms.Tensor) else ms.Tensor(np.ascontiguousarray(a)) for a in args]
        t0 = time.perf_counter()
        out = g(*targs)
        if key not in self.compile_seconds:
            (out[0] if isinstance(out, tuple) else out).asnumpy()
            self.compile_seconds[key] = time.perf_counter() - t0
        return out

    def run_main(self, ids: np.ndarray, pos0: np.ndarray, nvalid: np.ndarray, logits: str = "last",
                 streams: bool = False, engram=None, dspark: bool = False):
        """One StepGraph call on the whole batch: ids [B, T]; returns the graph outputs (MindSpore tensors).
        V4.1: `engram` is the EngramFeed future of these ids (submitted ahead), or None to submit and wait now;
        dspark=True adds DSpark's main KV of the step's positions [stages, B, T, hd] as the last output."""
        ids = np.asarray(ids)
        T = ids.shape[1]
        end = int(np.max(np.where(nvalid > 0, pos0 + nvalid, 0)))
        if end > self.max_len:
            raise ServeError(f"position {end} exceeds the cache capacity max_len={self.max_len}")
        key = ("main", T, self._ctx(end), logits, streams, bool(dspark))
        args = (ids.astype(np.int32), np.asarray(pos0, np.int32), np.asarray(nvalid, np.int32))
        if self.engram is not None:
            fut = engram if engram is not None else self.engram.submit(ids, nvalid)
            t0 = time.perf_counter()
            rows = fut.result()
            self.engram_wait_s += time.perf_counter() - t0
            args = args + (self.engram.device_rows(rows),)      # Ascend: staged H2D copies, stream-ordered
        return self._call(key, *args)

    def run_mtp(self, h, next_ids: np.ndarray, pos0: np.ndarray, nvalid: np.ndarray):
        return self._call(("mtp", int(next_ids.shape[1])), h, np.asarray(next_ids, np.int32),
                          np.asarray(pos0, np.int32), np.asarray(nvalid, np.int32))

    # ------------------------------------------------------------------------------------------- state
    def reset(self, rows: Optional[Sequence[int]] = None) -> None:
        """Start new sequences in `rows` (default all): compressor state back to its initial value, length 0."""
        rows = list(range(self.max_batch)) if rows is None else list(rows)
        self.cache.reset(rows)
        if self.engram is not None:
            self.engram.reset(rows)
        self.pos[rows] = 0

    def _check_tokens(self, seqs: List[np.ndarray]) -> None:
        for i, s in enumerate(seqs):
            if s.ndim != 1 or not np.issubdtype(s.dtype, np.integer):
                raise ServeError(f"prompt {i} must be a 1-D integer token array, got {s.dtype} {s.shape}")
            if s.size == 0:
                raise ServeError(f"prompt {i} is empty; give at least one token")
            if s.min() < 0 or s.max() >= self.cfg.vocab_size:
                raise ServeError(f"prompt {i}: token ids span [{s.min()}, {s.max()}] but the vocabulary has "
                                 f"{self.cfg.vocab_size} entries")
            if self.v41 and np.any(s == self.cfg.image_token_id):
                raise ServeError(f"prompt {i} holds the image token id {self.cfg.image_token_id}: image inputs are "
                                 f"not supported (DeepSeek-V4.1's vision tower is out of scope)")

    def _rows(self, n: int, rows) -> List[int]:
        rows = list(range(n)) if rows is None else [int(r) for r in rows]
        if len(rows) != n or len(set(rows)) != n or any(not 0 <= r < self.max_batch for r in rows):
            raise ServeError(f"need {n} distinct cache rows in [0, {self.max_batch}), got {rows}")
        return rows

    # ------------------------------------------------------------------------------------------ prefill
    def prefill(self, prompts: Sequence[np.ndarray], rows: Optional[Sequence[int]] = None,
                chunk: Optional[int] = None, return_all: bool = False, reset: bool = True):
        """Start one new sequence per prompt in `rows` (reset=False: append to the sequences already there) and
        run the prompts through the model, `chunk` tokens per graph call (default prefill_chunk; any chunk size
        gives the same result as one shot). All rows advance together, each with its own length. Returns the
        last-token logits [n, V] (float32), or with return_all=True a list of [L_i, V] logits for every prompt
        position. With MTP enabled, also feeds the draft block the (hidden, next token) pairs of the prompt and
        keeps the last hidden state per row."""
        seqs = [np.asarray(p).reshape(-1) if np.ndim(p) else np.asarray([p]) for p in prompts]
        seqs = [s.astype(np.int64) if np.issubdtype(s.dtype, np.integer) else s for s in seqs]
        self._check_tokens(seqs)
        rows = self._rows(len(seqs), rows)
        chunk = self.prefill_chunk if chunk is None else int(chunk)
        if chunk < 1:
            raise ServeError(f"chunk must be >= 1, got {chunk}")
        lens = np.array([s.size for s in seqs])
        start = np.zeros(len(rows), np.int64) if reset else self.pos[rows]
        if (start + lens).max() > self.max_len:
            raise ServeError(f"prompt of {lens.max()} tokens (after {start.max()} cached) exceeds the cache "
                             f"capacity max_len={self.max_len}")
        if reset:
            self.reset(rows)
        elif self.mtp:
            self._mtp_catchup(rows, [s[0] for s in seqs])
        B = self.max_batch
        done = np.zeros(B, np.int64)
        total = np.zeros(B, np.int64)
        total[rows] = lens
        last = [None] * len(rows)
        alls = [[] for _ in rows]
        plan = []               # (ids, nvalid) of every chunk: known up front, so Engram rows are gathered ahead
        d = done.copy()
        while np.any(d < total):
            rem = int(np.max(total - d))
            T = min(chunk, max(16, _pow2(rem))) if chunk >= 16 else chunk
            ids = np.zeros((B, T), np.int64)
            nvalid = np.minimum(np.maximum(total - d, 0), T)
            for k, r in enumerate(rows):
                n = int(nvalid[r])
                ids[r, :n] = seqs[k][d[r]:d[r] + n]
            plan.append((ids, nvalid))
            d = d + nvalid
        futs = [None] * len(plan)
        if self.engram is not None and plan:
            futs[0] = self.engram.submit(*plan[0])
        for c, (ids, nvalid) in enumerate(plan):
            if self.engram is not None and c + 1 < len(plan):
                futs[c + 1] = self.engram.submit(*plan[c + 1])       # gathered while this chunk computes
            pos0 = self.pos.copy()
            out = self.run_main(ids, pos0, nvalid, logits="all" if return_all else "last", streams=self.mtp,
                                engram=futs[c], dspark=self.dspark)
            lg = (out[0] if self.mtp or self.dspark else out).asnumpy()
            if self.mtp:
                self._prefill_mtp(out[1], ids, seqs, rows, pos0, nvalid, done, total)
            if self.dspark:
                self._dspark_observe(out[-1].asnumpy(), pos0, nvalid)
            for k, r in enumerate(rows):
                n = int(nvalid[r])
                if n == 0:
                    continue
                if return_all:
                    alls[k].append(lg[r, :n])
                    last[k] = lg[r, n - 1]
                else:
                    last[k] = lg[r]
            self.pos += nvalid
            done += nvalid
        if return_all:
            return [np.concatenate(a, 0) for a in alls]
        return np.stack(last)

    def _prefill_mtp(self, h, ids, seqs, rows, pos0, nvalid, done, total):
        """Draft-block pairs (h_t, token t+1) for the prompt positions whose next token is known."""
        B, T = ids.shape
        nxt = np.zeros((B, T), np.int64)
        nv = np.zeros(B, np.int64)
        for k, r in enumerate(rows):
            s0, n = int(done[r]), int(nvalid[r])          # offsets inside this prompt
            m = max(0, min(n, int(total[r]) - 1 - s0))
            nv[r] = m
            nxt[r, :m] = seqs[k][s0 + 1:s0 + 1 + m]
        self.run_mtp(h, nxt, pos0, nv)
        hn = h.asnumpy()
        for r in rows:
            n = int(nvalid[r])
            if n and done[r] + n == total[r]:
                self._h_last[r] = hn[r, n - 1]

    def _mtp_catchup(self, rows, first_tokens):
        """Before appending to cached sequences: the draft pair (h_last, first new token) at position pos-1."""
        import mindspore as ms
        B = self.max_batch
        h = np.zeros((B, 2, self.cfg.hc_mult, self.cfg.dim), np.float32)
        nxt = np.zeros((B, 2), np.int64)
        p0 = np.zeros(B, np.int64)
        nv = np.zeros(B, np.int64)
        for r, t in zip(rows, first_tokens):
            if self.pos[r] > 0:
                h[r, 0], nxt[r, 0], p0[r], nv[r] = self._h_last[r], t, self.pos[r] - 1, 1
        if nv.any():
            self.run_mtp(ms.Tensor(h), nxt, p0, nv)

    # ------------------------------------------------------------------------------------------- decode
    def decode_step(self, tokens: np.ndarray, active: Optional[np.ndarray] = None) -> np.ndarray:
        """Feed one token per row (tokens [B]) at each row's next position; rows with active=False are left
        untouched. Returns logits [B, V] float32 (garbage for inactive rows)."""
        tokens = np.asarray(tokens, np.int64).reshape(-1)
        if tokens.size != self.max_batch:
            raise ServeError(f"decode_step needs {self.max_batch} tokens (one per cache row), got {tokens.size}")
        act = np.ones(self.max_batch, bool) if active is None else np.asarray(active, bool)
        if np.any(act & ((tokens < 0) | (tokens >= self.cfg.vocab_size))):
            raise ServeError(f"token ids must lie in [0, {self.cfg.vocab_size})")
        nvalid = act.astype(np.int64)
        out = self.run_main(np.where(act, tokens, 0)[:, None], self.pos.copy(), nvalid)
        self.pos += nvalid
        return out.asnumpy()

    # ---------------------------------------------------------------------------------------- generation
    def generate(self, prompts: Sequence[np.ndarray], max_new_tokens: int = 16,
                 sampling: Optional[SamplingParams] = None, eos_id: Optional[int] = -1,
                 speculative: bool = False, chunk: Optional[int] = None, keep_logits: bool = True,
                 on_token: Optional[Callable[[int, int], None]] = None) -> Generation:
        """Generate up to max_new_tokens per prompt (rows 0..n-1 of the cache), stopping a row at EOS
        (eos_id: -1 = the config's eos_token_id, None = never). speculative=True drafts one token per step
        with the MTP block and verifies it with the main model (greedy or exact speculative sampling); on a
        DeepSeek-V4.1 Engine built with dspark=True it drafts a DSpark block per step (greedy only)."""
        if max_new_tokens < 1:
            raise ServeError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if speculative and not (self.mtp or self.dspark):
            raise ServeError("speculative decoding needs an Engine built with mtp=True (V4) or dspark=True (V4.1)")
        sampling = (sampling or SamplingParams(greedy=True)).validate()
        if speculative and self.dspark and not sampling.greedy:
            raise ServeError("DSpark drafting verifies greedily here: use greedy sampling, or run without "
                             "speculative decoding to sample")
        eos = self.cfg.eos_token_id if eos_id == -1 else eos_id
        n = len(prompts)
        plens = np.array([np.asarray(p).size for p in prompts])
        extra = self.cfg.dspark_block_size if speculative and self.dspark else 0    # a verify's look-ahead
        if n and plens.max() + max_new_tokens + extra > self.max_len:
            raise ServeError(f"prompt ({plens.max()}) + max_new_tokens ({max_new_tokens})"
                             + (f" + the DSpark block ({extra})" if extra else "")
                             + f" exceeds the cache capacity max_len={self.max_len}; build the Engine with a "
                             f"larger max_len")
        sampler = Sampler(sampling, n)
        V = self.cfg.vocab_size
        toks = np.full((n, max_new_tokens), -1, np.int64)
        lg_out = np.zeros((n, max_new_tokens, V), np.float32) if keep_logits else None
        count = np.zeros(n, np.int64)
        stop = ["length"] * n
        live = np.ones(n, bool)

        def emit(r, t, z):
            toks[r, count[r]] = t
            if keep_logits:
                lg_out[r, count[r]] = z
            count[r] += 1
            if on_token is not None:
                on_token(r, t)
            if eos is not None and t == eos:
                stop[r] = "eos"
                live[r] = False
            elif count[r] >= max_new_tokens:
                live[r] = False

        c0 = sum(self.compile_seconds.values())
        t0 = time.perf_counter()
        last = self.prefill(prompts, chunk=chunk)
        t1 = time.perf_counter()
        c1 = sum(self.compile_seconds.values())
        pend = np.zeros(self.max_batch, np.int64)
        for r in range(n):
            pend[r] = sampler.sample(r, last[r])
            emit(r, int(pend[r]), last[r])
        # times exclude graph compilation (first use of a shape), reported separately
        stats = {"prefill_s": max(t1 - t0 - (c1 - c0), 1e-9), "prompt_tokens": int(plens.sum()), "steps": 0,
                 "drafts": 0, "accepted": 0}
        if speculative and self.dspark:
            self._dspark_generate(n, pend, emit, live, stats)
        elif speculative:
            self._speculate(n, pend, sampler, emit, live, stats)
        else:
            while live.any():
                act = np.zeros(self.max_batch, bool)
                act[:n] = live
                lg = self.decode_step(pend, act)
                stats["steps"] += 1
                for r in np.nonzero(live)[0]:
                    pend[r] = sampler.sample(r, lg[r])
                    emit(r, int(pend[r]), lg[r])
        t2 = time.perf_counter()
        c2 = sum(self.compile_seconds.values())
        stats.update(decode_s=max(t2 - t1 - (c2 - c1), 1e-9), generated_tokens=int(count.sum()),
                     compile_s=c2 - c0)
        stats["decode_tokens_per_s"] = (stats["generated_tokens"] - n) / stats["decode_s"] if stats["decode_s"] > 0 else 0.0
        stats["prefill_tokens_per_s"] = stats["prompt_tokens"] / stats["prefill_s"] if stats["prefill_s"] > 0 else 0.0
        if speculative:
            stats["acceptance_rate"] = stats["accepted"] / stats["drafts"] if stats["drafts"] else 0.0
        return Generation(toks, lg_out, count, stop, plens, stats)

    # ------------------------------------------------------------------------------------ DSpark (V4.1)
    def _dspark_observe(self, dkv: np.ndarray, pos0: np.ndarray, nvalid: np.ndarray) -> None:
        """Keep each stage's main KV [K, B, T, hd] of the positions a target step wrote."""
        for r in np.nonzero(nvalid > 0)[0]:
            p, n = int(pos0[r]), int(nvalid[r])
            self._dkv[:, r, p:p + n] = dkv[:, r, :n]

    def _dspark_window(self, pos0: np.ndarray):
        """The drafter's inputs for blocks starting at pos0 [B]: each stage's main-KV window ending at pos0 - 1,
        right-aligned in W slots [K, B, W, hd], and the rows each block query reads [B, bs, W + bs] (the valid
        window slots, then the whole block; -1 = none)."""
        c = self.cfg
        K, B, W, bs = c.n_mtp_layers, self.max_batch, c.window_size, c.dspark_block_size
        ctx = np.zeros((K, B, W, c.head_dim), np.float32)
        idx = np.full((B, bs, W + bs), -1, np.int32)
        idx[:, :, W:] = W + np.arange(bs, dtype=np.int32)
        for r in range(B):
            p = int(pos0[r])
            n = min(p, W)
            if n:
                ctx[:, r, W - n:] = self._dkv[:, r, p - n:p]
                idx[r, :, W - n:W] = np.arange(W - n, W, dtype=np.int32)
        return ctx, idx

    def load_dspark(self, weights: Dict[str, np.ndarray]) -> None:
        """Replace the DSpark drafter's weights (every `mtp.*` tensor by release name, e.g. a drafter trained
        with the target frozen) in place: the draft graph reads the model's Parameters, so the next draft uses
        them, compiled graphs included. The names must be exactly the drafter's (no target tensor, none missing)."""
        from ..weights import WeightError, load_into
        if not self.dspark:
            raise ServeError("loading DSpark drafter weights needs an Engine built with dspark=True")
        have = {p.name for p in self.model.get_parameters() if p.name.startswith("mtp.")}
        missing, extra = sorted(have - set(weights)), sorted(set(weights) - have)
        if not have or missing or extra:
            raise ServeError(f"DSpark drafter weights must name exactly the engine's {len(have)} mtp.* tensors: "
                             f"{len(missing)} missing ({missing[:2]}), {len(extra)} unknown ({extra[:2]})")
        try:
            load_into(self.model, weights, strict=False)
        except WeightError as e:
            raise ServeError(str(e)) from None

    def dspark_draft(self, tokens: np.ndarray):
        """Draft one DSpark block per row after the target produced tokens [B] (not yet in the cache, at each
        row's next position) -> (draft tokens [B, bs] int64, logits [B, bs, V], confidence [B, bs])."""
        import mindspore as ms
        from .graphs import DSparkDraftGraph
        if not self.dspark:
            raise ServeError("DSpark drafting needs an Engine built with dspark=True")
        if self._draft is None:
            self._draft = DSparkDraftGraph(self.model)
            self._draft.set_train(False)
        ctx, idx = self._dspark_window(self.pos)
        t0 = time.perf_counter()
        out = self._draft(ms.Tensor(np.asarray(tokens, np.int32).reshape(-1)), ms.Tensor(ctx), ms.Tensor(idx),
                          ms.Tensor(self.pos.astype(np.int32)))
        res = tuple(o.asnumpy() for o in out)
        if ("draft",) not in self.compile_seconds:          # first call compiles: keep it out of decode time
            self.compile_seconds[("draft",)] = time.perf_counter() - t0
        return res[0].astype(np.int64), res[1], res[2]

    def _dspark_generate(self, n, pend, emit, live, stats):
        """DSpark speculative decoding, greedy: draft a block [o_1 .. o_bs] after the pending token y, verify
        [y, o_1 .. o_bs] with the target in one cached step, accept the longest prefix of drafts equal to the
        target's greedy tokens plus the target's next token. A row that rejects drafts keeps the verify's writes
        of its kept positions and rewinds its length past the rest (the cache's spare slots keep them unread;
        ascend_v4/serve/cache.py) and its Engram n-gram state to the kept tokens, so the result equals plain
        greedy decoding. stats gain draft_s / verify_s / rollback_s (wall time of each phase, steps that compiled a
        graph left out), row_steps and rejected_steps (steps where some row rejected a draft)."""
        bs = self.cfg.dspark_block_size
        B = self.max_batch
        for k in ("draft_s", "verify_s", "rollback_s"):
            stats.setdefault(k, 0.0)
        stats.setdefault("row_steps", 0)
        stats.setdefault("rejected_steps", 0)
        while live.any():
            act = np.zeros(B, bool)
            act[:n] = live
            pos0 = self.pos.copy()
            t0 = time.perf_counter()
            c0 = sum(self.compile_seconds.values())
            draft = self.dspark_draft(pend)[0]
            ids = np.concatenate([pend[:, None], draft], 1) * act[:, None]
            t1 = time.perf_counter()
            out = self.run_main(ids, pos0, (bs + 1) * act, logits="all", dspark=True)
            lg, dkv = out[0].asnumpy(), out[1].asnumpy()
            t2 = time.perf_counter()
            target = lg.argmax(-1)
            stats["steps"] += 1
            keep = np.zeros(B, np.int64)
            for r in np.nonzero(act)[0]:
                k = 0
                while k < bs and draft[r, k] == target[r, k]:
                    k += 1
                stats["drafts"] += bs
                stats["accepted"] += k
                stats["row_steps"] += 1
                keep[r] = k + 1
                for j in range(k + 1):              # the k accepted drafts, then the target's own next token
                    if not live[r]:
                        break
                    emit(r, int(target[r, j]), lg[r, j])
                pend[r] = target[r, k]
            self._dspark_observe(dkv, pos0, keep)
            stats["rejected_steps"] += int(np.any(keep[act] < bs + 1))
            t3 = time.perf_counter()
            self._rollback(pos0, keep, bs + 1)
            t4 = time.perf_counter()
            if c0 == sum(self.compile_seconds.values()):   # a step that compiled a graph stays out of the phases
                stats["draft_s"] += t1 - t0
                stats["verify_s"] += t2 - t1
                stats["rollback_s"] += t4 - t3

    def _rollback(self, pos0: np.ndarray, keep: np.ndarray, written: int) -> None:
        """After a verify step that wrote `written` tokens per active row from pos0: keep the first keep[r] of row
        r (0: an inactive row, untouched). The cache needs nothing but the new length (position-addressed, with
        spare slots for the rejected tail: ascend_v4/serve/cache.py); the Engram n-gram state forgets the rest."""
        rows = np.nonzero(keep > 0)[0]
        self.pos[rows] = pos0[rows] + keep[rows]
        if self.engram is not None:
            short = {int(r): int(keep[r]) for r in rows if keep[r] < written}
            if short:
                self.engram.rewind(short)

    def _speculate(self, n, pend, sampler, emit, live, stats):
        """MTP draft -> main verify of [pending, draft] -> accept (2 tokens) or reject (1 token, roll back:
        _rollback, as for DSpark)."""
        import mindspore as ms
        B, hc, D = self.max_batch, self.cfg.hc_mult, self.cfg.dim
        # pending draft-block pairs per row: (position t, h_t, token t+1); after prefill: (L-1, h_{L-1}, x_L)
        pairs = {r: [(int(self.pos[r]) - 1, self._h_last[r].copy(), int(pend[r]))] for r in range(n)}
        while live.any():
            h = np.zeros((B, 2, hc, D), np.float32)
            nxt = np.zeros((B, 2), np.int64)
            p0 = np.zeros(B, np.int64)
            nv = np.zeros(B, np.int64)
            for r in np.nonzero(live)[0]:
                ps = pairs[r]
                p0[r] = ps[0][0]
                nv[r] = len(ps)
                for j, (_, hh, t) in enumerate(ps):
                    h[r, j], nxt[r, j] = hh, t
            draft = np.argmax(self.run_mtp(ms.Tensor(h), nxt, p0, nv).asnumpy(), -1)
            ids = np.zeros((B, 2), np.int64)
            ids[:, 0], ids[:, 1] = pend, draft
            act = np.zeros(B, bool)
            act[:n] = live
            pos0 = self.pos.copy()
            lg, hs = self.run_main(ids * act[:, None], pos0, 2 * act, logits="all", streams=True)
            lg, hs = lg.asnumpy(), hs.asnumpy()
            stats["steps"] += 1
            keep = np.zeros(B, np.int64)
            for r in np.nonzero(live)[0]:
                stats["drafts"] += 1
                d = int(draft[r])
                repl = sampler.accept_draft(r, lg[r, 0], d)
                p = int(pos0[r])
                if repl is None:
                    stats["accepted"] += 1
                    emit(r, d, lg[r, 0])
                    keep[r] = 2
                    if not live[r]:
                        continue
                    t1 = sampler.sample(r, lg[r, 1])
                    emit(r, t1, lg[r, 1])
                    pend[r] = t1
                    pairs[r] = [(p, hs[r, 0], d), (p + 1, hs[r, 1], t1)]
                else:
                    emit(r, repl, lg[r, 0])
                    keep[r] = 1
                    pend[r] = repl
                    pairs[r] = [(p, hs[r, 0], repl)]
            self._rollback(pos0, keep, 2)
