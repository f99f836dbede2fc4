"""`ascend-v4 train`: the training run — config, data, model, compiled step, eval, metrics, checkpoints, resume.

A run is one YAML file (all keys optional; the defaults train the tiny preset on the embedded corpus):

    model: tiny               # preset name or config.json path
    seed: 0
    seq_len: 64
    batch_size: 4             # sequences per data-parallel rank per step
    steps: 200
    lr: 1.0e-2                # peak; linear warm-up then cosine to min_lr (default lr/10) from decay_start
    warmup_steps: 20
    min_lr: null
    decay_start: null
    max_grad_norm: 1.0
    adam_eps: 1.0e-20
    mtp: true                 # MTP loss, weight 0.3 -> 0.1 once LR decay starts
    balance_alpha: 1.0e-4     # sequence-wise balance loss weight
    bias_update_speed: 1.0e-3 # aux-loss-free router-bias update
    moe_capacity_factor: null # null = dropless MoE; e.g. 1.25 = fixed expert capacity ceil(1.25·T·k/E), overflow dropped
    eval_every: 50
    eval_batches: 2
    save_every: 100
    data: {files: [], tokenizer: null, eval_fraction: 0.05}   # empty files = the embedded corpus
    parallel: {dp: 1, tp: 1, ep: 1, pp: 1, micro_batches: 1, optimizer_shard: true}

Parallel runs are launched with msrun (world = dp·tp·pp processes; see README "Training"): dp splits the global batch
(batch_size sequences per dp rank), tp splits attention heads and expert FFN inter dims, ep (dividing dp) splits
the routed experts, pp splits the layers into pipeline stages (world = dp·tp·pp; see train/pipeline.py) and
micro_batches cuts each rank's batch for the pipeline schedule (with pp = 1: gradient accumulation). A parallel
run's losses, updates and checkpoints equal one process training the same global batch (up to float32 summation
order).

OUT/metrics.jsonl gets one JSON object per step (step, loss, lm_loss, mtp_loss, balance_loss, tokens_per_s,
grad_norm, lr, expert_imbalance, dropped_tokens, dropped_frac) and one per evaluation (eval_loss). Rerunning the same command resumes from
OUT/latest exactly (model, optimiser, schedule position, data position).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np


class TrainConfigError(ValueError):
    pass


@dataclass
class ParallelConfig:
    dp: int = 1
    tp: int = 1
    ep: int = 1
    pp: int = 1
    micro_batches: int = 1
    optimizer_shard: bool = True    # ZeRO-1 style: master weights + optimiser state split over the replica group


@dataclass
class DataConfig:
    files: List[str] = field(default_factory=list)
    tokenizer: Optional[str] = None
    eval_fraction: float = 0.05


@dataclass
class TrainConfig:
    model: str = "tiny"
    seed: int = 0
    seq_len: int = 64
    batch_size: int = 4
    steps: int = 200
    lr: float = 1.0e-2
    warmup_steps: int = 20
    min_lr: Optional[float] = None
    decay_start: Optional[int] = None
    max_grad_norm: float = 1.0
    adam_eps: float = 1.0e-20       # spec §10; a larger eps makes AdamW smooth for near-zero gradients
    mtp: bool = True
    balance_alpha: float = 1.0e-4
    bias_update_speed: float = 1.0e-3
    moe_capacity_factor: Optional[float] = None
    eval_every: int = 50
    eval_batches: int = 2
    save_every: int = 100
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    @classmethod
    def from_dict(cls, raw: Dict, source: str = "config") -> "TrainConfig":
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise TrainConfigError(f"{source}: the top level must be a mapping of keys")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise TrainConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        kw = dict(raw)
        try:
            kw["data"] = DataConfig(**(raw.get("data") or {}))
            kw["parallel"] = ParallelConfig(**(raw.get("parallel") or {}))
            cfg = cls(**kw)
        except TypeError as e:
            raise TrainConfigError(f"{source}: {e}") from None
        return cfg.validate(source)

    @classmethod
    def from_yaml(cls, path: str) -> "TrainConfig":
        import yaml
        try:
            with open(path) as fh:
                raw = yaml.safe_load(fh)
        except FileNotFoundError:
            raise TrainConfigError(f"train config {path} does not exist") from None
        except yaml.YAMLError as e:
            raise TrainConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
        return cls.from_dict(raw, path)

    def validate(self, source: str = "config") -> "TrainConfig":
        def need(ok, msg):
            if not ok:
                raise TrainConfigError(f"{source}: {msg}")
        for k in ("seq_len", "batch_size", "steps", "eval_batches", "save_every", "eval_every"):
            v = getattr(self, k)
            need(isinstance(v, int) and v >= 1, f"{k} must be a positive integer, got {v!r}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.warmup_steps <= self.steps, f"warmup_steps ({self.warmup_steps}) must lie in [0, steps]")
        need(self.max_grad_norm > 0, "max_grad_norm must be > 0")
        need(self.moe_capacity_factor is None or (isinstance(self.moe_capacity_factor, (int, float))
                                                  and self.moe_capacity_factor > 0),
             f"moe_capacity_factor must be null (dropless) or > 0, got {self.moe_capacity_factor!r}")
        need(0 <= self.data.eval_fraction < 1, "data.eval_fraction must lie in [0, 1)")
        p = self.parallel
        for k in ("dp", "tp", "ep", "pp", "micro_batches"):
            need(isinstance(getattr(p, k), int) and getattr(p, k) >= 1, f"parallel.{k} must be a positive integer")
        need(isinstance(p.optimizer_shard, bool), "parallel.optimizer_shard must be true or false")
        return self

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)


def _log(msg: str) -> None:
    print(msg, flush=True)


class _AllReduceSum:
    def __init__(self, group):
        import mindspore as ms
        from mindspore import ops
        op = ops.AllReduce(ops.ReduceOp.SUM, group) if group else ops.AllReduce()

        def reduce(x):
            return op(x)

        self._fn = ms.jit(reduce)

    def __call__(self, x):
        return self._fn(x)


class Trainer:
    def __init__(self, tc: TrainConfig, out_dir: str, rank: int = 0, world: int = 1):
        from ascend_v4 import load_config
        from ascend_v4.checkpoint import random_weights
        from ascend_v4.model import Transformer
        from ascend_v4.weights import load_into
        from .data import PackedLoader
        from .losses import V4Loss
        from .optim import MuonAdamW
        from .schedule import Schedule
        from .step import TrainStep
        from .tokenizer import check_vocab, load_tokenizer

        from ascend_v4.parallel import MuonTensorParallel, ParallelConfigError, ParallelContext

        self.tc, self.out_dir, self.rank, self.world = tc, out_dir, rank, world
        self.cfg = load_config(tc.model)
        p = tc.parallel
        if p.dp * p.tp * p.pp != world:
            raise TrainConfigError(f"parallel dp·tp·pp = {p.dp}·{p.tp}·{p.pp} = {p.dp * p.tp * p.pp} but {world} "
                                   f"process(es) run; launch with `msrun --worker_num {p.dp * p.tp * p.pp}` or set "
                                   f"dp·tp·pp = {world}")
        if tc.batch_size % p.micro_batches:
            raise TrainConfigError(f"batch_size {tc.batch_size} (per data-parallel rank) is not divisible by "
                                   f"parallel.micro_batches {p.micro_batches}; make it a multiple")
        try:
            ParallelContext.check(self.cfg, p.dp, p.tp, p.ep, p.pp, world)
            self.parallel = ParallelContext.create(self.cfg, p.dp, p.tp, p.ep, p.pp, rank, world) if world > 1 else None
        except ParallelConfigError as e:
            raise TrainConfigError(f"parallel: {e}") from None
        self.dp, self.dp_rank = p.dp, (self.parallel.dp_rank if self.parallel is not None else 0)
        if tc.seq_len > self.cfg.max_position_embeddings:
            raise TrainConfigError(f"seq_len {tc.seq_len} exceeds max_position_embeddings {self.cfg.max_position_embeddings}")
        os.makedirs(out_dir, exist_ok=True)
        if tc.data.tokenizer:
            tok = load_tokenizer(tc.data.tokenizer)
        else:
            from .corpus import default_tokenizer
            tok = default_tokenizer(self.cfg.vocab_size, os.path.join(out_dir, "tokenizer"))
        check_vocab(tok, self.cfg)
        files = tc.data.files
        if not files:
            from .corpus import default_corpus_files
            files = default_corpus_files()
        # Every rank reads the same global batch and trains on its dp slice: dp=N equals one process with N x batch.
        gb = tc.batch_size * self.dp
        self.loader = PackedLoader(files, tok, tc.seq_len, gb, seed=tc.seed, split="train",
                                   eval_fraction=tc.data.eval_fraction, cache_dir=os.path.join(out_dir, "cache"))
        self.eval_loader = None
        if tc.data.eval_fraction > 0:
            self.eval_loader = PackedLoader(files, tok, tc.seq_len, gb, seed=tc.seed, shuffle=False, split="eval",
                                            eval_fraction=tc.data.eval_fraction, corpus=self.loader.corpus)
        self.model = Transformer(self.cfg, max_seq_len=tc.seq_len, with_mtp=tc.mtp,
                                 moe_capacity_factor=tc.moe_capacity_factor, parallel=self.parallel)
        self.model.set_train(True)
        init = random_weights(self.cfg, seed=tc.seed)
        for name in init:
            if name.endswith("ffn.gate.bias"):
                init[name] = np.zeros_like(init[name])     # the balancer starts from an unbiased router
        if self.parallel is not None and self.parallel.sharded:   # this rank's slices of the full weights
            init = self.parallel.shard_weights(init, [q.name for q in self.model.get_parameters()])
        load_into(self.model, init, strict=False)
        self.schedule = Schedule(peak_lr=tc.lr, total_steps=tc.steps, warmup_steps=tc.warmup_steps,
                                 min_lr=tc.min_lr, decay_start=tc.decay_start)
        muon_tp = MuonTensorParallel(self.parallel) if self.parallel is not None and self.parallel.tp > 1 else None
        self.opt = MuonAdamW(self.model.get_parameters(), self.schedule, eps=tc.adam_eps, tensor_parallel=muon_tp)
        import mindspore as ms
        self.pipelined = p.pp > 1 or p.micro_batches > 1
        if self.pipelined:
            from .pipeline import PipelineTrainStep
            self.step_fn = PipelineTrainStep(self.model, self.opt, p.micro_batches, tc.balance_alpha,
                                             tc.max_grad_norm, tc.bias_update_speed, parallel=self.parallel)
        else:
            self.loss_net = V4Loss(self.model, tc.balance_alpha)
            self.step_fn = TrainStep(self.loss_net, self.opt, tc.max_grad_norm, tc.bias_update_speed, self.dp,
                                     parallel=self.parallel)
            self._eval = ms.jit(self.loss_net)
        if self.dp > 1:      # eval loss of the whole global batch, not this rank's share
            self._eval_reduce = _AllReduceSum(self.parallel.group("dp"))
        self.step = 0
        self.tokens_per_step = tc.batch_size * self.dp * tc.seq_len
        # token->expert assignments per step over every MoE layer (the denominator of dropped_frac)
        self.assignments_per_step = self.tokens_per_step * self.cfg.n_activated_experts * (
            self.cfg.n_layers + (1 if tc.mtp and self.cfg.n_mtp_layers > 0 else 0))

    # ------------------------------------------------------------------ state
    def _slice(self, batch):
        b = self.tc.batch_size
        return {k: v[self.dp_rank * b:(self.dp_rank + 1) * b] for k, v in batch.items()}

    def trainer_state(self) -> Dict:
        import ascend_v4
        import mindspore
        return {"data": self.loader.state_dict(), "train_config": self.tc.to_dict(), "model_config": self.cfg.to_dict(),
                "versions": {"ascend_v4": ascend_v4.__version__, "mindspore": mindspore.__version__,
                             "numpy": np.__version__}}

    def save(self) -> str:
        from . import state
        return state.save(self.out_dir, self.step, self.model, self.opt, self.trainer_state(), self.parallel)

    def maybe_resume(self) -> bool:
        from . import state
        ck = state.latest(self.out_dir)
        if ck is None:
            return False
        st = state.load(ck, self.model, self.opt, self.parallel)
        if st.get("model_config") != self.cfg.to_dict():
            raise TrainConfigError(f"{ck} was trained with a different model config; use a new --out directory")
        self.loader.load_state_dict(st["data"])
        self.step = int(st["step"])
        return True

    # ------------------------------------------------------------------ loop
    def evaluate(self) -> float:
        import mindspore as ms
        if self.eval_loader is None:
            return float("nan")
        self.eval_loader.load_state_dict(self._eval_start)
        losses = []
        for _ in range(self.tc.eval_batches):
            full = next(self.eval_loader)
            b = self._slice(full)
            # as in training: normalise by the global batch's real targets / dp, so the dp mean is the global loss
            denom = np.float32(max(full["loss_mask"].astype(np.float64).sum(), 1.0) / self.dp)
            if self.pipelined:
                lm = self.step_fn.eval_lm(b, float(denom))
                if self.dp > 1:
                    lm = float(self._eval_reduce(ms.Tensor(np.float32(lm))).asnumpy()) / self.dp
                losses.append(lm)
                continue
            out = self._eval(ms.Tensor(b["input_ids"].astype(np.int32)), ms.Tensor(b["targets"].astype(np.int32)),
                             ms.Tensor(b["segment_ids"].astype(np.int32)), ms.Tensor(b["loss_mask"].astype(np.float32)),
                             ms.Tensor(np.float32(0.0)), ms.Tensor(denom), ms.Tensor(denom))
            lm = out[1]
            if self.dp > 1:
                lm = self._eval_reduce(lm) / self.dp
            losses.append(float(lm.asnumpy()))
        return float(np.mean(losses))

    def run(self, steps: Optional[int] = None) -> List[Dict]:
        """Train until `steps` (default: the config's total), logging and checkpointing as configured."""
        end = min(steps if steps is not None else self.tc.steps, self.tc.steps)
        if self.eval_loader is not None:
            self._eval_start = self.eval_loader.state_dict()
        metrics_path = os.path.join(self.out_dir, "metrics.jsonl")
        rows = []
        while self.step < end:
            full = next(self.loader)
            batch = self._slice(full)
            # normalise by the global batch's real targets so dp ranks average to the single-process loss
            m = full["loss_mask"].astype(np.float64)
            same = full["segment_ids"][:, :-1] == full["segment_ids"][:, 1:]
            lm_denom = max(m.sum(), 1.0) / self.dp
            mtp_denom = max((m[:, 1:] * same).sum(), 1.0) / self.dp
            # the optimiser counts the update it is about to make (step + 1): log and weigh with the same index
            mtp_w = float(self.schedule.mtp_weight_at(self.step + 1)) if self.tc.mtp else 0.0
            lr = float(self.schedule.lr_at(self.step + 1))
            t0 = time.perf_counter()
            loss, lm, mtp, bal, gnorm, imb, dropped = (float(o.asnumpy() if hasattr(o, "asnumpy") else o)
                                                       for o in self.step_fn(batch, mtp_w, lm_denom, mtp_denom))
            dt = time.perf_counter() - t0
            self.step += 1
            if not np.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {self.step}; lower lr or check the data "
                                         f"(last good checkpoint: {os.path.join(self.out_dir, 'latest')})")
            row = {"step": self.step, "loss": loss, "lm_loss": lm, "mtp_loss": mtp, "balance_loss": bal,
                   "tokens_per_s": self.tokens_per_step / dt, "grad_norm": gnorm, "lr": lr, "expert_imbalance": imb,
                   "dropped_tokens": int(round(dropped)), "dropped_frac": dropped / self.assignments_per_step}
            if self.step % self.tc.eval_every == 0 or self.step == end:
                row["eval_loss"] = self.evaluate()
            rows.append(row)
            if self.rank == 0:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                ev = f"  eval {row['eval_loss']:.4f}" if "eval_loss" in row else ""
                drop = f"  dropped {row['dropped_frac']:.1%}" if self.tc.moe_capacity_factor is not None else ""
                _log(f"step {self.step:>5}/{self.tc.steps}  loss {loss:.4f} (lm {lm:.4f} mtp {mtp:.4f} bal {bal:.3f})  "
                     f"lr {lr:.2e}  |g| {gnorm:.2f}  {row['tokens_per_s']:.0f} tok/s  imbalance {imb:.2f}{drop}{ev}")
            if self.step % self.tc.save_every == 0 or self.step == end:
                self.save()            # every rank: tp/ep slices are gathered collectively, rank 0 writes
        return rows
