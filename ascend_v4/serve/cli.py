"""`ascend-v4 generate` and the demo's generation step.

    ascend-v4 generate CHECKPOINT (--prompt TEXT [--prompt TEXT ...] | --tokens TOKENS.npy) [--max-new-tokens N]
                       [--greedy | --temperature T --top-k K --top-p P --seed S] [--mtp | --dspark]
                       [--int8-kv | --kv-format float32|int8|reference] [--out GEN.npz]

Text goes through CHECKPOINT/tokenizer.json (tokenizers) or a sentencepiece *.model (or --tokenizer FILE).
TOKENS.npy is an integer [S] or [B, S] array; -1 right-padding gives rows of different lengths. One sequence
streams its text (or ids) as it is generated; a batch prints each row at the end. --out writes (atomically)
tokens [B, N] int64 (-1 after a row stopped), logits [B, N, V] float32 (the logits each token was drawn from; 0
after a row stopped), lengths [B], prompt_lengths [B], prompt [B, S] (-1 padded). Known failures print one
`error: ...` line and exit 2, leaving no output file.
"""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional

os.environ.setdefault("GLOG_v", "3")

import click  # noqa: E402
import numpy as np  # noqa: E402


class GenerateError(ValueError):
    """A bad generate request (inputs, options, output path)."""


from ..errors import friendly as _friendly  # noqa: E402  (the one `error:` + exit 2 contract)
from .tokenizer import text_of  # noqa: E402
from ..runtime import device_option  # noqa: E402  (--device cpu|ascend, like every computing command)


# ------------------------------------------------------------------------------------------------ inputs
def load_token_rows(path: str, vocab_size: int) -> List[np.ndarray]:
    """[S] or [B, S] integer .npy; -1 right-padding marks shorter rows."""
    from ..dump import read_token_file
    a = read_token_file(path, GenerateError)
    rows = []
    for i, r in enumerate(a.astype(np.int64)):
        n = int(np.sum(r >= 0))
        if np.any(r[:n] < 0) or np.any(r[n:] != -1):
            raise GenerateError(f"{path}: row {i} has negative ids other than -1 right-padding")
        if n == 0:
            raise GenerateError(f"{path}: row {i} is empty (all -1); every row needs at least one token")
        r = r[:n]
        if r.max() >= vocab_size:
            raise GenerateError(f"{path}: row {i} has token id {r.max()} but the vocabulary has {vocab_size} entries")
        rows.append(r)
    if not rows:
        raise GenerateError(f"{path}: the token array is empty")
    return rows


