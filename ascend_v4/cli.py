"""`ascend-v4` command line: demo, info, dump, compare, make-checkpoint, ops, train, export-official, migrate.

Every known failure (bad config, corrupt checkpoint, wrong token file, unavailable backend) ends with one
line `error: …` naming the problem and the fix, and exit code 2; nothing half-written is left behind.
"""
from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("GLOG_v", "3")

import click  # noqa: E402

from .config import ConfigError, load_config  # noqa: E402


from .errors import friendly, show_warnings_as_lines  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ascend-v4")
def main():
    """DeepSeek-V4 on Huawei Ascend (MindSpore graph mode) with a CPU reference backend."""
    show_warnings_as_lines()


def _load_any(path: str):
    """(cfg, float weights) from a release-format or converted (`ascend-v4 convert`) checkpoint directory."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    from .convert import load_any_checkpoint
    return load_any_checkpoint(path)


# ------------------------------------------------------------------------------------------------ info
@main.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly
def info(target, as_json):
    """Config, layer schedule, parameter counts and KV-cache bytes of a CHECKPOINT dir, config.json or preset."""
    from .config import MODEL_VERSIONS
    from .info import describe, format_describe
    d = describe(load_config(target, versions=MODEL_VERSIONS))
    click.echo(json.dumps(d, indent=2) if as_json else format_describe(d))


# ------------------------------------------------------------------------------------- make-checkpoint
@main.command("make-checkpoint")
@click.argument("out_dir")
@click.option("--config", "config", default="tiny", show_default=True, help="preset name or config.json")
@click.option("--seed", default=0, show_default=True)
@friendly
def make_checkpoint(out_dir, config, seed):
    """Write a random official-format checkpoint (FP8/MXFP4/BF16/FP32, sharded safetensors) for a config."""
    from .checkpoint import random_weights, write_official_checkpoint
    cfg = load_config(config)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new directory")
    write_official_checkpoint(cfg, random_weights(cfg, seed), out_dir)
    click.echo(f"wrote {cfg.name} official-format checkpoint to {out_dir}")


# ------------------------------------------------------------------------------------------------ dump
@main.command()
@click.argument("checkpoint")
@click.option("--tokens", "tokens_path", required=True, help="int [batch, seq] .npy token array")
@click.option("--out", "out_path", required=True, help="output .npz")
@click.option("--backend", type=click.Choice(["graph", "numpy"]), default="graph", show_default=True,
              help="graph: MindSpore graph mode (this port); numpy: the float64 golden model")
@click.option("--mode", type=click.Choice(["exact", "official"]), default="exact", show_default=True,
              help="exact: weights dequantised, no activation quantisation (what a BF16 Ascend port computes); "
                   "official: emulate the CUDA kernels' numerics (FP8/FP4 GEMMs, indexer FP4) on the NumPy backend")
@click.option("--kv-fp8", type=click.Choice(["gpu", "spec"]), default="gpu", show_default=True,
              help="official mode: KV FP8 fake-quant as the released GPU kernels run it (a no-op) or as the code intends")
@click.option("--mtp", is_flag=True, help="also dump the MTP block's logits (position t predicts t+2)")
@click.option("--threads", default=0, help="CPU threads (0 = MindSpore default)")
@friendly
def dump(checkpoint, tokens_path, out_path, backend, mode, kv_fp8, mtp, threads):
    """Run the forward on TOKENS and save embed, hidden_block{i}, logits (float32) to OUT."""
    from .dump import check_tokens, load_tokens, save_npz
    ids = load_tokens(tokens_path)
    cfg, weights = _load_any(checkpoint)
    check_tokens(ids, cfg, tokens_path)
    t0 = time.perf_counter()
    if mode == "official":
        backend = "numpy"          # the emulation is float64 NumPy by design: bit-exact quantisers
    if backend == "numpy":
        from .numpy_model import NumpyV4
        res = NumpyV4(cfg, weights, numerics=mode, kv_fp8=kv_fp8).forward(ids, with_mtp=mtp)
    else:
        from .runtime import setup
        setup("CPU", "graph", threads)
        from ascend_v4.graph.forward import build_forward
        fwd = build_forward(cfg, weights, max_seq_len=max(ids.shape[1], 16), with_mtp=mtp)
        res = fwd(ids)
    save_npz(out_path, res)
    click.echo(f"dumped {len(res)} arrays for tokens {tuple(ids.shape)} to {out_path} "
               f"({backend}, {mode} numerics, {time.perf_counter() - t0:.1f} s)")


# --------------------------------------------------------------------------------------------- compare
@main.command()
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True)
@click.option("--max-median-rel", type=float, default=None,
              help="exit 1 if any key's per-position median relative L2 error exceeds this")
@friendly
def compare(a, b, as_json, max_median_rel):
    """Compare two dumps key by key: max abs, per-position median/p90 rel L2, cosine, logits top-1. Exit 1 on a
    missing key, a shape mismatch, a NaN/Inf value, or (with --max-median-rel) an error above the threshold."""
    from .compare import compare_files, format_compare, gate, json_safe
    rep = compare_files(a, b)
    fails = gate(rep, max_median_rel)
    rep.update(threshold=max_median_rel, failed_keys=[f["key"] for f in fails], failures=fails)
    click.echo(json.dumps(json_safe(rep), indent=2) if as_json else format_compare(rep["rows"], rep["only_a"],
                                                                                   rep["only_b"]))
    if fails:
        more = f"; {len(fails) - 1} more: {', '.join(f['key'] for f in fails[1:])}" if len(fails) > 1 else ""
        click.echo(f"FAIL: first failing key {fails[0]['key']}: {fails[0]['reason']}{more}", err=True)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------- export
@main.command("export")
@click.argument("checkpoint")
@click.option("--out", "out_path", required=True, help="output file (.mindir or .onnx)")
@click.option("--batch", default=1, show_default=True)
@click.option("--seq", default=128, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["mindir", "onnx"]), default="mindir", show_default=True)
@friendly
def export_cmd(checkpoint, out_path, batch, seq, fmt):
    """Export the forward graph (ids [batch, seq] -> logits) for deployment."""
    from .runtime import setup
    setup("CPU", "graph")
    from ascend_v4.graph.export import export
    cfg, weights = _load_any(checkpoint)
    export(cfg, weights, batch, seq, out_path, fmt)
    click.echo(f"exported {fmt.upper()} [{batch}x{seq}] to {out_path}")


# ------------------------------------------------------------------------------------------------ demo
@main.command()
@click.option("--config", "config", default="tiny", show_default=True)
@click.option("--batch", default=2, show_default=True)
@click.option("--seq", default=64, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--keep", "keep_dir", default=None, help="keep the generated checkpoint in this directory")
@click.option("--new-tokens", default=8, show_default=True, help="tokens to generate after the parity check (0: skip)")
@friendly
def demo(config, batch, seq, seed, keep_dir, new_tokens):
    """Make a tiny official-format checkpoint, load it, run the graph-mode forward, check it against the
    float64 NumPy golden model, then generate a few tokens with the KV-cache engine (prefill + decode steps)
    and check every step's logits against a full recompute. No download, no arguments needed."""
    import tempfile
    import numpy as np
    from .checkpoint import load_official_weights, random_weights, write_official_checkpoint
    from .dump import compare_arrays
    from .info import describe, format_describe
    from .numpy_model import NumpyV4
    from .runtime import setup
    from . import ops as v4ops

    cfg = load_config(config)
    if batch < 1 or seq < 1:
        raise ConfigError("--batch and --seq must be >= 1")
    click.echo(format_describe(describe(cfg)))
    tmp = None
    root = keep_dir or tempfile.mkdtemp(prefix="ascend_v4_demo_")
    tmp = None if keep_dir else root
    try:
        ck = os.path.join(root, "checkpoint")
        t0 = time.perf_counter()
        write_official_checkpoint(cfg, random_weights(cfg, seed), ck)
        t1 = time.perf_counter()
        weights = load_official_weights(ck, load_config(ck))
        t2 = time.perf_counter()
        click.echo(f"checkpoint: wrote official format (FP8 E4M3 + E8M0 128x128, MXFP4 experts) in {t1 - t0:.2f} s, "
                   f"read + dequantised {len(weights)} tensors in {t2 - t1:.2f} s")
        setup("CPU", "graph")
        from ascend_v4.graph.forward import build_forward
        fwd = build_forward(cfg, weights, max_seq_len=max(seq, 16))
        ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, seq))
        t3 = time.perf_counter()
        out = fwd(ids)
        t4 = time.perf_counter()
        out = fwd(ids)
        t5 = time.perf_counter()
        click.echo(f"graph-mode forward [{batch}x{seq}]: compile+first run {t4 - t3:.2f} s, steady {1e3 * (t5 - t4):.1f} ms "
                   f"({batch * seq / (t5 - t4):.0f} tokens/s)")
        click.echo("backends: " + ", ".join(f"{k}={v}" for k, v in sorted(v4ops.selected().items())))
        ref = NumpyV4(cfg, weights).forward(ids)
        rows = {r["key"]: r for r in compare_arrays(out, ref)}
        lg = rows["logits"]
        worst_block = max((r for k, r in rows.items() if k.startswith("hidden_block")), key=lambda r: r["median_rel"])
        ok = lg["median_rel"] < 1e-4 and lg["top1_agree"] >= 0.95
        click.echo(f"parity vs float64 NumPy golden: logits median rel L2 {lg['median_rel']:.2e}, "
                   f"p90 {lg['p90_rel']:.2e}, top-1 agreement {lg['top1_agree']:.3f}, worst block "
                   f"{worst_block['key']} median {worst_block['median_rel']:.2e} -> {'PASS' if ok else 'FAIL'}")
        if not ok:
            sys.exit(1)
        if new_tokens > 0 and not _demo_generate(cfg, weights, ids[0, :min(seq, 16)], new_tokens):
            sys.exit(1)
    finally:
        if tmp:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)


