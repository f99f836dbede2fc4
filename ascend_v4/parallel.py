"""Hand-written tensor (tp) and expert (ep) parallelism next to data parallelism (dp), for the training runtime.

MindSpore's semi-auto parallel and `.shard()` are refused on CPU, so the model is sharded by hand and the
communication is explicit collectives (docs/design.md). Layout of the dp·tp·pp ranks:

    rank = pp_rank · dp·tp + dp_rank · tp + tp_rank    tensor-parallel ranks are neighbours, stages outermost
    ep divides dp: ep_rank = dp_rank mod ep            experts are split across data-parallel ranks

Inside a pipeline stage the groups below are those of a dp·tp job offset by the stage's first rank; pp (the same
dp/tp coordinates in every stage) and emb (first and last stage: the embedding and its MTP copy) cross stages.
Stage split, schedule and checkpoint merge: `stage_layers`, train/pipeline.py, `gather_stages`.

The groups of a rank: tp (same dp_rank), dp (same tp_rank), ep (same tp_rank, same block of ep dp-ranks),
edp (the replicas of one expert shard: same tp_rank and ep_rank, dp/ep ranks) and etp (all distinct expert shards:
the tp·ep ranks of one ep block). A group of one rank has no collective (None); a group spanning all ranks is
the world group; other groups come from `mindspore.communication.create_group`. On CPU, MindSpore's AllGather only
runs on the world group (AllReduce runs on sub-groups), so sub-group gathers are an AllReduce of a zero buffer
holding this rank's block (exact: the other ranks contribute zeros). Verified on CPU with 2 and 4 msrun workers:
tp=2, dp=2·ep=2, dp=2·tp=2·ep=2 and dp=4·ep=2 (tests/train/test_msrun_parallel.py).

Tensor parallel (Megatron style): attention heads (wq_b rows, attn_sink, wo_a output groups) and the expert
FFNs' inter dimension (w1/w3 rows, w2 columns; routed and shared) are split over tp; everything else (wq_a, q_norm,
the single KV head, compressor, indexer, router, mHC, embedding, head) is replicated. The conjugate collectives
`CopyToTensorParallel` (forward identity, backward AllReduce) and `ReduceFromTensorParallel` (forward AllReduce,
backward identity) bracket each split region. Expert parallel: rank ep_rank holds experts
[ep_rank·E/ep, (ep_rank+1)·E/ep) under their global names and dispatches through ExpertParallelMoeExperts.

Parameters keep their official names and hold this rank's slice: `shard_weights` slices full tensors,
`gather_full` (a collective: every rank calls it) rebuilds the full official tensors for checkpoints.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Tensor
from mindspore.ops import composite as C, functional as F

from .train.optim import sq_sum


class ParallelConfigError(ValueError):
    """A parallel layout that cannot run (one line, says what to change)."""


# ------------------------------------------------------------------------------------------------ layout rules
_P = r"(?:^|\.)"
_TP_RULES: Tuple[Tuple[re.Pattern, int], ...] = tuple((re.compile(p), d) for p, d in (
    (_P + r"attn\.wq_b\.weight$", 0),            # [H·hd, q_lora]: rows by head
    (_P + r"attn\.attn_sink$", 0),               # [H]
    (_P + r"attn\.wo_a\.weight$", 0),            # [G·r, H/G·hd]: rows by output group (group-major)
    (_P + r"attn\.wo_b\.weight$", 1),            # [D, G·r]: input columns by output group
    (_P + r"ffn\.(?:experts\.\d+|shared_experts)\.w[13]\.weight$", 0),   # [I, D]
    (_P + r"ffn\.(?:experts\.\d+|shared_experts)\.w2\.weight$", 1),      # [D, I]
))
_EXPERT = re.compile(r"^(.*" + _P + r"ffn\.experts\.)(\d+)(\.w[123]\.weight)$")
_OPT_PREFIX = re.compile(r"^(?:muon_m|adam_m|adam_v|master)\.")
_LAYER = re.compile(r"^layers\.(\d+)\.")


def stage_layers(n_layers: int, pp: int, stage: int, cfg=None) -> range:
    """Main-model layers of pipeline stage `stage`: contiguous, the first n_layers mod pp stages one larger (the
    last stage also holds the final norm, head and MTP, so it gets the smaller share). A DeepSeek-V4.1 cfg: the
    split of v41_stage_starts."""
    if cfg is not None and cfg.version == "v4.1" and pp > 1:
        starts = v41_stage_starts(cfg, pp) + (n_layers,)
        return range(starts[stage], starts[stage + 1])
    base, extra = divmod(n_layers, pp)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (1 if stage < extra else 0))


def v41_stage_cuts(cfg) -> Tuple[int, ...]:
    """The layers a DeepSeek-V4.1 pipeline stage may start at (docs/training.md, "DeepSeek-V4.1"): only the mHC
    streams and the last block's FFN `pre` cross a stage boundary, so no layer at or after the cut may read CSA-v2
    state of a layer before it (the compressed KV / index keys of its kv source, the top-k of its index source, the
    level-1 candidate mask of candidate_source_layer), and the DSpark target layers stay on the last stage (the
    drafter runs there). Engram needs only the token ids, which every stage has."""
    c = cfg.candidate_source_layer
    index_after = lambda b: any(s >= b for s in cfg.index_source_layers)     # noqa: E731
    cuts = []
    for b in range(1, cfg.n_layers):
        if cfg.n_mtp_layers and any(t < b for t in cfg.dspark_target_layer_ids):
            continue
        if any(cfg.ratio(i) and min(cfg.kv_source(i), cfg.index_source(i)) < b for i in range(b, cfg.n_layers)):
            continue
        if 0 <= c < b and index_after(b):
            continue
        cuts.append(b)
    return tuple(cuts)


def v41_stage_starts(cfg, pp: int) -> Tuple[int, ...]:
    """First layer of each of the pp stages of a DeepSeek-V4.1 model: pp - 1 of v41_stage_cuts, chosen so the
    largest stage is as small as possible (ties: the later stages smaller, as stage_layers does). Raises
    ParallelConfigError when there are not enough cuts."""
    cuts = v41_stage_cuts(cfg)
    if pp - 1 > len(cuts):
        raise ParallelConfigError(
            f"DeepSeek-V4.1 {cfg.name} splits into at most {len(cuts) + 1} pipeline stage(s): a stage may start "
            f"only at layer(s) {list(cuts)} (a boundary cannot separate a CSA-v2 kv / index / candidate source from "
            f"the layers reusing its state, and the DSpark target layers {list(cfg.dspark_target_layer_ids)} stay "
            f"on the last stage); set parallel.pp <= {len(cuts) + 1}")
    n = cfg.n_layers
    pos = (0,) + cuts
    # best[k][j]: the smallest largest-stage size splitting layers pos[j].. into k stages (k - 1 cuts after pos[j])
    best = {(1, j): (n - pos[j], ()) for j in range(len(pos))}
    for k in range(2, pp + 1):
        for j in range(len(pos)):
            opts = [(max(pos[i] - pos[j], best[(k - 1, i)][0]), -pos[i], (pos[i],) + best[(k - 1, i)][1])
                    for i in range(j + 1, len(pos)) if (k - 1, i) in best]
            if opts:
                size, _, rest = min(opts)
                best[(k, j)] = (size, rest)
    return (0,) + best[(pp, 0)][1]


def stages_holding(name: str, n_layers: int, pp: int, with_mtp: bool, cfg=None) -> Tuple[int, ...]:
    """The pipeline stages holding parameter (or optimiser-state) `name`. The embedding lives on the first stage
    and, when MTP (DeepSeek-V4.1: the DSpark drafter) is trained, a copy on the last (it embeds tokens too; the
    copies' gradients are summed so they stay equal). Names outside the model (the optimiser's step counter) are
    on every stage. cfg: the model's config (DeepSeek-V4.1's stage split)."""
    n = _OPT_PREFIX.sub("", name)
    last = pp - 1
    m = _LAYER.match(n)
    if m:
        i = int(m.group(1))
        return tuple(s for s in range(pp) if i in stage_layers(n_layers, pp, s, cfg))
    if n.startswith("mtp."):
        return (last,)
    if n.startswith("embed."):
        return (0, last) if with_mtp and last > 0 else (0,)
    if n.startswith(("norm.", "head.", "hc_head_")):
        return (last,)
    return tuple(range(pp))


def tp_dim(name: str) -> Optional[int]:
    """The dimension a tensor-parallel run splits `name` along (None = replicated). Optimiser state names
    (muon_m.X, adam_m.X, ...) follow their parameter X."""
    for pat, d in _TP_RULES:
        if pat.search(name):
            return d
    return None


def expert_index(name: str) -> Optional[int]:
    """Global routed-expert index of an expert matrix name (or of its optimiser state), else None."""
    m = _EXPERT.match(name)
    return int(m.group(2)) if m else None


def _expert_name(name: str, e: int) -> str:
    m = _EXPERT.match(name)
    return f"{m.group(1)}{e}{m.group(3)}"


def routed_experts_of(cfg) -> Callable[[str], int]:
    """name -> the number of routed experts of the MoE layer holding expert matrix `name` (or its optimiser
    state): DeepSeek-V4.1's DSpark stages (mtp.k) have their own count (model.moe_sizes)."""
    from .model import moe_sizes

    def count(name: str) -> int:
        m = re.match(r"^(layers|mtp)\.(\d+)\.", _OPT_PREFIX.sub("", name))
        layer = 0 if m is None else int(m.group(2)) + (cfg.n_layers if m.group(1) == "mtp" else 0)
        return moe_sizes(cfg, layer)[0]
    return count


