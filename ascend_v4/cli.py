"""`ascend-v4` command line: demo, info, dump, compare, make-checkpoint, ops, train, export-official, migrate.

Every known failure (bad config, corrupt checkpoint, wrong token file, unavailable backend) ends with one
line `error: …` naming the problem and the fix, and exit code 2; nothing half-written is left behind.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("GLOG_v", "3")

import click  # noqa: E402

from .config import ConfigError, load_config  # noqa: E402


from .errors import friendly, show_warnings_as_lines  # noqa: E402
from .runtime import device_option  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ascend-v4")
def main():
    """DeepSeek-V4 on Huawei Ascend (MindSpore graph mode) with a CPU reference backend."""
    show_warnings_as_lines()


def _load_any(path: str, versions=None):
    """(cfg, float weights) from any checkpoint directory (ascend_v4.weights.load_checkpoint)."""
    from .weights import load_checkpoint
    return load_checkpoint(path, versions=versions)


# ------------------------------------------------------------------------------------------------ info
@main.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly
def info(target, as_json):
    """Config, layer schedule, parameter counts and KV-cache bytes of a CHECKPOINT dir, config.json or preset."""
    from .config import MODEL_VERSIONS
    from .info import describe, format_describe
    from .weights import checkpoint_kind
    d = describe(load_config(target, versions=MODEL_VERSIONS))
    conv = None
    if os.path.isdir(target) and checkpoint_kind(target) == "converted":
        from .info import describe_converted, format_converted
        conv = describe_converted(target)
        d["converted"] = conv
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(format_describe(d))
    if conv:
        click.echo(format_converted(conv))


# ------------------------------------------------------------------------------------- make-checkpoint
@main.command("make-checkpoint")
@click.argument("out_dir")
@click.option("--config", "config", default="tiny", show_default=True, help="preset name or config.json")
@click.option("--seed", default=0, show_default=True)
@friendly
def make_checkpoint(out_dir, config, seed):
    """Write a random official-format checkpoint (FP8/MXFP4/BF16/FP32, sharded safetensors) for a config."""
    from .checkpoint import random_weights, write_official_checkpoint
    from .config import MODEL_VERSIONS
    from .info import check_fits_in_memory
    cfg = load_config(config, versions=MODEL_VERSIONS)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new directory")
    # float32 weights + their encoded copy are in memory at once
    check_fits_in_memory(cfg, "make-checkpoint", 5.5, f"use a smaller preset (tiny, small), `ascend-v4 info "
                         f"{config}` for its sizes, or bench/convert.py for release-shaped layers streamed to disk")
    if cfg.version == "v4.1":
        # V4.1's config must name its tokenizer's compressed (Engram) vocabulary size, as DeepSeek's code asserts
        cfg = _v41_for_demo_tokenizer(cfg)
    write_official_checkpoint(cfg, random_weights(cfg, seed), out_dir)
    tok = _write_demo_tokenizer(cfg, out_dir)
    click.echo(f"wrote {cfg.name} official-format checkpoint to {out_dir}" + (f" (+ {tok})" if tok else ""))


def _v41_for_demo_tokenizer(cfg):
    """cfg with engram_compressed_vocab_size = the distinct ids of the demo tokenizer's compressed map."""
    if cfg.vocab_size < 260:
        return cfg
    from tokenizers import Tokenizer
    from .ops.engram.reference import compressed_token_map_from_tokenizer
    from .serve.tokenizer import train_demo_tokenizer
    with tempfile.TemporaryDirectory() as d:
        train_demo_tokenizer(cfg.vocab_size, os.path.join(d, "tokenizer.json"))
        tmap = compressed_token_map_from_tokenizer(Tokenizer.from_file(os.path.join(d, "tokenizer.json")))
    return cfg.replace(engram_compressed_vocab_size=int(tmap.max()) + 1)


def _write_demo_tokenizer(cfg, out_dir: str):
    """A byte-level BPE tokenizer.json with exactly the config's vocabulary, so `generate --prompt` works on a
    random checkpoint (vocabularies under 260 ids cannot hold the byte alphabet: ids only)."""
    if cfg.vocab_size < 260:
        return None
    from .serve.tokenizer import train_demo_tokenizer
    train_demo_tokenizer(cfg.vocab_size, os.path.join(out_dir, "tokenizer.json"))
    return "tokenizer.json"