def _demo_generate(cfg, weights, fallback_prompt, new_tokens: int) -> bool:
    """Greedy generation through the serving engine; each step's logits vs the float64 golden forward over the
    same prefix (decode must equal recompute). The weights are random, so the text is noise by design."""
    import numpy as np
    from .numpy_model import NumpyV4
    from .serve import Engine, SamplingParams
    from .serve.tokenizer import TokenizerError, train_demo_tokenizer
    try:
        tok = train_demo_tokenizer(cfg.vocab_size)
        prompt = np.array(tok.encode("DeepSeek-V4 runs on Ascend"), np.int64)
    except TokenizerError:
        tok, prompt = None, np.asarray(fallback_prompt, np.int64)
    eng = Engine(cfg, weights, max_batch=1, max_len=max(64, 2 * (prompt.size + new_tokens)))
    gen = eng.generate([prompt], max_new_tokens=new_tokens, sampling=SamplingParams(greedy=True), eos_id=None)
    out = gen.row(0)
    full = np.concatenate([prompt, out[:-1]])[None]
    ref = NumpyV4(cfg, weights).forward(full)["logits"][0, prompt.size - 1:]
    got = gen.logits[0, :out.size].astype(np.float64)
    rel = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    agree = float(np.mean(ref.argmax(-1) == out))
    ok = float(rel.max()) < 1e-4 and agree == 1.0
    st = gen.stats
    text = f" -> {tok.decode(out)!r}" if tok is not None else ""
    click.echo(f"generate (greedy, KV cache): prompt {prompt.size} tokens, new ids {out.tolist()}{text}")
    click.echo(f"  prefill {st['prefill_tokens_per_s']:.0f} tok/s, decode {st['decode_tokens_per_s']:.0f} tok/s "
               f"(graph compiles {st['compile_s']:.1f} s, excluded); each step vs full recompute: max rel L2 "
               f"{rel.max():.1e}, greedy agreement {agree:.3f} -> {'PASS' if ok else 'FAIL'}")
    return ok


