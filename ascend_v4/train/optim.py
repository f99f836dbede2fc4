"""Muon + AdamW as one MindSpore Cell, usable inside a GRAPH_MODE / `ms.jit` train step (docs/training.md).

    opt = MuonAdamW(net.trainable_params(), Schedule(...))           # groups from param_groups.classify
    grad_fn = ms.value_and_grad(net, None, opt.parameters)
    @ms.jit
    def train_step(*batch):
        loss, grads = grad_fn(*batch)
        grads, gnorm = clip_by_global_norm(grads, 1.0)
        lr = opt(grads)
        return loss, gnorm, lr

`opt(grads)` takes the gradients in the order of `opt.parameters` (= the params given, minus the frozen ones), or in
the order of the full `params` list given (frozen entries' gradients are ignored). It returns the LR it used.

Update t = 1, 2, ... (`step` is incremented first, lr = schedule.lr_at(t)):

Muon (every 2-D weight matrix; a 3-D [E, out, in] parameter is E independent matrices), fp32:
    M ← μ·M + G                                              μ = 0.95
    G' = G + μ·M   (Nesterov; plain momentum uses G' = M)
    X = G'ᵀ if rows > cols (so the Gram matrix X·Xᵀ is the small side), X ← X / (‖X‖_F + 1e-7)
    10 × X ← a·X + (b·A + c·A²)·X,  A = X·Xᵀ: 8 × (3.4445, −4.7750, 2.0315) then 2 × (2, −1.5, 0.5)
    O = X (transposed back);  update = O · sqrt(max(rows, cols)) · 0.18        (update RMS ≈ 0.18)
    W ← W·(1 − lr·wd) − lr·update                           wd = 0.1
AdamW (embedding, head, RMSNorm gains, mHC biases/gates, sinks, ape, vectors), fp32:
    m ← β1·m + (1−β1)·G,  v ← β2·v + (1−β2)·G²,  m̂ = m/(1−β1ᵗ),  v̂ = v/(1−β2ᵗ)
    W ← W·(1 − lr·wd) − lr·m̂/(sqrt(v̂) + ε)                  β = (0.9, 0.95), ε = 1e-20, wd = 0.1

Newton–Schulz is batched: Muon matrices of the same shape are stacked into one [k, rows, cols] call of the op
`newton_schulz` (ascend_v4.ops, family ops/muon/), each normalised by its own Frobenius norm, so every expert
matrix is still orthogonalised on its own. The registry picks the backend: on CPU one C++ kernel per bucket
(all 10 steps; the graph-op composite issued 30 small BatchMatMul kernels per bucket, 240 per step for the tiny
preset, which dominated the step time on a loaded 2-core host), elsewhere the composite (`ops.bmm`);
`ns_backend="composite"` pins it. Per-parameter work is
mapped with `ops.HyperMap` (as nn.Optimizer does): a Python `for` over ~200 parameters inside `construct` exceeds
MindSpore's graph call-depth limit.
`bucket_numel` caps a bucket's size (memory); `ns_bf16=True` runs the NS matmuls in bf16 on Ascend (the report:
"BF16 matmuls are stable"); the default float32 is what the CPU backend supports.

State (all Parameters with fixed names, so `state_parameters()` can be saved/loaded by name):
    step (int32 scalar) · muon_m.<name> · adam_m.<name> · adam_v.<name> · master.<name>
Mixed precision: a parameter that is not float32 (bf16 on Ascend) gets an fp32 master copy `master.<name>`; the
update is applied to the master and the parameter receives cast(master, its dtype). On CPU every parameter is
float32, there are no masters and the parameter itself is the master. Masters are copied from the parameters
when the optimiser is built: build it after loading weights, or call `reset_masters()`, or load its state.
(CPU check: the CPU Assign kernel has no bf16, so the CPU tests run this path with float16 parameters.)

Naming: the Cell is built with auto_prefix=False (like nn.Optimizer), so neither the model's parameter names nor
the state names change when it becomes an attribute of a train-step Cell — provided that Cell is also built
with auto_prefix=False (a default Cell renames every parameter below it to '<attr>.<name>').

MindSpore 2.10 CPU notes followed here: only `ops.*` (no `mint.*`), `ops.assign` for every state write, no
`ops.index_add`, no Python-side numbers that change per step (the LR is gathered from a constant table by the
step Parameter, so nothing recompiles).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, ParameterTuple, Tensor
from mindspore.ops import composite as C, functional as F

from ascend_v4.ops import resolve as _resolve_op
from ascend_v4.precision import round_bf16 as _round_bf16
from ascend_v4.ops.muon.composite import newton_schulz as _ns_composite
from ascend_v4.ops.muon.reference import NS_COEFFS as _NS_COEFFS, NS_EPS as _NS_EPS
from ascend_v4.ops.muon import cpp as _fused_ops

_FUSED = _fused_ops.fused_available()      # the in-place optimiser kernels are built (read once: graphs use it)

from . import param_groups as pg
from .schedule import as_table, lookup

# Hybrid Newton–Schulz (docs/training.md): 8 fast-converging quintic steps, then 2 steps that settle singular values at 1.
NS_COEFFS: Tuple[Tuple[float, float, float], ...] = _NS_COEFFS
NS_EPS = _NS_EPS


# ------------------------------------------------------------------------------------------------ functions
def newton_schulz(x, coeffs=NS_COEFFS, eps: float = NS_EPS, bf16: bool = False):
    """Orthogonalise each matrix of x [k, n, m] (graph ops, any device; tall matrices are handled through their
    transpose). Each matrix is divided by its own Frobenius norm (+eps), then X ← aX + (bA + cA²)X, A = XXᵀ, per
    (a, b, c). bf16=True runs the matmuls in bfloat16 (Ascend); the result is float32. This is the op
    `newton_schulz`'s composite backend; MuonAdamW runs whichever backend the registry picks (C++ on CPU)."""
    return _ns_composite(x, coeffs, eps, bf16)


