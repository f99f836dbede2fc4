"""`ascend-v4 train`: the training run — config, data, model, compiled step, eval, metrics, checkpoints, resume.

A run is one YAML file; every key, its default and meaning: train/run_config.py (`ascend-v4 train --print-config`).
The defaults train the tiny preset on the embedded corpus from random weights; `init_from` starts from a release,
converted or trained checkpoint (train/init_from.py) and `freeze` leaves embedding / head / router alone.

Parallel runs are launched with msrun (world = dp·tp·pp processes; see README "Training"): dp splits the global batch
(batch_size sequences per dp rank), tp splits attention heads and expert FFN inter dims, ep (dividing dp) splits
the routed experts, pp splits the layers into pipeline stages (world = dp·tp·pp; see train/pipeline.py) and
micro_batches cuts each rank's batch for the pipeline schedule (with pp = 1: gradient accumulation). A parallel
run's losses, updates and checkpoints equal one process training the same global batch (up to float32 summation
order).

Seeing the run: a line when graph compilation starts and ends; per step loss, lr, grad norm, tokens/s, elapsed and
ETA. OUT/metrics.jsonl gets one JSON object per step (step, time (UTC ISO 8601), elapsed_s, loss, lm_loss, mtp_loss,
balance_loss, tokens_per_s, grad_norm, lr, expert_imbalance, expert_imbalance_layers (max/mean expert load per
routed layer, when the step reports it), dropped_tokens, dropped_frac; eval_loss on evaluation steps); the same
scalars go to TensorBoard event files in OUT/tensorboard (tensorboardX); `ascend-v4 plot OUT` draws them.
Rerunning the same command resumes from OUT/latest exactly (model, optimiser, schedule position, data position);
metrics.jsonl is cut back to the checkpoint's step first, and a resume that changes the schedule says what changes.
Checkpoints beyond `keep_last_n` are deleted oldest first; run files are group-readable.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from typing import Dict, List, Optional

import numpy as np


from ..atomic import atomic_write
from .state import TrainStateError
from .run_config import (DataConfig, ParallelConfig, TrainConfig, TrainConfigError,  # noqa: F401 (re-exported)
                         FREEZABLE)


def _log(msg: str) -> None:
    print(msg, flush=True)


def group_readable(path: str) -> None:
    """Add group read (and, for directories, traverse) permission: checkpoints and metrics are shared with the team
    whatever the umask."""
    try:
        mode = os.stat(path).st_mode
        os.chmod(path, mode | (0o050 if os.path.isdir(path) else 0o040))
    except OSError:
        pass


def group_readable_tree(path: str) -> None:
    """group_readable on a directory and everything under it (nothing if it does not exist)."""
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            group_readable(os.path.join(root, n))
    if os.path.isdir(path):
        group_readable(path)


def distributed(tc: TrainConfig):
    """(rank, world): initialises MindSpore communication when launched by msrun; a parallel layout without msrun
    is refused before MindSpore's collective init would fail on it."""
    p = tc.parallel
    need = p.dp * p.tp * p.pp
    if "MS_WORKER_NUM" not in os.environ:
        if need > 1:
            raise TrainConfigError(f"parallel dp·tp·pp = {p.dp}·{p.tp}·{p.pp} = {need} needs {need} processes: "
                                   f"launch with `msrun --worker_num {need} --local_worker_num {need} "
                                   f"$(which ascend-v4) train ...` or set parallel dp, tp and pp to 1")
        return 0, 1
    if p.pp > 1:
        # pipeline stages compile different graphs: a stage waits in the first stage transfer while its neighbour
        # still compiles (minutes for a V4.1 stage on a loaded CPU host), past MindSpore-CPU's collective timeout
        # (MS_CPU_COMM_OP_TIMEOUT, seconds); HCCL's own exec timeout applies on Ascend
        os.environ.setdefault("MS_CPU_COMM_OP_TIMEOUT", "1800")
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init
    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return get_rank(), get_group_size()


