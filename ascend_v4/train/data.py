"""Training data: document readers, an on-disk token cache, and a packed, deterministic, resumable loader.

Input files
-----------
* ``.txt`` / ``.md``: one document per paragraph; paragraphs are separated by one or more blank
  (whitespace-only) lines. Lines inside a paragraph are joined with ``"\\n"`` (``\\r\\n`` becomes ``\\n``),
  so put multi-paragraph texts or code with blank lines in ``.jsonl``.
* ``.jsonl``: one JSON object per non-blank line with a string field ``"text"`` (other fields ignored).
  A line that is not such an object raises :class:`DataError` naming ``file:line``; with
  ``skip_bad=True`` it is skipped instead and counted in ``loader.stats["skipped_lines"]``.
* A directory stands for every ``.txt``/``.md``/``.jsonl`` file below it, in sorted order.
* Documents whose text is empty are dropped (counted in ``stats["empty_docs"]``). A file that is not
  UTF-8, a missing file or a corpus with no document raises :class:`DataError` (one line, naming the file).

Token cache
-----------
Each file is tokenised once, in chunks, into ``<cache_dir>/<key>.tokens`` (raw little-endian int32,
every document stored as ``bos + encode(text) + eos``) and ``<key>.offsets.npy`` (int64 document starts,
``n_docs + 1`` entries); ``<key>.json`` is written last and marks the entry complete. ``key`` hashes the
file's content, the tokenizer's fingerprint and the reader options, so an edited file or a different
tokenizer never reuses a stale entry. Every file is written under a unique temporary name and renamed into
place, so concurrent ranks and interrupted runs never leave a half-written entry. The loader reads tokens
through ``np.memmap``: a 1 GB corpus is never held in RAM.

Packing
-------
An epoch is the concatenation of the split's documents in the epoch's order (shuffled by a hash of
``(seed, epoch, doc)``; identity order with ``shuffle=False``). Row ``r`` of an epoch holds stream tokens
``[r*S, r*S + S + 1)``: ``input_ids = row[:-1]``, ``targets = row[1:]``, so consecutive rows overlap by one
token, every token is an input exactly once per epoch and no target is lost at a row edge. Documents are
split across rows where needed; rows never straddle epochs (the epoch's last row is padded).

* ``segment_ids``: index of the document piece within the row (0, 1, ...), ``-1`` on padding. Attention
  must be restricted to ``segment_ids[q] == segment_ids[k]`` (plus causality).
* ``positions``: position within the document piece visible in this row (``positions="segment"``,
  default; a document continued from the previous row restarts at 0, always ``< seq_len``, matching what
  attention can see) or within the whole document (``positions="document"``).
* ``loss_mask``: 1 where the target is the next token of the *same* document, 0 on padding and on the
  one target per boundary that would predict the next document's ``bos`` from the previous ``eos``.
* Padding uses ``tokenizer.pad_id`` (or ``eos_id`` when the tokenizer has no pad id).

All arrays are ``np.int32`` of shape ``[batch_size, seq_len]``; a batch takes the next ``batch_size`` rows
of the stream, so it may hold the end of one epoch and the start of the next.

Resuming
--------
``state_dict()`` is a flat dict of Python ints (JSON- or ``np.savez``-able, no pickle) locating the next row
in the token stream (epoch, document cursor, token offset) plus fingerprints of seed/corpus/tokenizer/split.
A fresh loader given ``load_state_dict(state)`` yields exactly the batches the saved loader would have.
The position is in tokens, so a resumed run may change ``batch_size`` or ``seq_len`` (sequence-length ramps).

Evaluation
----------
``eval_fraction > 0`` holds out documents chosen by a hash of (file content, document index, ``split_seed``)
— independent of the training seed, the file order and the other files. ``split="train"`` and
``split="eval"`` see disjoint documents (at least one held out when the corpus has two or more documents);
:func:`eval_split` builds both, and
``loader.epoch_batches()`` runs one fixed pass (last batch padded with empty rows) without touching the
loader's state.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..atomic import atomic_write, write_bytes

TEXT_EXTS = (".txt", ".md")
JSONL_EXTS = (".jsonl",)
CACHE_VERSION = 1
_CHUNK_CHARS = 4 << 20          # characters tokenised per chunk while building a cache entry
_MASK63 = (1 << 63) - 1


class DataError(ValueError):
    """Unusable training data or tokenizer; the message is one line naming the file and the fix."""


# ---------------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------------
def resolve_files(files: Sequence[str]) -> List[str]:
    """Expand directories (sorted, recursive) and check every file exists and has a known extension."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    out: List[str] = []
    for f in files:
        f = os.fspath(f)
        if os.path.isdir(f):
            found = []
            for root, dirs, names in os.walk(f):
                dirs.sort()
                found += [os.path.join(root, n) for n in sorted(names) if n.endswith(TEXT_EXTS + JSONL_EXTS)]
            if not found:
                raise DataError(f"{f}: directory holds no .txt, .md or .jsonl file")
            out += found
        elif not os.path.exists(f):
            raise DataError(f"{f}: no such file")
        elif not f.endswith(TEXT_EXTS + JSONL_EXTS):
            raise DataError(f"{f}: unsupported file type; use .txt/.md (blank-line separated documents) "
                            f"or .jsonl (one {{\"text\": ...}} per line)")
        else:
            out.append(f)
    if not out:
        raise DataError("no data files given")
    return out