# ------------------------------------------------------------------------------------------------ dump
@main.command()
@click.argument("checkpoint")
@click.option("--tokens", "tokens_path", required=True, help="int [batch, seq] .npy token array")
@click.option("--out", "out_path", required=True, help="output .npz (--format msprobe: a new directory)")
@click.option("--format", "fmt", type=click.Choice(["npz", "msprobe"]), default="npz", show_default=True,
              help="msprobe: MindStudio msprobe's MindSpore L0 tensor-dump layout (OUT/step0/rank0/dump.json, "
                   "dump_tensor_data/*.npy), for `msprobe compare` against a reference dump (docs/porting.md)")
@click.option("--backend", type=click.Choice(["graph", "numpy"]), default="graph", show_default=True,
              help="graph: MindSpore graph mode (this port); numpy: the float64 golden model")
@click.option("--mode", type=click.Choice(["exact", "official"]), default="exact", show_default=True,
              help="exact: weights dequantised, no activation quantisation (what a BF16 Ascend port computes); "
                   "official: emulate the CUDA kernels' numerics (FP8/FP4 GEMMs, indexer FP4) on the NumPy backend")
@click.option("--kv-fp8", type=click.Choice(["gpu", "spec"]), default="gpu", show_default=True,
              help="official mode: KV FP8 fake-quant as the released GPU kernels run it (a no-op) or as the code intends")
@click.option("--quant-emulation", is_flag=True,
              help="w8a8 / w4a8 directory: quantise activations per token to int8 (the NPU's DynamicQuant) before "
                   "every int8 / int4 matmul, BF16 outputs - what the format computes on 910B (NumPy backend)")
@click.option("--mtp", is_flag=True, help="also dump the MTP block's logits (position t predicts t+2)")
@click.option("--threads", default=0, help="CPU threads (0 = MindSpore default)")
@friendly
@device_option
def dump(checkpoint, tokens_path, out_path, fmt, backend, mode, kv_fp8, quant_emulation, mtp, threads):
    """Run the forward on TOKENS and save embed, hidden_block{i}, logits (float32) to OUT."""
    from .config import MODEL_VERSIONS
    from .dump import DumpError, check_tokens, load_tokens, save_npz, write_msprobe
    if fmt == "msprobe" and os.path.exists(out_path) and (not os.path.isdir(out_path) or os.listdir(out_path)):
        raise DumpError(f"{out_path} already exists and is not an empty directory; --format msprobe writes a "
                        f"directory: choose a new path")
    ids = load_tokens(tokens_path)
    from .weights import checkpoint_config
    cfg = checkpoint_config(checkpoint, MODEL_VERSIONS)
    if cfg.version == "v4.1" and backend == "graph" and mode == "exact" and not (quant_emulation or mtp):
        check_tokens(ids, cfg, tokens_path)
        from .dump import v41_token_map
        v41_token_map(checkpoint, cfg, ids)            # refuses image spans and ids outside the tokenizer
        from .serve.engram import load_v41              # Engram tables memory-mapped, never decoded whole
        weights, tables, tmap = load_v41(checkpoint, cfg)
        from .runtime import setup
        setup(None, "graph", threads)
        from ascend_v4.graph.forward import build_forward
        t0 = time.perf_counter()
        res = build_forward(cfg, weights, max_seq_len=max(ids.shape[1], 16), token_map=tmap,
                            engram_tables=tables)(ids)
        save_npz(out_path, res)
        click.echo(f"dumped {len(res)} arrays for tokens {tuple(ids.shape)} to {out_path} "
                   f"({backend}, {mode} numerics, {time.perf_counter() - t0:.1f} s)")
        return
    cfg, weights = _load_any(checkpoint, MODEL_VERSIONS)
    check_tokens(ids, cfg, tokens_path)
    t0 = time.perf_counter()
    if cfg.version == "v4.1":
        if mode != "exact" or quant_emulation or mtp:
            raise ConfigError(f"{checkpoint} is DeepSeek-V4.1: dump runs it with exact numerics only (no --mode "
                              f"official, --mtp or --quant-emulation)")
        from .dump import numpy_v41_dump, v41_token_map
        v41_token_map(checkpoint, cfg, ids)
        res = numpy_v41_dump(checkpoint, cfg, weights, ids)     # (--backend graph runs above)
    elif quant_emulation:
        if mode == "official":
            raise ConfigError("--quant-emulation (the Ascend int8 numerics) and --mode official (the CUDA FP8 "
                              "numerics) exclude each other; pick one")
        from .dump import quant_emulation_model
        backend, mode = "numpy", "w8a8/w4a8 dynamic int8 activations"
        res = quant_emulation_model(checkpoint, cfg, weights).forward(ids, with_mtp=mtp)
    else:
        if mode == "official":
            backend = "numpy"          # the emulation is float64 NumPy by design: bit-exact quantisers
        if backend == "numpy":
            from .numpy_model import NumpyV4
            res = NumpyV4(cfg, weights, numerics=mode, kv_fp8=kv_fp8).forward(ids, with_mtp=mtp)
        else:
            from .runtime import setup
            setup(None, "graph", threads)
            from ascend_v4.graph.forward import build_forward
            fwd = build_forward(cfg, weights, max_seq_len=max(ids.shape[1], 16), with_mtp=mtp)
            res = fwd(ids)
    if fmt == "msprobe":
        out_path = write_msprobe(out_path, res, ids, cfg.n_layers)
    else:
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
@click.option("--out", "out_path", required=True, help="output file (.mindir or .onnx, as --format)")
@click.option("--format", "fmt", type=click.Choice(["mindir", "onnx"]), default="mindir", show_default=True,
              help="mindir: MindSpore Lite / Ascend serving; onnx: opset 11, checked by onnx.checker, runs in "
                   "onnxruntime")