def _fmt_s(sec: float) -> str:
    sec = int(round(sec))
    h, rem = divmod(sec, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def apply_recompute(model) -> int:
    """Activation recompute (train `recompute: true`): MindSpore's Cell.recompute() on every main-model block this
    process holds (Transformer.run_layers calls the Block Cells, which is what recompute acts on), so the backward
    recomputes a block's activations from its input streams. Returns the number of blocks."""
    n = 0
    for i in model.local_layers:
        model.layers[i].recompute()
        n += 1
    return n


class TrainDivergedError(TrainStateError, FloatingPointError):
    """A non-finite loss: one `error:` line (a TrainStateError) naming the last good checkpoint."""


_SCHEDULE_KEYS = ("steps", "lr", "warmup_steps", "min_lr", "decay_start")


def schedule_changes(saved: Dict, tc: TrainConfig, step: int) -> List[str]:
    """What a resume with a different schedule (steps, lr, warm-up, floor, decay start) changes, in words."""
    from .schedule import Schedule
    diffs = [f"{k} {saved.get(k)} -> {getattr(tc, k)}" for k in _SCHEDULE_KEYS
             if k in saved and saved.get(k) != getattr(tc, k)]
    if not diffs:
        return []
    new = Schedule(peak_lr=tc.lr, total_steps=tc.steps, warmup_steps=tc.warmup_steps, min_lr=tc.min_lr,
                   decay_start=tc.decay_start)
    msg = f"{', '.join(diffs)}: the LR schedule is recomputed"
    try:
        old = Schedule(peak_lr=float(saved["lr"]), total_steps=int(saved["steps"]),
                       warmup_steps=int(saved["warmup_steps"]), min_lr=saved.get("min_lr"),
                       decay_start=saved.get("decay_start"))
        msg += (f"; lr at step {step + 1}: {old.lr_at(step + 1):.3e} -> {new.lr_at(step + 1):.3e}, the decay now "
                f"runs from step {new.start} to {new.total_steps} (was {old.start} to {old.total_steps})")
    except (KeyError, TypeError, ValueError):
        msg += f"; lr at step {step + 1} is now {new.lr_at(step + 1):.3e}"
    out = [msg]
    if step >= tc.steps:
        out.append(f"the checkpoint is at step {step}, already at or past steps {tc.steps}: nothing to train")
    return out


def truncate_metrics(path: str, step: int) -> int:
    """Drop metrics.jsonl rows after `step` (the steps a resume re-runs), atomically; returns rows dropped.
    A damaged line (a kill mid-write) is dropped too."""
    if not os.path.exists(path):
        return 0
    keep, dropped = [], 0
    with open(path) as fh:
        for line in fh:
            try:
                row = json.loads(line)
                ok = isinstance(row, dict) and int(row.get("step", 0)) <= step
            except (ValueError, TypeError):
                ok = False
            if ok:
                keep.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        with atomic_write(path, "w") as fh:
            fh.writelines(keep)
        group_readable(path)
    return dropped


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
        from ascend_v4.config import MODEL_VERSIONS
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

        tc.validate()        # a TrainConfig built in code meets the YAML's rules too (e.g. no ZeRO with the pipeline)
        self.tc, self.out_dir, self.rank, self.world = tc, out_dir, rank, world
        self.log = _log if rank == 0 else (lambda msg: None)
        from ascend_v4 import precision
        from ascend_v4.ops.registry import target
        if tc.precision == "bf16" and (target().device != "Ascend" or target().emulated):
            raise TrainConfigError("precision: bf16 needs an Ascend device (CPU has no bf16 matmul); use "
                                   "precision: bf16-emulated to test the bf16 recipe on CPU, or --device ascend")
        precision.set_policy(tc.precision)       # before the model is built: parameter dtypes, rounding points
        if tc.model is None and tc.init_from:
            from .init_from import source_config
            self.cfg = source_config(tc.init_from)       # the source's config.json, validated by config.py
        else:
            self.cfg = load_config(tc.model_spec(), versions=MODEL_VERSIONS)
        # DeepSeek-V4.1 (train/v41.py): the DSpark drafter for `mtp`, Engram tables on the host (rows split over tp)
        self.v41 = self.cfg.version == "v4.1"
        if self.v41:
            from .v41 import check_v41_run
            check_v41_run(tc, world, self.cfg)
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
        self.engram_map = None
        if self.v41 and self.cfg.engram_layer_ids:
            from .v41 import engram_token_map
            self.cfg, self.engram_map, note = engram_token_map(tok, self.cfg, bool(tc.init_from))
            if note:
                self.log(note)
        files = tc.data.files
        if not files:
            from .corpus import default_corpus_files
            files = default_corpus_files()
        # Every rank reads the same global batch and trains on its dp slice: dp=N equals one process with N x batch.
        gb = tc.batch_size * self.dp
        self.loader = PackedLoader(files, tok, tc.seq_len, gb, seed=tc.seed, split="train",
                                   eval_fraction=0.0 if tc.data.eval_files else tc.data.eval_fraction,
                                   cache_dir=os.path.join(out_dir, "cache"))
        self.eval_loader = None
        if tc.data.eval_files:           # a held-out file: every document of it, in order
            self.eval_loader = PackedLoader(tc.data.eval_files, tok, tc.seq_len, gb, seed=tc.seed, shuffle=False,
                                            cache_dir=os.path.join(out_dir, "cache"))
        elif tc.data.eval_fraction > 0:
            self.eval_loader = PackedLoader(files, tok, tc.seq_len, gb, seed=tc.seed, shuffle=False, split="eval",
                                            eval_fraction=tc.data.eval_fraction, corpus=self.loader.corpus)
        if rank == 0:           # the run directory, its demo tokenizer and token cache: shared with the group too
            group_readable(out_dir)
            for sub in ("tokenizer", "cache"):
                group_readable_tree(os.path.join(out_dir, sub))
        extra = {"with_dspark": tc.mtp} if self.v41 else {}
        self.model = Transformer(self.cfg, max_seq_len=tc.seq_len, with_mtp=tc.mtp,
                                 moe_capacity_factor=tc.moe_capacity_factor, parallel=self.parallel, **extra)
        self.model.set_train(True)
        random_names = [q.name for q in self.model.get_parameters()]
        self.init_report = None
        from . import state
        engram_tables = None
        if tc.init_from and state.latest(out_dir) is not None:
            self.log(f"init_from: not read - {out_dir} holds a checkpoint, the run resumes from it")
        elif tc.init_from:      # this rank's tensors only, one at a time; a source without MTP leaves MTP random
            from .init_from import load_initial_weights
            self.init_report = load_initial_weights(self.model, self.cfg, tc.init_from, self.parallel, log=self.log)
            random_names = self.init_report["random"]
            if self.v41 and self.cfg.engram_layer_ids:      # host-resident tables, outside the model's parameters
                from .v41 import load_engram_tables
                from .v41 import EngramSparseAdamW
                lo, hi = EngramSparseAdamW.ranges(self.cfg, self.parallel)[:2]
                engram_tables = load_engram_tables(self.cfg, tc.init_from, list(zip(lo, hi)))   # this rank's rows
            self.log(f"init_from: {self.init_report['loaded']} tensors from the {self.init_report['kind']} "
                     f"{self.init_report['path']} (optimiser state fresh)")
        if random_names:
            from ascend_v4.checkpoint.official import release_layout
            inv = release_layout(self.cfg)[0]
            init = random_weights(self.cfg, seed=tc.seed, names=[n for n in random_names if n in inv])
            for name in init:
                if name.endswith("ffn.gate.bias"):
                    init[name] = np.zeros_like(init[name])     # the balancer starts from an unbiased router
            if self.parallel is not None and self.parallel.sharded:   # this rank's slices of the full weights
                init = self.parallel.shard_weights(init, random_names)
            load_into(self.model, init, strict=False)
        bf16_storage = ()
        if precision.emulating():      # bf16-representable weights with fp32 masters, as Ascend stores them
            n = precision.round_stored_params(self.model)
            bf16_storage = tuple(q.name for q in self.model.get_parameters() if precision.stored_bf16(q.name))
            self.log(f"precision: bf16-emulated - {n} weights rounded to bf16 (fp32 masters in the optimiser), "
                     f"activations rounded where Ascend holds bf16")
        if tc.recompute:
            n = apply_recompute(self.model)
            self.log(f"recompute: {n} blocks recompute their activations in the backward")
        self.frozen = []
        if tc.freeze:
            from .init_from import freeze_parameters
            self.frozen = freeze_parameters(self.model, tc.freeze)
            self.log(f"freeze: {len(self.frozen)} parameters of {', '.join(tc.freeze)} stay fixed")
        self.schedule = Schedule(peak_lr=tc.lr, total_steps=tc.steps, warmup_steps=tc.warmup_steps,
                                 min_lr=tc.min_lr, decay_start=tc.decay_start)
        muon_tp = MuonTensorParallel(self.parallel) if self.parallel is not None and self.parallel.tp > 1 else None
        shard = None
        if p.optimizer_shard and p.dp > 1:       # ZeRO-1: state and update of each parameter on one dp rank
            from ascend_v4.parallel import OptimizerShard
            from .param_groups import FROZEN, classify_param
            shard = OptimizerShard(self.parallel, [q for q in self.model.get_parameters()
                                                   if classify_param(q)[0] != FROZEN])
        self.opt = MuonAdamW(self.model.get_parameters(), self.schedule, eps=tc.adam_eps, tensor_parallel=muon_tp,
                             shard=shard, bf16_storage=bf16_storage)
        if shard is not None:
            mine = sum(int(np.prod(q.shape)) for q in self.opt.state_parameters().values())
            full = sum(int(np.prod(sh)) for _, sh in self.opt.state_specs.values())
            self.log(f"optimizer_shard: ZeRO-1 over dp {p.dp}: rank 0 holds {mine:,} of {full:,} optimiser state "
                     f"values ({mine / max(full, 1):.0%})")
        import mindspore as ms
        self.pipelined = p.pp > 1 or p.micro_batches > 1
        bias_speed = 0.0 if "router" in tc.freeze else tc.bias_update_speed   # a frozen router keeps its bias too
        self.engram = None
        if self.v41:
            from .v41 import EngramSparseAdamW, V41Loss, V41TrainStep, engram_table_init
            if self.cfg.engram_layer_ids:
                tables = engram_tables if engram_tables is not None else engram_table_init(self.cfg, tc.seed)
                self.engram = EngramSparseAdamW(self.cfg, tables, eps=tc.adam_eps,
                                                weight_decay=tc.engram_weight_decay, token_map=self.engram_map,
                                                parallel=self.parallel, zero=shard is not None)
                if self.parallel is not None and (p.tp > 1 or shard is not None):
                    self.log(f"engram: rank 0 holds {self.engram.host_bytes() / 2 ** 20:,.1f} MiB of tables and "
                             f"optimiser state (rows split over tp {p.tp}"
                             f"{f', state over dp {p.dp}' if shard is not None else ''})")
            if self.pipelined:       # stages / micro-batches (train/pipeline.py)
                from .pipeline import V41PipelineTrainStep, V41StageLoss
                self.loss_net = V41StageLoss(self.model, tc.balance_alpha, tc.dspark_confidence_weight)
                self.step_fn = V41PipelineTrainStep(self.loss_net, self.opt, self.engram, self.schedule,
                                                    p.micro_batches, tc.max_grad_norm, bias_speed,
                                                    tc.engram_lr_scale, parallel=self.parallel)
            else:
                self.loss_net = V41Loss(self.model, tc.balance_alpha, tc.dspark_confidence_weight)
                self.step_fn = V41TrainStep(self.loss_net, self.opt, self.engram, self.schedule, tc.max_grad_norm,
                                            bias_speed, tc.engram_lr_scale, parallel=self.parallel)
        elif self.pipelined:
            from .pipeline import PipelineTrainStep
            self.step_fn = PipelineTrainStep(self.model, self.opt, p.micro_batches, tc.balance_alpha,
                                             tc.max_grad_norm, bias_speed, parallel=self.parallel)
        else:
            self.loss_net = V4Loss(self.model, tc.balance_alpha)
            self.step_fn = TrainStep(self.loss_net, self.opt, tc.max_grad_norm, bias_speed, self.dp,
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
        # the Engram state is gathered to rank 0 by every rank (a collective when its rows are split)
        path = state.save(self.out_dir, self.step, self.model, self.opt, self.trainer_state(), self.parallel,
                          extra=self.engram.checkpoint_writer() if self.engram is not None else None)
        if self.rank == 0:
            group_readable_tree(path)
            group_readable(os.path.join(self.out_dir, "latest"))
            if self.tc.keep_last_n:
                for old in state.checkpoints(self.out_dir)[:-self.tc.keep_last_n]:
                    if os.path.basename(old) != os.path.basename(path):
                        shutil.rmtree(old, ignore_errors=True)
        return path

    def maybe_resume(self) -> bool:
        from . import state
        ck = state.latest(self.out_dir)
        if ck is None:
            return False
        st = state.load(ck, self.model, self.opt, self.parallel)
        if self.engram is not None:
            self.engram.load(ck)
        if st.get("model_config") != self.cfg.to_dict():
            raise TrainConfigError(f"{ck} was trained with a different model config; use a new --out directory")
        try:
            self.loader.load_state_dict(st["data"])
        except Exception as e:        # a hand-edited or damaged data position
            raise state.TrainStateError(f"{ck}/trainer_state.json: the data position does not fit this run's data "
                                        f"({e}); resume with the same data or start a new --out directory") from None
        self.step = int(st["step"])
        for change in schedule_changes(st.get("train_config") or {}, self.tc, self.step):
            self.log(f"resume: {change}")
        if self.rank == 0:
            truncate_metrics(os.path.join(self.out_dir, "metrics.jsonl"), self.step)
        return True

    # ------------------------------------------------------------------ loop
    def evaluate(self) -> float:
        import mindspore as ms
        if self.eval_loader is None:
            return float("nan")
        self.eval_loader.load_state_dict(self._eval_start)
        first = not getattr(self, "_eval_compiled", False)
        if first:
            self.log("compiling the eval graph (the first evaluation)...")
            t0 = time.perf_counter()
        losses = []
        for _ in range(self.tc.eval_batches):
            full = next(self.eval_loader)
            b = self._slice(full)
            # as in training: normalise by the global batch's real targets / dp, so the dp mean is the global loss
            denom = np.float32(max(full["loss_mask"].astype(np.float64).sum(), 1.0) / self.dp)
            if self.pipelined or self.v41:
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
        if first:
            self._eval_compiled = True
            self.log(f"compiled and ran the first evaluation in {time.perf_counter() - t0:.1f} s")
        return float(np.mean(losses))

    def _tensorboard(self):
        if self.rank != 0 or not self.tc.tensorboard:
            return None
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise TrainConfigError("tensorboard: true needs the tensorboardX package (pip install tensorboardX, "
                                   "or set tensorboard: false)") from None
        logdir = os.path.join(self.out_dir, "tensorboard")
        os.makedirs(logdir, exist_ok=True)
        group_readable(logdir)
        return SummaryWriter(logdir, purge_step=self.step + 1)   # a resume drops events after the checkpoint

    def run(self, steps: Optional[int] = None) -> List[Dict]:
        """Train until `steps` (default: the config's total), logging and checkpointing as configured."""
        end = min(steps if steps is not None else self.tc.steps, self.tc.steps)
        if self.eval_loader is not None:
            self._eval_start = self.eval_loader.state_dict()
        metrics_path = os.path.join(self.out_dir, "metrics.jsonl")
        tb = self._tensorboard()
        rows = []
        first_step, t_start, t_compiled = self.step, time.perf_counter(), None
        try:
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
                if t_compiled is None:
                    self.log("compiling the train step graph (the first step; can take minutes on a large model)...")
                t0 = time.perf_counter()
                extra = {"full": full} if self.v41 else {}        # V4.1: Engram rows of the whole global batch
                loss, lm, mtp, bal, gnorm, imb, dropped = (float(o.asnumpy() if hasattr(o, "asnumpy") else o)
                                                           for o in self.step_fn(batch, mtp_w, lm_denom, mtp_denom,
                                                                                 **extra))
                t1 = time.perf_counter()
                dt = t1 - t0
                if t_compiled is None:
                    t_compiled = t1
                    self.log(f"compiled and ran the first step in {dt:.1f} s")
                self.step += 1
                if not np.isfinite(loss):
                    raise TrainDivergedError(f"loss became {loss} at step {self.step}; lower lr or check the data "
                                             f"(last good checkpoint: {os.path.join(self.out_dir, 'latest')})")
                # ETA from the steps after the compiled first one (the first includes compilation)
                done_after = self.step - first_step - 1
                per_step = (t1 - t_compiled) / done_after if done_after > 0 else dt
                elapsed = t1 - t_start
                row = {"step": self.step, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
                           timespec="milliseconds"), "elapsed_s": round(elapsed, 3),
                       "loss": loss, "lm_loss": lm, "mtp_loss": mtp, "balance_loss": bal,
                       "tokens_per_s": self.tokens_per_step / dt, "grad_norm": gnorm, "lr": lr,
                       "expert_imbalance": imb, "dropped_tokens": int(round(dropped)),
                       "dropped_frac": dropped / self.assignments_per_step}
                layers = getattr(self.step_fn, "last_layer_imbalance", None)
                if layers is not None:
                    row["expert_imbalance_layers"] = [round(float(v), 5) for v in layers]
                if self.eval_loader is not None and (self.step % self.tc.eval_every == 0 or self.step == end):
                    row["eval_loss"] = self.evaluate()
                rows.append(row)
                if self.rank == 0:
                    new = not os.path.exists(metrics_path)
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    if new:
                        group_readable(metrics_path)
                    if tb is not None:
                        for k, v in row.items():
                            if isinstance(v, (int, float)) and k not in ("step", "elapsed_s"):
                                tb.add_scalar(f"train/{k}" if k != "eval_loss" else "eval/loss", v, self.step)
                        for i, v in enumerate(row.get("expert_imbalance_layers", ())):
                            tb.add_scalar(f"expert_imbalance/layer{i}", v, self.step)
                    ev = f"  eval {row['eval_loss']:.4f}" if "eval_loss" in row else ""
                    drop = f"  dropped {row['dropped_frac']:.1%}" if self.tc.moe_capacity_factor is not None else ""
                    eta = _fmt_s(per_step * (end - self.step)) if done_after > 0 or self.step == end else "-"
                    _log(f"step {self.step:>5}/{self.tc.steps}  loss {loss:.4f} (lm {lm:.4f} mtp {mtp:.4f} "
                         f"bal {bal:.3f})  lr {lr:.2e}  |g| {gnorm:.2f}  {row['tokens_per_s']:.0f} tok/s  "
                         f"imbalance {imb:.2f}{drop}{ev}  elapsed {_fmt_s(elapsed)}  ETA {eta}")
                if self.step % self.tc.save_every == 0 or self.step == end:
                    self.save()            # every rank: tp/ep slices are gathered collectively, rank 0 writes
        finally:
            if tb is not None:
                tb.close()
                group_readable_tree(os.path.join(self.out_dir, "tensorboard"))
        return rows
