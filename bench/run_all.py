"""Run every benchmark and print one summary table: bench, row, ours, peer, ratio, goal, met.

    python bench/run_all.py --quick              # every bench in its quick mode (~15 min on 2 cores)
    python bench/run_all.py --quick --only forward_cpu,w4a8
    python bench/run_all.py --summarise          # no runs: summarise bench/results/*.json (the full runs)
    python bench/run_all.py --quick --summarise  # no runs: summarise bench/results/quick/*.json
    python bench/run_all.py --full               # every bench at full size: hours

Each bench runs in its own process, one after the other (they measure wall time: never two at once), with
`--quick` (small sizes, few repetitions; see each script's --help) and its JSON written to
bench/results/quick/<name>.json, so a quick run never overwrites the full results in bench/results/. A bench that
fails is reported with its exit code and the tail of its output; the others still run.

The table reads every bench's JSON. `ratio` is always oriented so that > 1 means ours is ahead of the peer
(ours/peer for throughputs and efficiencies, peer/ours for times and errors). Goals, where the project states one:
  forward_cpu, decode prefill  ours ≥ 1.3× transformers' DeepseekV4ForCausalLM tokens/s   (issue 20)
  decode                       ours ≥ 1.5× transformers decode tokens/s; decode time per token flat in context
                               (growth ≤ 1.2× from the shortest to the longest context)     (issue 20)
  ops_moe                      expert GEMMs ≥ 70% of the machine's fp32 matmul rate at ~48 rows per expert (issue 20)
  engram_prefetch              next-step prefetch overhead ≤ 3% of the step                 (docs/deepseek-v4.1.md)
  decode_dspark                DSpark tokens equal plain greedy decoding (tokens/s reported, no goal)
  w4a8                         mean relative weight error ≤ 8% (the serving default, int4 groups of 32)
  migrate_eval                 precision ≥ 98%, recall ≥ 95%, no unsafe rewrite            (README)
  ascend_projection            kernel efficiency (roofline / projected time) ≥ 50%          (README; a projection)
  engram_ascend                Engram ≤ 3% of a V4.1-Flash step bound on 910B/910C, host tables (issue 18; a projection)
Rows without a stated goal (train, train_memory, ops_mhc, attention_long, convert) show the ratio and "-";
train_memory compares each memory / precision switch with the default train step (its own baseline).
Writes bench/results/summary.json (mode, per-bench status and seconds, rows).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def _row(bench, row, ours, peer, peer_name, ratio, goal=None, met=None, unit=""):
    """One comparison. goal: text ("≥ 1.3×"); met: True / False / None (no goal)."""
    return {"bench": bench, "row": row, "ours": ours, "peer": peer, "peer_name": peer_name, "unit": unit,
            "ratio": ratio, "goal": goal or "-", "met": met}


def _at_least(ratio, goal):
    return None if ratio is None else bool(ratio >= goal)


# ------------------------------------------------------------------------------------------- per-bench readers
def _compile_row(bench, row, seconds, config):
    """Compile time of one graph (its first call): goal < 10 s on the small preset (issue 20), reported elsewhere."""
    small = config == "small"
    return _row(bench, row, seconds, None, "-", None, "< 10 s" if small else None,
                bool(seconds < 10.0) if small else None, "s")


def forward_cpu(d):
    out = [_row("forward_cpu", f"{r['config']} B{r['batch']}xS{r['seq']} forward", r["ours_tok_s"], r["hf_tok_s"],
                "transformers", r["ratio"], "≥ 1.3×", _at_least(r["ratio"], 1.3), "tok/s") for r in d["rows"]]
    out += [_compile_row("forward_cpu", f"{r['config']} B{r['batch']}xS{r['seq']} forward graph compile",
                         r["ours_compile_s"], r["config"]) for r in d["rows"] if "ours_compile_s" in r]
    return out


def decode(d):
    out = []
    for r in d.get("throughput", []):
        tag = f"{r['config']} B{r['batch']} P{r['prompt']}"
        for kind, goal in (("prefill", 1.3), ("decode", 1.5)):
            ours, hf = r[f"ours_{kind}_tok_s"], r[f"hf_{kind}_tok_s"]
            ratio = ours / hf if hf else None
            out.append(_row("decode", f"{tag} {kind}", ours, hf, "transformers", ratio, f"≥ {goal}×",
                            _at_least(ratio, goal), "tok/s"))
        for graph, sec in r.get("compile_s_per_graph", {}).items():
            out.append(_compile_row("decode", f"{tag} graph {graph} compile", sec, r["config"]))
    for cfg, sweep in d.get("context_sweep", {}).items():
        for s in sweep:
            if s.get("hf_decode_ms_per_token"):
                ratio = s["hf_decode_ms_per_token"] / s["decode_ms_per_token"]
                out.append(_row("decode", f"{cfg} decode at {s['context']} context", s["decode_ms_per_token"],
                                s["hf_decode_ms_per_token"], "transformers", ratio, "≥ 1.5×", _at_least(ratio, 1.5),
                                "ms/token"))
        graphs = {g: v for s in sweep for g, v in s.get("compile_s_per_graph", {}).items()}
        if graphs:
            worst = max(graphs, key=graphs.get)
            out.append(_compile_row("decode", f"{cfg} context sweep: slowest of {len(graphs)} graph compiles "
                                              f"({worst})", graphs[worst], cfg))
        if len(sweep) >= 2:
            first, last = sweep[0], sweep[-1]
            growth = last["decode_ms_per_token"] / first["decode_ms_per_token"]
            out.append(_row("decode", f"{cfg} ms/token {last['context']} vs {first['context']} context",
                            last["decode_ms_per_token"], first["decode_ms_per_token"], "ours at the shortest",
                            1.0 / growth, "growth ≤ 1.2×", bool(growth <= 1.2), "ms/token"))
            if first.get("decode_cpu_ms_per_token") and last.get("decode_cpu_ms_per_token"):
                g_cpu = last["decode_cpu_ms_per_token"] / first["decode_cpu_ms_per_token"]
                out.append(_row("decode", f"{cfg} CPU ms/token {last['context']} vs {first['context']} context "
                                          f"(indexer {last.get('indexer_cpu_ms_per_token', float('nan')):.2f} ms of "
                                          f"{last['decode_cpu_ms_per_token']:.1f})",
                                last["decode_cpu_ms_per_token"], first["decode_cpu_ms_per_token"],
                                "ours at the shortest", 1.0 / g_cpu, "growth ≤ 1.2×", bool(g_cpu <= 1.2), "ms/token"))
    for cfg, m in d.get("mtp", {}).items():
        if m.get("plain_decode_tok_s"):
            ratio = m["spec_decode_tok_s"] / m["plain_decode_tok_s"]
            out.append(_row("decode", f"{cfg} MTP speculative decode (acceptance {m['acceptance_rate']:.0%})",
                            m["spec_decode_tok_s"], m["plain_decode_tok_s"], "ours, plain decode", ratio,
                            unit="tok/s"))
    return out


def train(d):
    out = []
    for r in d["rows"]:
        ours, hf = r["ours"]["tokens_per_s"], r["hf"]["tokens_per_s"]
        out.append(_row("train", f"{r['config']} B{r['batch']}xS{r['seq']} train step", ours, hf,
                        "transformers + AdamW", r["tokens_per_s_ratio_ours_over_hf"], unit="tok/s"))
    return out


def train_memory(d):
    """Each memory / precision switch against the default step (the peer here is our own baseline mode)."""
    out = []
    for r in d["rows"]:
        if r["mode"] == "baseline":
            continue
        base = next((b for b in d["rows"] if b["config"] == r["config"] and b["mode"] == "baseline"), None)
        if base is None:
            continue
        tag = f"{r['config']} B{d['batch']}xS{d['seq']} {r['mode']}"
        out.append(_row("train_memory", f"{tag} peak RSS", r["peak_rss_mb"], base["peak_rss_mb"], "baseline step",
                        base["peak_rss_mb"] / r["peak_rss_mb"], unit="MB"))
        if r.get("step_s") and base.get("step_s"):
            out.append(_row("train_memory", f"{tag} step time", r["step_s"], base["step_s"], "baseline step",
                            base["step_s"] / r["step_s"], unit="s"))
    return out


def ops_moe(d):
    out = []
    for run in d["runs"]:
        p = run["paths"]
        cpp = p.get("cpp_dropless")
        if not cpp:
            continue
        tag = f"T{run['tokens']} ({run['rows_per_expert']:.0f} rows/expert)"
        frac = cpp.get("expert_frac_of_matmul_rate")
        if frac is not None:
            near = 32 <= run["rows_per_expert"] <= 64
            out.append(_row("ops_moe", f"{tag} expert GEMMs vs fp32 matmul rate", cpp["expert_gflops"],
                            cpp["numpy_matmul_gflops_here"], "numpy matmul", frac, "≥ 70%" if near else None,
                            bool(frac >= 0.70) if near else None, "GFLOP/s"))
        cfrac = cpp.get("expert_frac_of_matmul_rate_cpu_time")
        if cfrac is not None:     # per CPU-second of the process: what a loaded shared host distorts least
            out.append(_row("ops_moe", f"{tag} expert GEMMs vs fp32 matmul rate, per CPU-second",
                            cpp["expert_gflops_per_cpu_s"], cpp["numpy_matmul_gflops_per_cpu_s"], "numpy matmul", cfrac,
                            "≥ 70%" if near else None, bool(cfrac >= 0.70) if near else None, "GFLOP/cpu-s"))
        for peer in ("naive_numpy", "composite_capacity"):
            if peer in p:
                out.append(_row("ops_moe", f"{tag} layer", cpp["median_s"], p[peer]["median_s"], peer,
                                p[peer]["median_s"] / cpp["median_s"], unit="s"))
    return out


def ops_mhc(d):
    out = []
    for r in d["rows"]:
        if r.get("backend") != "cpp" or "speedup_vs_composite_fwd_bwd" not in r:
            continue
        s = r["speedup_vs_composite_fwd_bwd"]
        out.append(_row("ops_mhc", f"T{r['T']} hc_pre+hc_post fwd+bwd", r["fwd_bwd_ms"], r["fwd_bwd_ms"] * s,
                        "MindSpore composite", s, unit="ms"))
        if r.get("speedup_vs_numpy_fwd_bwd"):
            n = r["speedup_vs_numpy_fwd_bwd"]
            out.append(_row("ops_mhc", f"T{r['T']} hc_pre+hc_post fwd+bwd", r["fwd_bwd_ms"], r["fwd_bwd_ms"] * n,
                            "NumPy", n, unit="ms"))
    return out


def attention_long(d):
    by = {(r["kind"], r["S"]): r for r in d["rows"]}
    out = []
    for (kind, S), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        dense = by.get(("dense", S))
        if kind == "dense" or dense is None:
            continue
        out.append(_row("attention_long", f"{kind.upper()} layer S={S}", r["time_s"], dense["time_s"],
                        "dense causal MQA", dense["time_s"] / r["time_s"], unit="CPU s"))
    return out


def convert(d):
    out = []
    for run_name, run in d["runs"].items():
        raw = run["raw_read"]["cold_GBps"]
        for prec, c in run["convert"].items():
            out.append(_row("convert", f"{run_name} release -> {prec}", c["in_GBps"], raw, "cold raw read",
                            c["ratio_to_raw_read"], unit="GB/s in"))
    return out


def engram_prefetch(d):
    out = []
    none = {r["tokens"]: r["step_ms"] for r in d["rows"] if r["mode"] == "none"}
    for r in d["rows"]:
        if r["mode"] == "none":
            continue
        goal = r["mode"] == "next-step"
        ov = r["engram_overhead"]
        out.append(_row("engram_prefetch", f"{r['tokens']} tokens, {r['mode']}", r["step_ms"], none[r["tokens"]],
                        "compute only", none[r["tokens"]] / r["step_ms"], "overhead ≤ 3%" if goal else None,
                        bool(ov <= 0.03) if goal else None, "ms/step"))
    return out


def decode_dspark(d):
    plain = d["rows"][0]
    out = [_row("decode_dspark", f"{d['config']} {r['mode']} decode (acceptance {r['acceptance_rate']:.0%}, mean "
                f"accepted {r['mean_accepted_length']:.2f}, rollback {r['rollback_share']:.1%} of decode)",
                r["decode_tokens_per_s"], plain["decode_tokens_per_s"], "ours, plain decode", r["over_plain"],
                unit="tok/s") for r in d["rows"][1:]]
    return out + [_row("decode_dspark", "DSpark tokens == plain greedy tokens", None, None, "plain greedy", None, "equal",
                 bool(d["equals_plain_greedy"]))]


def w4a8(d):
    recipe = next((r for r in d["rows"] if r["method"].startswith("Ascend recipe")), None)
    out = []
    for r in d["rows"]:
        if not r["method"].startswith("ours") or recipe is None:
            continue
        serving = "group 32" in r["method"]
        ratio = recipe["mean_rel_err"] / r["mean_rel_err"] if r["mean_rel_err"] else None
        out.append(_row("w4a8", r["method"], r["mean_rel_err"], recipe["mean_rel_err"], "Ascend recipe per-channel",
                        ratio, "error ≤ 8%" if serving else None,
                        bool(r["mean_rel_err"] <= d["goal_mean_rel_err"]) if serving else None, "mean rel err"))
    if "exact_int8_g32_bit_exact" in d:
        out.append(_row("w4a8", "ours exact (int8, groups of 32)", 0.0, recipe["mean_rel_err"] if recipe else None,
                        "Ascend recipe per-channel", None, "bit-exact", bool(d["exact_int8_g32_bit_exact"]),
                        "mean rel err"))
    return out


def migrate_eval(d):
    out = []
    for cat in ("imports", "kernels"):
        s = d["summary"][cat]
        out.append(_row("migrate_eval", f"{cat} precision", s["precision"], 1.0, "hand-checked labels",
                        s["precision"], "≥ 98%", bool(s["precision"] >= 0.98)))
        out.append(_row("migrate_eval", f"{cat} recall", s["recall"], 1.0, "hand-checked labels", s["recall"],
                        "≥ 95%", bool(s["recall"] >= 0.95)))
    u = d["summary"]["unsafe_rewrites"]
    out.append(_row("migrate_eval", "unsafe --apply rewrites", u, 0, "none allowed", None, "0", u == 0))
    return out


def ascend_projection(d):
    worst: Dict[tuple, dict] = {}
    for r in d["rows"]:
        k = (r["chip"], r["kernel"])
        if k not in worst or r["efficiency"] < worst[k]["efficiency"]:
            worst[k] = r
    return [_row("ascend_projection", f"{chip} {kernel} (worst shape: {r['shape']}; projection)", r["projected_us"],
                 r["roofline_us"], "roofline", r["efficiency"], "≥ 50%", bool(r["efficiency"] >= 0.5), "µs")
            for (chip, kernel), r in sorted(worst.items())]


def engram_ascend(d):
    """The Engram share of a step bound on 910B/910C with host tables (a projection), for the two row formats the
    serving feed ships: float32 (float/BF16/FP8 tables) and INT8 + scales (INT8 tables, decoded on the device);
    goal: issue 18's <= 3% of the step."""
    return [_row("engram_ascend", f"{r['soc']} {r['phase']} {r['tokens']} tokens, {r['format']} rows (projection)",
                 100 * r["engram_share"], 3.0, "goal (% of the step)",
                 3.0 / (100 * r["engram_share"]) if r["engram_share"] else None, "≤ 3% of the step",
                 bool(r["engram_share"] <= 0.03), "% of step")
            for r in d["rows"] if r["format"] in ("float32", "int8")]


