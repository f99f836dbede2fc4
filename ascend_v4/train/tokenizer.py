"""Tokenizers for training: sentencepiece models trained on the corpus, or a checkpoint's ``tokenizer.json``.

Special ids follow the model config (``bos_token_id = 0``, ``eos_token_id = 1``):

* models from :func:`train_sentencepiece`: ``<s>`` = 0 (bos), ``</s>`` = 1 (eos), ``<pad>`` = 2 (pad),
  ``<unk>`` = 3, then 256 byte pieces ``<0x00>..<0xFF>`` (byte fallback) and the learned BPE pieces. The
  normaliser is the identity and whitespace is kept as is, so ``decode(encode(s)) == s`` for every string
  (newlines, tabs, runs of spaces, any Unicode) — nothing is mapped to ``<unk>``.
* ``tokenizer.json`` (HF ``tokenizers``): bos/eos/pad come from ``tokenizer_config.json`` beside it when
  present (``bos_token`` / ``eos_token`` / ``pad_token``), else from well-known special-token spellings
  (DeepSeek's ``<｜begin▁of▁sentence｜>``, ``<s>``, ``<|endoftext|>``...); ``pad_id`` is -1 when there is none
  (the loader then pads with eos; padded positions are always masked out of the loss).

``encode`` never adds bos/eos (the loader adds them per document); ``decode`` drops bos/eos/pad.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Iterable, Iterator, List, Optional, Protocol, Sequence, runtime_checkable

from ..atomic import write_bytes
from .data import DataError, iter_documents, resolve_files

__all__ = ["DataError", "Tokenizer", "SentencePieceTokenizer", "HFTokenizer", "train_sentencepiece",
           "load_tokenizer", "check_vocab", "PAD_ID", "UNK_ID"]

BOS_ID, EOS_ID, PAD_ID, UNK_ID = 0, 1, 2, 3
_N_BYTE_PIECES = 256


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> List[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
    """A sentencepiece ``.model`` (``path``) or serialized proto (``proto``)."""

    def __init__(self, path: Optional[str] = None, proto: Optional[bytes] = None):
        import sentencepiece as spm
        if proto is None:
            try:
                with open(path, "rb") as fh:
                    proto = fh.read()
            except OSError as e:
                raise DataError(f"{path}: cannot read tokenizer ({e.strerror})") from None
        self.source = path or "<sentencepiece proto>"
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(proto)
        except Exception:   # sentencepiece raises RuntimeError/OSError with multi-line text
            raise DataError(f"{self.source}: not a valid sentencepiece model") from None
        self.fingerprint = "spm-" + hashlib.sha256(proto).hexdigest()
        self.vocab_size = int(self._sp.get_piece_size())
        self.bos_id = int(self._sp.bos_id())
        self.eos_id = int(self._sp.eos_id())
        self.pad_id = int(self._sp.pad_id())
        self._drop = {i for i in (self.bos_id, self.eos_id, self.pad_id) if i >= 0}

    def encode(self, text: str) -> List[int]:
        return list(self._sp.encode(text))

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        """Several texts at once, on all cores (the result does not depend on the thread count)."""
        return self._sp.encode(list(texts), num_threads=min(16, os.cpu_count() or 1))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids if int(i) not in self._drop])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.source!r}, vocab_size={self.vocab_size})"


_BOS_NAMES = ("<｜begin▁of▁sentence｜>", "<s>", "<|begin_of_text|>", "<bos>", "<|bos|>", "[CLS]")
_EOS_NAMES = ("<｜end▁of▁sentence｜>", "</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|eos|>", "[SEP]")
_PAD_NAMES = ("<｜▁pad▁｜>", "<pad>", "<|pad|>", "[PAD]")


class HFTokenizer:
    """A HF ``tokenizers`` ``tokenizer.json`` (e.g. the one shipped with a DeepSeek-V4 checkpoint)."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer as _Tok
        try:
            self._tok = _Tok.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception with the serde message
            raise DataError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0][:120]})") from None
        self.source = path
        self.fingerprint = "hf-" + hashlib.sha256(self._tok.to_str().encode()).hexdigest()
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        names = self._special_names(os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer_config.json"))
        self.bos_id = self._find(names.get("bos_token"), _BOS_NAMES)
        self.eos_id = self._find(names.get("eos_token"), _EOS_NAMES)
        self.pad_id = self._find(names.get("pad_token"), _PAD_NAMES)
        if self.bos_id < 0 or self.eos_id < 0:
            raise DataError(f"{path}: cannot tell the bos/eos tokens; add tokenizer_config.json with "
                            f"bos_token and eos_token beside it")
        self._drop = {i for i in (self.bos_id, self.eos_id, self.pad_id) if i >= 0}

    @staticmethod
    def _special_names(cfg_path: str) -> dict:
        if not os.path.exists(cfg_path):
            return {}
        try:
            with open(cfg_path, encoding="utf-8") as fh:
                cfg = json.load(fh)
        except (OSError, ValueError):
            raise DataError(f"{cfg_path}: not valid JSON; fix or remove it") from None
        out = {}
        for k in ("bos_token", "eos_token", "pad_token"):
            v = cfg.get(k)
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                out[k] = v
        return out

    def _find(self, configured: Optional[str], names: Iterable[str]) -> int:
        for n in ([configured] if configured else []) + list(names):
            i = self._tok.token_to_id(n)
            if i is not None:
                return int(i)
        return -1

    def encode(self, text: str) -> List[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        return [list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids if int(i) not in self._drop], skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.source!r}, vocab_size={self.vocab_size})"


