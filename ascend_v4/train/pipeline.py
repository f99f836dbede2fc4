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
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import mindspore as ms
from mindspore import ops, Tensor
from mindspore.ops import composite as C, functional as F

from .losses import V4Loss, masked_ce
from .step import BiasBalancer


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

        def accumulate(acc, grads):
            return C.HyperMap()(_add, acc, grads)

        self._acc = ms.jit(accumulate)

        sharded = parallel is not None and parallel.world > 1
        reducer = clip = ar_dp = ar_pp = ar_emb = None
        if sharded:
            from ascend_v4.parallel import GradReducer, ShardedClip
            reducer = GradReducer(parallel, self.params)
            clip = ShardedClip(parallel, self.params, max_grad_norm)
            if parallel.group("dp") is not None:
                ar_dp = ops.AllReduce(ops.ReduceOp.SUM, parallel.group("dp"))
            if parallel.group("pp") is not None:
                ar_pp = ops.AllReduce(ops.ReduceOp.SUM, parallel.group("pp"))
            if parallel.group("emb") is not None and model.shared_embed and (self.first or self.last):
                ar_emb = ops.AllReduce(ops.ReduceOp.SUM, parallel.group("emb"))
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
        if ar_pp is not None:
            def exchange(buf):
                return ar_pp(buf)
            self._exchange_fn = ms.jit(exchange)

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
        """Every stage calls it in the same tick. Returns what the neighbouring stage sent (toward_next: stage s
        receives stage s-1's slot, else stage s+1's), None at the pipeline's ends."""
        buf = np.zeros((self.P, int(np.prod(shape))), np.float32)
        if send is not None:
            buf[self.s] = send.asnumpy().reshape(-1)
        got = self._exchange_fn(Tensor(buf)).asnumpy()
        src = self.s - 1 if toward_next else self.s + 1
        if 0 <= src < self.P:
            return Tensor(got[src].reshape(shape))
        return None

    # ---------------------------------------------------------------- the step
    def __call__(self, batch, mtp_weight: float, lm_denom: float, mtp_denom: float):
        mbs = self._micro(batch)
        P, M, s = self.P, self.M, self.s
        rows, seq = mbs[0]["input_ids"].shape
        shape = self._stream_shape(rows, seq)
        dummy = Tensor(np.zeros((1,), np.float32))
        consts = (Tensor(np.float32(mtp_weight)), Tensor(np.float32(lm_denom)), Tensor(np.float32(mtp_denom)),
                  Tensor(np.float32(1.0 / M)))
        received: Dict[int, Tensor] = {}      # micro-batch -> input streams (forward) / output gradient (backward)
        stash: Dict[int, Tensor] = {}         # micro-batch -> input streams kept for the recomputing backward
        dh_last: Dict[int, Tensor] = {}       # last stage: micro-batch -> gradient of its input streams
        acc, loads, sums = None, None, np.zeros(5, np.float64)

        def backward(m, h_in, dy):
            nonlocal acc, loads, sums
            b = mbs[m]
            (_, aux), (g_h, g_w) = self._bwd(h_in, dy, b["input_ids"], b["targets"], b["segment_ids"],
                                             b["loss_mask"], *consts)
            acc = g_w if acc is None else self._acc(ms.mutable(acc), ms.mutable(g_w))
            loads = aux[4] if loads is None else loads + aux[4]
            sums += [float(aux[0].asnumpy()), float(aux[1].asnumpy()), float(aux[2].asnumpy()),
                     float(aux[3].asnumpy()), float(aux[5].asnumpy())]
            return g_h

        for t in range(M + P - 1):                                    # forward ticks
            m, send = t - s, None
            if 0 <= m < M:
                h_in = dummy if self.first else received.pop(m)
                if self.last:
                    dh_last[m] = backward(m, h_in, dummy)
                else:
                    send = self._fwd(h_in, mbs[m]["input_ids"], mbs[m]["segment_ids"])
                    stash[m] = h_in
            if P > 1:
                got = self._exchange(send, shape, toward_next=True)
                if got is not None and 0 <= t - (s - 1) < M:
                    received[t - (s - 1)] = got
        for u in range(M + P - 1) if P > 1 else ():                  # backward ticks
            m, send = u - (P - 1 - s), None
            if 0 <= m < M:
                if self.last:
                    send = dh_last.pop(m)
                else:
                    g_h = backward(m, stash.pop(m), received.pop(m))
                    send = None if self.first else g_h
            got = self._exchange(send, shape, toward_next=False)
            if got is not None and 0 <= u - (P - 2 - s) < M:
                received[u - (P - 2 - s)] = got
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
