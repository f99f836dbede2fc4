"""PROJECTION (not a measurement): AscendC kernels of this project on 910B / 910C at V4-Flash shapes.

For each kernel and shape: Cube and Vector FLOPs, GM (HBM/L2) bytes, the fraction of cores the kernel's work split
keeps busy, a projected time and the roofline bound of the work on the chip:

  projected = max(cube_flops / (cube_peak * busy), vector_flops / (vector_peak * busy), gm_bytes / hbm_bw)
  roofline  = max(matrix_flops / cube_peak + other_vector_flops / vector_peak, min_bytes / hbm_bw)

where the roofline puts matrix work on the Cube unit (what issue #15 asks for) and counts each tensor once, and
the projection charges the kernels as they are written. Three kinds of kernels are charged differently:

  * mixed AIC/AIV kernels whose Cube and vector halves overlap (core "MIX": the lightning indexer, sparse attention's
    bf16 design): max(cube / (cube_peak * busy), vector / (vector_peak * busy), (gm + workspace) / hbm_bw), busy the
    share of the groups (1 AIC + 2 AIV) the tiling fills; the Cube -> vector hand-over through the GM workspace is
    charged at HBM bandwidth (no credit for L2 residency: a lower bound of the design's efficiency);
  * mixed kernels whose halves run one after the other behind cross-core flags (hc_pre / hc_head): the sum over
    their phases of max(phase compute at the phase's busy share, phase bytes / hbm_bw);
  * grouped_matmul by its own tile split (gmm_tiles): the busiest cube core's Mmad work with rows and columns padded
    to 16 x 16 fractals, at the per-core Cube peak.

efficiency = roofline / projected: the share of the bound the current design reaches. Nothing here was run on a
chip; the peak figures are public numbers that vary by SKU and source (edit PEAKS). Prints a table, writes
bench/results/ascend_projection.json.

  python bench/ascend_projection.py [--json PATH]
"""
import argparse
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
FP32_CUBE_SHARE = 0.25       # float32 Mmad throughput as a share of the bf16 peak (assumed; no public 910B figure)
VECTOR_LANES_FP32 = 64       # one 256-byte vector repeat per cycle per AIV core (fp32 lanes)


def vector_tflops(p):
    return p["aiv"] * VECTOR_LANES_FP32 * p["clock_ghz"] * 1e9 * 2 / 1e12   # multiply-add counted as 2


PEAKS_AIC = 24   # cube cores of a 910B / 910C die (the tiling deals tiles round-robin over them)
GMM_BASE_M, GMM_BASE_N, GMM_BASE_K = 128, 128, 128   # GroupedMatmulTiling's first choice for bf16 (moe_tiling.cc)


