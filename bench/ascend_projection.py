"""PROJECTION (not a measurement): AscendC kernels of this project on 910B / 910C at V4-Flash shapes.

For each kernel and shape: Cube and Vector FLOPs, GM (HBM/L2) bytes, the fraction of cores the kernel's work split
keeps busy, a projected time and the roofline bound of the work on the chip:

  projected = max(cube_flops / (cube_peak * busy), vector_flops / (vector_peak * busy), gm_bytes / hbm_bw)
  roofline  = max(matrix_flops / cube_peak + other_vector_flops / vector_peak, min_bytes / hbm_bw)

Mixed AIC/AIV kernels (core "MIX": the lightning indexer, sparse attention's bf16 design) overlap the two units, so their projection is
max(cube / (cube_peak * busy_aic), vector / (vector_peak * busy_aiv), (gm + workspace) / hbm_bw), with busy the share
of the groups (1 AIC + 2 AIV) the tiling fills; the Cube -> vector hand-over through the GM workspace is charged at
HBM bandwidth (no credit for L2 residency: a lower bound of the design's efficiency).

where the roofline puts matrix work on the Cube unit (what issue #15 asks for) and counts each tensor once, and
the projection charges the kernels as they are written (vector-only projections in hc_pre / indexer / sparse
attention, fn re-read per token tile, ...). efficiency = roofline / projected: the share of the bound the current
design reaches. Nothing here was run on a chip; the peak figures are public numbers that vary by SKU and source
(edit PEAKS). Prints a table, writes bench/results/ascend_projection.json.

  python bench/ascend_projection.py [--json PATH]
"""
import argparse
import json
import math
import os
import sys

from ascend_v4.atomic import write_json
from ascend_v4.config import load_config

# Public peak figures (approximate; vendor and third-party sources disagree). Per chip as the framework sees it:
# 910C is two 910B-class dies, each its own device with 24 AIC / 48 AIV.
PEAKS = {
    "910B": {"cube_tflops": 320.0, "hbm_tbps": 1.6, "aic": 24, "aiv": 48, "clock_ghz": 1.8},
    "910C-die": {"cube_tflops": 400.0, "hbm_tbps": 1.6, "aic": 24, "aiv": 48, "clock_ghz": 1.8},
}
VECTOR_LANES_FP32 = 64       # one 256-byte vector repeat per cycle per AIV core (fp32 lanes)


def vector_tflops(p):
    return p["aiv"] * VECTOR_LANES_FP32 * p["clock_ghz"] * 1e9 * 2 / 1e12   # multiply-add counted as 2


def shapes():
    """(label, tokens T, attention context for decode or None for prefill)"""
    out = [("prefill 4K", 4096, None), ("prefill 64K", 65536, None)]
    out += [(f"decode B={b}", b, 65536) for b in (1, 8, 64, 256)]
    return out