@click.option("--batch", default=1, show_default=True)
@click.option("--seq", default=128, show_default=True)
@click.option("--backends", type=click.Choice(["composite", "auto"]), default="composite", show_default=True,
              help="composite: standard MindSpore primitives only (portable); auto: this machine's best backends "
                   "(CPU C++ kernels as Custom ops that point at local libraries; MINDIR only)")
@friendly
@device_option
def export_cmd(checkpoint, out_path, fmt, batch, seq, backends):
    """Export the forward graph (int64 ids [batch, seq] -> logits) as MINDIR for MindSpore Lite / serving, or as
    ONNX. An op the ONNX exporter cannot convert is named, and the command exits 2."""
    from .runtime import setup
    setup(None, "graph")
    from ascend_v4.graph.export import export
    cfg, weights = _load_any(checkpoint)
    export(cfg, weights, batch, seq, out_path, fmt.upper(), backends=backends)
    click.echo(f"exported {fmt.upper()} [{batch}x{seq}] ({backends} backends) to {out_path}")


# ------------------------------------------------------------------------------------------------ demo
@main.command()
@click.option("--model", "model_kind", type=click.Choice(["v4", "v4.1"]), default="v4", show_default=True,
              help="model family; its default config is tiny (v4) or v4.1-tiny (v4.1)")
@click.option("--config", "config", default=None, help="preset name or config.json  [default: per --model]")
@click.option("--batch", default=2, show_default=True)
@click.option("--seq", default=64, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--keep", "keep_dir", default=None, help="keep the generated checkpoint in this directory")
@click.option("--new-tokens", default=8, show_default=True, help="tokens to generate after the parity check (0: skip)")
@friendly
@device_option
def demo(model_kind, config, batch, seq, seed, keep_dir, new_tokens):
    """Make a tiny official-format checkpoint, load it, run the graph-mode forward, check it against the
    float64 NumPy golden model, then generate a few tokens with the KV-cache engine (prefill + decode steps)
    and check every step's logits against a full recompute. No download, no arguments needed."""
    import tempfile
    import numpy as np
    from .checkpoint import load_official_weights, random_weights, write_official_checkpoint
    from .info import describe, format_describe
    from .numpy_model import NumpyV4
    from .runtime import setup
    from . import ops as v4ops

    from .config import MODEL_VERSIONS
    cfg = load_config(config or ("v4.1-tiny" if model_kind == "v4.1" else "tiny"),
                      versions=MODEL_VERSIONS if model_kind == "v4.1" else ("v4",))
    if cfg.version != model_kind:
        raise ConfigError(f"config '{cfg.name}' is {cfg.version}, but --model is {model_kind}")
    if batch < 1 or seq < 1:
        raise ConfigError("--batch and --seq must be >= 1")
    click.echo(format_describe(describe(cfg)))
    if cfg.version == "v4.1":
        _demo_v41(cfg, batch, seq, seed, keep_dir, new_tokens)
        return
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
        setup(None, "graph")
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
        _demo_parity(out, ref)
        if new_tokens > 0 and not _demo_generate(cfg, weights, ids[0, :min(seq, 16)], new_tokens):
            sys.exit(1)
    finally:
        if tmp:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)


