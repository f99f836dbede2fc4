"""Helpers the tests share (one copy of each): relative errors, DeepSeek-V4.1 token ids, the inputs of the mHC
float32-island checks, and simulated tensor-parallel ranks checked against the full layer.

Training-run helpers (run directories, msrun launches, run comparisons) are in run_dirs.py."""
import numpy as np


# ------------------------------------------------------------------------------------------------ errors
def rel_l2_rows(a, b):
    """Relative L2 error of a against the reference b along the last axis (one value per row), in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def rel_l2_total(g, ref):
    """Relative L2 error of the tensors {name: array} g against ref, over all of ref's tensors together (float64)."""
    num = np.sqrt(sum(float(((g[k] - ref[k]).astype(np.float64) ** 2).sum()) for k in ref))
    return num / np.sqrt(sum(float((ref[k].astype(np.float64) ** 2).sum()) for k in ref))


# ------------------------------------------------------------------------------------------------ inputs
def v41_ids(cfg, seed, shape):
    """Random token ids of a V4.1 config below its compressed vocabulary (the float64 golden's identity token map)
    and never its image token id."""
    ids = np.random.default_rng(seed).integers(0, cfg.engram_compressed_vocab_size, shape)
    return np.where(ids == cfg.image_token_id, 0, ids)


def mhc_mix_inputs(cfg, rng, round_bf16):
    """(fn, scale, base, h) of an mHC mix check on `cfg`: projection [mix, hc·dim], gating factors, static bias and
    bf16-representable streams [2, 8, hc, dim] (round_bf16: precision.round_bf16_np), float32, drawn from rng."""
    D, hc, mix = cfg.dim, cfg.hc_mult, cfg.hc_mix_dim
    fn = (rng.normal(size=(mix, hc * D)) * 0.05).astype(np.float32)
    scale = np.array([0.5, 0.8, 1.1], np.float32)
    base = (rng.normal(size=mix) * 0.1).astype(np.float32)
    h = round_bf16(rng.normal(size=(2, 8, hc, D)).astype(np.float32))
    return fn, scale, base, h


# ------------------------------------------------------------------------------------------------ tp ranks
def rand_params(cell, rng, scale=0.3):
    """Sets every float32 parameter of cell to N(0, scale²) (norm gains 1 + that) -> {name: array}."""
    import mindspore as ms
    out = {}
    for p in cell.get_parameters():
        if p.dtype != ms.float32:
            continue
        a = (rng.standard_normal(tuple(p.shape)) * scale).astype(np.float32)
        if p.name.endswith("norm.weight"):
            a = 1.0 + a
        p.set_data(ms.Tensor(a))
        out[p.name] = a
    return out


def load_slices(cell, full, prefix, ctx):
    """Loads a simulated rank's cell with its slices (ctx.shard) of the full parameters {name: array}; prefix: the
    cell's place in the model (`layers.1.attn.`), which decides how a parameter is split."""
    import mindspore as ms
    for p in cell.get_parameters():
        if p.name in full:
            p.set_data(ms.Tensor(ctx.shard(prefix + p.name, full[p.name])))


def value_and_grads(cell, fn, x, cot):
    """(y, dL/dx, {param: dL/dparam}) of L = sum(fn(x) * cot), in one compiled graph."""
    import mindspore as ms
    params = cell.trainable_params()

    def loss(xv):
        y = fn(xv)
        return (y * cot).sum(), y

    (_, y), (gx, gp) = ms.value_and_grad(loss, grad_position=0, weights=params, has_aux=True)(x)
    return y.asnumpy(), gx.asnumpy(), {p.name: g.asnumpy() for p, g in zip(params, gp)}


def check_tp_ranks(cfg, tp, full_cell, w, prefix, run, rank_cell, rtol=2e-5):
    """The tp simulated ranks' cells (rank_cell(ctx), loaded with their slices of the full cell's parameters w) run
    on the same input: their outputs and input gradients add up to the full cell's, their parameter gradients are
    the full ones' (replicated: summed; sliced: concatenated). run(cell) -> (out, gx, {param: grad}).
    -> how many parameters are sliced."""
    from ascend_v4.parallel import ParallelContext, tp_dim
    full_out, full_gx, full_g = run(full_cell)
    parts = []
    for r in range(tp):
        ctx = ParallelContext.simulated_rank(cfg, tp=tp, rank=r)
        cell = rank_cell(ctx)
        load_slices(cell, w, prefix, ctx)
        parts.append(run(cell))
    np.testing.assert_allclose(sum(p[0] for p in parts), full_out, rtol=rtol, atol=rtol * np.abs(full_out).max())
    np.testing.assert_allclose(sum(p[1] for p in parts), full_gx, rtol=rtol, atol=rtol * np.abs(full_gx).max())
    sliced = 0
    for name, g in full_g.items():
        d = tp_dim(prefix + name)
        tol = rtol * max(np.abs(g).max(), 1e-6)
        if d is None:        # replicated: the tp ranks' partial gradients add up (CopyToTensorParallel's AllReduce)
            np.testing.assert_allclose(sum(p[2][name] for p in parts), g, rtol=rtol, atol=tol, err_msg=name)
        else:                # sliced: each rank holds the slice of the full gradient
            sliced += 1
            np.testing.assert_allclose(np.concatenate([p[2][name] for p in parts], d), g, rtol=rtol, atol=tol,
                                       err_msg=name)
    return sliced


def assert_shard_gather_identity(cfg, thread_ranks, full, dp, tp, ep, n_experts, check_names=None):
    """Every rank of dp·tp (ep over dp; ranks played by threads, thread_ranks: the conftest fixture) shards the
    float tensors full {name: float32 array} plus a Muon state tensor per matrix (muon_m.<name>, added to full), its
    tp-split tensors are 1/tp of the full dim, and ctx.gather_full of its shards is full again, bit for bit.
    n_experts: ParallelContext.owns's expert count (an int, or a name -> count); check_names(ctx, names): a check of
    the names a rank owns."""
    from ascend_v4.parallel import ParallelContext, tp_dim
    for n in [k for k in full if k.endswith(".weight") or k.endswith("attn_sink")]:
        full["muon_m." + n] = full[n] * 2          # optimiser-state names follow their parameters
    world = dp * tp
    comm = thread_ranks(world)

    def run(r):
        ctx = ParallelContext.simulated_rank(cfg, dp=dp, tp=tp, ep=ep, rank=r)
        ctx._host_gather = lambda arrays, kind: comm.exchange(r, list(arrays), ctx.group_ranks(kind))
        names = [n for n in full if ctx.owns(n, n_experts)]
        if check_names is not None:
            check_names(ctx, names)
        local = ctx.shard_weights(full, names)
        for n in local:
            d = tp_dim(n)
            if d is not None:
                assert local[n].shape[d] * tp == full[n].shape[d], n
        assert set(ctx.full_names(local, n_experts)) == set(full)
        return ctx.gather_full(local)

    results = comm.run(run)
    for r in range(world):
        assert results[r].keys() == full.keys()
        for n in full:
            np.testing.assert_array_equal(results[r][n], full[n], err_msg=f"rank {r} {n}")