def _count(n_experts, name: str) -> int:
    return n_experts(name) if callable(n_experts) else n_experts


# ------------------------------------------------------------------------------------------------ context
@dataclass
class ParallelContext:
    """dp/tp/ep sizes, this rank's coordinates and communication groups. Build with `create` (a launched job)
    or `simulated` (one process playing one rank, collectives replaced by identities: unit tests of the math)."""
    dp: int = 1
    tp: int = 1
    ep: int = 1
    pp: int = 1
    rank: int = 0
    world: int = 1
    simulated: bool = False
    device: str = "CPU"
    groups: Dict[str, Optional[str]] = field(default_factory=dict)
    # a simulated rank with ep > 1 has no collectives to exchange tokens: whoever simulates it (the tests) passes
    # routed_experts(cfg, capacity_factor) -> the routed-experts Cell of this rank
    routed_experts: Optional[Callable] = None

    # ---------------------------------------------------------------- coordinates
    @property
    def stage_size(self) -> int:
        """Ranks per pipeline stage (dp·tp)."""
        return self.dp * self.tp

    @property
    def pp_rank(self) -> int:
        return self.rank // self.stage_size

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def dp_rank(self) -> int:
        return (self.rank % self.stage_size) // self.tp

    @property
    def ep_rank(self) -> int:
        return self.dp_rank % self.ep

    @property
    def sharded(self) -> bool:
        """Whether parameters differ between ranks (tp or ep > 1)."""
        return self.tp > 1 or self.ep > 1

    def group_ranks(self, kind: str) -> Tuple[int, ...]:
        tp, ep, t, d = self.tp, self.ep, self.tp_rank, self.dp_rank
        if kind == "pp":        # the same (dp_rank, tp_rank) in every stage
            return tuple(s * self.stage_size + self.rank % self.stage_size for s in range(self.pp))
        if kind == "emb":       # the embedding's two holders (first stage, last stage when MTP needs a copy)
            if self.pp > 1 and (self.first_stage or self.last_stage):
                return tuple(s * self.stage_size + self.rank % self.stage_size for s in (0, self.pp - 1))
            return (self.rank,)
        base = self.pp_rank * self.stage_size
        block = d // ep
        if kind == "tp":
            local = (d * tp + i for i in range(tp))
        elif kind == "dp":
            local = (j * tp + t for j in range(self.dp))
        elif kind == "ep":
            local = ((block * ep + j) * tp + t for j in range(ep))
        elif kind == "edp":
            local = (j * tp + t for j in range(self.dp) if j % ep == self.ep_rank)
        elif kind == "etp":
            local = ((block * ep + j) * tp + i for j in range(ep) for i in range(tp))
        else:
            raise KeyError(kind)
        return tuple(base + r for r in local)

    def size(self, kind: str) -> int:
        return len(self.group_ranks(kind))

    def group(self, kind: str) -> Optional[str]:
        """Communication group name of `kind` (None: a single rank, no collective needed)."""
        if self.size(kind) == 1:
            return None
        if self.simulated:
            return None
        return self.groups[kind]

    def world_group_name(self) -> str:
        from mindspore.communication import GlobalComm
        return GlobalComm.WORLD_COMM_GROUP

    def is_world(self, kind: str) -> bool:
        return self.size(kind) == self.world

    # ---------------------------------------------------------------- construction
    @staticmethod
    def check(cfg, dp: int, tp: int, ep: int, pp: int = 1, world: Optional[int] = None) -> None:
        """Raise ParallelConfigError (one line) for a layout the runtime cannot run."""
        if world is not None and dp * tp * pp != world:
            raise ParallelConfigError(f"dp·tp·pp = {dp}·{tp}·{pp} = {dp * tp * pp} but {world} process(es) run; "
                                      f"launch `msrun --worker_num {dp * tp * pp}` or change parallel.dp/tp/pp")
        if pp > cfg.n_layers:
            raise ParallelConfigError(f"pp {pp} exceeds n_layers {cfg.n_layers}: every pipeline stage needs a layer")
        if cfg.version == "v4.1" and pp > 1:
            v41_stage_starts(cfg, pp)
        if cfg.n_heads % tp:
            raise ParallelConfigError(f"n_heads {cfg.n_heads} is not divisible by tp {tp}")
        if cfg.o_groups % tp:
            raise ParallelConfigError(f"o_groups {cfg.o_groups} is not divisible by tp {tp} "
                                      f"(wo_a is split by output group)")
        if cfg.moe_inter_dim % tp:
            raise ParallelConfigError(f"moe_inter_dim {cfg.moe_inter_dim} is not divisible by tp {tp}")
        if cfg.n_routed_experts % ep:
            raise ParallelConfigError(f"n_routed_experts {cfg.n_routed_experts} is not divisible by ep {ep}")
        if cfg.version == "v4.1" and cfg.n_mtp_layers and cfg.dspark_n_routed_experts % ep:
            raise ParallelConfigError(f"dspark_n_routed_experts {cfg.dspark_n_routed_experts} is not divisible by "
                                      f"ep {ep}")
        if dp % ep:
            raise ParallelConfigError(f"ep {ep} must divide dp {dp}: the trainer splits experts across data-parallel "
                                      f"ranks (ep over tensor-parallel ranks is not implemented)")

    @classmethod
    def simulated_rank(cls, cfg, dp: int = 1, tp: int = 1, ep: int = 1, rank: int = 0) -> "ParallelContext":
        """One rank of a layout inside a single process, without communication (tests of slicing and math).
        A model built on it with ep > 1 takes its routed experts from `routed_experts` (see the field)."""
        cls.check(cfg, dp, tp, ep)
        return cls(dp=dp, tp=tp, ep=ep, rank=rank, world=dp * tp, simulated=True)

    @classmethod
    def pipeline_stage(cls, cfg, pp: int, pp_rank: int) -> "ParallelContext":
        """One pipeline stage (dp = tp = 1) inside a single process, without communication (tests)."""
        cls.check(cfg, 1, 1, 1, pp)
        return cls(pp=pp, rank=pp_rank, world=pp, simulated=True)

    @classmethod
    def create(cls, cfg, dp: int, tp: int, ep: int, pp: int, rank: int, world: int,
               device: Optional[str] = None) -> "ParallelContext":
        """The context of a launched job (communication initialised): validates, then creates the groups."""
        cls.check(cfg, dp, tp, ep, pp, world)
        if device is None:
            device = ms.get_context("device_target") or "CPU"
        ctx = cls(dp=dp, tp=tp, ep=ep, pp=pp, rank=rank, world=world, device=device)
        ctx._init_groups()
        return ctx

    def _init_groups(self) -> None:
        from mindspore.communication import create_group
        for kind in ("tp", "dp", "ep", "edp", "etp", "pp", "emb"):
            ranks = self.group_ranks(kind)
            if len(ranks) == 1:
                self.groups[kind] = None
            elif len(ranks) == self.world:
                self.groups[kind] = self.world_group_name()
            else:
                name = "v4_" + "_".join(str(r) for r in ranks)
                if name not in self.groups.values():
                    try:
                        create_group(name, list(ranks))
                    except Exception as e:
                        raise ParallelConfigError(f"cannot create the {kind} communication group {list(ranks)} "
                                                  f"({str(e).splitlines()[0]}); use a layout whose groups span all "
                                                  f"ranks (only one of dp/tp > 1, or ep = dp)") from None
                self.groups[kind] = name

    # ---------------------------------------------------------------- pipeline stages
    @property
    def first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    def stage_layers(self, n_layers: int, cfg=None) -> range:
        return stage_layers(n_layers, self.pp, self.pp_rank, cfg)

    def gather_stages(self, local: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Collective over the pp group (every member calls it with its stage's tensors: float32, or int32 below
        2^24): the union of all stages' tensors on every member; a name held by several stages (the embedding copy, the step
        counter) is taken from the lowest stage. Names and shapes travel as a JSON manifest encoded in float32
        (exact: byte values), so the stages need not know each other's parameters."""
        if self.pp == 1 or self.simulated:
            return dict(local)
        names = sorted(local)
        for n in names:
            if local[n].dtype not in (np.float32, np.int32):
                raise TypeError(f"gather_stages supports float32/int32 tensors only, '{n}' is {local[n].dtype}")
            if local[n].dtype == np.int32 and local[n].size and np.abs(local[n]).max() >= 1 << 24:
                raise ValueError(f"gather_stages: int32 '{n}' exceeds 2^24 (it travels as float32)")
        import json
        manifest = json.dumps([[n, list(local[n].shape), local[n].dtype.str] for n in names]).encode()
        data = np.concatenate([local[n].reshape(-1).astype(np.float32) for n in names]) if names else \
            np.zeros(0, np.float32)
        sizes = self._pp_sum(np.array([[len(manifest), data.size]], np.float32), 2)
        mlen, dlen = int(sizes[:, 0].max()), int(sizes[:, 1].max())
        mbuf = np.zeros(mlen, np.float32)
        mbuf[:len(manifest)] = np.frombuffer(manifest, np.uint8)
        dbuf = np.zeros(dlen, np.float32)
        dbuf[:data.size] = data
        manifests = self._pp_sum(mbuf[None], mlen)
        datas = self._pp_sum(dbuf[None], dlen)
        out: Dict[str, np.ndarray] = {}
        for s in range(self.pp):
            entries = json.loads(manifests[s][:int(sizes[s, 0])].astype(np.uint8).tobytes())
            k = 0
            for n, shape, dt in entries:
                size = int(np.prod(shape, dtype=np.int64))
                if n not in out:
                    out[n] = datas[s][k:k + size].astype(np.dtype(dt)).reshape(shape)
                k += size
        return out

    def _pp_sum(self, row: np.ndarray, width: int) -> np.ndarray:
        """[pp, width] with this stage's `row` in its slot and the other stages' rows (AllReduce of a zero
        buffer: the only collective MindSpore-CPU runs on sub-groups). Values are moved exactly (each slot has one
        contributor; adding zeros only turns -0.0 into +0.0)."""
        buf = np.zeros((self.pp, width), np.float32)
        buf[self.pp_rank] = row.reshape(-1)
        return ops.AllReduce(ops.ReduceOp.SUM, self.group("pp"))(Tensor(buf)).asnumpy()

    # ---------------------------------------------------------------- experts
    def local_experts(self, n_experts: int) -> Tuple[int, ...]:
        n = n_experts // self.ep
        return tuple(range(self.ep_rank * n, (self.ep_rank + 1) * n))

    # ---------------------------------------------------------------- weights
    def owns(self, name: str, n_experts) -> bool:
        """Whether this rank holds (a slice of) the full tensor `name`. n_experts: the routed-expert count, or
        name -> count (routed_experts_of) when layers differ."""
        e = expert_index(name)
        return e is None or self.ep == 1 or e in self.local_experts(_count(n_experts, name))

    def shard(self, name: str, full: np.ndarray) -> np.ndarray:
        """This rank's tensor-parallel slice of the full tensor `name` (the tensor itself when replicated)."""
        d = tp_dim(name)
        if d is None or self.tp == 1:
            return full
        n = full.shape[d]
        if n % self.tp:
            raise ParallelConfigError(f"'{name}' has {n} entries along dim {d}, not divisible by tp {self.tp}")
        k = n // self.tp
        sl = [slice(None)] * full.ndim
        sl[d] = slice(self.tp_rank * k, (self.tp_rank + 1) * k)
        return np.ascontiguousarray(full[tuple(sl)])

    def shard_weights(self, full: Dict[str, np.ndarray], names: Iterable[str]) -> Dict[str, np.ndarray]:
        """{name: this rank's slice} for the local parameter `names`; a name missing from `full` is skipped
        (the caller's strict loader reports it)."""
        return {n: self.shard(n, full[n]) for n in names if n in full}

    def full_names(self, local_names: Iterable[str], n_experts) -> List[str]:
        """The full (all ranks') names behind this rank's `local_names`: local experts expand to every expert
        (n_experts as for `owns`)."""
        out = set()
        for n in local_names:
            if expert_index(n) is not None and self.ep > 1:
                out.update(_expert_name(n, e) for e in range(_count(n_experts, n)))
            else:
                out.add(n)
        return sorted(out)

    def gather_full(self, local: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Collective (every rank calls it with its own slices of the same tensors): the full tensors, under
        their full names, on every rank. Tensor-parallel slices are gathered over tp, then the expert blocks
        over ep; replicated tensors are returned as they are. float32 only."""
        out = dict(local)
        if self.tp > 1:
            names = sorted(n for n in out if tp_dim(n) is not None)
            gathered = self._host_gather([np.moveaxis(out[n], tp_dim(n), 0) for n in names], "tp")
            for i, n in enumerate(names):
                full0 = np.concatenate([gathered[r][i] for r in range(self.tp)], 0)
                out[n] = np.ascontiguousarray(np.moveaxis(full0, 0, tp_dim(n)))
        if self.ep > 1:
            mine = [n for n in out if expert_index(n) is not None]
            # per MoE layer (experts.{e}.w* of one module; DeepSeek-V4.1's drafter has fewer experts than its
            # backbone): this rank holds a contiguous block of per_rank experts starting at first
            blocks: Dict[str, List[int]] = {}
            for n in mine:
                blocks.setdefault(_expert_name(n, 0), []).append(expert_index(n))
            first = {k: min(v) for k, v in blocks.items()}
            per_rank = {k: len(v) for k, v in blocks.items()}
            # the same order on every ep rank: by name with the expert's local position
            local = {n: _expert_name(n, expert_index(n) - first[_expert_name(n, 0)]) for n in mine}
            names = sorted(mine, key=lambda n: local[n])
            gathered = self._host_gather([out.pop(n) for n in names], "ep")
            for r in range(self.ep):
                for i, n in enumerate(names):
                    k = _expert_name(n, 0)
                    out[_expert_name(n, r * per_rank[k] + expert_index(local[n]))] = gathered[r][i]
        return out

    def host_gather(self, arrays: List[np.ndarray], kind: str) -> List[List[np.ndarray]]:
        """Collective (every member of group `kind` calls it): float32 `arrays` of the same shapes on every
        member -> [member][i], in the group's rank order."""
        return self._host_gather(arrays, kind)

    def _host_gather(self, arrays: List[np.ndarray], kind: str) -> List[List[np.ndarray]]:
        """Eager gather over group `kind` of float32 arrays (the same shapes on every member) -> [member][i]."""
        size = self.size(kind)
        if self.simulated or size == 1 or not arrays:
            return [list(arrays)] * size
        for a in arrays:
            if a.dtype != np.float32:
                raise TypeError(f"parallel gather supports float32 tensors only, got {a.dtype}")
        flat = np.concatenate([a.reshape(-1) for a in arrays])
        group = self.group(kind)
        if self.device != "CPU" or self.is_world(kind):
            g = ops.AllGather(group)(Tensor(flat)).asnumpy().reshape(size, -1)
        else:
            buf = np.zeros((size, flat.size), np.float32)
            buf[self.group_ranks(kind).index(self.rank)] = flat
            g = ops.AllReduce(ops.ReduceOp.SUM, group)(Tensor(buf)).asnumpy()
        out = []
        for r in range(size):
            k, parts = 0, []
            for a in arrays:
                parts.append(g[r, k:k + a.size].reshape(a.shape).copy())
                k += a.size
            out.append(parts)
        return out


# ------------------------------------------------------------------------------------------------ graph Cells
class _TensorParallelEdge(nn.Cell):
    """An AllReduce(sum) over the tp group, or nothing when this rank is its own tp group."""

    def __init__(self, ctx: ParallelContext):
        super().__init__()
        group = ctx.group("tp")
        self.enabled = group is not None
        if self.enabled:
            self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, group)