def _demo_parity(out, ref):
    """The demo's verdict on the graph-mode forward against the float64 golden (both dicts of dump keys; common
    keys compared): logits and the worst block printed, exit 1 unless logits agree to 1e-4 median and 95% top-1."""
    from .dump import compare_arrays
    rows = {r["key"]: r for r in compare_arrays(out, ref)}
    lg = rows["logits"]
    worst = max((r for k, r in rows.items() if k.startswith("hidden_block")), key=lambda r: r["median_rel"])
    ok = lg["median_rel"] < 1e-4 and lg["top1_agree"] >= 0.95
    click.echo(f"parity vs float64 NumPy golden: logits median rel L2 {lg['median_rel']:.2e}, p90 "
               f"{lg['p90_rel']:.2e}, top-1 agreement {lg['top1_agree']:.3f}, worst block {worst['key']} median "
               f"{worst['median_rel']:.2e} -> {'PASS' if ok else 'FAIL'}")
    if not ok:
        sys.exit(1)


def _demo_v41(cfg, batch, seq, seed, keep_dir, new_tokens):
    """demo --model v4.1: a random V4.1 release-format checkpoint (32x32 FP8, MXFP4 experts, FP8 Engram tables,
    a tokenizer for the Engram token map) -> graph-mode forward (Engram tables in host memory) vs the float64
    golden -> greedy generation through the serving engine, every step vs a full golden recompute."""
    import shutil
    import numpy as np
    from .checkpoint import load_official_weights, random_weights, write_official_checkpoint
    from .checkpoint.release_v41 import release_token_map
    from .config import MODEL_VERSIONS
    from .numpy_model_v41 import NumpyV41
    from .runtime import setup
    from . import ops as v4ops
    cfg = _v41_for_demo_tokenizer(cfg)
    root = keep_dir or tempfile.mkdtemp(prefix="ascend_v4_demo41_")
    try:
        ck = os.path.join(root, "checkpoint")
        t0 = time.perf_counter()
        write_official_checkpoint(cfg, random_weights(cfg, seed), ck)
        _write_demo_tokenizer(cfg, ck)
        weights = load_official_weights(ck, load_config(ck, versions=MODEL_VERSIONS))
        tmap = release_token_map(ck, cfg) if cfg.engram_layer_ids else None
        click.echo(f"checkpoint: DeepSeek-V4.1 release format (FP8 E4M3 + E8M0 32x32, MXFP4 experts, FP8 Engram "
                   f"rows) written and read back in {time.perf_counter() - t0:.2f} s")
        setup(None, "graph")
        from ascend_v4.graph.forward import build_forward
        fwd = build_forward(cfg, weights, max_seq_len=max(seq, 16), token_map=tmap)
        ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, seq))
        ids[ids == cfg.image_token_id] = 0           # text only: image spans are refused (no vision tower)
        t1 = time.perf_counter()
        out = fwd(ids)
        click.echo(f"graph-mode forward [{batch}x{seq}] (Engram rows gathered on the host): compile+run "
                   f"{time.perf_counter() - t1:.2f} s")
        click.echo("backends: " + ", ".join(f"{k}={v}" for k, v in sorted(v4ops.selected().items())))
        golden = NumpyV41(cfg, weights, token_map=tmap)
        ref = golden.forward(ids)
        _demo_parity(out, ref)
        if new_tokens > 0:
            from .serve import Engine, SamplingParams
            prompt = ids[0, :min(seq, 16)]
            dspark = cfg.n_mtp_layers > 0
            eng = Engine(cfg, weights, max_batch=1, max_len=max(64, 2 * (prompt.size + new_tokens)), token_map=tmap,
                         dspark=dspark)
            gen = eng.generate([prompt], max_new_tokens=new_tokens, sampling=SamplingParams(greedy=True), eos_id=None)
            got = gen.row(0)
            full = np.concatenate([prompt, got[:-1]])[None]
            want = golden.forward(full)["logits"][0, prompt.size - 1:]
            rel = np.linalg.norm(gen.logits[0, :got.size] - want, axis=-1) / np.linalg.norm(want, axis=-1)
            agree = float(np.mean(want.argmax(-1) == got))
            ok = float(rel.max()) < 1e-4 and agree == 1.0
            click.echo(f"generate (greedy, KV cache, Engram rows prefetched on the host): new ids {got.tolist()}; each "
                       f"step vs full recompute: max rel L2 {rel.max():.1e}, greedy agreement {agree:.3f} -> "
                       f"{'PASS' if ok else 'FAIL'}")
            if not ok:
                sys.exit(1)
            if dspark:                # DSpark drafts a block per step, the target verifies it: same tokens
                spec = eng.generate([prompt], max_new_tokens=new_tokens, sampling=SamplingParams(greedy=True),
                                    eos_id=None, speculative=True)
                ok = np.array_equal(spec.row(0), got)
                st = spec.stats
                click.echo(f"generate --dspark (3-stage drafter, block of {cfg.dspark_block_size} verified in one "
                           f"cached step, rollback on rejection): {st['steps']} verify steps, acceptance "
                           f"{st['acceptance_rate']:.1%} (random weights), tokens equal greedy -> "
                           f"{'PASS' if ok else 'FAIL'}")
                if not ok:
                    sys.exit(1)
    finally:
        if not keep_dir:
            shutil.rmtree(root, ignore_errors=True)