# ---------------------------------------------------------------------------------------------------
def _training_lines(files: Sequence[str], max_chars: int) -> Iterator[str]:
    """Non-blank lines of every document, in file order, up to `max_chars` characters in total
    (deterministic: a prefix of the corpus, never a random sample)."""
    total = 0
    for f in files:
        for doc in iter_documents(f):
            for line in doc.split("\n"):
                if line.strip():
                    total += len(line)
                    if total > max_chars:
                        return
                    yield line


def min_vocab_size() -> int:
    """Lower bound for :func:`train_sentencepiece`: 4 specials + 256 byte pieces + at least one piece (the corpus's
    characters must fit too; sentencepiece reports when they do not)."""
    return 4 + _N_BYTE_PIECES + 1


def train_sentencepiece(files: Sequence[str], vocab_size: int, out_prefix: str, seed: int = 0, *,
                        max_chars: int = 200_000_000) -> str:
    """Train a BPE sentencepiece model on the documents of `files`; returns ``out_prefix + ".model"``.

    Deterministic: the same documents and arguments give a byte-identical ``.model`` (single thread, no
    sentence sampling or shuffling, fixed random seed, file paths not recorded). `vocab_size` is an upper
    bound: a small corpus may support fewer merges (the model is then smaller). Written atomically.
    """
    import sentencepiece as spm
    files = resolve_files(files)
    if vocab_size < min_vocab_size():
        raise DataError(f"vocab_size {vocab_size} is too small for a byte-fallback sentencepiece model "
                        f"(need >= {min_vocab_size()})")
    lines = list(_training_lines(files, max_chars))
    if not lines:
        raise DataError(f"empty corpus: no text to train a tokenizer on in {', '.join(files)}")
    buf = io.BytesIO()
    spm.set_random_generator_seed(int(seed))
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buf, vocab_size=int(vocab_size), model_type="bpe",
            bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID, unk_id=UNK_ID, byte_fallback=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True, split_digits=True, character_coverage=0.9999,
            num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, hard_vocab_limit=False,
            max_sentence_length=1 << 16, minloglevel=2)
    except RuntimeError as e:
        why = str(e).splitlines()[0].split("] ")[-1]
        raise DataError(f"sentencepiece training on {files[0]}{f' (+{len(files) - 1} files)' if len(files) > 1 else ''}"
                        f" failed: {why}") from None
    out = out_prefix + ".model"
    d = os.path.dirname(os.path.abspath(out))
    os.makedirs(d, exist_ok=True)
    write_bytes(out, buf.getvalue())
    return out


def load_tokenizer(path_or_dir: str, cfg=None):
    """A tokenizer from ``tokenizer.json`` / a ``.model`` file, or a directory holding one (tokenizer.json
    preferred, then tokenizer.model, then a single other ``*.model``). With `cfg`, also :func:`check_vocab`."""
    p = os.fspath(path_or_dir)
    if os.path.isdir(p):
        models = sorted(n for n in os.listdir(p) if n.endswith(".model"))
        if os.path.exists(os.path.join(p, "tokenizer.json")):
            p = os.path.join(p, "tokenizer.json")
        elif "tokenizer.model" in models:
            p = os.path.join(p, "tokenizer.model")
        elif len(models) == 1:
            p = os.path.join(p, models[0])
        elif models:
            raise DataError(f"{path_or_dir}: several .model files ({', '.join(models)}); pass one of them")
        else:
            raise DataError(f"{path_or_dir}: no tokenizer.json or sentencepiece .model in this directory; pass "
                            f"a tokenizer file or omit it to train one on the corpus")
    elif not os.path.exists(p):
        raise DataError(f"{p}: no such tokenizer file")
    if p.endswith(".json"):
        tok = HFTokenizer(p)
    elif p.endswith(".model"):
        tok = SentencePieceTokenizer(p)
    else:
        raise DataError(f"{p}: unknown tokenizer type; expected tokenizer.json or a sentencepiece .model")
    if cfg is not None:
        check_vocab(tok, cfg)
    return tok


def check_vocab(tok, cfg) -> None:
    """Raise DataError unless every id of `tok` fits the model and its bos/eos are the model's."""
    src = getattr(tok, "source", type(tok).__name__)
    name = getattr(cfg, "name", "model")
    if tok.vocab_size > cfg.vocab_size:
        raise DataError(f"tokenizer {src} has {tok.vocab_size} ids but model '{name}' has vocab_size "
                        f"{cfg.vocab_size}; use a tokenizer with at most {cfg.vocab_size} ids or a larger config")
    if tok.bos_id != cfg.bos_token_id or tok.eos_id != cfg.eos_token_id:
        raise DataError(f"tokenizer {src} has bos/eos ids {tok.bos_id}/{tok.eos_id} but model '{name}' expects "
                        f"{cfg.bos_token_id}/{cfg.eos_token_id}; use a matching tokenizer or set bos_token_id/"
                        f"eos_token_id in the config")
    if not (0 <= tok.pad_id < cfg.vocab_size or tok.pad_id == -1):
        raise DataError(f"tokenizer {src} pad id {tok.pad_id} is outside model '{name}' vocab {cfg.vocab_size}")