class CopyToTensorParallel(_TensorParallelEdge):
    """Enter a tensor-parallel region: forward identity, backward AllReduce(sum) over tp of the partial input
    gradients (each rank's heads / inter-dim slice contribute one part). MindSpore's AllReduce bprop is not the
    conjugate: it would AllReduce the already identical output gradient and multiply it by tp."""

    def construct(self, x):
        return x

    def bprop(self, x, out, dout):
        if self.enabled:
            return (self.all_reduce(dout),)
        return (dout,)


class ReduceFromTensorParallel(_TensorParallelEdge):
    """Leave a tensor-parallel region: forward AllReduce(sum) over tp of the partial outputs, backward identity
    (the output gradient is the same on every tp rank)."""

    def construct(self, x):
        if self.enabled:
            return self.all_reduce(x)
        return x

    def bprop(self, x, out, dout):
        return (dout,)


class GroupCollectives:
    """What a graph needs to gather along dim 0 over group `kind`: `op` (AllGather when native, else an AllReduce
    of a zero buffer holding this rank's block — MindSpore-CPU gathers only over the world group), `native`,
    `size`, `me` (this rank's position); MuonAdamW's tensor-parallel gather uses them."""

    def __init__(self, ctx: ParallelContext, kind: str):
        self.size = ctx.size(kind)
        self.me = ctx.group_ranks(kind).index(ctx.rank)
        group = ctx.group(kind)
        self.enabled = group is not None
        self.native = ctx.device != "CPU" or ctx.is_world(kind)
        self.op = None
        if self.enabled:
            self.op = ops.AllGather(group) if self.native else ops.AllReduce(ops.ReduceOp.SUM, group)