def _decode_line(raw: bytes, path: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                        f"re-encode the file as UTF-8") from None


def iter_documents(path: str, skip_bad: bool = False, stats: Optional[Dict[str, int]] = None) -> Iterator[str]:
    """Yield the documents of one file as strings (see the module docstring for the formats)."""
    stats = stats if stats is not None else {}
    stats.setdefault("skipped_lines", 0)
    stats.setdefault("empty_docs", 0)
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    with fh:
        if path.endswith(JSONL_EXTS):
            for lineno, raw in enumerate(fh, 1):
                line = _decode_line(raw, path, lineno)
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    text = obj["text"] if isinstance(obj, dict) else None
                    if not isinstance(text, str):
                        raise ValueError("expected an object with a string \"text\" field")
                except (ValueError, KeyError) as e:
                    if skip_bad:
                        stats["skipped_lines"] += 1
                        continue
                    why = "missing \"text\" field" if isinstance(e, KeyError) else str(e).splitlines()[0]
                    raise DataError(f"{path}:{lineno}: bad jsonl line ({why}); fix it or pass skip_bad "
                                    f"(--skip-bad) to skip bad lines") from None
                if text:
                    yield text
                else:
                    stats["empty_docs"] += 1
        else:
            para: List[str] = []
            for lineno, raw in enumerate(fh, 1):
                line = _decode_line(raw, path, lineno).rstrip("\r\n")
                if line.strip():
                    para.append(line)
                elif para:
                    yield "\n".join(para)
                    para = []
            if para:
                yield "\n".join(para)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_fingerprint(tok) -> str:
    """`tok.fingerprint` when it has one (ours do: a hash of the model file); otherwise a hash of its
    special ids, vocab size and the encoding of a probe text (good enough to key a cache)."""
    fp = getattr(tok, "fingerprint", None)
    if fp:
        return str(fp)
    probe = "The quick brown fox, 0123456789 — jumps!\n\tdef f(x): return x * 2  # ünïcödé 日本"
    h = hashlib.sha256(repr((type(tok).__name__, tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id,
                             list(tok.encode(probe)))).encode())
    return "probe-" + h.hexdigest()


def _encode_many(tok, texts: List[str]) -> List[List[int]]:
    batch = getattr(tok, "encode_batch", None)
    return batch(texts) if batch is not None else [tok.encode(t) for t in texts]


def default_cache_dir() -> str:
    base = os.environ.get("ASCEND_V4_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ascend-v4")
    return os.path.join(base, "tokens")


# ---------------------------------------------------------------------------------------------------
# token cache
# ---------------------------------------------------------------------------------------------------
@dataclass
class TokenizedFile:
    path: str
    sha256: str
    offsets: np.ndarray          # int64 [n_docs + 1]
    tokens: np.ndarray           # int32 [n_tokens] (memmap)
    stats: Dict[str, int]

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1