# name -> reader; the run order puts the short benches first
BENCHES: Dict[str, Callable[[dict], List[dict]]] = {
    "ascend_projection": ascend_projection, "engram_ascend": engram_ascend, "w4a8": w4a8, "migrate_eval": migrate_eval,
    "engram_prefetch": engram_prefetch, "ops_mhc": ops_mhc, "attention_long": attention_long,
    "forward_cpu": forward_cpu, "ops_moe": ops_moe, "train": train, "train_memory": train_memory, "decode": decode,
    "convert": convert, "decode_dspark": decode_dspark,
}


def run_bench(name: str, out: str, quick: bool, timeout: float) -> Dict:
    cmd = [sys.executable, os.path.join(HERE, f"{name}.py"), "--out", out] + (["--quick"] if quick else [])
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        code, tail = r.returncode, (r.stdout + r.stderr).strip().splitlines()[-6:]
    except subprocess.TimeoutExpired:
        code, tail = -1, [f"timed out after {timeout:.0f} s"]
    dt = time.perf_counter() - t0
    print(f"   {'ok' if code == 0 else f'FAILED (exit {code})'} in {dt:.0f} s", flush=True)
    if code != 0:
        for line in tail:
            print(f"   | {line}")
    return {"exit_code": code, "seconds": round(dt, 1), "tail": tail if code else []}


