"""Pipeline parallelism (pp stages) and micro-batching (gradient accumulation) for the train step.

Stage s holds the main-model layers `parallel.stage_layers(n_layers)` (contiguous; the last stage, which also
holds the final norm, head and MTP, gets the smaller share), the first stage embeds, the last stage keeps an
embedding copy for MTP whose gradient is summed with the first stage's (group `emb`) so the copies stay equal.
Each rank's batch (its dp slice) is cut into `micro_batches` along the batch axis and run through a GPipe
schedule of synchronous ticks:

    forward ticks  t = 0 .. M+P-2:  stage s runs micro-batch t-s; then activations move s -> s+1
    backward ticks u = 0 .. M+P-2:  stage s runs micro-batch u-(P-1-s); then input gradients move s -> s-1

A stage keeps only the input streams of each micro-batch in flight (full activation recompute: its backward
re-runs the stage forward inside one compiled value_and_grad graph of  objective = own loss terms +
<stage output, gradient received>), so activation memory is one stage forward plus M stage inputs. The last stage
runs forward and backward of a micro-batch in its forward tick. The bubble is (P-1)/(M+P-1) of the step.

Exactness: micro-batch m's objective is lm_m + w·mtp_m + alpha·balance_m / M with the lm/MTP denominators of the
whole global batch (losses.masked_ce), so the summed micro-batch gradients are the gradients of the global-batch
loss: a pp run (any M) trains like one process with the same global batch, up to float32 summation order
(tests/train/test_pipeline.py; msrun pp=2 in tests/train/test_msrun_parallel.py -m slow). Expert loads are summed
over micro-batches before the router-bias update, as for the whole batch.

Stage-to-stage transfer: an AllReduce over the pp group of a [P, activation] buffer in which each stage fills its
own slot (exact: one non-zero contributor per slot). MindSpore 2.10 has no point-to-point Send/Receive on CPU; on
Ascend this costs P x the bytes of a Send/Receive pair — replacing it with HCCL P2P is the next step for large P.
The gradient clip norm is summed over stages (ShardedClip); metrics are all-reduced over pp and dp.

DeepSeek-V4.1 (V41StageLoss, V41PipelineTrainStep; docs/training.md, "DeepSeek-V4.1") runs the same schedule
(gpipe) and transfer (stage_exchange) with two activations per boundary, the streams and pipelined mHC's FFN `pre`,
at the stage starts of parallel.v41_stage_starts (no CSA-v2 state crosses a boundary; DSpark on the last stage), the
host-resident Engram rows fed to the stage holding each Engram layer and their gradients gathered over dp and pp
for the replicated tables (tests/v41/test_pipeline_v41.py; msrun pp=2 in tests/v41/test_msrun_v41.py -m slow).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import mindspore as ms
from mindspore import ops, Tensor
from mindspore.ops import composite as C, functional as F

from .losses import V4Loss, masked_ce
from .step import BiasBalancer
from .v41 import V41Loss, V41TrainStep


class StageLoss(V4Loss):
    """One pipeline stage's share of the V4 objective for one micro-batch (V4Loss's terms, split by stage).

    construct(h_in, dy, input_ids, targets, segment_ids, loss_mask, mtp_weight, lm_denom, mtp_denom, bal_scale)
      -> (objective, (loss_part, lm, mtp, balance, loads [n_loads, E], dropped, h_out))
    objective = loss_part + <h_out, dy> (dy: the next stage's gradient; absent on the last stage), loss_part =
    lm + mtp_weight·mtp + alpha·bal_scale·balance over the terms this stage owns. The first stage ignores h_in
    (it embeds input_ids). A stage without routed layers reports one all-zero load row (n_loads counts the real
    ones)."""

    def __init__(self, model, balance_alpha: float = 1e-4):
        super().__init__(model, balance_alpha)
        self.first, self.last = model.first_stage, model.last_stage
        self.n_loads = len(self.routed) + (1 if self.with_mtp else 0)

    def stage_forward(self, h_in, input_ids, segment_ids):
        if self.first:
            h = self.model.embed_streams(input_ids)[1]
        else:
            h = h_in
        h, _, routes = self.model.run_layers(h, input_ids, segment_ids)
        return h, routes

    def construct(self, h_in, dy, input_ids, targets, segment_ids, loss_mask, mtp_weight, lm_denom, mtp_denom,
                  bal_scale):
        B = input_ids.shape[0]
        h, routes = self.stage_forward(h_in, input_ids, segment_ids)
        balance, loads, dropped = self.routed_terms(routes, B, loss_mask)
        lm = ops.zeros((), ms.float32)
        mtp = ops.zeros((), ms.float32)
        if self.last:
            lm = masked_ce(self.model.logits(h), targets, loss_mask, lm_denom)
            if self.with_mtp:
                mtp, mbal, mload, mdrop = self.mtp_terms(h, input_ids, targets, segment_ids, loss_mask, mtp_denom, B)
                balance = balance + mbal
                loads = loads + (mload,)
                dropped = dropped + mdrop
        if self.n_loads == 0:
            loads = (ops.zeros((self.E,), ms.float32),)
        balance = balance * bal_scale
        loss_part = lm + mtp_weight * mtp + self.alpha * balance
        objective = loss_part
        if not self.last:
            objective = objective + ops.sum(h * dy)
        return objective, (loss_part, lm, mtp, balance, ops.stack(loads), dropped, h)


_add = C.MultitypeFuncGraph("v4_pipe_add")


@_add.register("Tensor", "Tensor")
def _add_fn(a, b):
    return a + b


_emb = C.MultitypeFuncGraph("v4_pipe_emb")


@_emb.register("Function", "Bool", "Tensor")
def _emb_fn(all_reduce, flag, g):
    if flag:
        return all_reduce(g)
    return g


def _accumulator():
    """The compiled sum of two gradient tuples (micro-batch accumulation)."""
    def accumulate(acc, grads):
        return C.HyperMap()(_add, acc, grads)

    return ms.jit(accumulate)


def _stage_collectives(parallel, params, max_grad_norm: float, model, holds_embed: bool):
    """(gradient reducer, sharded clip, AllReduce over dp, over pp, over the embedding copies) of a stage: all None
    for one process; the embedding AllReduce only where the model shares its embedding and the stage holds a copy
    (first / last)."""
    if parallel is None:
        return None, None, None, None, None
    from ascend_v4.parallel import GradReducer, ShardedClip

    def all_reduce(kind):
        return ops.AllReduce(ops.ReduceOp.SUM, parallel.group(kind)) if parallel.group(kind) is not None else None
    return (GradReducer(parallel, params), ShardedClip(parallel, params, max_grad_norm), all_reduce("dp"),
            all_reduce("pp"), all_reduce("emb") if model.shared_embed and holds_embed else None)


def _exchange_graph(ar_pp):
    """The stage-to-stage transfer (stage_exchange): the pp AllReduce as its own compiled graph; None without pp."""
    if ar_pp is None:
        return None

    def exchange(buf):
        return ar_pp(buf)

    return ms.jit(exchange)


def gpipe(P: int, M: int, s: int, last: bool, forward, backward, exchange) -> None:
    """Stage s's part of the GPipe schedule of the module docstring (every stage calls it with its own s).
    forward(m, x_in) -> x_out (stages before the last); backward(m, x_in, dy) -> dx (accumulates the weight
    gradients; the last stage calls it in its forward tick with dy None); x_in is None on the first stage.
    exchange(send or None, toward_next) -> what the neighbouring stage sent (None at the pipeline's ends); it is
    called in every tick by every stage (P > 1). Activations / gradients are whatever forward / backward return."""
    received, stash, dx_last = {}, {}, {}
    for t in range(M + P - 1):                                    # forward ticks
        m, send = t - s, None
        if 0 <= m < M:
            x_in = None if s == 0 else received.pop(m)
            if last:
                dx = backward(m, x_in, None)
                if P > 1:
                    dx_last[m] = dx
            else:
                send = forward(m, x_in)
                stash[m] = x_in
        if P > 1:
            got = exchange(send, True)
            if got is not None and 0 <= t - (s - 1) < M:
                received[t - (s - 1)] = got
    for u in range(M + P - 1) if P > 1 else ():                  # backward ticks
        m, send = u - (P - 1 - s), None
        if 0 <= m < M:
            if last:
                send = dx_last.pop(m)
            else:
                dx = backward(m, stash.pop(m), received.pop(m))
                send = None if s == 0 else dx
        got = exchange(send, False)
        if got is not None and 0 <= u - (P - 2 - s) < M:
            received[u - (P - 2 - s)] = got


def stage_exchange(exchange_fn, P: int, s: int, send, shapes, toward_next: bool):
    """One tick's stage-to-stage transfer (module docstring): send, a tuple of float32 Tensors of `shapes` (or
    None), goes into stage s's slot of a [P, total size] buffer all-reduced over pp by exchange_fn. -> the
    tuple stage s-1 (toward_next) or s+1 sent, None at the pipeline's ends."""
    sizes = [int(np.prod(sh)) for sh in shapes]
    buf = np.zeros((P, sum(sizes)), np.float32)
    if send is not None:
        buf[s] = np.concatenate([x.asnumpy().reshape(-1) for x in send])
    got = exchange_fn(Tensor(buf)).asnumpy()
    src = s - 1 if toward_next else s + 1
    if not 0 <= src < P:
        return None
    out, k = [], 0
    for sh, n in zip(shapes, sizes):
        out.append(Tensor(got[src, k:k + n].reshape(sh)))
        k += n
    return tuple(out)


class PipelineTrainStep:
    """Drop-in for step.TrainStep when parallel.pp > 1 or micro_batches > 1: same call and result
    (loss, lm, mtp, balance, grad_norm, imbalance, dropped), every value the global batch's."""

    def __init__(self, model, optimizer, micro_batches: int, balance_alpha: float = 1e-4, max_grad_norm: float = 1.0,
                 bias_speed: float = 1e-3, parallel=None):
        from .optim import clip_by_global_norm
        self.model, self.optimizer, self.M = model, optimizer, int(micro_batches)
        self.parallel = parallel
        self.P = parallel.pp if parallel is not None else 1
        self.s = parallel.pp_rank if parallel is not None else 0
        self.dp = parallel.dp if parallel is not None else 1
        self.loss_cell = StageLoss(model, balance_alpha)
        self.first, self.last = self.loss_cell.first, self.loss_cell.last
        self.n_loads = self.loss_cell.n_loads
        self.params = optimizer.parameters
        self.balancer = BiasBalancer(model, bias_speed) if self.n_loads else None
        self.grad_fn = ms.value_and_grad(self.loss_cell, 0, self.params, has_aux=True)
        self._bwd = ms.jit(self.grad_fn)
        loss_cell = self.loss_cell

        def fwd(h_in, input_ids, segment_ids):
            return loss_cell.stage_forward(h_in, input_ids, segment_ids)[0]

        def evaluate(h_in, input_ids, targets, segment_ids, loss_mask, denom):
            one = ops.ones((), ms.float32)
            return loss_cell(h_in, h_in, input_ids, targets, segment_ids, loss_mask, ops.zeros((), ms.float32),
                             denom, denom, one)[1][1]

        self._fwd = ms.jit(fwd)
        self._eval = ms.jit(evaluate)
        self._acc = _accumulator()
        reducer, clip, ar_dp, ar_pp, ar_emb = _stage_collectives(
            parallel if parallel is not None and parallel.world > 1 else None, self.params, max_grad_norm, model,
            self.first or self.last)
        emb_flags = tuple(p.name.startswith("embed.") for p in self.params)
        balancer, max_norm, dp = self.balancer, float(max_grad_norm), float(self.dp)
        n_loads, has_loads = float(self.n_loads), 1.0 if self.n_loads else 0.0
        hyper_map = C.HyperMap()
        self._ar_pp = ar_pp

        def apply(grads, loads, sums):
            """sums = [loss, lm, mtp, balance, dropped, imbalance·n_loads, n_loads] of this rank's micro-batches."""
            if reducer is not None:
                grads = reducer(grads)
            # Stages run different graphs, so the collectives shared across stages (emb, pp) are chained with
            # depend into one order: embedding sync after every dp reduction, then the clip norm, then the stats.
            if ar_emb is not None:
                grads = hyper_map(F.partial(_emb, ar_emb), emb_flags, grads)
            if clip is not None:
                grads, gnorm = clip(grads)
            else:
                grads, gnorm = clip_by_global_norm(grads, max_norm)
            optimizer(grads)
            if ar_dp is not None:
                loads = ar_dp(ops.depend(loads, gnorm))
                sums = ar_dp(ops.depend(sums, loads)) / dp
            if balancer is not None:
                balancer(loads)
            ratio = ops.max(loads, -1)[0] / ops.maximum(ops.mean(loads, -1), 1e-9)
            stats = ops.concat([sums[:4], ops.stack([sums[4] * dp, ops.sum(ratio) * has_loads,
                                                     ops.ones((), ms.float32) * n_loads])])
            if ar_pp is not None:
                stats = ar_pp(ops.depend(ops.depend(stats, gnorm), grads))
            return gnorm, stats

        self._apply = ms.jit(apply)
        self._exchange_fn = _exchange_graph(ar_pp)

    # ---------------------------------------------------------------- helpers
    def _micro(self, batch) -> List[Dict[str, Tensor]]:
        b = batch["input_ids"].shape[0]
        if b % self.M:
            raise ValueError(f"batch_size {b} is not divisible by micro_batches {self.M}")
        k = b // self.M
        out = []
        for m in range(self.M):
            sl = slice(m * k, (m + 1) * k)
            out.append({"input_ids": Tensor(batch["input_ids"][sl].astype(np.int32)),
                        "targets": Tensor(batch["targets"][sl].astype(np.int32)),
                        "segment_ids": Tensor(batch["segment_ids"][sl].astype(np.int32)),
                        "loss_mask": Tensor(batch["loss_mask"][sl].astype(np.float32))})
        return out

    def _stream_shape(self, batch_rows: int, seq: int):
        cfg = self.model.cfg
        return (batch_rows, seq, cfg.hc_mult, cfg.dim)

    def _exchange(self, send: Optional[Tensor], shape, toward_next: bool) -> Optional[Tensor]:
        got = stage_exchange(self._exchange_fn, self.P, self.s, None if send is None else (send,), (shape,),
                             toward_next)
        return None if got is None else got[0]

    # ---------------------------------------------------------------- the step
    def __call__(self, batch, mtp_weight: float, lm_denom: float, mtp_denom: float):
        mbs = self._micro(batch)
        P, M, s = self.P, self.M, self.s
        rows, seq = mbs[0]["input_ids"].shape
        shape = self._stream_shape(rows, seq)
        dummy = Tensor(np.zeros((1,), np.float32))
        consts = (Tensor(np.float32(mtp_weight)), Tensor(np.float32(lm_denom)), Tensor(np.float32(mtp_denom)),
                  Tensor(np.float32(1.0 / M)))
        acc, loads, sums = None, None, np.zeros(5, np.float64)

        def backward(m, h_in, dy):
            nonlocal acc, loads, sums
            b = mbs[m]
            (_, aux), (g_h, g_w) = self._bwd(dummy if h_in is None else h_in, dummy if dy is None else dy,
                                             b["input_ids"], b["targets"], b["segment_ids"], b["loss_mask"], *consts)
            acc = g_w if acc is None else self._acc(ms.mutable(acc), ms.mutable(g_w))
            loads = aux[4] if loads is None else loads + aux[4]
            sums += [float(aux[0].asnumpy()), float(aux[1].asnumpy()), float(aux[2].asnumpy()),
                     float(aux[3].asnumpy()), float(aux[5].asnumpy())]
            return g_h

        def forward(m, h_in):
            return self._fwd(dummy if h_in is None else h_in, mbs[m]["input_ids"], mbs[m]["segment_ids"])

        gpipe(P, M, s, self.last, forward, backward,
              lambda send, toward_next: self._exchange(send, shape, toward_next))
        gnorm, stats = self._apply(ms.mutable(acc), loads, Tensor(sums.astype(np.float32)))
        st = stats.asnumpy().astype(np.float64)
        imb = st[5] / max(st[6], 1.0)
        return (st[0], st[1], st[2], st[3], float(gnorm.asnumpy()), imb, st[4])

    def eval_lm(self, batch, denom: float) -> float:
        """Next-token loss share of this rank's batch (whole, one micro-batch) through the stages; the result is
        the last stage's, summed over pp so every stage returns it. The caller averages over dp."""
        b = {k: Tensor(v.astype(np.float32 if k == "loss_mask" else np.int32)) for k, v in batch.items()
             if k in ("input_ids", "targets", "segment_ids", "loss_mask")}
        shape = self._stream_shape(*b["input_ids"].shape)
        h = Tensor(np.zeros((1,), np.float32))
        lm = 0.0
        for t in range(self.P):
            send = None
            if t == self.s:
                if self.last:
                    lm = float(self._eval(h, b["input_ids"], b["targets"], b["segment_ids"], b["loss_mask"],
                                          Tensor(np.float32(denom))).asnumpy())
                else:
                    send = self._fwd(h, b["input_ids"], b["segment_ids"])
            if self.P > 1 and t < self.P - 1:
                got = self._exchange(send, shape, toward_next=True)
                if t == self.s - 1:
                    h = got
        if self._ar_pp is not None:
            lm = float(self._exchange_fn(Tensor(np.array([lm], np.float32))).asnumpy()[0])
        return lm


# ------------------------------------------------------------------------------------------------ DeepSeek-V4.1



class V41StageLoss(V41Loss):
    """One pipeline stage's share of DeepSeek-V4.1's objective (V41Loss.terms over the stage's blocks) for one
    micro-batch. A stage boundary carries the mHC streams h [B, S, hc, D] and the FFN `pre` [B, S, hc] of the
    block before it (pipelined mHC); the CSA-v2 shared state never crosses one (parallel.v41_stage_starts) and
    each stage is fed the host-gathered rows of its own Engram layers.

    construct(h_in, pre_in, dh, dpre, input_ids, engram_rows, targets, loss_mask, markov_ids, draft_labels,
    draft_mask, dspark_weight, lm_denom, draft_denom, seq_rows) -> (objective, (loss_part, lm, draft, confidence,
    balance, loads [local layers, E], drafter loads, dropped, h_out, pre_out)); objective = loss_part +
    <h_out, dh> + <pre_out, dpre> before the last stage (dh / dpre: the next stage's input gradients). The first
    stage ignores h_in / pre_in (it embeds input_ids)."""

    def __init__(self, model, balance_alpha: float = 1e-4, confidence_weight: float = 0.1):
        super().__init__(model, balance_alpha, confidence_weight)
        self.first, self.last = model.first_stage, model.last_stage

    def stage_forward(self, h_in, pre_in, input_ids, engram_rows):
        if self.first:
            return self.layers(self.model.embed_streams(input_ids)[1], None, input_ids, engram_rows)
        return self.layers(h_in, pre_in, input_ids, engram_rows)

    def construct(self, h_in, pre_in, dh, dpre, input_ids, engram_rows, targets, loss_mask, markov_ids,
                  draft_labels, draft_mask, dspark_weight, lm_denom, draft_denom, seq_rows):
        out = self.stage_forward(h_in, pre_in, input_ids, engram_rows)
        loss, lm, draft, conf, bal, loads, dloads, dropped = self.terms(
            out, input_ids.shape[0], targets, loss_mask, markov_ids, draft_labels, draft_mask, dspark_weight,
            lm_denom, draft_denom, seq_rows)
        objective = loss
        if not self.last:
            objective = objective + ops.sum(out[0] * dh) + ops.sum(out[1] * dpre)
        return objective, (loss, lm, draft, conf, bal, loads, dloads, dropped, out[0], out[1])


class V41PipelineTrainStep:
    """V41TrainStep's call and result with pipeline stages (parallel.pp > 1) and / or micro-batches (gradient
    accumulation): the host lays out and hashes the batch as V41TrainStep does (_inputs; this stage's Engram
    rows), cuts its document rows into `micro_batches` and runs the GPipe schedule of the module docstring
    (gpipe). Every term is normalised by the whole global batch's counts (lm_denom, draft_denom, seq_rows), so the
    micro-batches' and stages' gradients sum to the one-process gradients. The Engram row gradients of each
    micro-batch are kept side by side (their rows differ), clipped with the parameters (ShardedClip sums their
    squared norm over dp and pp), then gathered over dp and pp so every rank applies the same sparse update to all
    its replicated tables."""

    _inputs = V41TrainStep._inputs         # the same host layout, hashing and drafter inputs (this stage's rows)

    def __init__(self, loss_net: V41StageLoss, optimizer, engram, schedule, micro_batches: int,
                 max_grad_norm: float = 1.0, bias_speed: float = 1e-3, engram_lr_scale: float = 1.0,
                 parallel=None):
        from .optim import clip_by_global_norm, sq_sum
        from .step import BiasBalancer, layer_imbalance
        from .v41 import stage_biases
        self.loss_net, self.optimizer, self.engram = loss_net, optimizer, engram
        self.schedule, self.engram_lr_scale = schedule, float(engram_lr_scale)
        self.M = int(micro_batches)
        model = self.model = loss_net.model
        cfg = model.cfg
        self.parallel = parallel if parallel is not None and parallel.world > 1 else None
        self.P = parallel.pp if parallel is not None else 1
        self.s = parallel.pp_rank if parallel is not None else 0
        self.dp = self.parallel.dp if self.parallel is not None else 1
        self.first, self.last = loss_net.first, loss_net.last
        self.params = optimizer.parameters
        n_params = len(self.params)
        self.balancer = BiasBalancer(model, bias_speed, biases=stage_biases(model))
        n_back = len(model.local_layers)
        n_stage = cfg.n_mtp_layers if model.with_dspark else 0
        self.local_engram = [list(cfg.engram_layer_ids).index(L) for L in model.engram_layers]
        self._bwd = ms.jit(ms.value_and_grad(loss_net, (0, 1, 5), self.params, has_aux=True))

        def fwd(h_in, pre_in, input_ids, rows):
            out = loss_net.stage_forward(h_in, pre_in, input_ids, rows)
            return out[0], out[1]

        self._fwd = ms.jit(fwd)
        self._eval = ms.jit(loss_net)
        self._acc = _accumulator()
        reducer, clip, ar_dp, ar_pp, ar_emb = _stage_collectives(self.parallel, self.params, max_grad_norm, model,
                                                                 self.first or self.last)
        emb_flags = tuple(p.name.startswith("embed.") for p in self.params)
        balancer, dp, hyper_map = self.balancer, float(self.dp), C.HyperMap()
        L, lo = cfg.n_layers, model.local_layers[0]
        hi = lo + n_back
        max_norm = float(max_grad_norm)

        def apply(grads, g_rows, loads, dloads, sums):
            """sums = [loss, lm, draft, confidence, balance, dropped] of this rank's micro-batches; g_rows: their
            Engram row gradients side by side. -> (gnorm, [the global sums, per-layer imbalance of every
            backbone layer], the clipped row gradients)."""
            if reducer is not None:
                grads = reducer(grads)
                g_rows = g_rows / dp                   # this rank's positions' share of the global gradient
                esq = sq_sum(g_rows)
                if ar_dp is not None:
                    loads, dloads = ar_dp(loads), ar_dp(dloads)
                    sums = ar_dp(ops.depend(sums, dloads))
                    esq = ar_dp(ops.depend(esq, sums))
                    sums = ops.concat([sums[:5] / dp, sums[5:]])
                # the stages run different graphs: the cross-stage collectives (emb, then ShardedClip's pp sum over
                # every gradient, then the stats after the clip) follow one order through their data dependencies
                if ar_emb is not None:
                    grads = hyper_map(F.partial(_emb, ar_emb), emb_flags, grads)
                both, gnorm = clip(tuple(grads) + (g_rows,), esq)
            else:
                both, gnorm = clip_by_global_norm(tuple(grads) + (g_rows,), max_norm)
            optimizer(both[:n_params])
            balancer(tuple(loads[i] for i in range(n_back)) + tuple(dloads[k] for k in range(n_stage)))
            ratio = layer_imbalance(loads)
            slots = [ratio]
            if lo:
                slots = [ops.zeros((lo,), ms.float32)] + slots
            if hi < L:
                slots = slots + [ops.zeros((L - hi,), ms.float32)]
            stats = ops.concat([sums] + slots)
            if ar_pp is not None:
                stats = ar_pp(ops.depend(ops.depend(stats, gnorm), both))
            return gnorm, stats, both[n_params]

        self._apply = ms.jit(apply)
        self._exchange_fn = _exchange_graph(ar_pp)

    def _stage_shapes(self, rows: int, seq: int):
        cfg = self.model.cfg
        return ((rows, seq, cfg.hc_mult, cfg.dim), (rows, seq, cfg.hc_mult))

    def __call__(self, batch, dspark_weight: float, lm_denom: float, mtp_denom: Optional[float] = None,
                 full=None):
        hashed, args, lmd, dd, n_seq, valid = self._inputs(batch, lm_denom, full)
        P, M, s = self.P, self.M, self.s
        arrays = [a.asnumpy() for a in args]
        R, S = arrays[0].shape
        if R % M:
            raise ValueError(f"{R} document rows are not divisible by micro_batches {M}")
        k = R // M
        has_rows = self.engram is not None and bool(self.local_engram)
        mbs = []
        for m in range(M):
            sl = slice(m * k, (m + 1) * k)
            b = [Tensor(a[sl]) for a in arrays]
            b[1] = Tensor(arrays[1][:, sl]) if has_rows else args[1]      # rows [local layers, R, S, c·d]
            mbs.append(b)
        shapes = self._stage_shapes(k, S)
        dummy = (Tensor(np.zeros(shapes[0], np.float32)), Tensor(np.zeros(shapes[1], np.float32)))
        consts = (Tensor(np.float32(dspark_weight)), lmd, dd, n_seq)
        acc, loads, dloads, g_rows = None, None, None, [None] * M
        sums = np.zeros(6, np.float64)

        def backward(m, x_in, dy):
            nonlocal acc, loads, dloads, sums
            x_in, dy = x_in or dummy, dy or dummy
            ids, rows, tgt, lmask, o, lab, dm = mbs[m]
            (_, aux), ((g_h, g_pre, g_r), g_w) = self._bwd(x_in[0], x_in[1], dy[0], dy[1], ids, rows, tgt, lmask,
                                                           o, lab, dm, *consts)
            acc = g_w if acc is None else self._acc(ms.mutable(acc), ms.mutable(g_w))
            loads = aux[5] if loads is None else loads + aux[5]
            dloads = aux[6] if dloads is None else dloads + aux[6]
            sums += [float(aux[i].asnumpy()) for i in range(5)] + [float(aux[7].asnumpy())]
            g_rows[m] = g_r.asnumpy()
            return g_h, g_pre

        def forward(m, x_in):
            x_in = x_in or dummy
            return self._fwd(x_in[0], x_in[1], mbs[m][0], mbs[m][1])

        gpipe(P, M, s, self.last, forward, backward,
              lambda send, toward_next: stage_exchange(self._exchange_fn, P, s, send, shapes, toward_next))
        rows_grad = Tensor(np.concatenate(g_rows, 1) if has_rows else g_rows[0])
        t = int(self.optimizer.step.asnumpy()) + 1           # the update the optimiser is about to make
        gnorm, stats, g = self._apply(ms.mutable(acc), rows_grad, loads, dloads, Tensor(sums.astype(np.float32)))
        if self.engram is not None:
            self.engram.update(hashed, self._every_row_grad(g.asnumpy() if has_rows else None, R, S),
                               float(self.schedule.lr_at(t)) * self.engram_lr_scale, valid)
        st = stats.asnumpy().astype(np.float64)
        self.last_layer_imbalance = st[6:].astype(np.float32)
        self.last_confidence_loss = st[3]
        return st[0], st[1], st[2], st[4], float(gnorm.asnumpy()), float(st[6:].mean()), st[5]

    def _every_row_grad(self, mine, R: int, S: int) -> List[np.ndarray]:
        """This stage's clipped row gradients [local layers, R, S, c·d] (None: it holds no Engram layer) -> every
        Engram layer's over the global batch [dp·R, S, c·d] (engram_layer_ids order): dp ranks' side by side
        (their positions), each layer from the stage holding it."""
        cfg = self.model.cfg
        width = cfg.engram_n_columns * cfg.engram_head_dim
        n = len(cfg.engram_layer_ids)
        full = np.zeros((n, R, S, width), np.float32)
        if mine is not None:
            full[self.local_engram] = mine
        par = self.parallel
        if par is not None and par.group("dp") is not None:          # every dp rank's positions
            full = np.concatenate([part[0] for part in par.host_gather([full], "dp")], 1)
        if par is not None and par.group("pp") is not None:          # every stage's layers
            from ascend_v4.parallel import stage_layers
            parts = par.host_gather([full], "pp")
            for j, L in enumerate(cfg.engram_layer_ids):
                holder = next(q for q in range(self.P) if L in stage_layers(cfg.n_layers, self.P, q, cfg))
                full[j] = parts[holder][0][j]
        return list(full)

    def eval_lm(self, batch, lm_denom: float) -> float:
        """Next-token loss share of this rank's batch (one micro-batch of all its rows) through the stages; the
        last stage's, summed over pp so every stage returns it. The caller averages over dp."""
        _, args, lmd, dd, n_seq, _ = self._inputs(batch, lm_denom)
        ids, rows = args[0], args[1]
        shapes = self._stage_shapes(*ids.shape)
        x = (Tensor(np.zeros(shapes[0], np.float32)), Tensor(np.zeros(shapes[1], np.float32)))
        lm = 0.0
        for t in range(self.P):
            send = None
            if t == self.s:
                if self.last:
                    out = self._eval(x[0], x[1], x[0], x[1], *args, Tensor(np.float32(0.0)), lmd, dd, n_seq)
                    lm = float(out[1][1].asnumpy())
                else:
                    send = self._fwd(x[0], x[1], ids, rows)
            if self.P > 1 and t < self.P - 1:
                got = stage_exchange(self._exchange_fn, self.P, self.s, send, shapes, True)
                if t == self.s - 1:
                    x = got
        if self.P > 1:
            lm = float(self._exchange_fn(Tensor(np.array([lm], np.float32))).asnumpy()[0])
        return lm