def _load_entry(base: str, sha: str, path: str) -> Optional[TokenizedFile]:
    meta_p, tok_p, off_p = base + ".json", base + ".tokens", base + ".offsets.npy"
    if not os.path.exists(meta_p):
        return None
    try:
        with open(meta_p) as fh:
            meta = json.load(fh)
        offsets = np.load(off_p, allow_pickle=False)
        n = int(meta["n_tokens"])
        if (meta.get("version") != CACHE_VERSION or len(offsets) != meta["n_docs"] + 1 or offsets[-1] != n
                or os.path.getsize(tok_p) != 4 * n):
            return None
        tokens = np.memmap(tok_p, dtype="<i4", mode="r", shape=(n,)) if n else np.zeros(0, np.int32)
    except (OSError, ValueError, KeyError):
        return None                     # damaged entry: rebuild it
    return TokenizedFile(path, sha, offsets.astype(np.int64), tokens, dict(meta.get("stats", {})))


def tokenize_file(path: str, tok, cache_dir: str, skip_bad: bool = False, tok_fp: Optional[str] = None,
                  sha: Optional[str] = None) -> TokenizedFile:
    """Tokenise one file into the on-disk cache (or open the existing entry). Chunked: bounded memory."""
    sha = sha or file_sha256(path)
    tok_fp = tok_fp or tokenizer_fingerprint(tok)
    fmt = "jsonl" if path.endswith(JSONL_EXTS) else "text"
    key = hashlib.sha256(f"v{CACHE_VERSION}|{sha}|{tok_fp}|{fmt}|skip_bad={bool(skip_bad)}".encode()).hexdigest()[:32]
    os.makedirs(cache_dir, exist_ok=True)
    base = os.path.join(cache_dir, key)
    hit = _load_entry(base, sha, path)
    if hit is not None:
        return hit

    bos, eos = int(tok.bos_id), int(tok.eos_id)
    stats: Dict[str, int] = {}
    offsets = [0]
    with atomic_write(base + ".tokens", "wb") as out:
        chunk: List[str] = []
        size = 0

        def flush():
            for ids in _encode_many(tok, chunk):
                arr = np.empty(len(ids) + 2, dtype="<i4")
                arr[0], arr[-1] = bos, eos
                arr[1:-1] = ids
                out.write(arr.tobytes())
                offsets.append(offsets[-1] + len(arr))
            chunk.clear()

        for text in iter_documents(path, skip_bad, stats):
            chunk.append(text)
            size += len(text)
            if size >= _CHUNK_CHARS:
                flush()
                size = 0
        flush()
    off = np.asarray(offsets, dtype=np.int64)
    with atomic_write(base + ".offsets.npy", "wb") as fh:
        np.save(fh, off, allow_pickle=False)
    meta = {"version": CACHE_VERSION, "source": os.path.abspath(path), "sha256": sha, "tokenizer": tok_fp,
            "n_docs": len(off) - 1, "n_tokens": int(off[-1]), "stats": stats}
    write_bytes(base + ".json", json.dumps(meta, indent=1).encode())
    entry = _load_entry(base, sha, path)
    if entry is None:  # pragma: no cover - only if the cache dir is being deleted under us
        raise DataError(f"{cache_dir}: token cache entry for {path} vanished while writing; check the cache dir")
    return entry


# ---------------------------------------------------------------------------------------------------
# splits and shuffling (pure uint64 arithmetic: identical on every numpy version and platform)
# ---------------------------------------------------------------------------------------------------
def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def _mix(*ints: int) -> np.uint64:
    v = np.zeros(1, np.uint64)
    for i in ints:
        v = _splitmix64(v ^ np.uint64(i & 0xFFFFFFFFFFFFFFFF))
    return v[0]


