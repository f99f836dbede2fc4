"""PROJECTION (not a measurement): what Engram costs a DeepSeek-V4.1-Flash step on a 910B / 910C with its tables in
host memory (docs/ascendc.md, "Engram on Ascend").

Per step of `tokens` tokens and per row format the host ships, the bytes copied host -> device (2 Engram layers x
24 columns x 256 values per token at V4.1-Flash size, from the config), the copy time over the host link, and the
device time of the two AscendC kernels (EngramDequantAv4, EngramGateAv4: HBM bytes as the kernels are written at
the HBM bandwidth, no launch latency), against a lower bound of the step itself: the active weights read once from
HBM (bf16) for decode, the active matmul FLOPs at the Cube peak for a prefill chunk. Formats:

  float32    what the serving feed ships today (ascend_v4/serve/engram.py: rows decoded to float32 on the host)
  bf16       FP8 release rows decoded on the host (E4M3 x E8M0 is exact in bf16 down to 2^-133): 2 bytes per value
  int8       what `convert` writes, INT8 + one float32 scale per 32 values, decoded by EngramDequantAv4: 1.125
  fp8-raw    the release's E4M3 + E8M0 bytes as stored (1.03125): NOT implemented (910B/910C have no FP8
             arithmetic; a bit-level decode kernel would be needed), listed for comparison

The copy runs on its own stream: a prefill chunk's rows are known a chunk ahead, so its copy overlaps the previous
chunk ("hidden" when copy <= step); a decode step's token is sampled at the end of the previous step, so its gather
and copy precede the step (the graph waits for them before block 0: "exposed"). Host link figures are assumptions
from public PCIe rates (edit LINKS): 910B (Atlas A2) PCIe 4.0 x16, 910C (Atlas A3) PCIe 5.0 x16, effective ~78% of
the raw rate; the host gather itself is measured on CPU by bench/engram_prefetch.py, not here.

  python bench/engram_ascend.py [--json PATH]   (--out PATH: the same; --quick: accepted, no effect)
"""
import argparse
import os

from ascend_v4.atomic import write_json
from ascend_v4.config import MODEL_VERSIONS, load_config

HERE = os.path.dirname(os.path.abspath(__file__))
LINKS = {"910B": {"link": "PCIe 4.0 x16", "raw_gbps": 32.0, "eff_gbps": 25.0, "hbm_tbps": 1.6, "cube_tflops": 320.0},
         "910C-die": {"link": "PCIe 5.0 x16", "raw_gbps": 64.0, "eff_gbps": 50.0, "hbm_tbps": 1.6,
                      "cube_tflops": 400.0}}
FORMATS = {"float32": 4.0, "bf16": 2.0, "int8": 1.0 + 4.0 / 32, "fp8-raw": 1.0 + 1.0 / 32}
PHASES = [("decode", 1), ("decode", 32), ("decode", 128), ("decode", 256), ("prefill", 4096)]
MFU = 0.5                      # assumed prefill matmul efficiency for the step's lower bound


def project(cfg):
    from ascend_v4.info import parameter_counts
    layers = len(cfg.engram_layer_ids)
    per_token = layers * cfg.engram_n_columns * cfg.engram_head_dim          # values per token
    hc, D = cfg.hc_mult, cfg.dim
    active = parameter_counts(cfg)["active_per_token_excl_embed"]
    rows = []
    for soc, p in LINKS.items():
        for phase, T in PHASES:
            # step lower bound: decode reads the active weights once (bf16); prefill runs 2·active FLOPs per token
            step_s = 2 * active / (p["hbm_tbps"] * 1e12) if phase == "decode" else \
                2 * active * T / (p["cube_tflops"] * 1e12 * MFU)
            # kernels: gate reads h twice, kv once, writes out (bf16); dequant reads int8 + scales, writes bf16
            gate_b = layers * T * 2 * (2 * hc * D + (hc + 1) * D + hc * D)
            deq_b = T * per_token * (1 + 4 / 32 + 2)
            for fmt, bpv in FORMATS.items():
                nbytes = T * per_token * bpv
                copy_s = nbytes / (p["eff_gbps"] * 1e9)
                dev_s = (gate_b + (deq_b if fmt == "int8" else 0)) / (p["hbm_tbps"] * 1e12)
                exposed = copy_s if phase == "decode" else max(0.0, copy_s - step_s)
                rows.append({"soc": soc, "link": p["link"], "phase": phase, "tokens": T, "format": fmt,
                             "h2d_mb": nbytes / 1e6, "copy_us": copy_s * 1e6, "kernels_us": dev_s * 1e6,
                             "step_bound_ms": step_s * 1e3,
                             "engram_share": (exposed + dev_s) / step_s, "copy_hidden": exposed == 0.0})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", "--out", dest="json", default=os.path.join(HERE, "results", "engram_ascend.json"))
    ap.add_argument("--quick", action="store_true", help="accepted for bench/run_all.py; the projection is instant")
    a = ap.parse_args(argv)
    cfg = load_config("v4.1-flash", versions=MODEL_VERSIONS)
    rows = project(cfg)
    print(f"PROJECTION, not measured: Engram of {cfg.name} ({len(cfg.engram_layer_ids)} layers x "
          f"{cfg.engram_n_columns} x {cfg.engram_head_dim} values per token) with host tables")
    print(f"{'soc':<9}{'phase':<8}{'tokens':>7} {'format':<8}{'H2D MB':>9}{'copy us':>10}{'kernels us':>11}"
          f"{'step>= ms':>10}{'share':>8}  copy")
    for r in rows:
        print(f"{r['soc']:<9}{r['phase']:<8}{r['tokens']:>7} {r['format']:<8}{r['h2d_mb']:>9.3f}{r['copy_us']:>10.1f}"
              f"{r['kernels_us']:>11.1f}{r['step_bound_ms']:>10.2f}{100 * r['engram_share']:>7.2f}%  "
              f"{'hidden' if r['copy_hidden'] else 'exposed'}")
    write_json(a.json, {"kind": "projection", "config": cfg.name, "links": LINKS, "formats_bytes_per_value": FORMATS,
                        "prefill_mfu_assumed": MFU, "rows": rows,
                        "unverified": "host link rates, copy-stream overlap, launch and event latencies (not "
                                      "modelled: ~10-50 us per copy and kernel launch on the device)"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