def kernels(c, T, ctx):
    """per kernel: matrix flops (could run on the Cube), vector flops, GM bytes as written, minimal GM bytes, work
    items the core split deals out, and whether the kernel runs on AIC (cube) or AIV (vector) cores"""
    D, hc, M = c.dim, c.hc_mult, c.hc_mix_dim
    K = hc * D
    E, k, I = c.n_routed_experts, c.n_activated_experts, c.moe_inter_dim
    H, Dh, W, topk = c.n_heads, c.head_dim, c.window_size, c.index_topk
    Hi, di = c.index_n_heads, c.index_head_dim
    bf = 2
    avg_ctx = ctx if ctx else T / 2                       # causal prefill: half the sequence on average
    n_cmp4 = avg_ctx / 4                                  # CSA compressed entries seen by a query
    tile_t = 8                                            # hc_pre tokens sharing one fn chunk (tiling kMaxTileT)
    rows = T * k
    out = {}
    out["hc_pre"] = dict(matrix=2.0 * T * M * K, vector=2.0 * T * hc * D + T * M * 60,
                         gm=T * K * bf * 2 + math.ceil(T / tile_t) * M * K * 4 + T * D * bf,
                         gm_min=T * K * bf + M * K * 4 + T * D * bf, items=T, core="AIV", cube_now=False)
    out["hc_post"] = dict(matrix=0.0, vector=T * hc * D * (2 + 2 * hc), gm=T * D * bf + 2 * T * K * bf,
                          gm_min=T * D * bf + 2 * T * K * bf, items=T, core="AIV", cube_now=False)
    # gating: score (~12 ops / expert) + ONE sort of E (key, id) pairs (Sort32 + ceil(log4(E / 32)) MrgSort passes,
    # 2 ops per element per pass) + one GatherMask of k ids -- not k ReduceMax rounds over E
    sort_passes = 1 + max(0, math.ceil(math.log(max(E / 32, 1), 4)))
    out["moe_gating_topk"] = dict(matrix=0.0, vector=T * E * (12 + 2 * sort_passes) + T * 32 * 2,
                                  gm=2 * T * E * 4 + 2 * T * k * 4,
                                  gm_min=2 * T * E * 4 + 2 * T * k * 4, items=T, core="AIV", cube_now=False)
    out["moe_init_routing"] = dict(matrix=0.0, vector=rows * 4, gm=rows * D * bf + T * D * bf * k + rows * 8,
                                   gm_min=rows * D * bf + T * D * bf + rows * 8, items=rows, core="AIV",
                                   cube_now=False)
    active = min(E, rows)
    out["grouped_matmul (w1)"] = dict(matrix=2.0 * rows * D * I, vector=0.0,
                                      gm=rows * D * bf + active * D * I * bf + rows * I * bf,
                                      gm_min=rows * D * bf + active * D * I * bf + rows * I * bf,
                                      items=active * max(1, math.ceil(rows / active / 256)) * math.ceil(I / 256),
                                      core="AIC", cube_now=True)
    out["moe_finalize_routing"] = dict(matrix=0.0, vector=2.0 * rows * D + T * D, gm=rows * D * bf + 2 * T * D * bf,
                                       gm_min=rows * D * bf + 2 * T * D * bf, items=T, core="AIV", cube_now=False)
    out["compress_kv (ratio 4)"] = dict(matrix=0.0, vector=T * 2 * D // 4 * 2 * 8.0, gm=2 * T * 2 * (Dh) * bf,
                                        gm_min=2 * T * 2 * Dh * bf, items=max(1, T // 4), core="AIV",
                                        cube_now=False)
    # indexer (mixed AIC/AIV, ops/attention/ascendc/op_kernel/lightning_indexer_v4.cpp): a pair of query rows per
    # Cube product ([2Hi, di] x [di, 128 keys]), keys read once per pair; the [2Hi, 128] float scores go to the GM
    # workspace (written by Fixpipe, read by the two vector cores); per row-key on the vector unit: ReLU + Axpy over
    # Hi heads (2 lane-ops each, counted as 2 flops like a multiply-add) and the block Sort + merge into the running
    # top-k (~4 lane-ops per element per pass: Sort32, MrgSort4, the (topk + 128)-pair merge / 128)
    pairs = math.ceil(T / 2) if ctx is None else T        # decode: one row per batch, a one-row pair
    sort_ops = 4 * (2 + (topk + 128) / 128)
    out["lightning_indexer"] = dict(matrix=2.0 * T * Hi * di * n_cmp4,
                                    vector=T * n_cmp4 * 2 * (2 * Hi + sort_ops) + T * topk * 8,
                                    gm=T * Hi * di * bf + pairs * n_cmp4 * di * bf + T * Hi * bf + T * topk * 4,
                                    workspace=2 * T * n_cmp4 * Hi * 4,
                                    gm_min=T * Hi * di * bf + (ctx / 4 if ctx else T / 4) * di * bf + T * topk * 4,
                                    items=pairs, core="MIX", cube_now=True)
    # sparse attention, tiling key 1 (bf16, ops/attention/ascendc/op_kernel/sparse_attn_shared_kv.cpp): per query row
    # the Cube gathers the entries' kv rows (HBM) and runs S = Q·Kᵀ and O = P·V per 128-entry block; S (float), P
    # (bf16) and each block's O [H, Dh] (float) pass through the GM workspace; the vector cores do ~6 lane-ops per
    # (head, entry) for the softmax and 2 per (head, column) per block to fold O into the accumulator
    entries = W + topk
    blocks = math.ceil(entries / 128)
    out["sparse_attn (CSA)"] = dict(matrix=4.0 * T * H * Dh * entries,
                                    vector=2.0 * T * H * (6 * entries + 2 * Dh * blocks),
                                    gm=T * H * Dh * bf * 2 + T * entries * Dh * bf + T * entries * 4,
                                    workspace=2.0 * T * H * (entries * (4 + bf) + blocks * Dh * 4),
                                    gm_min=T * H * Dh * bf * 2 + min(T * entries, (ctx or T) + T) * Dh * bf,
                                    items=T, core="MIX", cube_now=True)
    return out


def project(p, kern):
    cube, vec, bw = p["cube_tflops"] * 1e12, vector_tflops(p) * 1e12, p["hbm_tbps"] * 1e12
    cores = p["aic"] if kern["core"] in ("AIC", "MIX") else p["aiv"]
    busy = min(kern["items"], cores) / cores
    if kern["core"] == "MIX":                           # Cube and vector units overlap (ping-pong hand-over)
        t_comp = max(kern["matrix"] / (cube * busy), kern["vector"] / (vec * busy))
        t_mem = (kern["gm"] + kern.get("workspace", 0.0)) / bw
        t_proj = max(t_comp, t_mem)
        t_roof = max(kern["matrix"] / cube + kern["vector"] / vec, kern["gm_min"] / bw)
        return dict(busy=busy, projected_us=t_proj * 1e6, roofline_us=t_roof * 1e6,
                    efficiency=t_roof / t_proj if t_proj > 0 else 1.0,
                    bound="compute" if t_comp >= t_mem else "memory")
    if kern["cube_now"]:
        t_comp = kern["matrix"] / (cube * busy) + kern["vector"] / (vec * busy)
    else:                                               # matrix work done by the vector unit today
        t_comp = (kern["matrix"] + kern["vector"]) / (vec * busy)
    t_proj = max(t_comp, kern["gm"] / bw)
    t_roof = max(kern["matrix"] / cube + kern["vector"] / vec, kern["gm_min"] / bw)
    return dict(busy=busy, projected_us=t_proj * 1e6, roofline_us=t_roof * 1e6,
                efficiency=t_roof / t_proj if t_proj > 0 else 1.0,
                bound="compute" if t_comp >= kern["gm"] / bw else "memory")


def main(argv=None):
    ap = argparse.ArgumentParser(description="projection (not a measurement) of the AscendC kernels on 910B/910C")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                   "ascend_projection.json"))
    ap.add_argument("--out", dest="json", default=argparse.SUPPRESS, help=argparse.SUPPRESS)   # as in the other benches
    ap.add_argument("--quick", action="store_true", help="accepted for bench/run_all.py: a projection is instant")
    a = ap.parse_args(argv)
    c = load_config("v4-flash")
    rows = []
    for chip, p in PEAKS.items():
        for label, T, ctx in shapes():
            for name, kern in kernels(c, T, ctx).items():
                r = project(p, kern)
                rows.append(dict(chip=chip, shape=label, kernel=name, cube_gflop=kern["matrix"] / 1e9 if kern["cube_now"] else 0.0,
                                 vector_gflop=(kern["vector"] + (0 if kern["cube_now"] else kern["matrix"])) / 1e9,
                                 gm_mb=(kern["gm"] + kern.get("workspace", 0.0)) / 1e6, **r))
    print("PROJECTION (no chip was used): V4-Flash shapes, peaks " +
          ", ".join(f"{k}: cube {v['cube_tflops']} TFLOPS, vector {vector_tflops(v):.1f} TFLOPS, HBM {v['hbm_tbps']} TB/s"
                    for k, v in PEAKS.items()))
    hdr = f"{'chip':9} {'shape':12} {'kernel':22} {'cubeGF':>9} {'vecGF':>9} {'GM MB':>9} {'busy':>5} " \
          f"{'proj us':>10} {'roof us':>10} {'eff':>5} bound"
    print(hdr)
    for r in rows:
        print(f"{r['chip']:9} {r['shape']:12} {r['kernel']:22} {r['cube_gflop']:9.2f} {r['vector_gflop']:9.2f} "
              f"{r['gm_mb']:9.1f} {r['busy']:5.2f} {r['projected_us']:10.1f} {r['roofline_us']:10.1f} "
              f"{r['efficiency']:5.2f} {r['bound']}")
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    write_json(a.json, {"kind": "projection", "peaks": PEAKS, "vector_lanes_fp32": VECTOR_LANES_FP32,
                        "model": "v4-flash", "rows": rows}, indent=1)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