# ------------------------------------------------------------------------------------------------- ops
@main.group("ops")
def ops_group():
    """Our operators: list backends, run the parity harness."""


@ops_group.command("list")
@friendly
def ops_list():
    """Every op with its backends, platforms and availability."""
    from .ops import registry
    for op in registry.ops():
        for b in registry.backends(op):
            click.echo(f"{op:<22}{b.name:<10}{','.join(b.platforms):<18}{'available' if b.available() else 'unavailable'}"
                       f"  priority {b.priority}" + (f"  ({b.note})" if b.note else ""))


@ops_group.command("parity")
@click.option("--op", default=None, help="only this op")
@click.option("--backend", default=None, help="only this backend")
@click.option("--csv", "csv_path", default=None, help="also write the rows as CSV")
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-grad", is_flag=True, help="forward only")
@friendly
def ops_parity(op, backend, csv_path, as_json, no_grad):
    """Every backend of every op vs the float64 NumPy reference, forward and backward; exit 1 on any failure."""
    from .runtime import setup
    setup("CPU", "pynative")
    from .ops import parity, registry
    if op:
        registry.backends(op)            # unknown op -> clear error
    rows = parity.run(op=op, backend=backend, check_grad=not no_grad)
    if not rows:
        raise ConfigError(f"no parity rows for op={op} backend={backend}; see `ascend-v4 ops list`")
    if csv_path:
        import csv
        from .atomic import atomic_write
        with atomic_write(csv_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0].as_dict()))
            w.writeheader()
            for r in rows:
                w.writerow(r.as_dict())
    click.echo(json.dumps([r.as_dict() for r in rows], indent=2) if as_json else parity.format_table(rows))
    if any(not r.ok for r in rows):
        sys.exit(1)


# ----------------------------------------------------------------------------------------------- train
@main.command()
@click.option("--config", "config_path", default=None, help="train YAML (see ascend_v4/train/loop.py); default: "
              "tiny model on the embedded corpus")
@click.option("--steps", type=int, default=None, help="override the config's total steps")
@click.option("--out", "out_dir", default="runs/default", show_default=True, help="run directory (resumes if it "
              "holds a checkpoint)")