# ---- gradient reduction and clipping (HyperMap over the gradient tuple, as nn.DistributedGradReducer does)
_reduce_grad = C.MultitypeFuncGraph("v4_reduce_grad")


@_reduce_grad.register("Function", "Function", "Number", "Tensor", "Number")
def _reduce_grad_fn(ar_dp, ar_edp, scale, g, kind):
    """kind 0: no collective; 1: AllReduce over dp; 2: AllReduce over the expert replicas (edp). Then x scale."""
    if kind == 1:
        g = ar_dp(g)
    elif kind == 2:
        g = ar_edp(g)
    return g * ops.cast(scale, g.dtype)


_pick = C.MultitypeFuncGraph("v4_pick")


@_pick.register("Tuple", "Number")
def _pick_fn(tup, i):
    return tup[i]


_mul = C.MultitypeFuncGraph("v4_mul")


@_mul.register("Tensor", "Tensor")
def _mul_fn(s, g):
    return g * ops.cast(s, g.dtype)


class GradReducer(nn.Cell):
    """Gradients of the rank's loss share -> gradients of the global-batch loss, identical on every replica.

    Non-expert parameters (replicated or tp-sliced) are averaged over dp. A local expert's gradient under ep
    already sums the tokens of its whole ep group (the dispatch gathers them), so it is summed over the other
    replicas of the same expert shard (edp, dp/ep ranks; none when ep = dp) and divided by dp — never averaged
    over dp, which would mix different experts. Every rank must hold the same parameter order."""

    def __init__(self, ctx: ParallelContext, params):
        super().__init__(auto_prefix=False)
        kinds = []
        for p in params:
            if ctx.ep > 1 and expert_index(p.name) is not None:
                kinds.append(2 if ctx.group("edp") is not None else 0)
            else:
                kinds.append(1 if ctx.group("dp") is not None else 0)
        self.kinds = tuple(kinds)
        world = ops.AllReduce(ops.ReduceOp.SUM)
        self.ar_dp = ops.AllReduce(ops.ReduceOp.SUM, ctx.group("dp")) if ctx.group("dp") is not None else world
        self.ar_edp = ops.AllReduce(ops.ReduceOp.SUM, ctx.group("edp")) if ctx.group("edp") is not None else world
        self.scale = 1.0 / ctx.dp
        self.hyper_map = C.HyperMap()

    def construct(self, grads):
        return self.hyper_map(F.partial(_reduce_grad, self.ar_dp, self.ar_edp, self.scale), grads, self.kinds)