# sum of squares of one gradient in float32 (global-norm clipping; ascend_v4.parallel uses it too)
sq_sum = C.MultitypeFuncGraph("sq_sum")


@sq_sum.register("Tensor")
def _sq_sum_fn(g):
    g = ops.cast(g, ms.float32)
    return ops.sum(g * g)


_scale = C.MultitypeFuncGraph("scale")


@_scale.register("Tensor", "Tensor")
def _scale_fn(s, g):
    return g * ops.cast(s, g.dtype)


_hyper_map = C.HyperMap()


def global_norm(grads):
    """sqrt(Σ‖g‖²) over a tuple of gradients, accumulated in float32."""
    return ops.sqrt(ops.addn(_hyper_map(sq_sum, grads)))


def clip_scale(grads, max_norm: float, eps: float = 1e-6):
    """(scale, norm) of clip_by_global_norm without applying it: MuonAdamW(fused) multiplies each gradient by the
    scale inside its kernels. The sum of squares is one C++ kernel (accumulated in double) when the fused optimiser
    kernels are built, else the graph-op global_norm."""
    if _FUSED:
        norm = ops.sqrt(_fused_ops.sum_squares(grads))
    else:
        norm = global_norm(grads)
    return ops.minimum(max_norm / (norm + eps), ops.ones((), ms.float32)), norm


def clip_by_global_norm(grads, max_norm: float, eps: float = 1e-6):
    """(grads · min(1, max_norm / (norm + eps)), norm), norm being the global L2 norm before clipping (as in
    torch.nn.utils.clip_grad_norm_). Graph-mode friendly; a non-finite norm makes every gradient non-finite, so
    the caller can test `ops.isfinite(norm)` and skip the step."""
    norm = global_norm(grads)
    scale = ops.minimum(max_norm / (norm + eps), ops.ones((), ms.float32))
    return _hyper_map(F.partial(_scale, scale), grads), norm


# ---- per-parameter pieces mapped with HyperMap (registered signatures: "Tensor" also matches Parameters)
_pick = C.MultitypeFuncGraph("pick")


@_pick.register("Tuple", "Number")
def _pick_fn(tup, i):
    return tup[i]


_pick2 = C.MultitypeFuncGraph("pick2")


@_pick2.register("Tuple", "Number", "Number")
def _pick2_fn(tup, i, j):
    return tup[i][j]


_muon_momentum = C.MultitypeFuncGraph("muon_momentum")


@_muon_momentum.register("Number", "Bool", "Tensor", "Tensor")
def _muon_momentum_fn(mu, nesterov, m, g):
    """M ← μM + G (written), returns the NS input: G + μM (Nesterov) or M."""
    g = ops.cast(g, ms.float32)
    m_new = m * mu + g
    ops.assign(m, m_new)
    if nesterov:
        return g + m_new * mu
    return m_new


_tp_full = C.MultitypeFuncGraph("tp_full")