def save_generation(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """Atomic npz write: a failed or killed run (or a full disk) never leaves a complete-looking file."""
    from ..atomic import write_npz
    write_npz(path, arrays)


def _check_out(out_path: Optional[str]) -> None:
    if not out_path:
        return
    if os.path.isdir(out_path):
        raise GenerateError(f"--out {out_path} is a directory; give a file name such as gen.npz")
    d = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(d):
        raise GenerateError(f"--out: directory {d} does not exist")


class _Streamer:
    """Prints one sequence's continuation as it is generated (text through the tokenizer, else ids)."""

    def __init__(self, tokenizer, enabled: bool):
        self.tok, self.enabled = tokenizer, enabled
        self.ids: List[int] = []
        self.shown = ""

    def __call__(self, row: int, token: int) -> None:
        if not self.enabled or row != 0:
            return
        self.ids.append(int(token))
        if self.tok is None:
            click.echo(f"{token} ", nl=False)
            return
        text = text_of(self.tok, self.ids)
        if text.endswith("\ufffd"):          # an incomplete UTF-8 sequence: wait for the next byte
            return
        if text.startswith(self.shown):
            click.echo(text[len(self.shown):], nl=False)
        self.shown = text


def _refuse_images(cfg, rows: List[np.ndarray]) -> None:
    """DeepSeek-V4.1 marks image spans with image_token_id; the vision tower is out of scope, so refuse them."""
    for i, r in enumerate(rows):
        if np.any(r == cfg.image_token_id):
            raise GenerateError(f"prompt {i} holds the image token id {cfg.image_token_id}: image inputs are not "
                                f"supported (DeepSeek-V4.1's vision tower is out of scope); give text only")


# ------------------------------------------------------------------------------------------------ command
@click.command("generate")
@click.argument("checkpoint")
@click.option("--prompt", "prompts", multiple=True, help="prompt text; repeat for a batch")
@click.option("--tokens", "tokens_path", default=None, help="int .npy [S] or [B, S] (-1 right-padding)")
@click.option("--max-new-tokens", default=32, show_default=True, type=int)
@click.option("--greedy", is_flag=True, help="argmax decoding (default: sample)")
@click.option("--temperature", default=1.0, show_default=True, type=float)
@click.option("--top-k", default=0, show_default=True, type=int, help="0 = off")
@click.option("--top-p", default=1.0, show_default=True, type=float, help="1.0 = off")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--mtp", "speculative", is_flag=True, help="speculative decoding with the MTP block as draft")
@click.option("--dspark", is_flag=True, help="DeepSeek-V4.1: speculative decoding with the DSpark drafter "
              "(a block per step, verified greedily; needs --greedy)")
@click.option("--int8-kv", is_flag=True, help="INT8 KV cache (448 non-RoPE dims int8 + per-entry scale); "
              "= --kv-format int8")
@click.option("--kv-format", default=None, type=click.Choice(["float32", "int8", "reference"]),
              help="KV cache storage (default float32): int8 = the INT8 layout of --int8-kv (V4 and V4.1); "
              "reference = DeepSeek-V4.1's own formats: FP8 E4M3 window KV (E8M0 scale per 32), FP4 E2M1 compressed "
              "KV (E4M3 scale per 16) and index keys (E8M0 scale per 32)")
@click.option("--no-eos", is_flag=True, help="do not stop at the EOS token")
@click.option("--chunk", default=256, show_default=True, type=int, help="prefill chunk (tokens per graph call)")
@click.option("--tokenizer", "tokenizer_path", default=None, help="tokenizer.json or sentencepiece .model")
@click.option("--out", "out_path", default=None, help="write ids + per-step logits (.npz)")
@click.option("--threads", default=0, type=int, help="CPU threads (0 = MindSpore default)")
@click.option("--quiet", is_flag=True, help="do not stream tokens")
@click.option("--image", "images", multiple=True, help="(DeepSeek-V4.1 image inputs: refused, vision is out of scope)")
@_friendly
@device_option
def generate(checkpoint, prompts, tokens_path, max_new_tokens, greedy, temperature, top_k, top_p, seed,
             speculative, dspark, int8_kv, kv_format, no_eos, chunk, tokenizer_path, out_path, threads, quiet,
             images):
    """Generate from CHECKPOINT: prefill the prompt(s), decode token by token over the window ring, the
    compressed entries and the indexer keys; greedy or temperature/top-k/top-p sampling with a seed."""
    from .sampling import SamplingParams
    from .tokenizer import load_tokenizer, prompt_ids

    # ---- everything cheap is checked before the model is loaded ----
    if not os.path.isdir(checkpoint):
        raise GenerateError(f"checkpoint directory {checkpoint} does not exist")
    from ..config import MODEL_VERSIONS
    from ..weights import checkpoint_config, load_checkpoint
    # release, any converted dir; a training run -> export-official; DeepSeek-V4.1 releases too
    cfg = checkpoint_config(checkpoint, MODEL_VERSIONS)
    v41 = cfg.version == "v4.1"
    if images:
        raise GenerateError("image inputs are not supported: this port runs DeepSeek-V4.1's text model only (the "
                            "vision tower is out of scope); drop --image")
    if v41 and speculative:
        raise GenerateError("--mtp: DeepSeek-V4.1 drafts with DSpark, not an MTP block; use --dspark --greedy")
    if dspark and not v41:
        raise GenerateError(f"--dspark needs a DeepSeek-V4.1 checkpoint ({checkpoint} is {cfg.version}); V4 drafts "
                            f"with its MTP block: use --mtp")
    if dspark and speculative:
        raise GenerateError("give --dspark or --mtp, not both")
    if dspark and not greedy:
        raise GenerateError("--dspark verifies drafts greedily: add --greedy (or drop --dspark to sample)")
    if int8_kv and kv_format not in (None, "int8"):
        raise GenerateError(f"--int8-kv contradicts --kv-format {kv_format}; give one of them")
    kv_format = "int8" if int8_kv else (kv_format or "float32")
    if kv_format == "reference" and not v41:
        raise GenerateError(f"--kv-format reference is DeepSeek-V4.1's storage (FP8 window / FP4 compressed KV) and "
                            f"{checkpoint} is {cfg.version}; use --kv-format int8 or float32")
    if bool(prompts) == bool(tokens_path):
        raise GenerateError("give either --prompt TEXT or --tokens FILE.npy (exactly one)")
    if max_new_tokens < 1:
        raise GenerateError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if chunk < 1:
        raise GenerateError(f"--chunk must be >= 1, got {chunk}")
    sampling = SamplingParams(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed).validate()
    _check_out(out_path)
    tok = None
    if prompts:
        for i, p in enumerate(prompts):
            if not p.strip():
                raise GenerateError(f"--prompt {i + 1} is empty; give some text")
        tok = load_tokenizer(checkpoint, tokenizer_path)
        rows = []
        for p in prompts:
            ids = np.asarray(prompt_ids(tok, p), np.int64)
            if ids.size == 0:
                raise GenerateError(f"prompt {p!r} encodes to no tokens")
            if ids.max() >= cfg.vocab_size:
                raise GenerateError(f"the tokenizer ({tok.source}) produced id {ids.max()} but the model vocabulary "
                                    f"has {cfg.vocab_size} entries; use the checkpoint's own tokenizer")
            rows.append(ids)
    else:
        rows = load_token_rows(tokens_path, cfg.vocab_size)
        try:
            tok = load_tokenizer(checkpoint, tokenizer_path)
        except ValueError:
            tok = None                       # ids in, ids out
    need = max(r.size for r in rows) + max_new_tokens
    if need > cfg.max_position_embeddings:
        raise GenerateError(f"a prompt of {max(r.size for r in rows)} tokens + --max-new-tokens {max_new_tokens} "
                            f"exceeds max_position_embeddings ({cfg.max_position_embeddings}); shorten the prompt "
                            f"or generate fewer tokens")
    max_len = 64
    if dspark:                        # a verify step looks one DSpark block ahead
        need += cfg.dspark_block_size
    while max_len < need:
        max_len *= 2

    token_map = tables = None
    if v41:
        _refuse_images(cfg, rows)
        if cfg.engram_layer_ids:      # Engram hashes compressed ids: the map comes from the release tokenizer
            from ..checkpoint.release_v41 import release_token_map
            token_map = release_token_map(checkpoint, cfg)
            bad = max(int(r.max()) for r in rows)
            if bad >= len(token_map):
                raise GenerateError(f"token id {bad} is not in the tokenizer ({len(token_map)} ids): Engram cannot "
                                    f"map it")

    # ---- model ----
    from .engine import Engine
    if v41:                           # Engram tables memory-mapped in host memory, never decoded whole
        from .engram import load_v41
        weights, tables, token_map = load_v41(checkpoint, cfg)
    else:
        cfg, weights = load_checkpoint(checkpoint, versions=MODEL_VERSIONS)
    t0 = time.perf_counter()
    eng = Engine(cfg, weights, max_batch=len(rows), max_len=max_len, kv_format=kv_format, mtp=speculative,
                 prefill_chunk=chunk, threads=threads, token_map=token_map, engram_tables=tables, dspark=dspark)
    stream = _Streamer(tok, enabled=not quiet and len(rows) == 1)
    gen = eng.generate(rows, max_new_tokens=max_new_tokens, sampling=sampling, eos_id=None if no_eos else -1,
                       speculative=speculative or dspark, on_token=stream)
    wall = time.perf_counter() - t0
    if stream.enabled:
        click.echo("")
    elif not quiet:
        for i in range(len(rows)):
            ids = gen.row(i)
            body = text_of(tok, ids) if tok is not None else " ".join(str(int(t)) for t in ids)
            click.echo(f"[{i}] {body}")
    st = gen.stats
    msg = (f"generated {int(gen.lengths.sum())} tokens for {len(rows)} sequence(s) ({', '.join(sorted(set(gen.stop)))}); "
           f"prefill {st['prefill_tokens_per_s']:.0f} tok/s, decode {st['decode_tokens_per_s']:.1f} tok/s, "
           f"{wall:.1f} s incl. {sum(eng.compile_seconds.values()):.1f} s of graph compiles")
    if speculative or dspark:
        msg += (f"; {'DSpark' if dspark else 'MTP'} draft acceptance {st['acceptance_rate']:.1%} "
                f"({st['accepted']}/{st['drafts']})")
    click.echo(msg, err=True)
    if out_path:
        S = max(r.size for r in rows)
        prompt = np.full((len(rows), S), -1, np.int64)
        for i, r in enumerate(rows):
            prompt[i, :r.size] = r
        save_generation(out_path, {"tokens": gen.tokens, "logits": gen.logits.astype(np.float32),
                                   "lengths": gen.lengths, "prompt_lengths": gen.prompt_lengths, "prompt": prompt})
        click.echo(f"wrote {out_path}", err=True)


if __name__ == "__main__":  # pragma: no cover
    generate()