_flat_piece = C.MultitypeFuncGraph("v4_flat_piece")


@_flat_piece.register("Tuple", "Number")
def _flat_piece_fn(tup, i):
    return ops.reshape(ops.cast(tup[i], ms.float32), (-1,))


_unflat = C.MultitypeFuncGraph("v4_unflat")


@_unflat.register("Tensor", "Tensor", "Number", "Tensor", "Number", "Number", "Number")
def _unflat_fn(flat_dp, flat_edp, scale, g, kind, start, stop):
    """Gradient i back from its group's reduced flat buffer (kind 1: dp, 2: edp; 0: not reduced), then x scale."""
    if kind == 1:
        g = ops.cast(ops.reshape(flat_dp[start:stop], g.shape), g.dtype)
    elif kind == 2:
        g = ops.cast(ops.reshape(flat_edp[start:stop], g.shape), g.dtype)
    return g * ops.cast(scale, g.dtype)


class FlatGradReducer(GradReducer):
    """GradReducer as one AllReduce per group (dp, then edp) of all its gradients packed in one float32 buffer, plus
    `extra` (the step's losses and expert loads) summed in the dp buffer: (grads, extra summed over dp). The same sums
    as GradReducer, bit for bit. Used with ZeRO-1, where the ranks of a dp group compile different graphs (each
    updates its own parameters): with one collective per group, fixed by data dependencies before the optimiser,
    the ranks cannot issue their collectives in different orders (per-parameter AllReduces of equal shapes would
    then silently pair different tensors)."""

    def __init__(self, ctx: ParallelContext, params):
        super().__init__(ctx, params)
        starts, stops, off = [], [], {1: 0, 2: 0}
        for p, k in zip(params, self.kinds):
            n = int(np.prod(p.shape)) if k else 0
            starts.append(off.get(k, 0))
            stops.append(off.get(k, 0) + n)
            if k:
                off[k] += n
        self.starts, self.stops = tuple(starts), tuple(stops)
        self.idx_dp = tuple(i for i, k in enumerate(self.kinds) if k == 1)
        self.idx_edp = tuple(i for i, k in enumerate(self.kinds) if k == 2)
        self.n_dp = off[1]
        if not self.idx_dp:
            raise ParallelConfigError("FlatGradReducer needs a dp group (dp > 1)")

    def construct(self, grads, extra):
        hm = self.hyper_map
        flat_dp = self.ar_dp(ops.concat(hm(F.partial(_flat_piece, grads), self.idx_dp) + (extra,), 0))
        flat_edp = flat_dp
        if self.idx_edp:
            flat_edp = self.ar_edp(ops.depend(ops.concat(hm(F.partial(_flat_piece, grads), self.idx_edp), 0),
                                              flat_dp))
        out = hm(F.partial(_unflat, flat_dp, flat_edp, self.scale), grads, self.kinds, self.starts, self.stops)
        return out, flat_dp[self.n_dp:]


