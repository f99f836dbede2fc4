"""The embedded default corpus: original prose written for this repo (no third-party text), so
`ascend-v4 train` runs with no arguments and no download.

Files (≈75 KB): ``documents.jsonl`` (technical notes, code snippets, recipes, stories, how-tos, a dialogue, an FAQ,
meeting notes, a README, a poem — one ``{"text", "title", "kind"}`` object per line) and ``notes.txt`` /
``stories.txt`` (one short document per blank-line separated paragraph).

It is far too small to teach a model language; it exists so the whole pipeline (tokenizer training, packing,
training, checkpoint/resume, evaluation) runs end to end on any machine.
"""
from __future__ import annotations

import hashlib
import os
from typing import List, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS_FILES = ("documents.jsonl", "notes.txt", "stories.txt")
# Cap on the default tokenizer's size: more pieces would just memorise this small corpus. Configs with a larger
# vocab get a tokenizer of this size (its ids all fit; the remaining embedding rows go unused).
MAX_DEFAULT_VOCAB = 4096
DEFAULT_TOKENIZER_SEED = 0


def default_corpus_files() -> List[str]:
    """Absolute paths of the embedded corpus files (fixed order)."""
    from ..data import DataError
    paths = [os.path.join(_HERE, f) for f in CORPUS_FILES]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise DataError(f"{missing[0]}: embedded corpus file missing; reinstall ascend-v4 (package data "
                        f"ascend_v4/train/corpus/*.jsonl, *.txt)")
    return paths


def default_vocab_size(cfg_vocab_size: int) -> int:
    return min(int(cfg_vocab_size), MAX_DEFAULT_VOCAB)


def corpus_hash(files: Optional[List[str]] = None) -> str:
    h = hashlib.sha256()
    for p in files or default_corpus_files():
        with open(p, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def default_tokenizer(cfg_vocab_size: int, cache_dir: Optional[str] = None):
    """A sentencepiece BPE tokenizer trained on the embedded corpus with at most
    ``min(cfg_vocab_size, MAX_DEFAULT_VOCAB)`` ids (bos 0, eos 1, pad 2, unk 3), cached in `cache_dir`
    (default ``$ASCEND_V4_CACHE/tokenizers`` or ``~/.cache/ascend-v4/tokenizers``) under a name keyed by the
    corpus content and vocab size. Training is deterministic, so every rank/machine builds the same model."""
    from ..tokenizer import SentencePieceTokenizer, train_sentencepiece
    from ..data import DataError
    vocab = default_vocab_size(cfg_vocab_size)
    if cache_dir is None:
        base = os.environ.get("ASCEND_V4_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ascend-v4")
        cache_dir = os.path.join(base, "tokenizers")
    files = default_corpus_files()
    prefix = os.path.join(cache_dir, f"default-bpe{vocab}-{corpus_hash(files)[:16]}")
    path = prefix + ".model"
    if os.path.exists(path):
        try:
            return SentencePieceTokenizer(path)
        except DataError:
            pass                                 # damaged cache entry: retrain over it
    try:
        train_sentencepiece(files, vocab, prefix, seed=DEFAULT_TOKENIZER_SEED)
    except OSError as e:
        raise DataError(f"{cache_dir}: cannot write the default tokenizer ({e.strerror}); set ASCEND_V4_CACHE "
                        f"to a writable directory") from None
    return SentencePieceTokenizer(path)