def _demo_generate(cfg, weights, fallback_prompt, new_tokens: int) -> bool:
    """Greedy generation through the serving engine; each step's logits vs the float64 golden forward over the
    same prefix (decode must equal recompute). The weights are random, so the text is noise by design."""
    import numpy as np
    from .numpy_model import NumpyV4
    from .serve import Engine, SamplingParams
    from .serve.tokenizer import TokenizerError, prompt_ids, train_demo_tokenizer
    try:
        tok = train_demo_tokenizer(cfg.vocab_size)
        prompt = np.array(prompt_ids(tok, "DeepSeek-V4 runs on Ascend"), np.int64)
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


# ------------------------------------------------------------------------------------------------ plan
@main.command("plan")
@click.option("--device", type=click.Choice(["ascend"]), default="ascend", show_default=True,
              help="the device planned for (no device needed here)")
@click.option("--soc", type=click.Choice(["910b", "910b4", "910c"]), default="910b", show_default=True)
@click.option("--cann", default="8.5", show_default=True, help="CANN version of the target (vendor operators)")
@click.option("--config", "config", default="v4-flash", show_default=True, help="preset, config.json or checkpoint")
@click.option("--parallel", default="", help="dp=8,tp=1,ep=8,pp=1[,micro_batches=4] (train memory; tp/ep split "
              "the weights for inference)")
@click.option("--seq", default=4096, show_default=True, help="tokens per sequence (prefill / train) and context")
@click.option("--batch", default=1, show_default=True, help="sequences per device")
@click.option("--json", "as_json", is_flag=True)
@friendly
def plan_cmd(device, soc, cann, config, parallel, seq, batch, as_json):
    """For every operator call of prefill, decode and a train step on a 910B/910C: the backend that runs (CANN
    vendor operator, our AscendC kernel or composite), why, dtypes and per-device memory. Config only: no weights."""
    from .config import MODEL_VERSIONS
    from .plan import format_plan, plan
    from .train.loop import TrainConfig
    cfg = load_config(config, versions=MODEL_VERSIONS)
    try:
        par = {k: int(v) for k, v in (kv.split("=", 1) for kv in parallel.split(",") if kv)}
    except ValueError:
        raise ConfigError(f"--parallel {parallel!r}: expected dp=N,tp=N,ep=N,pp=N") from None
    tc = TrainConfig.from_dict({"model": config, "seq_len": seq, "batch_size": batch, "parallel": par})
    p = plan(cfg, soc, cann, tc, context=seq, batch=batch)
    click.echo(json.dumps(p, indent=2) if as_json else format_plan(p))


# ------------------------------------------------------------------------------------------------- ops
@main.group("ops")
def ops_group():
    """Our operators: list backends, run the parity harness."""