class ShardedClip(nn.Cell):
    """(grads · min(1, max_norm/(‖g‖ + eps)), ‖g‖) with the global norm counting every shard once: replicated
    parameters locally, tp-sliced ones summed over tp, expert shards summed over the tp·ep ranks holding the
    distinct shards (etp), then over the pipeline stages (pp; the last stage's embedding copy left out). Same
    clipping rule as optim.clip_by_global_norm."""

    def __init__(self, ctx: ParallelContext, params, max_norm: float, eps: float = 1e-6):
        super().__init__(auto_prefix=False)
        loc, tp, ex = [], [], []
        for i, p in enumerate(params):
            if ctx.ep > 1 and expert_index(p.name) is not None:
                ex.append(i)
            elif ctx.tp > 1 and tp_dim(p.name) is not None:
                tp.append(i)
            else:
                loc.append(i)
        if ctx.group("etp") is None:
            loc += ex
            ex = []
        if ctx.group("tp") is None:
            loc += tp
            tp = []
        if ctx.pp > 1 and ctx.last_stage and not ctx.first_stage:     # the embedding copy counts on stage 0 only
            loc = [i for i in loc if not params[i].name.startswith("embed.")]
        self.loc, self.tp, self.ex = tuple(sorted(loc)), tuple(tp), tuple(ex)
        self.ar_pp = ops.AllReduce(ops.ReduceOp.SUM, ctx.group("pp")) if ctx.group("pp") is not None else None
        self.ar_tp = ops.AllReduce(ops.ReduceOp.SUM, ctx.group("tp")) if self.tp else None
        self.ar_etp = ops.AllReduce(ops.ReduceOp.SUM, ctx.group("etp")) if self.ex else None
        self.max_norm, self.eps = float(max_norm), float(eps)
        self.hyper_map = C.HyperMap()

    def _sum(self, grads, idx):
        return ops.addn(self.hyper_map(sq_sum, self.hyper_map(F.partial(_pick, grads), idx)))

    def construct(self, grads, extra_sq=None):
        """extra_sq: a squared norm outside the parameters that the clip counts too, already summed over every
        rank that holds a distinct part of it (DeepSeek-V4.1's Engram row gradients, train/v41.py)."""
        total = ops.zeros((), ms.float32)
        if extra_sq is not None:
            total = total + extra_sq
        if self.loc:
            total = total + self._sum(grads, self.loc)
        if self.tp:
            total = total + self.ar_tp(self._sum(grads, self.tp))
        if self.ex:
            total = total + self.ar_etp(self._sum(grads, self.ex))
        if self.ar_pp is not None:       # every pipeline stage's parameters
            # the stages run different graphs: pin this collective after every gradient (incl. the embedding
            # sync) so all pp ranks issue their cross-stage collectives in one order
            total = self.ar_pp(ops.depend(total, grads))
        norm = ops.sqrt(total)
        scale = ops.minimum(self.max_norm / (norm + self.eps), ops.ones((), ms.float32))
        return self.hyper_map(F.partial(_mul, scale), grads), norm


