"""Helpers shared by the converter tests (importable: pytest puts this directory on sys.path)."""
import json
import os
import subprocess
import sys

from ascend_v4.checkpoint import random_weights, write_official_checkpoint
from ascend_v4.config import PRESETS

TINY = PRESETS["tiny"]
ENV = dict(os.environ, GLOG_v="3")
AUX = {"tokenizer.json": '{"model": "tiny"}\n', "generation_config.json": '{"bos_token_id": 0, "eos_token_id": 1}\n'}


def make_release(path, cfg=TINY, seed=1, shard_bytes=300_000, aux=True):
    """A release-format checkpoint (several shards, index, config, tokenizer files); returns the
    stored (dequantised) weights."""
    stored = write_official_checkpoint(cfg, random_weights(cfg, seed), str(path), max_shard_bytes=shard_bytes)
    if aux:
        for fn, text in AUX.items():
            with open(os.path.join(path, fn), "w") as f:
                f.write(text)
    return stored


def cli(*args, env=None, **kw):
    """Run the standalone converter CLI in a subprocess: (returncode, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "ascend_v4.convert.cli", *args], capture_output=True, text=True,
                       env=env or ENV, timeout=300, **kw)
    return p.returncode, p.stdout, p.stderr


def read_json(path):
    with open(path) as f:
        return json.load(f)


def all_files(d):
    return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)


def same_tree(a, b):
    fa, fb = all_files(a), all_files(b)
    assert fa == fb
    for rel in fa:
        with open(os.path.join(a, rel), "rb") as x, open(os.path.join(b, rel), "rb") as y:
            assert x.read() == y.read(), rel
    return fa
