"""The compiled train step: loss + grads (value_and_grad), clipping, optimiser, router-bias balancing.

Everything runs inside one `ms.jit` graph per batch shape. The aux-loss-free balancer moves `gate.bias`
outside the gradient from the step's expert loads: bias_i += speed · sign(mean(load) − load_i) (docs/training.md).
Under data parallelism the gradients are averaged over dp and the loads are all-reduced over dp, so every rank
applies the same bias update. With a ParallelContext (ascend_v4/parallel.py): gradients go through its
GradReducer (dp mean; expert-parallel experts summed over their replicas and divided by dp), losses / loads /
dropped counts are all-reduced over the dp group only (tensor-parallel ranks already hold identical values: summing
over tp would count them tp times), and the clipping norm counts every shard once (ShardedClip).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops, ParameterTuple


class BiasBalancer(nn.Cell):
    def __init__(self, model, speed: float = 1e-3, biases=None):
        """biases: the router biases in the order of the loads (default: V4's routed layers, then MTP)."""
        super().__init__()
        cfg = model.cfg
        if biases is None:
            biases = [model.layers[i].ffn.gate.bias for i in model.local_layers if not cfg.is_hash_layer(i)]
            if model.with_mtp:
                biases += [blk.ffn.gate.bias for blk in model.mtp]
        self.biases = ParameterTuple(biases)
        self.speed = speed

    def construct(self, loads):
        for i in range(len(self.biases)):
            b = self.biases[i]
            load = loads[i]
            ops.assign(b, b + self.speed * ops.sign(ops.mean(load) - load))
        return loads


def layer_imbalance(loads):
    """max/mean expert load of each routed layer [n_routed_layers] (1.0 = perfectly balanced)."""
    return ops.max(loads, -1)[0] / ops.maximum(ops.mean(loads, -1), 1e-9)


def imbalance(loads):
    """layer_imbalance averaged over layers."""
    return ops.mean(layer_imbalance(loads))


class TrainStep:
    """step(batch arrays as Tensors, mtp_weight) -> (loss, lm, mtp, balance, grad_norm, imbalance, dropped)
    where dropped = expert assignments lost to a full expert (fixed capacity), summed over layers and ranks;
    `last_layer_imbalance` then holds the step's max/mean expert load per routed layer (NumPy)."""

    def __init__(self, loss_net, optimizer, max_grad_norm: float = 1.0, bias_speed: float = 1e-3,
                 data_parallel: int = 1, parallel=None):
        from .optim import clip_by_global_norm, clip_scale
        self.loss_net = loss_net
        self.optimizer = optimizer
        self.params = optimizer.parameters
        self.balancer = BiasBalancer(loss_net.model, bias_speed)
        self.max_norm = max_grad_norm
        self.grad_fn = ms.value_and_grad(loss_net, None, self.params, has_aux=True)
        self.reducer = None
        self.allreduce = None
        clip = clip_by_global_norm
        sharded = parallel is not None and parallel.world > 1
        # ZeRO-1: the dp ranks compile different graphs; one collective for gradients and statistics (below)
        self.flat = sharded and getattr(optimizer, "shard", None) is not None
        if sharded:
            from ascend_v4.parallel import FlatGradReducer, GradReducer, ShardedClip
            data_parallel = parallel.dp
            self.reducer = (FlatGradReducer if self.flat else GradReducer)(parallel, self.params)
            if parallel.group("dp") is not None:
                self.allreduce = ops.AllReduce(ops.ReduceOp.SUM, parallel.group("dp"))
            clip = ShardedClip(parallel, self.params, max_grad_norm)
        elif data_parallel > 1:
            self.reducer = nn.DistributedGradReducer(self.params, mean=True, degree=data_parallel)
            self.allreduce = ops.AllReduce()

        fused = bool(getattr(optimizer, "fused", False))

        def step(input_ids, targets, segment_ids, loss_mask, mtp_weight, lm_denom, mtp_denom):
            (loss, lm, mtp, bal, loads, dropped), grads = self.grad_fn(input_ids, targets, segment_ids, loss_mask, mtp_weight,
                                                              lm_denom, mtp_denom)
            if self.flat:         # losses, loads and drops summed over dp in the gradients' AllReduce
                one = (1,)
                stats = ops.concat((ops.reshape(loads, (-1,)), ops.reshape(ops.cast(dropped, ms.float32), one),
                                    ops.reshape(lm, one), ops.reshape(mtp, one), ops.reshape(bal, one),
                                    ops.reshape(loss, one)), 0)
                grads, stats = self.reducer(grads, stats)
                n = loads.size
                loads = ops.reshape(stats[:n], loads.shape)
                dropped, lm, mtp = stats[n], stats[n + 1] / data_parallel, stats[n + 2] / data_parallel
                bal, loss = stats[n + 3] / data_parallel, stats[n + 4] / data_parallel
            elif self.reducer is not None:
                grads = self.reducer(grads)
            if self.allreduce is not None and not self.flat:
                loads = self.allreduce(loads)
                dropped = self.allreduce(ops.cast(dropped, ms.float32))
                # report the global batch's losses, not this rank's share
                lm = self.allreduce(lm) / data_parallel
                mtp = self.allreduce(mtp) / data_parallel
                bal = self.allreduce(bal) / data_parallel
                loss = self.allreduce(loss) / data_parallel
            if sharded:
                grads, gnorm = clip(grads)
                self.optimizer(grads, None, (loss, lm, mtp, bal, loads, dropped))
            elif fused:
                # the clip's scale is applied inside the fused optimiser kernels; the update must not start
                # before every output of the forward is computed (the kernels write the weights in place)
                scale, gnorm = clip_scale(grads, self.max_norm)
                self.optimizer(grads, ops.depend(scale, (loss, lm, mtp, bal, loads, dropped)))
            else:
                grads, gnorm = clip(grads, self.max_norm)
                self.optimizer(grads)
            self.balancer(loads)
            return loss, lm, mtp, bal, gnorm, imbalance(loads), ops.cast(dropped, ms.float32), layer_imbalance(loads)

        self._step = ms.jit(step)

    def __call__(self, batch, mtp_weight: float, lm_denom: float, mtp_denom: float):
        """lm_denom / mtp_denom: real target tokens of the *global* batch divided by dp (see losses.masked_ce)."""
        import numpy as np
        t = ms.Tensor
        *out, layers = self._step(t(batch["input_ids"].astype(np.int32)), t(batch["targets"].astype(np.int32)),
                                  t(batch["segment_ids"].astype(np.int32)), t(batch["loss_mask"].astype(np.float32)),
                                  t(np.float32(mtp_weight)), t(np.float32(lm_denom)), t(np.float32(mtp_denom)))
        self.last_layer_imbalance = layers.asnumpy()
        return tuple(out)