class MuonTensorParallel:
    """What MuonAdamW needs to orthogonalise tensor-parallel slices exactly (Newton–Schulz of a slice is not the
    slice of NS(full)): each tp-sliced matrix's Muon input is gathered along its split dim to the full matrix,
    NS runs on it (bucketed by full shape, scaled by the full shape), and the rank keeps its own slice."""

    def __init__(self, ctx: ParallelContext):
        self.tp = ctx.tp
        self.coll = GroupCollectives(ctx, "tp")

    def split_dim(self, name: str) -> int:
        """-1 = not sliced, else the dim (0 rows, 1 columns)."""
        if self.tp == 1:
            return -1
        d = tp_dim(name)
        return -1 if d is None else d

    def full_shape(self, name: str, shape) -> Tuple[int, ...]:
        shape = list(int(s) for s in shape)
        d = self.split_dim(name)
        if d >= 0:
            shape[d] *= self.tp
        return tuple(shape)


# ------------------------------------------------------------------------------------------------ ZeRO-1
def balanced_owners(sizes: Dict[str, int], n: int) -> Dict[str, int]:
    """Whole tensors -> n owners, balanced by size: largest first to the least-loaded owner (ties: lower owner,
    then name), so every rank computes the same plan from the same names and sizes."""
    load = [0] * n
    out = {}
    for name in sorted(sizes, key=lambda k: (-int(sizes[k]), k)):
        r = min(range(n), key=lambda i: (load[i], i))
        out[name] = r
        load[r] += int(sizes[name])
    return out