def gmm_tiles(rows, active, K, N, cores):
    """grouped_matmul_av4's work split: per expert ceil(rows_e / baseM) x ceil(N / baseN) tiles of baseM x baseN,
    each K deep, dealt round-robin to the cube cores in (expert, row block, column block) order. Mmad works on whole
    16 x 16 fractals (rows and columns padded to 16, K to 16). Experts share the rows evenly (a balanced router).
    Returns (tiles, cube flops of the busiest core (padding included), GM->L1 bytes of all tiles: each tile loads
    its A rows and B columns over the whole K, so x is re-read per column block and W per row block (from L2))."""
    per_core = [0.0] * cores
    t = 0
    loads = 0.0
    base, extra = divmod(rows, active)
    k16 = math.ceil(K / 16) * 16
    for e in range(active):
        r = base + (1 if e < extra else 0)
        for m0 in range(0, r, GMM_BASE_M):
            m16 = math.ceil(min(GMM_BASE_M, r - m0) / 16) * 16
            for n0 in range(0, N, GMM_BASE_N):
                n16 = math.ceil(min(GMM_BASE_N, N - n0) / 16) * 16
                per_core[t % cores] += 2.0 * m16 * n16 * k16
                loads += (min(GMM_BASE_M, r - m0) + min(GMM_BASE_N, N - n0)) * K * 2
                t += 1
    return t, max(per_core), loads


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
    rows = T * k
    out = {}
    # decode: each of the T batch rows has its own ctx-long cache (keys are not shared between sequences); prefill:
    # one causal sequence of T tokens
    # hc_pre (mixed AIC/AIV, hc_pre_cube.h + hc_pre_kernel.h), three phases behind cross-core flags:
    #  0 split: the AIV cores split fn into bf16 hi + lo (read fp32, write 2 x bf16; every AIV a share);
    #  1 Cube: per (token tile, K part) the AIC reads x once and the split (once from HBM, re-read per tile from L2),
    #    projects 2M columns and the tile's x x^T (sums of squares on its diagonal) from the same L1 tile, and writes
    #    both products' partial sums to the workspace;
    #  2 vector: the AIV cores add the K parts (one 32-byte read per token and part for the diagonal), coefficients
    #    (~60 ops per mix entry: sigmoids, 20 Sinkhorn iterations), read x once for the collapse and write y.
    #  (decode, tiling xCast when 10 T K < 12 M K bytes: phase 0 casts x to float32 instead, and the Cube reads that
    #  and fn itself: no split)
    x_cast = 5 * T < 6 * M
    n16 = math.ceil((M if x_cast else 2 * M) / 16) * 16
    base_m = 128 if T >= 128 else math.ceil(T / 16) * 16   # hc_tiling.cc CubeTiling for bf16 x, hc = 4
    tiles = math.ceil(T / base_m)
    steps = K // 64                                        # baseK = 64 (bf16: L0B holds B and x^T; float32)
    ksplit = 1 if tiles >= PEAKS_AIC else min(math.ceil(PEAKS_AIC / tiles), steps)
    phases = [
        dict(vector=T * K, items_aiv=10 ** 9, gm=T * K * (bf + 4)) if x_cast else
        dict(vector=3.0 * M * K, items_aiv=10 ** 9, gm=M * K * 4 + 2 * M * K * 2),
        dict(matrix=2.0 * tiles * base_m * K * (n16 + base_m), items_aic=tiles * ksplit,
             cube_rate=FP32_CUBE_SHARE if x_cast else 1.0,
             gm=(T * K * 4 + M * K * 4 if x_cast else T * K * bf + 2 * M * K * 2)
             + ksplit * (T * n16 + tiles * base_m * base_m) * 4),
        dict(vector=2.0 * T * hc * D + T * M * 60 + ksplit * T * (n16 + 8), items_aiv=T,
             gm=ksplit * T * (n16 * 4 + 32) + T * K * bf + T * D * bf + T * (M + 1 + hc + hc * hc) * 4),
    ]
    out["hc_pre"] = dict(matrix=2.0 * T * M * K, vector=2.0 * T * hc * D + T * M * 60, phases=phases,
                         gm=sum(ph["gm"] for ph in phases), gm_min=T * K * bf + M * K * 4 + T * D * bf,
                         items=tiles * ksplit, core="MIX", cube_now=True)
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
    tiles, core_max, loads = gmm_tiles(rows, active, D, I, PEAKS_AIC)
    out["grouped_matmul (w1)"] = dict(matrix=2.0 * rows * D * I, vector=0.0,
                                      gm=rows * D * bf + active * D * I * bf + rows * I * bf,
                                      gm_min=rows * D * bf + active * D * I * bf + rows * I * bf,
                                      items=tiles, cube_core_max=core_max, l1_loads=loads, core="AIC",
                                      cube_now=True)
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
                                    gm_min=T * Hi * di * bf + (T * ctx / 4 if ctx else T / 4) * di * bf + T * topk * 4,
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
                                    gm_min=T * H * Dh * bf * 2 + min(T * entries, T * (ctx + 1) if ctx else 2 * T) * Dh * bf,
                                    items=T, core="MIX", cube_now=True)
    return out