def summarise(name: str, path: str) -> Optional[List[dict]]:
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return BENCHES[name](json.load(fh))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    a = abs(v)
    return f"{v:.3g}" if a < 1e4 else f"{v:.0f}"


def print_table(rows: List[dict]) -> None:
    hdr = ("bench", "row", "ours", "peer", "vs", "ratio", "goal", "met")
    cells = [(r["bench"], r["row"], _fmt(r["ours"]) + (f" {r['unit']}" if r["unit"] and r["ours"] is not None
                                                        else ""), _fmt(r["peer"]), r["peer_name"],
              "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["goal"],
              "-" if r["met"] is None else ("yes" if r["met"] else "NO")) for r in rows]
    w = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(hdr)]
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
    print("  ".join("-" * x for x in w))
    for c in cells:
        print("  ".join(str(v).ljust(w[i]) for i, v in enumerate(c)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="quick mode: small sizes, results in bench/results/quick/")
    size.add_argument("--full", action="store_true", help="full size (hours), results in bench/results/")
    ap.add_argument("--summarise", action="store_true", help="run nothing; summarise the existing JSON")
    ap.add_argument("--only", help=f"comma-separated subset of: {','.join(BENCHES)}")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed per bench")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "summary.json"))
    a = ap.parse_args(argv)
    if not (a.quick or a.full or a.summarise):
        print("error: say --quick (minutes) or --full (hours), or --summarise to only read the results",
              file=sys.stderr)
        return 2
    names = list(BENCHES)
    if a.only:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHES]
        if unknown:
            print(f"error: unknown bench {', '.join(unknown)}; choose from {', '.join(BENCHES)}", file=sys.stderr)
            return 2
    res_dir = os.path.join(HERE, "results", "quick") if a.quick else os.path.join(HERE, "results")
    os.makedirs(res_dir, exist_ok=True)
    status, rows, done = {}, [], []
    for name in names:
        path = os.path.join(res_dir, f"{name}.json")
        if not a.summarise:
            status[name] = run_bench(name, path, a.quick, a.timeout)
            if status[name]["exit_code"] != 0:
                continue
        got = summarise(name, path)
        if got is None:
            status.setdefault(name, {})["note"] = f"no results at {os.path.relpath(path, ROOT)}"
            continue
        rows += got
        done.append(name)
    if a.only and os.path.exists(a.out):       # a partial run updates its benches in the summary, keeps the rest
        with open(a.out) as f:
            prev = json.load(f)
        if prev.get("results_dir") == os.path.relpath(res_dir, ROOT):
            kept = [r for r in prev["rows"] if r["bench"] not in names]
            print(f"kept {len(kept)} rows of other benches from {os.path.relpath(a.out, ROOT)}")
            rows = kept + rows
            status = {**{k: v for k, v in prev["benches"].items() if k not in names}, **status}
    print()
    print_table(rows)
    failed = [n for n, s in status.items() if s.get("exit_code", 0) != 0]
    met = [r for r in rows if r["met"] is not None]
    missing = [n for n in names if n not in done and n not in failed]
    print(f"\n{len(rows)} rows from {len(done)} of {len(names)} benches; goals met {sum(r['met'] for r in met)}/"
          f"{len(met)}" + (f"; FAILED: {', '.join(failed)}" if failed else "")
          + (f"; no results: {', '.join(missing)}" if missing else ""))
    from ascend_v4.atomic import write_json
    write_json(a.out, {"mode": ("quick" if a.quick else "full") + (" (summarised, not run)" if a.summarise else ""),
                       "results_dir": os.path.relpath(res_dir, ROOT), "machine_load_avg": os.getloadavg(),
                       "benches": status, "rows": rows})
    print(f"wrote {os.path.relpath(a.out, ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