class OptimizerShard:
    """ZeRO-1 over data parallelism: which rank owns (holds the optimiser state of, and updates) each trainable
    parameter, and the graph all-gather of the updated weights.

    A parameter's replica group is dp (everything but expert-parallel experts) or edp (an expert shard's dp/ep
    replicas); inside it, whole parameters are assigned to owners balanced by size (`balanced_owners`) — Muon needs
    whole matrices for Newton–Schulz, and whole tensors keep the AdamW update the elementwise one. A group of one
    rank shards nothing (experts with ep = dp are already partitioned by ep). Members of one tp group share a dp
    position and the same slice sizes, so they own the same matrices and run Muon's tp gather together.

    The gradients stay all-reduced (ZeRO-1); each owner updates its parameters, then every group member contributes
    its own updated tensors and zeros elsewhere to one float32 buffer that is AllReduce-summed (exact: one
    contributor per element; the only collective MindSpore-CPU runs on sub-groups, the same pattern as the tp
    gather) and the other members copy their tensors out of it. So the update equals the unsharded one bit for bit.
    """

    KINDS = ("dp", "edp")

    def __init__(self, ctx: ParallelContext, params):
        self.ctx = ctx
        self.kind_of: Dict[str, Optional[str]] = {}
        sizes: Dict[str, Dict[str, int]] = {k: {} for k in self.KINDS}
        for p in params:
            kind = "edp" if ctx.ep > 1 and expert_index(p.name) is not None else "dp"
            if ctx.size(kind) == 1:
                kind = None
            self.kind_of[p.name] = kind
            if kind is not None:
                sizes[kind][p.name] = int(np.prod(p.shape))
        self.owner: Dict[str, int] = {}
        self.me: Dict[str, int] = {}
        for k in self.KINDS:
            if sizes[k]:
                self.owner.update(balanced_owners(sizes[k], ctx.size(k)))
                self.me[k] = ctx.group_ranks(k).index(ctx.rank)
        self.active = bool(self.owner)

    def owns(self, name: str) -> bool:
        k = self.kind_of.get(name)
        return k is None or self.owner[name] == self.me[k]

    def kinds(self) -> Tuple[str, ...]:
        return tuple(k for k in self.KINDS if k in self.me)

    def all_reduce(self, kind: str):
        """The group's AllReduce(sum), or None in a simulated (single-process) context."""
        g = self.ctx.group(kind)
        return None if g is None else ops.AllReduce(ops.ReduceOp.SUM, g)

    def gather_state(self, local: Dict[str, np.ndarray], specs: Dict[str, Tuple[str, Tuple[int, ...]]]
                     ) -> Dict[str, np.ndarray]:
        """Collective over the dp (and edp) groups, every member calls it: this rank's optimiser state (its owned
        parameters' entries + unsharded ones) -> the state of every parameter this rank holds, as the unsharded
        optimiser would have it. specs: {state name: (parameter name, shape)} of the unsharded state."""
        out = dict(local)
        for k in self.kinds():
            names = sorted(s for s, (pn, _) in specs.items() if self.kind_of.get(pn) == k)
            shapes = [tuple(specs[s][1]) for s in names]
            sizes = [int(np.prod(sh, dtype=np.int64)) for sh in shapes]
            buf = np.zeros(sum(sizes), np.float32)
            off = 0
            for s, n in zip(names, sizes):
                if s in local:
                    if local[s].dtype != np.float32:
                        raise TypeError(f"ZeRO state gather supports float32 only, '{s}' is {local[s].dtype}")
                    buf[off:off + n] = local[s].reshape(-1)
                off += n
            op = self.all_reduce(k)
            if op is not None and buf.size:
                buf = op(Tensor(buf)).asnumpy()
            off = 0
            for s, n, sh in zip(names, sizes, shapes):
                out[s] = buf[off:off + n].reshape(sh).copy()
                off += n
        return out