@_tp_full.register("Function", "Bool", "Number", "Number", "Tensor", "Number")
def _tp_full_fn(op, native, size, me, u, split):
    """Tensor parallel: the full matrix behind this rank's slice u (split dim 0 or 1; -1 = u is whole).
    native: op is AllGather; else op is an AllReduce(sum) of a zero buffer holding u in block `me`."""
    if split < 0:
        return u
    if split == 1:
        u = ops.swapaxes(u, 0, 1)
    if native:
        g = op(u)
    else:
        z = ops.zeros_like(u)
        blocks = ()
        for r in range(size):
            if r == me:
                blocks = blocks + (u,)
            else:
                blocks = blocks + (z,)
        g = op(ops.concat(blocks, 0))
    if split == 1:
        g = ops.swapaxes(g, 0, 1)
    return g


_tp_own = C.MultitypeFuncGraph("tp_own")


@_tp_own.register("Number", "Number", "Tensor", "Number")
def _tp_own_fn(size, me, o, split):
    """This rank's block of the full NS output o along `split` (-1: o is whole)."""
    if split < 0:
        return o
    if split == 0:
        n = o.shape[0] // size
        return o[me * n:(me + 1) * n]
    n = o.shape[1] // size
    return o[:, me * n:(me + 1) * n]


_write = C.MultitypeFuncGraph("write")


@_write.register("Tensor", "Tensor", "Bool", "Tensor")
def _write_fn(param, work, has_master, new):
    """new (fp32) -> the master (if any) and the parameter in its own dtype; a float32 parameter with a master is
    bf16-emulated storage (precision.py) and receives the bf16-rounded value."""
    if has_master:
        ops.assign(work, new)
        if param.dtype == ms.float32:
            return ops.assign(param, _round_bf16(new))
    return ops.assign(param, ops.cast(new, param.dtype))


_muon_apply = C.MultitypeFuncGraph("muon_apply")


@_muon_apply.register("Tensor", "Tensor", "Tensor", "Tensor", "Bool", "Tensor", "Number")
def _muon_apply_fn(lr, decay, param, work, has_master, o, scale):
    """W ← W·(1 − lr·wd) − lr·O·scale."""
    new = ops.cast(work, ms.float32) * decay - o * (lr * scale)
    return _write_fn(param, work, has_master, new)


_adamw = C.MultitypeFuncGraph("adamw")


@_adamw.register("Tensor", "Tensor", "Tensor", "Tensor", "Number", "Number", "Number",
                 "Tensor", "Tensor", "Bool", "Tensor", "Tensor", "Tensor")
def _adamw_fn(lr, decay, bc1, bc2, b1, b2, eps, param, work, has_master, m, v, g):
    """m, v moments; W ← W·(1 − lr·wd) − lr·m̂/(sqrt(v̂) + ε)."""
    g = ops.cast(g, ms.float32)
    m_new = m * b1 + g * (1.0 - b1)
    v_new = v * b2 + g * g * (1.0 - b2)
    ops.assign(m, m_new)
    ops.assign(v, v_new)
    upd = (m_new / bc1) / (ops.sqrt(v_new / bc2) + eps)
    new = ops.cast(work, ms.float32) * decay - upd * lr
    return _write_fn(param, work, has_master, new)


# ZeRO-1 all-gather (OptimizerShard in ascend_v4/parallel.py plans the owners)
_zero_contrib = C.MultitypeFuncGraph("zero_contrib")


@_zero_contrib.register("Tuple", "Tuple", "Number", "Number", "Number")
def _zero_contrib_fn(new_muon, new_adam, src, i, size):
    """This rank's contribution to the ZeRO all-gather buffer: a tensor it updated (src 1: Muon result i, 2: AdamW
    result i) as flat fp32, zeros for one another rank owns (src 0). Taken from the update's results, so the
    collective depends on the whole update (and through the clip on every gradient)."""
    if src == 1:
        return ops.reshape(ops.cast(new_muon[i], ms.float32), (-1,))
    if src == 2:
        return ops.reshape(ops.cast(new_adam[i], ms.float32), (-1,))
    return ops.zeros((size,), ms.float32)


_zero_take = C.MultitypeFuncGraph("zero_take")


@_zero_take.register("Tensor", "Bool", "Tensor", "Number", "Number")
def _zero_take_fn(full, mine, p, start, stop):
    """Write the gathered value into a tensor another rank owns (the owner keeps its own write)."""
    if mine:
        return p
    return ops.assign(p, ops.cast(ops.reshape(full[start:stop], p.shape), p.dtype))