@click.option("--list-param-groups", is_flag=True, help="print which optimiser moves each parameter and exit")
@click.option("--dry-run", is_flag=True, help="validate the config and the cluster layout (divisibility, vendor-op "
              "limits, HCCL_BUFFSIZE, per-device memory) and exit")
@click.option("--soc", type=click.Choice(["910b", "910b4", "910c"]), default="910b", show_default=True,
              help="target chip for --dry-run")
@click.option("--comm-alg", type=click.Choice(["fullmesh", "hierarchy"]), default="fullmesh", show_default=True,
              help="MoE dispatch/combine algorithm for --dry-run")
@click.option("--threads", default=0, help="CPU threads (0 = MindSpore default)")
@friendly
def train(config_path, steps, out_dir, list_param_groups, dry_run, soc, comm_alg, threads):
    """Train DeepSeek-V4 in graph mode: next-token + MTP + balance losses, Muon + AdamW, resumable."""
    from .train.loop import TrainConfig
    tc = TrainConfig.from_yaml(config_path) if config_path else TrainConfig()
    if steps is not None:
        tc.steps = steps
        tc.warmup_steps = min(tc.warmup_steps, steps)
        tc.validate("--steps")
    if list_param_groups:
        from .model import Transformer
        from .train.param_groups import describe
        cfg = load_config(tc.model)
        for row in describe(Transformer(cfg, max_seq_len=16, with_mtp=tc.mtp)):
            click.echo("  ".join(str(v) for v in row))
        return
    if dry_run:
        from .info import describe as info_describe, format_describe
        from .train.cluster import dry_run as check_layout
        cfg = load_config(tc.model)
        click.echo(format_describe(info_describe(cfg)))
        click.echo(f"train: {tc.steps} steps of {tc.batch_size} x {tc.seq_len} tokens per data-parallel rank, "
                   f"parallel dp={tc.parallel.dp} tp={tc.parallel.tp} ep={tc.parallel.ep} pp={tc.parallel.pp} "
                   f"micro_batches={tc.parallel.micro_batches} on {soc}")
        rep = check_layout(cfg, tc, soc, comm_alg=comm_alg)
        click.echo(rep.format())
        if rep.errors:
            sys.exit(1)
        return
    from .runtime import setup
    setup("CPU", "graph", threads)
    from .train.loop import Trainer
    rank, world = _distributed(tc)
    tr = Trainer(tc, out_dir, rank, world)
    if tr.maybe_resume():
        click.echo(f"resumed from {out_dir} at step {tr.step}")
    tr.run()
    if rank == 0:
        click.echo(f"done: {tr.step} steps, checkpoints and metrics.jsonl in {out_dir}")


@main.command("export-official")
@click.argument("ckpt")
@click.argument("out_dir")
@click.option("--dtype", type=click.Choice(["fp8", "bf16"]), default="fp8", show_default=True,
              help="fp8: the release's FP8 E4M3 linears (E8M0 128x128 scales) and MXFP4 routed experts; "
                   "bf16: every linear in BF16 (unquantised release)")
@friendly
def export_official_cmd(ckpt, out_dir, dtype):
    """Export trained weights (a `train --out` dir -> its latest checkpoint, or a ckpt-* dir) as an official
    DeepSeek-V4 release directory: config.json, model-*.safetensors (official names and dtypes, MTP included),
    the run's tokenizer."""
    from .train.export import export_official
    r = export_official(ckpt, out_dir, dtype)
    if r["warning"]:
        click.echo(f"warning: {r['warning']}", err=True)
    errs = ", ".join(f"{k} {v:.2e}" for k, v in sorted(r["max_rel_error"].items()))
    click.echo(f"exported step {r['step']} of {r['checkpoint']} -> {r['out']}: {r['tensors']} tensors, "
               f"{r['bytes'] / 1e6:.1f} MB, {dtype}, {r['mtp_layers']} MTP layer(s), tokenizer "
               f"{'+'.join(r['tokenizer']) or 'none'}; worst relative weight error by format: {errs}")


def _distributed(tc):
    """(rank, world) — initialises MindSpore communication when launched by msrun."""
    if tc.parallel.dp == 1 and "MS_WORKER_NUM" not in os.environ:
        return 0, 1
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init
    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return get_rank(), get_group_size()


def _attach_subcommands():
    """Commands that live with their packages: migrate (tools/), convert/verify, generate."""
    try:
        from .tools.migrate.cli import migrate
        main.add_command(migrate)
    except ImportError:  # pragma: no cover
        pass
    from .convert.cli import convert, verify
    main.add_command(convert)
    main.add_command(verify)
    try:
        from .serve.cli import generate
        main.add_command(generate)
    except ImportError:  # pragma: no cover
        pass


_attach_subcommands()


if __name__ == "__main__":
    main()