def _hash63(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & _MASK63


def _doc_uniforms(sha: str, n_docs: int, split_seed: int) -> np.ndarray:
    """float64 [n_docs] in [0, 1): a fixed pseudo-random draw per document of a file (by content hash)."""
    salt = _mix(int(sha[:16], 16), split_seed, 0xE7A1)
    u = _splitmix64(np.arange(n_docs, dtype=np.uint64) ^ salt)
    return (u >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def eval_membership(sha: str, n_docs: int, fraction: float, split_seed: int = 0) -> np.ndarray:
    """bool [n_docs]: which documents of a file (by content hash) are held out for evaluation."""
    if fraction <= 0 or n_docs == 0:
        return np.zeros(n_docs, bool)
    return _doc_uniforms(sha, n_docs, split_seed) < fraction


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The epoch's document order: argsort of splitmix64(seed, epoch, i) (stable; identity if no shuffle)."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    keys = _splitmix64(np.arange(n, dtype=np.uint64) ^ _mix(seed, epoch, 0x5EED))
    return np.argsort(keys, kind="stable").astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# corpus: the tokenised files + one split's document table
# ---------------------------------------------------------------------------------------------------
class TokenizedCorpus:
    """All files tokenised (cached on disk) with a global document table. Shared by train/eval loaders."""

    def __init__(self, files: Sequence[str], tokenizer, cache_dir: Optional[str] = None, skip_bad: bool = False):
        self.files = resolve_files(files)
        self.tokenizer = tokenizer
        self.cache_dir = cache_dir or default_cache_dir()
        self.skip_bad = skip_bad
        self.tok_fp = tokenizer_fingerprint(tokenizer)
        self.parts: List[TokenizedFile] = []
        for f in self.files:
            try:
                sha = file_sha256(f)
            except OSError as e:
                raise DataError(f"{f}: cannot read ({e.strerror})") from None
            self.parts.append(tokenize_file(f, tokenizer, self.cache_dir, skip_bad, self.tok_fp, sha))
        self.stats = {"skipped_lines": sum(p.stats.get("skipped_lines", 0) for p in self.parts),
                      "empty_docs": sum(p.stats.get("empty_docs", 0) for p in self.parts)}
        if sum(p.n_docs for p in self.parts) == 0:
            raise DataError(f"empty corpus: no document in {', '.join(self.files)}; .txt needs non-blank "
                            f"paragraphs, .jsonl needs {{\"text\": \"...\"}} lines")
        self.fingerprint = _hash63(self.tok_fp, [p.sha256 for p in self.parts], bool(skip_bad))

    def documents(self, split: str = "train", eval_fraction: float = 0.0, split_seed: int = 0):
        """(file index [n] int32, start [n] int64, length [n] int64) of the split's documents."""
        held = [eval_membership(p.sha256, p.n_docs, eval_fraction, split_seed) for p in self.parts]
        n_docs = sum(p.n_docs for p in self.parts)
        if eval_fraction > 0 and n_docs >= 2 and not any(h.any() for h in held):
            # a small corpus and a small fraction: hold out the single document with the lowest draw
            u = [_doc_uniforms(p.sha256, p.n_docs, split_seed) for p in self.parts]
            best = min((float(x.min()), i) for i, x in enumerate(u) if len(x))[1]
            held[best][int(np.argmin(u[best]))] = True
        fi, st, ln = [], [], []
        for i, p in enumerate(self.parts):
            keep = held[i] if split == "eval" else ~held[i]
            idx = np.nonzero(keep)[0]
            fi.append(np.full(len(idx), i, np.int32))
            st.append(p.offsets[idx])
            ln.append(p.offsets[idx + 1] - p.offsets[idx])
        return np.concatenate(fi), np.concatenate(st), np.concatenate(ln)

    def doc_tokens(self, file_idx: int, start: int, length: int) -> np.ndarray:
        return self.parts[file_idx].tokens[start:start + length]


# ---------------------------------------------------------------------------------------------------
# the loader
# ---------------------------------------------------------------------------------------------------
_STATE_KEYS = ("version", "epoch", "doc_cursor", "token_offset", "rows_emitted", "seed", "shuffle",
               "corpus_fingerprint", "split_fingerprint", "n_docs")
BATCH_KEYS = ("input_ids", "targets", "segment_ids", "positions", "loss_mask")


class PackedLoader:
    """Packed rows of ``seq_len + 1`` tokens from text/jsonl files; infinite iterator of batch dicts.

    ``files``: paths (or directories); ``tokenizer``: anything with encode/bos_id/eos_id/pad_id.
    See the module docstring for packing, masking, determinism and resume semantics.
    """

    def __init__(self, files: Sequence[str], tokenizer, seq_len: int, batch_size: int, seed: int = 0,
                 shuffle: bool = True, *, split: str = "train", eval_fraction: float = 0.0, split_seed: int = 0,
                 cache_dir: Optional[str] = None, skip_bad: bool = False, positions: str = "segment",
                 corpus: Optional[TokenizedCorpus] = None):
        if not (isinstance(seq_len, int) and seq_len >= 1):
            raise DataError(f"seq_len must be a positive integer, got {seq_len!r}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        if split not in ("train", "eval"):
            raise DataError(f"split must be 'train' or 'eval', got {split!r}")
        if not 0.0 <= eval_fraction < 1.0:
            raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        if split == "eval" and eval_fraction <= 0:
            raise DataError("split='eval' needs eval_fraction > 0")
        if positions not in ("segment", "document"):
            raise DataError(f"positions must be 'segment' or 'document', got {positions!r}")
        self.corpus = corpus if corpus is not None else TokenizedCorpus(files, tokenizer, cache_dir, skip_bad)
        self.tokenizer = self.corpus.tokenizer
        self.seq_len, self.batch_size = seq_len, batch_size
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.split, self.eval_fraction, self.split_seed = split, float(eval_fraction), int(split_seed)
        self.positions_mode = positions
        pad = getattr(self.tokenizer, "pad_id", -1)
        self.pad_token = int(pad) if pad is not None and pad >= 0 else int(self.tokenizer.eos_id)
        self._file, self._start, self._len = self.corpus.documents(split, eval_fraction, split_seed)
        if len(self._len) == 0:
            what = "held-out" if split == "eval" else "training"
            raise DataError(f"no {what} documents in {', '.join(self.corpus.files)} with eval_fraction="
                            f"{eval_fraction}; add documents or change eval_fraction")
        self.split_fingerprint = _hash63(split, self.eval_fraction, self.split_seed)
        self._order_cache: Tuple[int, Optional[np.ndarray]] = (-1, None)
        self.epoch, self._cursor, self._offset, self.rows_emitted = 0, 0, 0, 0

    # ----- sizes ----------------------------------------------------------------------------
    @property
    def stats(self) -> Dict[str, int]:
        return dict(self.corpus.stats)

    @property
    def n_documents(self) -> int:
        return len(self._len)

    @property
    def n_tokens(self) -> int:
        """Tokens per epoch (bos + text + eos of every document of the split)."""
        return int(self._len.sum())

    @property
    def rows_per_epoch(self) -> int:
        return -(-self.n_tokens // self.seq_len)

    @property
    def batches_per_epoch(self) -> float:
        return self.rows_per_epoch / self.batch_size

    # ----- ordering -------------------------------------------------------------------------
    def order(self, epoch: int) -> np.ndarray:
        """Indices into this split's documents, in epoch `epoch`'s order."""
        if self._order_cache[0] != epoch:
            self._order_cache = (epoch, epoch_order(self.n_documents, self.seed, epoch, self.shuffle))
        return self._order_cache[1]

    def document(self, i: int) -> np.ndarray:
        """Tokens (bos ... eos) of this split's document `i`."""
        return self.corpus.doc_tokens(int(self._file[i]), int(self._start[i]), int(self._len[i]))

    # ----- packing --------------------------------------------------------------------------
    def _row(self, cur: Tuple[int, int, int]):
        """One row from cursor (epoch, doc_cursor, token_offset) -> (arrays [S+1], next cursor)."""
        epoch, c, off = cur
        order = self.order(epoch)
        n = len(order)
        if c >= n:
            epoch, c, off = epoch + 1, 0, 0
            order = self.order(epoch)
        S = self.seq_len
        toks = np.full(S + 1, self.pad_token, np.int32)
        seg = np.full(S + 1, -1, np.int32)
        pos = np.zeros(S + 1, np.int32)
        filled, piece = 0, 0
        nxt = None
        cc, oo = c, off
        while filled < S + 1 and cc < n:
            d = int(order[cc])
            length = int(self._len[d])
            take = min(length - oo, S + 1 - filled)
            toks[filled:filled + take] = self.corpus.doc_tokens(int(self._file[d]), int(self._start[d]) + oo, take)
            seg[filled:filled + take] = piece
            base = oo if self.positions_mode == "document" else 0
            pos[filled:filled + take] = np.arange(base, base + take, dtype=np.int32)
            if nxt is None and filled + take >= S:       # the next row starts at stream token S of this one
                k = oo + (S - filled)
                nxt = (cc, k) if k < length else (cc + 1, 0)
            filled += take
            piece += 1
            oo += take
            if oo >= length:
                cc, oo = cc + 1, 0
        if nxt is None:                                    # epoch ran out inside this row
            nxt = (n, 0)
        return (toks, seg, pos), (epoch, nxt[0], nxt[1])

    @staticmethod
    def _pack(rows) -> Dict[str, np.ndarray]:
        toks = np.stack([r[0] for r in rows])
        seg = np.stack([r[1] for r in rows])
        pos = np.stack([r[2] for r in rows])
        mask = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] >= 0)
        return {"input_ids": np.ascontiguousarray(toks[:, :-1]), "targets": np.ascontiguousarray(toks[:, 1:]),
                "segment_ids": np.ascontiguousarray(seg[:, :-1]), "positions": np.ascontiguousarray(pos[:, :-1]),
                "loss_mask": mask.astype(np.int32)}

    def next_row(self) -> Tuple[int, Dict[str, np.ndarray]]:
        """(epoch, one-row batch [1, S]) and advance by one row."""
        cur = (self.epoch, self._cursor, self._offset)
        if self._cursor >= self.n_documents:
            cur = (self.epoch + 1, 0, 0)
        row, (self.epoch, self._cursor, self._offset) = self._row(cur)
        self.rows_emitted += 1
        return cur[0], self._pack([row])

    def next_batch(self) -> Dict[str, np.ndarray]:
        rows = []
        cur = (self.epoch, self._cursor, self._offset)
        for _ in range(self.batch_size):
            row, cur = self._row(cur)
            rows.append(row)
        self.epoch, self._cursor, self._offset = cur
        self.rows_emitted += self.batch_size
        return self._pack(rows)

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, np.ndarray]:
        return self.next_batch()

    def epoch_batches(self, epoch: int = 0, max_batches: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
        """One full pass over epoch `epoch` (for evaluation): every batch [B, S], the last one padded with
        empty rows (loss_mask 0). Does not touch the loader's own position."""
        cur = (epoch, 0, 0)
        done = 0
        S = self.seq_len
        empty = (np.full(S + 1, self.pad_token, np.int32), np.full(S + 1, -1, np.int32), np.zeros(S + 1, np.int32))
        while (max_batches is None or done < max_batches) and cur[1] < self.n_documents:
            rows = []
            while len(rows) < self.batch_size and cur[1] < self.n_documents:
                row, cur = self._row(cur)
                rows.append(row)
            rows += [empty] * (self.batch_size - len(rows))
            yield self._pack(rows)
            done += 1

    # ----- resume ---------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, int]:
        return {"version": 1, "epoch": int(self.epoch), "doc_cursor": int(self._cursor),
                "token_offset": int(self._offset), "rows_emitted": int(self.rows_emitted), "seed": self.seed,
                "shuffle": int(self.shuffle), "corpus_fingerprint": int(self.corpus.fingerprint),
                "split_fingerprint": int(self.split_fingerprint), "n_docs": int(self.n_documents)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        try:
            st = {k: int(np.asarray(state[k]).item()) for k in _STATE_KEYS}
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"data loader state is incomplete or malformed ({e}); it must come from "
                            f"PackedLoader.state_dict()") from None
        if st["version"] != 1:
            raise DataError(f"data loader state version {st['version']} is not supported (expected 1)")
        mine = self.state_dict()
        for k, what in (("corpus_fingerprint", "corpus files or tokenizer"), ("split_fingerprint", "eval split"),
                        ("seed", "seed"), ("shuffle", "shuffle setting"), ("n_docs", "document count")):
            if st[k] != mine[k]:
                raise DataError(f"data loader state was saved with a different {what} ({k} {st[k]} != "
                                f"{mine[k]}); resume with the same data, tokenizer, split and seed")
        if not (st["epoch"] >= 0 and 0 <= st["doc_cursor"] <= self.n_documents and st["token_offset"] >= 0):
            raise DataError(f"data loader state position (epoch {st['epoch']}, doc {st['doc_cursor']}, "
                            f"offset {st['token_offset']}) is out of range for this corpus")
        if st["doc_cursor"] < self.n_documents:
            d = int(self.order(st["epoch"])[st["doc_cursor"]])
            if st["token_offset"] >= self._len[d]:
                raise DataError(f"data loader state token offset {st['token_offset']} is past the end of "
                                f"document {st['doc_cursor']}; the state does not match this corpus")
        self.epoch, self._cursor, self._offset = st["epoch"], st["doc_cursor"], st["token_offset"]
        self.rows_emitted = st["rows_emitted"]


def eval_split(files: Sequence[str], tokenizer, seq_len: int, batch_size: int, seed: int = 0,
               eval_fraction: float = 0.01, *, split_seed: int = 0, cache_dir: Optional[str] = None,
               skip_bad: bool = False, positions: str = "segment",
               eval_batch_size: Optional[int] = None) -> Tuple[PackedLoader, PackedLoader]:
    """(train loader, eval loader) over disjoint documents; the corpus is tokenised once for both.
    The eval loader is unshuffled; iterate it with ``eval_loader.epoch_batches()``."""
    corpus = TokenizedCorpus(files, tokenizer, cache_dir, skip_bad)
    common = dict(eval_fraction=eval_fraction, split_seed=split_seed, positions=positions, corpus=corpus)
    train = PackedLoader(corpus.files, tokenizer, seq_len, batch_size, seed, True, split="train", **common)
    ev = PackedLoader(corpus.files, tokenizer, seq_len, eval_batch_size or batch_size, seed, False,
                      split="eval", **common)
    return train, ev


def build_loaders(cfg, files: Optional[Sequence[str]] = None, tokenizer_path: Optional[str] = None, *,
                  seq_len: int, batch_size: int, seed: int = 0, eval_fraction: float = 0.0,
                  cache_dir: Optional[str] = None, skip_bad: bool = False):
    """What `ascend-v4 train` needs: (tokenizer, train loader, eval loader or None).

    No `files` -> the embedded default corpus; no `tokenizer_path` -> a sentencepiece model trained on the
    default corpus (cached), sized to the config's vocab. The tokenizer is checked against `cfg`.
    `cache_dir` is the cache root: tokens go to ``<cache_dir>/tokens``, the default tokenizer to
    ``<cache_dir>/tokenizers`` (default root ``$ASCEND_V4_CACHE`` or ``~/.cache/ascend-v4``)."""
    from .corpus import default_corpus_files, default_tokenizer
    from .tokenizer import check_vocab, load_tokenizer
    tok_dir = os.path.join(cache_dir, "tokenizers") if cache_dir else None
    data_dir = os.path.join(cache_dir, "tokens") if cache_dir else None
    tok = load_tokenizer(tokenizer_path) if tokenizer_path else default_tokenizer(cfg.vocab_size, tok_dir)
    check_vocab(tok, cfg)
    files = list(files) if files else default_corpus_files()
    if eval_fraction > 0:
        train, ev = eval_split(files, tok, seq_len, batch_size, seed, eval_fraction, cache_dir=data_dir,
                               skip_bad=skip_bad)
        return tok, train, ev
    return tok, PackedLoader(files, tok, seq_len, batch_size, seed, cache_dir=data_dir, skip_bad=skip_bad), None