def project(p, kern):
    cube, vec, bw = p["cube_tflops"] * 1e12, vector_tflops(p) * 1e12, p["hbm_tbps"] * 1e12
    cores = p["aic"] if kern["core"] in ("AIC", "MIX") else p["aiv"]
    busy = min(kern["items"], cores) / cores
    t_roof = max(kern["matrix"] / cube + kern["vector"] / vec, kern["gm_min"] / bw)
    if "phases" in kern:                                # halves one after the other behind cross-core flags
        t_proj, t_c, t_m = 0.0, 0.0, 0.0
        for ph in kern["phases"]:
            b_c = min(ph.get("items_aic", 0), p["aic"]) / p["aic"]
            b_v = min(ph.get("items_aiv", 0), p["aiv"]) / p["aiv"]
            c = ph.get("matrix", 0.0) / (cube * ph.get("cube_rate", 1.0) * b_c) if b_c else 0.0
            c += ph.get("vector", 0.0) / (vec * b_v) if b_v else 0.0
            m = ph["gm"] / bw
            t_proj, t_c, t_m = t_proj + max(c, m), t_c + (c if c >= m else 0.0), t_m + (m if m > c else 0.0)
        return dict(busy=busy, projected_us=t_proj * 1e6, roofline_us=t_roof * 1e6, efficiency=t_roof / t_proj,
                    bound="compute" if t_c >= t_m else "memory")
    if kern["core"] == "MIX":                           # Cube and vector units overlap (ping-pong hand-over)
        t_comp = max(kern["matrix"] / (cube * busy), kern["vector"] / (vec * busy))
        t_mem = (kern["gm"] + kern.get("workspace", 0.0)) / bw
        t_proj = max(t_comp, t_mem)
        return dict(busy=busy, projected_us=t_proj * 1e6, roofline_us=t_roof * 1e6,
                    efficiency=t_roof / t_proj if t_proj > 0 else 1.0,
                    bound="compute" if t_comp >= t_mem else "memory")
    if "cube_core_max" in kern:                         # the busiest cube core of the kernel's own tile split
        t_comp = kern["cube_core_max"] / (cube / cores) + kern["vector"] / (vec * busy)
    elif kern["cube_now"]:
        t_comp = kern["matrix"] / (cube * busy) + kern["vector"] / (vec * busy)
    else:                                               # matrix work done by the vector unit today
        t_comp = (kern["matrix"] + kern["vector"]) / (vec * busy)
    t_proj = max(t_comp, kern["gm"] / bw)
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
                if "l1_loads" in kern:   # what the tile loads pull through L2 at the projected time (no public L2 peak)
                    rows[-1]["l1_load_mb"] = kern["l1_loads"] / 1e6
                    rows[-1]["l2_tbps_needed"] = kern["l1_loads"] / (r["projected_us"] * 1e-6) / 1e12
    print("PROJECTION (no chip was used): V4-Flash shapes, peaks " +
          ", ".join(f"{k}: cube {v['cube_tflops']} TFLOPS, vector {vector_tflops(v):.1f} TFLOPS, HBM {v['hbm_tbps']} TB/s"
                    for k, v in PEAKS.items()))
    hdr = f"{'chip':9} {'shape':12} {'kernel':22} {'cubeGF':>9} {'vecGF':>9} {'GM MB':>9} {'busy':>5} " \
          f"{'proj us':>10} {'roof us':>10} {'eff':>5} bound"
    print(hdr)
    for r in rows:
        l2 = f"  (tile loads {r['l1_load_mb']:.0f} MB: L2 {r['l2_tbps_needed']:.1f} TB/s needed)" if "l1_load_mb" in r else ""
        print(f"{r['chip']:9} {r['shape']:12} {r['kernel']:22} {r['cube_gflop']:9.2f} {r['vector_gflop']:9.2f} "
              f"{r['gm_mb']:9.1f} {r['busy']:5.2f} {r['projected_us']:10.1f} {r['roofline_us']:10.1f} "
              f"{r['efficiency']:5.2f} {r['bound']}{l2}")
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    write_json(a.json, {"kind": "projection", "peaks": PEAKS, "vector_lanes_fp32": VECTOR_LANES_FP32,
                        "model": "v4-flash", "rows": rows}, indent=1)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
