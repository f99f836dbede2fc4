#!/usr/bin/env python
"""Dump DeepSeek-V4's PyTorch reference with msprobe's own hooks, on the points `ascend-v4 dump --format msprobe`
writes, so `msprobe compare` lines the two dumps up.

The reference is transformers' DeepseekV4ForCausalLM (float32, CPU) loaded from the same checkpoint through
ascend_v4's one loader, via the project's harness tests/hf_reference.py (official names mapped onto transformers'
modules). msprobe's PyTorch PrecisionDebugger (task "tensor", level L0: module hooks) records the embedding, every
decoder layer (its input and its 4 output streams) and lm_head (the logits). A cell-mapping file written next to
the dump says which of our cells is which of their modules, for `msprobe compare -cm`.

    ascend-v4 dump CKPT --tokens ids.npy --format msprobe --out ours
    python scripts/msprobe_reference_dump.py CKPT --tokens ids.npy --out ref
    msprobe compare -tp ours/step0/rank0/dump.json -gp ref/step0/proc*/dump.json -cm ref/cell_mapping.yaml -o cmp

By default the reference gets the harness's two changes that make it compute what DeepSeek's inference code
computes (docs/transformers-v4-differences.md): the indexer's Hadamard + FP4 simulation and ties in the indexer's
top-k broken to the lower entry id. `--as-shipped` runs transformers unchanged.
Needs: torch, transformers, mindstudio-probe (the `test` extra).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="release directory or any `ascend-v4 convert` output")
    ap.add_argument("--tokens", required=True, help="int [batch, seq] .npy token array (the one given to dump)")
    ap.add_argument("--out", required=True, help="new directory for the msprobe dump")
    ap.add_argument("--as-shipped", action="store_true", help="transformers without the harness's changes")
    a = ap.parse_args(argv)
    if os.path.exists(a.out) and os.listdir(a.out):
        print(f"error: {a.out} already exists and is not empty; choose a new directory", file=sys.stderr)
        return 2

    import torch
    from msprobe.pytorch import PrecisionDebugger
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from hf_reference import HFReference
    from ascend_v4.dump import check_tokens, load_tokens, msprobe_cell_names
    from ascend_v4.errors import known_errors
    from ascend_v4.weights import load_checkpoint

    try:
        ids = load_tokens(a.tokens)
        cfg, weights = load_checkpoint(a.checkpoint)
        check_tokens(ids, cfg, a.tokens)
    except known_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    opts = {} if a.as_shipped else {"spec_fixes": ("indexer_fp4_sim",), "deterministic_topk": True}
    model = HFReference(cfg, weights, **opts).model

    # our point -> their module: the module whose forward msprobe's L0 hook records
    theirs = {"embed": ("model.embed_tokens", model.model.embed_tokens), "logits": ("lm_head", model.lm_head)}
    for i, layer in enumerate(model.model.layers):
        theirs[f"hidden_block{i}"] = (f"model.layers.{i}", layer)
    ours = msprobe_cell_names(cfg.n_layers)
    mapping = {ours[k]: f"{path}.{type(m).__name__}" for k, (path, m) in theirs.items()}

    os.makedirs(a.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "config.json")
        with open(config, "w") as f:        # dump only those modules (msprobe's "list": name fragments)
            json.dump({"task": "tensor", "dump_path": os.path.abspath(a.out), "rank": [], "step": [0],
                       "level": "L0", "tensor": {"scope": [], "list": sorted(mapping.values()),
                                                 "data_mode": ["forward"]}}, f)
        debugger = PrecisionDebugger(config_path=config)
        debugger.start(model=model)
        with torch.no_grad():
            model(input_ids=torch.from_numpy(ids), use_cache=False)
        debugger.stop()
        debugger.step()
    with open(os.path.join(a.out, "cell_mapping.yaml"), "w") as f:
        f.write("# ascend-v4 cell (msprobe -cm): transformers module\n")
        f.writelines(f"{k}: {v}\n" for k, v in mapping.items())
    print(f"reference dump in {a.out}/step0; cell mapping {a.out}/cell_mapping.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