# ------------------------------------------------------------------------------------------------ optimiser
class MuonAdamW(nn.Cell):
    """Muon for matrices, AdamW for the rest, frozen parameters left alone (see the module docstring).

    params        iterable of Parameters (or a Cell: its get_parameters()); frozen ones (per `classify`) are
                  dropped from `self.parameters` and never written.
    lr_schedule   schedule.Schedule, a number (constant LR), or a 1-D array lr[step] (last value held).
    classify      (Parameter) -> (group, reason); default param_groups.classify_param.
    master_weights  give every non-float32 parameter an fp32 master copy (True) or update it in place via fp32
                  arithmetic and a cast (False; loses small updates in bf16).
    bucket_numel  max elements of one stacked Newton–Schulz batch.
    ns_bf16       run the NS matmuls in bfloat16 (Ascend only; CPU has no bf16 matmul; implies the composite).
    ns_backend    backend of the op `newton_schulz` (None: the registry's choice for the device, `cpp` on CPU).
    tensor_parallel  ascend_v4.parallel.MuonTensorParallel or None: parameters hold tensor-parallel slices; the
                  Muon input of each sliced matrix is gathered to the full matrix before Newton–Schulz (bucketed
                  and scaled by its full shape) and the rank keeps its own slice of the result, so the update
                  equals the single-process one. Momentum and AdamW state stay sliced (elementwise).
    fused         run the elementwise parts (momentum, update, AdamW) as a few in-place C++ kernels per step
                  (ops/muon/cpu/optim_fused.cc; bitwise the graph ops' results) when they apply: the cpp
                  Newton–Schulz backend, float32 parameters, no masters, no tensor parallelism, no ZeRO.
                  `self.fused` tells whether they are used. On CPU the graph-op form issued ~10 kernels per Muon
                  matrix and ~15 per AdamW tensor, whose runtime overhead dominated the optimiser's time.
    bf16_storage  names of float32 parameters that emulate bf16 storage (precision policy bf16-emulated): they get
                  an fp32 master like a bf16 parameter, and receive the master rounded to bf16 after each update.
    shard         ascend_v4.parallel.OptimizerShard or None: ZeRO-1. This rank keeps state (momentum, moments,
                  master) only for the parameters it owns and updates only those; the updated weights are then
                  all-gathered over each replica group inside the same graph, so every rank ends the step with the
                  unsharded optimiser's weights, bit for bit. `state_specs` names the unsharded state, which
                  OptimizerShard.gather_state rebuilds for checkpoints (train/state.py).
    """

    def __init__(self, params, lr_schedule, *, momentum: float = 0.95, nesterov: bool = True,
                 muon_weight_decay: float = 0.1, update_rms: float = 0.18,
                 ns_coeffs: Sequence[Tuple[float, float, float]] = NS_COEFFS, ns_eps: float = NS_EPS,
                 ns_bf16: bool = False, betas: Tuple[float, float] = (0.9, 0.95), eps: float = 1e-20,
                 adam_weight_decay: float = 0.1, master_weights: bool = True, bucket_numel: int = 1 << 24,
                 classify=None, tensor_parallel=None, ns_backend=None, shard=None, bf16_storage=(), fused=True):
        super().__init__(auto_prefix=False)
        if hasattr(params, "get_parameters"):
            params = params.get_parameters()
        params = list(params)
        classify = classify or pg.classify_param
        self.all_names = tuple(p.name for p in params)
        if len(set(self.all_names)) != len(self.all_names):
            raise ValueError("duplicate parameter names")
        groups = [classify(p)[0] for p in params]
        for p, g in zip(params, groups):
            if g not in pg.GROUPS:
                raise ValueError(f"{p.name}: unknown group {g!r}")
            if g == pg.MUON and len(p.shape) not in (2, 3):
                raise ValueError(f"{p.name}: Muon needs a 2-D (or stacked 3-D) matrix, got shape {tuple(p.shape)}")
            if g != pg.FROZEN and p.dtype not in (ms.float32, ms.float16, ms.bfloat16):
                raise ValueError(f"{p.name}: cannot optimise dtype {p.dtype}")
        train = [i for i, g in enumerate(groups) if g != pg.FROZEN]
        ps = [params[i] for i in train]
        self.parameters = ParameterTuple(ps)          # what value_and_grad should differentiate, in input order
        self.groups = tuple(groups[i] for i in train)
        self.frozen = tuple((params[i].name, tuple(params[i].shape)) for i, g in enumerate(groups) if g == pg.FROZEN)

        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.muon_wd, self.update_rms = float(muon_weight_decay), float(update_rms)
        self.ns_coeffs = tuple(tuple(float(v) for v in abc) for abc in ns_coeffs)
        self.ns_eps, self.ns_bf16 = float(ns_eps), bool(ns_bf16)
        # the op `newton_schulz`: the registry's choice for this device (C++ kernel on CPU), composite for bf16
        self.ns_backend = _resolve_op("newton_schulz", "composite" if self.ns_bf16 else ns_backend)
        self._ns = self.ns_backend.fn
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps, self.adam_wd = float(eps), float(adam_weight_decay)
        self.lr_table = Tensor(as_table(lr_schedule), ms.float32)
        self.hyper_map = C.HyperMap()

        self.step = Parameter(Tensor(0, ms.int32), name="step", requires_grad=False)

        # ZeRO-1: this rank's parameters (state + update); everything when unsharded
        self.shard = shard if shard is not None and shard.active else None
        owned = [self.shard is None or self.shard.owns(p.name) for p in ps]
        # fp32 masters of non-fp32 params; "work" = what an update reads (the master, else the param itself)
        bf16_storage = set(bf16_storage)
        has_master = [bool(master_weights) and (p.dtype != ms.float32 or p.name in bf16_storage) for p in ps]
        # the unsharded state: {state name: (parameter name, shape)} (checkpoints are written in this layout)
        specs = {"step": ("", ())}
        for p, g, h in zip(ps, self.groups, has_master):
            for prefix in (("muon_m",) if g == pg.MUON else ("adam_m", "adam_v")) + (("master",) if h else ()):
                specs[f"{prefix}.{p.name}"] = (p.name, tuple(int(d) for d in p.shape))
        self.state_specs = specs
        masters = {i: Parameter(Tensor(p.asnumpy().astype(np.float32)), name=f"master.{p.name}",
                                requires_grad=False) for i, (p, h) in enumerate(zip(ps, has_master)) if h and owned[i]}
        self.masters = ParameterTuple(list(masters.values()))
        self._master_of = tuple(sorted(masters))   # index in self.parameters of each master (for reset_masters)

        def zeros_like(p, prefix):
            return Parameter(Tensor(np.zeros(tuple(p.shape), np.float32)), name=f"{prefix}.{p.name}",
                             requires_grad=False)

        # Muon, internal order = bucket by bucket
        muon = [i for i, g in enumerate(self.groups) if g == pg.MUON and owned[i]]
        tpar = tensor_parallel
        full = [tpar.full_shape(p.name, p.shape) if tpar is not None else tuple(p.shape) for p in ps]
        buckets = _buckets([full[i] for i in muon], int(bucket_numel))
        order = [muon[j] for b in buckets for j in b]
        self.muon_src = tuple(order)                # index in self.parameters, internal order
        self.muon_params = ParameterTuple([ps[i] for i in order])
        self.muon_work = ParameterTuple([masters.get(i, ps[i]) for i in order])
        self.muon_has_master = tuple(has_master[i] for i in order)
        self.muon_scale = tuple(math.sqrt(max(full[i][-2:])) * self.update_rms for i in order)
        # tensor parallel: split dim of each Muon matrix (-1 = whole on this rank), internal order
        self.muon_split = tuple(tpar.split_dim(ps[i].name) if tpar is not None else -1 for i in order)
        self.tp_sliced = any(d >= 0 for d in self.muon_split)
        if self.tp_sliced:
            if any(len(ps[i].shape) != 2 for i, d in zip(order, self.muon_split) if d >= 0):
                raise ValueError("tensor-parallel Muon supports 2-D matrices only")
            self.tp_op, self.tp_native = tpar.coll.op, tpar.coll.native
            self.tp_size, self.tp_me = tpar.coll.size, tpar.coll.me
        self.muon_m = ParameterTuple([zeros_like(ps[i], "muon_m") for i in order])
        starts, ends, rows, cols, tall, flat_b, flat_j = [], [], [], [], [], [], []
        k = 0
        for b, members in enumerate(buckets):
            r, c = (int(d) for d in full[muon[members[0]]][-2:])
            starts.append(k)
            ends.append(k + len(members))
            rows.append(r)
            cols.append(c)
            tall.append(r > c)
            flat_b += [b] * len(members)
            flat_j += list(range(len(members)))
            k += len(members)
        self.b_start, self.b_end, self.b_rows, self.b_cols, self.b_tall = (
            tuple(starts), tuple(ends), tuple(rows), tuple(cols), tuple(tall))
        self.flat_b, self.flat_j = tuple(flat_b), tuple(flat_j)
        self.n_buckets = len(buckets)

        # AdamW, input order
        adam = [i for i, g in enumerate(self.groups) if g == pg.ADAMW and owned[i]]
        self.adam_src = tuple(adam)
        self.adam_params = ParameterTuple([ps[i] for i in adam])
        self.adam_work = ParameterTuple([masters.get(i, ps[i]) for i in adam])
        self.adam_has_master = tuple(has_master[i] for i in adam)
        self.adam_m = ParameterTuple([zeros_like(ps[i], "adam_m") for i in adam])
        self.adam_v = ParameterTuple([zeros_like(ps[i], "adam_v") for i in adam])

        # gradients may also come in the order of the full `params` list (frozen entries then ignored)
        self.n_all, self.n_train = len(params), len(ps)
        self.muon_src_all = tuple(train[i] for i in self.muon_src)
        self.adam_src_all = tuple(train[i] for i in self.adam_src)

        # ZeRO-1 all-gather, per replica group (dp, and edp for expert shards): members, whether this rank owns
        # each, and its span in the group's flat float32 buffer
        self.n_zero = 0
        if self.shard is not None:
            names = [p.name for p in ps]
            for z, kind in enumerate(self.shard.kinds()):
                members = [p for p, g in zip(ps, self.groups) if g != pg.FROZEN and self.shard.kind_of[p.name] == kind]
                sizes = [int(np.prod(p.shape)) for p in members]
                starts = tuple(int(v) for v in np.cumsum([0] + sizes[:-1]))
                setattr(self, f"zero{z}_params", ParameterTuple(members))
                setattr(self, f"zero{z}_mine", tuple(self.shard.owns(p.name) for p in members))
                # where each member's new value comes from: (1, position in the Muon results) / (2, AdamW) / (0, -)
                src = []
                for p in members:
                    j = names.index(p.name)
                    if j in self.muon_src:
                        src.append((1, self.muon_src.index(j)))
                    elif j in self.adam_src:
                        src.append((2, self.adam_src.index(j)))
                    else:
                        src.append((0, 0))
                setattr(self, f"zero{z}_src", tuple(a for a, _ in src))
                setattr(self, f"zero{z}_idx", tuple(b for _, b in src))
                setattr(self, f"zero{z}_size", tuple(sizes))
                setattr(self, f"zero{z}_start", starts)
                setattr(self, f"zero{z}_stop", tuple(a + n for a, n in zip(starts, sizes)))
                setattr(self, f"zero{z}_op", self.shard.all_reduce(kind))
                self.n_zero = z + 1

        # the fused in-place kernels (see `fused` above)
        self.fused = bool(fused) and self.ns_backend.name == "cpp" and self.shard is None and not self.tp_sliced \
            and not any(has_master) and all(p.dtype == ms.float32 for p in ps) and _FUSED
        if self.fused:
            self.fused_scales = tuple(_fused_ops.scales_tensor(self.muon_scale[a:e])
                                      for a, e in zip(self.b_start, self.b_end))
            self.fused_momentum_cfg = _fused_ops.momentum_cfg(self.momentum, self.nesterov)
            self.fused_adamw_cfg = _fused_ops.adamw_cfg(self.beta1, self.beta2, self.eps)
        self.ones = Tensor(1.0, ms.float32)

    # ------------------------------------------------------------------ graph
    def construct(self, grads, grad_scale=None, after=None):
        """grad_scale: optional float32 scalar every gradient is multiplied by first (the clip's scale). after:
        optional values (e.g. the step's losses) the fused in-place update must wait for: it writes the weights
        in place, so a train step passes every output that reads them (the clip's scale, if given, may carry
        that dependency instead; the kernels' declared writes order them after the weights' reads as well)."""
        hm = self.hyper_map
        if len(grads) != self.n_train and len(grads) != self.n_all:
            raise ValueError("MuonAdamW: grads must match opt.parameters or the full params list given")
        if len(grads) == self.n_train:
            g_muon = hm(F.partial(_pick, grads), self.muon_src)
            g_adam = hm(F.partial(_pick, grads), self.adam_src)
        else:
            g_muon = hm(F.partial(_pick, grads), self.muon_src_all)
            g_adam = hm(F.partial(_pick, grads), self.adam_src_all)
        step = self.step + 1
        lr = lookup(self.lr_table, step)
        t = ops.cast(step, ms.float32)
        if self.fused:
            gscale = self.ones if grad_scale is None else grad_scale
            if after is not None:
                gscale = ops.depend(gscale, after)
            tokens = self._fused_update(g_muon, g_adam, lr, t, gscale)
            # the kernels declare their in-place writes (ops/muon/cpp.py), which orders them after every read of
            # the weights; the step counter's write also depends on their tokens, and so does the returned lr
            ops.assign(self.step, ops.depend(step, tokens))
            return ops.depend(lr, tokens)
        ops.assign(self.step, step)
        if grad_scale is not None:
            g_muon = hm(F.partial(_scale, grad_scale), g_muon)
            g_adam = hm(F.partial(_scale, grad_scale), g_adam)

        new_muon, new_adam = (), ()
        if self.muon_src:
            us = hm(F.partial(_muon_momentum, self.momentum, self.nesterov), self.muon_m, g_muon)
            if self.tp_sliced:
                us = hm(F.partial(_tp_full, self.tp_op, self.tp_native, self.tp_size, self.tp_me), us,
                        self.muon_split)
            outs = ()
            for b in range(self.n_buckets):       # a handful of shape buckets: unrolled at compile time
                outs = outs + (self._bucket_ns(us, b),)
            o = hm(F.partial(_pick2, outs), self.flat_b, self.flat_j)
            if self.tp_sliced:
                o = hm(F.partial(_tp_own, self.tp_size, self.tp_me), o, self.muon_split)
            new_muon = hm(F.partial(_muon_apply, lr, 1.0 - lr * self.muon_wd), self.muon_params, self.muon_work,
                          self.muon_has_master, o, self.muon_scale)
        if self.adam_src:
            bc1 = 1.0 - ops.pow(ops.scalar_to_tensor(self.beta1, ms.float32), t)
            bc2 = 1.0 - ops.pow(ops.scalar_to_tensor(self.beta2, ms.float32), t)
            new_adam = hm(F.partial(_adamw, lr, 1.0 - lr * self.adam_wd, bc1, bc2, self.beta1, self.beta2,
                                    self.eps), self.adam_params, self.adam_work, self.adam_has_master, self.adam_m,
                          self.adam_v, g_adam)
        # the returned lr depends on every update (an unused result would let the compiler drop its writes)
        if self.muon_src:
            lr = ops.depend(lr, new_muon)
        if self.adam_src:
            lr = ops.depend(lr, new_adam)
        # ZeRO-1: the owners' new weights to every member of the group (dp, then edp: one fixed order)
        if self.n_zero > 0:
            lr = self._zero_gather(new_muon, new_adam, lr, self.zero0_params, self.zero0_mine, self.zero0_start,
                                   self.zero0_stop, self.zero0_src, self.zero0_idx, self.zero0_size, self.zero0_op)
        if self.n_zero > 1:
            lr = self._zero_gather(new_muon, new_adam, lr, self.zero1_params, self.zero1_mine, self.zero1_start,
                                   self.zero1_stop, self.zero1_src, self.zero1_idx, self.zero1_size, self.zero1_op)
        return lr

    def _fused_update(self, g_muon, g_adam, lr, t, gscale):
        """The update through the in-place kernels: per NS bucket momentum+stack, Newton–Schulz, apply; then one
        AdamW kernel over every AdamW tensor. Returns the kernels' tokens (results to depend on)."""
        tokens = ()
        if self.muon_src:
            decay = 1.0 - lr * self.muon_wd
            for b in range(self.n_buckets):
                a, e = self.b_start[b], self.b_end[b]
                x = _fused_ops.muon_momentum_stack(self.muon_m[a:e], g_muon[a:e], self.fused_momentum_cfg, gscale,
                                                   self.b_rows[b], self.b_cols[b])
                o = self._ns(x, self.ns_coeffs, self.ns_eps, False)
                tokens = tokens + (_fused_ops.muon_apply(o, lr, decay, self.fused_scales[b],
                                                         self.muon_params[a:e]),)
        if self.adam_src:
            bc1 = 1.0 - ops.pow(ops.scalar_to_tensor(self.beta1, ms.float32), t)
            bc2 = 1.0 - ops.pow(ops.scalar_to_tensor(self.beta2, ms.float32), t)
            tokens = tokens + (_fused_ops.adamw_apply(self.adam_params, self.adam_m, self.adam_v, g_adam, lr,
                                                      1.0 - lr * self.adam_wd, bc1, bc2, gscale,
                                                      self.fused_adamw_cfg),)
        return tokens

    def _zero_gather(self, new_muon, new_adam, after, params, mine, start, stop, src, idx, size, op):
        if op is None:           # simulated context: no communication, the other ranks' tensors stay as they were
            return after
        hm = self.hyper_map
        flat = ops.depend(ops.concat(hm(F.partial(_zero_contrib, new_muon, new_adam), src, idx, size), 0), after)
        full = op(flat)
        return ops.depend(after, hm(F.partial(_zero_take, full), mine, params, start, stop))

    def _bucket_ns(self, us, b):
        """NS of us[start:end] (all shaped [..., rows, cols]) as one batch; returns a tuple of O's."""
        x = ops.stack(us[self.b_start[b]:self.b_end[b]])
        shape = x.shape
        x = ops.reshape(x, (-1, self.b_rows[b], self.b_cols[b]))
        x = self._ns(x, self.ns_coeffs, self.ns_eps, self.ns_bf16)
        return ops.unstack(ops.reshape(x, shape), 0)

    # ------------------------------------------------------------------ host side
    def state_parameters(self) -> Dict[str, Parameter]:
        """{name: Parameter} of the whole optimiser state (step, muon_m.*, adam_m.*, adam_v.*, master.*)."""
        out = {"step": self.step}
        for tup in (self.muon_m, self.adam_m, self.adam_v, self.masters):
            for p in tup:
                out[p.name] = p
        return out

    def state_dict(self) -> Dict[str, np.ndarray]:
        """{name: numpy copy} of state_parameters()."""
        return {k: p.asnumpy() for k, p in self.state_parameters().items()}

    def load_state_dict(self, state, strict: bool = True) -> List[str]:
        """Copy arrays/Tensors/Parameters by name into the state; returns the state names not found in `state`.
        strict=True raises KeyError on missing or unexpected names; a shape mismatch always raises ValueError."""
        own = self.state_parameters()
        missing = [k for k in own if k not in state]
        unknown = [k for k in state if k not in own]
        if strict and (missing or unknown):
            raise KeyError(f"optimiser state mismatch: missing {missing[:5]}, unexpected {unknown[:5]}")
        for k, p in own.items():
            if k not in state:
                continue
            v = state[k]
            v = v.asnumpy() if hasattr(v, "asnumpy") else np.asarray(v)
            if tuple(v.shape) != tuple(p.shape):
                raise ValueError(f"{k}: shape {tuple(v.shape)} != {tuple(p.shape)}")
            p.set_data(Tensor(v.astype(ms.dtype_to_nptype(p.dtype))))
        return missing

    def reset_masters(self) -> None:
        """Re-copy every non-fp32 parameter into its fp32 master (after loading model weights)."""
        for m, i in zip(self.masters, self._master_of):
            m.set_data(Tensor(self.parameters[i].asnumpy().astype(np.float32)))

    def describe(self) -> List[Tuple[str, str, Tuple[int, ...]]]:
        """(name, group, shape) of every parameter given: the moved ones in input order, then the frozen ones."""
        rows = [(p.name, g, tuple(p.shape)) for p, g in zip(self.parameters, self.groups)]
        return rows + [(n, pg.FROZEN, shape) for n, shape in self.frozen]


def _buckets(shapes: Sequence[Tuple[int, ...]], bucket_numel: int) -> Tuple[Tuple[int, ...], ...]:
    """Indices of `shapes` grouped by identical shape, in first-seen order, each group cut into NS batches of at
    most `bucket_numel` elements (a matrix larger than that gets a batch of its own)."""
    by_shape: Dict[Tuple[int, ...], List[int]] = {}
    for j, shp in enumerate(shapes):
        by_shape.setdefault(tuple(int(d) for d in shp), []).append(j)
    out = []
    for shp, idx in by_shape.items():
        n = int(np.prod(shp))
        cur: List[int] = []
        for j in idx:
            if cur and (len(cur) + 1) * n > bucket_numel:
                out.append(tuple(cur))
                cur = []
            cur.append(j)
        out.append(tuple(cur))
    return tuple(out)


__all__ = ["MuonAdamW", "newton_schulz", "clip_by_global_norm", "clip_scale", "global_norm", "NS_COEFFS", "NS_EPS"]
