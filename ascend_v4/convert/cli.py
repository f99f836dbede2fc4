"""Click commands `convert` and `verify` (attached to the main `ascend-v4` group by ascend_v4.cli).

    ascend-v4 convert SRC DST [--dtype bf16|w8a8|w4a8] [--tp N] [--ep M] [--workers K] [--shard-size 2GB]
    ascend-v4 convert DST HF_OUT --to-official [--workers K]
    ascend-v4 verify DIR [--workers K]

Also runnable on its own: `python -m ascend_v4.convert.cli convert ...`.
Known failures print one line `error: <message>` and exit 2; `verify` exits 1 with one line per
problem when the directory does not check out.
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("GLOG_v", "3")

import click  # noqa: E402

from ..errors import friendly  # noqa: E402


# resumable: a rerun skips the files already written and hashed
_friendly = friendly(disk_full_hint="free space and rerun the same command to resume")


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _log(msg: str) -> None:
    click.echo(msg, err=True)


@click.command("convert")
@click.argument("src")
@click.argument("dst")
@click.option("--dtype", "precision", type=click.Choice(["bf16", "w8a8", "w4a8"]), default="bf16", show_default=True,
              help="bf16: exact dequantisation; w8a8: int8 per-channel wq_b/wo_b/indexer wq_b/experts; "
                   "w4a8: routed experts int4, rest as w8a8")
@click.option("--tp", default=1, show_default=True, help="target tensor-parallel size (one shard set per rank)")
@click.option("--ep", default=1, show_default=True, help="target expert-parallel size (routed experts by index range)")
@click.option("--layout", "dir_layout", type=click.Choice(["serving", "ranks"]), default=None,
              help="serving: what vllm-ascend / MindIE load (msModelSlim names, quant_model_description.json, HF "
                   "config.json; unsharded) - default for w8a8/w4a8; ranks: our tp/ep rank shards - default for bf16 "
                   "and with --tp/--ep")
@click.option("--int4-group", default="32", show_default=True,
              help="serving w4a8 routed experts: int4 group size along the input dim (32, 64, 128, 256), "
                   "'channel' (per output channel: what vllm-ascend main loads), or 'exact' (int8 = 2 x FP4, lossless)")
@click.option("--engram-dtype", type=click.Choice(["int8", "bf16"]), default=None,
              help="DeepSeek-V4.1 Engram tables: int8 (one scale per 32 values of a row) or bf16 (exact) "
                   "[default: bf16 for --dtype bf16, int8 otherwise]")
@click.option("--workers", default=None, type=int, help="worker processes [default: CPU count, at most 8]")
@click.option("--shard-size", default="2GB", show_default=True, help="maximum output shard size (e.g. 5GB, 500MB)")
@click.option("--to-official", is_flag=True, help="SRC is a converted directory: write it back in the release format "
                                                  "to DST (byte-identical to the release for a bf16 conversion)")
@click.option("--progress/--no-progress", default=None, help="progress bar [default: when stderr is a terminal]")
@_friendly
def convert(src, dst, precision, tp, ep, dir_layout, int4_group, engram_dtype, workers, shard_size, to_official,
            progress):
    """Convert a DeepSeek-V4 / V4.1 release checkpoint SRC into what 910B/910C run (DST), or back with --to-official.

    Streams tensors from memory-mapped shards through K worker processes; every output file is
    written to a temporary name, hashed and renamed. Rerun the same command after an interruption
    to finish the remaining files. `ascend-v4 verify DST` re-checks the result."""
    from .reverse import to_official as _to_official
    from .run import convert_checkpoint, default_command, parse_size
    k = workers if workers is not None else _default_workers()
    t0 = time.perf_counter()
    if to_official:
        s = _to_official(src, dst, workers=k, progress=progress, log=_log)
        click.echo(f"wrote release-format checkpoint {dst}: {s.files_written} shards written, {s.files_skipped} "
                   f"already there, {s.bytes_out / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s")
        return
    shard_bytes = parse_size(shard_size)
    cmd = default_command(src, dst, precision, tp, ep, k, shard_bytes, engram_dtype)
    if dir_layout:
        cmd += f" --layout {dir_layout}"
    if precision == "w4a8" and int4_group != "32":
        cmd += f" --int4-group {int4_group}"
    s = convert_checkpoint(src, dst, precision=precision, tp=tp, ep=ep, workers=k, shard_bytes=shard_bytes,
                           progress=progress, command=cmd, log=_log, layout=dir_layout, int4_group=int4_group,
                           engram_dtype=engram_dtype)
    if s.already_complete:
        return
    dt = time.perf_counter() - t0
    click.echo(f"converted {src} -> {dst} ({precision}, {s.dir_layout}"
               f" layout, tp {tp}, ep {ep}): {s.files_written} files written, "
               f"{s.files_skipped} resumed, {s.bytes_in / 1e9:.2f} GB in, {s.bytes_out / 1e9:.2f} GB out, "
               f"{dt:.1f} s ({s.bytes_in / 1e9 / max(dt, 1e-9):.2f} GB/s in)")


@click.command("verify")
@click.argument("directory")
@click.option("--workers", default=None, type=int, help="hashing processes [default: CPU count, at most 8]")
@click.option("--progress/--no-progress", default=None)
@click.option("--source", default=None, help="the release DIRECTORY was converted from: name the damaged tensors "
                                             "of a file whose hash does not match")
@_friendly
def verify(directory, workers, progress, source):
    """Re-hash every file of a converted DIRECTORY against manifest.json and check every tensor's
    presence, dtype and shape against the config (a release-format directory: against its inventory).
    Exits 1 with one line per problem."""
    from .manifest import verify_dir
    problems, summary = verify_dir(directory, workers=workers or _default_workers(), progress=progress,
                                   source=source)
    if problems:
        for p in problems:
            click.echo(f"FAIL {p}")
        click.echo(f"{directory}: {len(problems)} problem{'s' if len(problems) != 1 else ''}", err=True)
        sys.exit(1)
    click.echo(f"OK {directory}: {summary.get('kind')} checkpoint, {summary.get('files', 0)} files, "
               f"{summary.get('tensors', 0)} tensors verified")


@click.group()
def _standalone():
    """Checkpoint conversion (standalone entry point; the same commands live under `ascend-v4`)."""


_standalone.add_command(convert)
_standalone.add_command(verify)

if __name__ == "__main__":
    _standalone()