@ops_group.command("list")
@friendly
@device_option
def ops_list():
    """Every op with its backends, platforms and availability; `*` marks the backend that runs on --device."""
    from .ops import registry
    from .runtime import setup
    setup(None, "graph")
    for op in registry.ops():
        runs = {v.backend.name for v in registry.explain(op) if v.chosen}
        for b in registry.backends(op):
            click.echo(f"{'*' if b.name in runs else ' '} {op:<22}{b.name:<10}{','.join(b.platforms):<18}"
                       f"{'available' if b.available() else 'unavailable'}"
                       f"  priority {b.priority}" + (f"  ({b.note})" if b.note else ""))


@ops_group.command("parity")
@click.option("--op", default=None, help="only this op")
@click.option("--backend", default=None, help="only this backend")
@click.option("--csv", "csv_path", default=None, help="also write the rows as CSV")
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-grad", is_flag=True, help="forward only")
@friendly
@device_option
def ops_parity(op, backend, csv_path, as_json, no_grad):
    """Every backend of every op vs the float64 NumPy reference, forward and backward; exit 1 on any failure."""
    from .runtime import setup
    setup(None, "pynative")
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
@click.option("--init-from", "init_from", default=None, help="start from these weights (release, converted or run "
              "directory; optimiser fresh); overrides the YAML's init_from")
@click.option("--print-config", is_flag=True, help="print the full default YAML, every key commented, and exit")
@friendly
@device_option
def train(config_path, steps, out_dir, list_param_groups, dry_run, soc, comm_alg, threads, init_from, print_config):
    """Train DeepSeek-V4 in graph mode: next-token + MTP + balance losses, Muon + AdamW, resumable.
    --config also takes a shipped preset by name: finetune.yaml."""
    from .train.loop import TrainConfig
    if print_config:
        from .train.run_config import default_yaml
        click.echo(default_yaml(), nl=False)
        return
    try:
        tc = TrainConfig.from_yaml(config_path) if config_path else TrainConfig()
    except ValueError as e:           # TrainConfigError; a mindformers YAML's table of equivalents follows the line
        first, *rest = str(e).splitlines()
        click.echo(f"error: {first}" + "".join(f"\n{r}" for r in rest), err=True)
        sys.exit(2)
    if init_from is not None:
        tc.init_from = init_from
    if steps is not None:
        tc.steps = steps
        if tc.warmup_steps > steps:   # say so: the learning rate will never reach its peak as configured
            click.echo(f"note: --steps {steps} is shorter than warmup_steps ({tc.warmup_steps}); warm-up shortened "
                       f"to {steps} steps (set warmup_steps in the YAML to choose another)", err=True)
        tc.warmup_steps = min(tc.warmup_steps, steps)
        if tc.decay_start is not None:
            tc.decay_start = min(max(tc.decay_start, tc.warmup_steps), steps)
        tc.validate("--steps")
    if tc.model is None and tc.init_from:
        from .train.init_from import source_config
        cfg = source_config(tc.init_from)
    else:
        from .config import MODEL_VERSIONS
        cfg = load_config(tc.model_spec(), versions=MODEL_VERSIONS)      # V4.1: train/v41.py
    if list_param_groups:
        from .info import check_fits_in_memory
        from .model import Transformer
        from .train.param_groups import describe
        check_fits_in_memory(cfg, "train --list-param-groups (builds the model in float32)", 4.0,
                             "list the groups on a smaller model of the same layer kinds (model: small or tiny); "
                             "the grouping rules do not depend on the size")
        extra = {"with_dspark": tc.mtp} if cfg.version == "v4.1" else {}
        for row in describe(Transformer(cfg, max_seq_len=16, with_mtp=tc.mtp, **extra)):
            click.echo("  ".join(str(v) for v in row))
        return
    if dry_run:
        from .info import describe as info_describe, format_describe
        from .train.cluster import dry_run as check_layout
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
    setup(None, "graph", threads, training=True)
    from .train.loop import Trainer, distributed
    rank, world = distributed(tc)
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


@main.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", "out_path", default="loss.png", show_default=True, help="image file (png, svg, pdf)")
@friendly
def plot(runs, out_path):
    """Plot training runs (`train --out` directories or metrics.jsonl files): loss and eval loss, LR, grad norm,
    expert load balance per layer."""
    from .train.plot import plot_runs
    click.echo(plot_runs(list(runs), out_path))


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
