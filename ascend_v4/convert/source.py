"""The release-format source: validation up front, then lazy chunked reads through short-lived memory maps.

`open_source(dir)` parses every shard header (never the data), checks the index (names escaping the
directory, missing shards, tensors listed but absent - all via ShardedCheckpoint), and checks every
stored entry against the inventory of the directory's config.json (missing, wrong dtype, wrong
shape, unexpected). Problems are reported with the file and tensor they concern.

`MappedReader.view(path, offset, nbytes)` serves chunks from a few 32 MB memory-mapped windows;
a window is released once it is evicted and no chunk of it is alive, so resident memory stays at
a few windows per worker however large the shard or tensor is.
"""
from __future__ import annotations

import json
import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ascend_v4.checkpoint.inventory import TensorSpec
from ascend_v4.checkpoint.official import release_layout
from ascend_v4.checkpoint.safetensors_io import (INDEX_NAME, MAX_HEADER_BYTES, STORAGE_DTYPES, CheckpointError,
                                                 ShardedCheckpoint, _parse_header)
from ascend_v4.config import MODEL_VERSIONS, ConfigError, ModelConfig, _is_v41_root

from .errors import ConvertError

CONVERSION_KEY = "conversion"


@dataclass
class SrcEntry:
    dtype: str
    shape: Tuple[int, ...]
    shard: int           # index into SourceLayout.shards
    offset: int          # absolute byte offset of the data in the shard file
    nbytes: int


@dataclass
class SrcShard:
    file: str            # path relative to the checkpoint directory, as the index spells it (normalised)
    size: int            # bytes
    header: bytes        # the 8-byte length + JSON header, verbatim
    names: List[str]     # entry names in data-offset order


@dataclass
class SourceLayout:
    """Everything about the release checkpoint except its tensor data."""
    cfg: ModelConfig
    config_bytes: bytes
    index_bytes: Optional[bytes]
    shards: List[SrcShard]
    entries: Dict[str, SrcEntry]
    root: Optional[str] = None        # directory holding the shard files (None: described by a sidecar)
    aux_files: List[str] = field(default_factory=list)

    @property
    def inventory(self) -> Dict[str, TensorSpec]:
        inv = self.__dict__.get("_inventory")
        if inv is None:
            inv = self.__dict__["_inventory"] = release_layout(self.cfg)[0]
        return inv

    @property
    def fp8_block(self) -> int:
        """Edge of the release's square FP8 weight blocks: 128 (DeepSeek-V4), 32 (DeepSeek-V4.1)."""
        return release_layout(self.cfg)[2]

    def path(self, shard: int) -> str:
        if self.root is None:
            raise ConvertError("internal: source data requested from a layout without a source directory")
        return os.path.join(self.root, self.shards[shard].file)

    def where(self, entry: str) -> str:
        """`SRC/file.safetensors` of an entry, for messages."""
        e = self.entries[entry]
        base = self.root if self.root is not None else "<source>"
        return os.path.join(base, self.shards[e.shard].file)

    def total_bytes(self) -> int:
        return sum(s.size for s in self.shards)


def _read_header(path: str) -> bytes:
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        if len(head) == 8 and n <= MAX_HEADER_BYTES:
            head += f.read(n)
    return head


def _entries_from_header(label: str, shard_idx: int, size: int, head: bytes, out: Dict[str, SrcEntry]) -> List[str]:
    data_start, ents, _ = _parse_header(label, size, head)
    names = sorted(ents, key=lambda k: (ents[k][2], ents[k][3]))
    for k in names:
        dt, shape, b, e = ents[k]
        out[k] = SrcEntry(dt, tuple(shape), shard_idx, data_start + b, e - b)
    return names


_AUX_MAX_BYTES = 64 * 1024 * 1024
_AUX_SKIP = {"config.json", INDEX_NAME}


# Files that travel with the weights: text and JSON (tokenizer, generation config, chat template, model card,
# licence, remote code) and sentencepiece models. Anything else - a pickle (.bin/.pt/.pth/.pkl/.ckpt), an archive,
# an unknown binary - is left behind and named, never copied into a checkpoint users will load.
_AUX_SUFFIXES = (".json", ".txt", ".md", ".model", ".jinja", ".tiktoken", ".py", ".yaml", ".yml")
_AUX_NAMES = ("LICENSE", "NOTICE", "README", "COPYING")


def _is_pickle_or_zip(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head == b"PK\x03\x04"


def _aux_files(src: str) -> List[str]:
    """Small top-level files that travel with the weights (tokenizer, generation config, ...)."""
    out, dropped = [], []
    for fn in sorted(os.listdir(src)):
        p = os.path.join(src, fn)
        if (fn in _AUX_SKIP or fn.startswith(".") or fn.endswith(".safetensors") or not os.path.isfile(p)
                or os.path.islink(p)):
            continue
        if (os.path.getsize(p) > _AUX_MAX_BYTES or not (fn.endswith(_AUX_SUFFIXES) or fn.startswith(_AUX_NAMES))
                or _is_pickle_or_zip(p)):
            dropped.append(fn)
            continue
        out.append(fn)
    if dropped:
        import warnings
        from ascend_v4.errors import Notice
        warnings.warn(f"{src}: not copied (not a tokenizer/config/text file; pickles are never carried over): "
                      f"{', '.join(dropped)}", Notice, stacklevel=2)
    return out


def open_source(src: str) -> SourceLayout:
    """Validate a release-format checkpoint directory and describe it (headers only, no tensor data)."""
    src = os.fspath(src)
    if not os.path.isdir(src):
        raise ConvertError(f"{src}: source checkpoint directory does not exist")
    cfg_path = os.path.join(src, "config.json")
    try:
        with open(cfg_path, "rb") as f:
            config_bytes = f.read()
    except FileNotFoundError:
        raise ConvertError(f"{cfg_path}: missing; the source must be a release checkpoint directory with config.json") from None
    try:
        raw = json.loads(config_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{cfg_path}: not valid JSON ({e})") from None
    if isinstance(raw, dict) and CONVERSION_KEY in raw:
        raise ConvertError(f"{src}: is already a converted checkpoint ({raw[CONVERSION_KEY].get('precision')}); "
                           f"convert from the release, or use --to-official to go back to it")
    if _is_v41_root(raw):
        # DeepSeek-V4.1: the root config.json is the nested HF file; the model is described by the flat
        # inference/config.json (what the converted directory's config and source record keep)
        flat = [q for q in (os.path.join(src, "inference", "config.json"), os.path.join(src, "inference_config.json"))
                if os.path.isfile(q)]
        if not flat:
            raise ConvertError(f"{cfg_path}: DeepSeek-V4.1's nested root config; the release's flat "
                               f"inference/config.json must be present too - copy it from the release")
        cfg_path = flat[0]
        with open(cfg_path, "rb") as f:
            config_bytes = f.read()
        try:
            raw = json.loads(config_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConvertError(f"{cfg_path}: not valid JSON ({e})") from None
    try:
        cfg = ModelConfig.from_dict(raw, name=os.path.basename(os.path.abspath(src)), versions=MODEL_VERSIONS)
    except ConfigError as e:
        raise ConvertError(f"{cfg_path}: {e}") from None

    ck = ShardedCheckpoint(src)             # index validation: escaping names, missing shards / tensors
    index_path = os.path.join(src, INDEX_NAME)
    index_bytes = None
    if os.path.exists(index_path):
        with open(index_path, "rb") as f:
            index_bytes = f.read()
    shard_files = sorted(ck.files)
    entries: Dict[str, SrcEntry] = {}
    shards: List[SrcShard] = []
    for i, fn in enumerate(shard_files):
        path = os.path.join(src, fn)
        size = os.path.getsize(path)
        head = _read_header(path)
        names = _entries_from_header(path, i, size, head, entries)
        shards.append(SrcShard(fn, size, head, names))
    layout = SourceLayout(cfg, config_bytes, index_bytes, shards, entries, root=src, aux_files=_aux_files(src))
    check_inventory(layout, ck_keys=set(ck.keys()))
    ck.close()
    return layout


def check_inventory(layout: SourceLayout, ck_keys=None) -> None:
    """Every stored entry of the config's inventory is present with the right dtype and shape."""
    cfg = layout.cfg
    problems: List[str] = []
    expected = {}
    inv, entries_of, _ = release_layout(cfg)
    for n, spec in inv.items():
        for e in entries_of(n, spec):
            expected[e.name] = e
    for k, e in expected.items():
        got = layout.entries.get(k)
        if got is None:
            problems.append(f"tensor '{k}' is missing from every shard")
        elif (got.dtype, got.shape) != (e.dtype, e.shape):
            problems.append(f"{layout.where(k)}: tensor '{k}' is {got.dtype}{list(got.shape)}, the config "
                            f"expects {e.dtype}{list(e.shape)}")
    for k in layout.entries:
        if k not in expected:
            problems.append(f"{layout.where(k)}: tensor '{k}' is not part of the '{cfg.name}' inventory")
    if problems:
        raise ConvertError(f"{len(problems)} source tensors do not match config.json: " + "; ".join(problems[:4])
                           + ("; ..." if len(problems) > 4 else "")
                           + " - check that config.json belongs to these weights")


def layout_from_record(rec: dict, config_bytes: bytes, index_bytes: Optional[bytes], label: str) -> SourceLayout:
    """Rebuild a SourceLayout from the `source/source.json` sidecar of a converted directory."""
    try:
        cfg = ModelConfig.from_dict(json.loads(config_bytes.decode("utf-8")), name=rec.get("name", "source"),
                                    versions=MODEL_VERSIONS)
        entries: Dict[str, SrcEntry] = {}
        shards = []
        for i, s in enumerate(rec["shards"]):
            head = s["header"].encode("utf-8")
            head = len(head).to_bytes(8, "little") + head
            names = _entries_from_header(f"{label}: shard {s['file']}", i, int(s["size"]), head, entries)
            shards.append(SrcShard(s["file"], int(s["size"]), head, names))
    except (KeyError, TypeError, ValueError, CheckpointError) as e:
        raise ConvertError(f"{label}: the source record is damaged ({type(e).__name__}: {e}); re-run the conversion") from None
    return SourceLayout(cfg, config_bytes, index_bytes, shards, entries, root=None,
                        aux_files=list(rec.get("aux_files", [])))


def layout_record(layout: SourceLayout) -> dict:
    return {
        "format": "ascend-v4 source record",
        "version": 1,
        "name": layout.cfg.name,
        "has_index": layout.index_bytes is not None,
        "aux_files": layout.aux_files,
        "shards": [{"file": s.file, "size": s.size, "header": s.header[8:].decode("utf-8")} for s in layout.shards],
    }


# ------------------------------------------------------------------------------ mapped reads ------
class MappedReader:
    """Chunk views of files through memory-mapped windows of WINDOW_BYTES (a few kept, least recently
    used dropped); a window is unmapped once no view of it is alive, so resident memory stays at a
    few windows per worker however large the shard or tensor is."""

    WINDOW_BYTES = 32 << 20
    MAX_WINDOWS = 4

    def __init__(self):
        self._fds: Dict[str, Tuple[int, int]] = {}
        self._wins: "OrderedDict[Tuple[str, int], Tuple[mmap.mmap, int]]" = OrderedDict()

    def _fd(self, path: str) -> Tuple[int, int]:
        got = self._fds.get(path)
        if got is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise ConvertError(f"{path}: cannot open ({e.strerror})") from None
            got = self._fds[path] = (fd, os.fstat(fd).st_size)
        return got

    def _window(self, path: str, offset: int, nbytes: int) -> Tuple[mmap.mmap, int]:
        for (p, start), (mm, length) in self._wins.items():
            if p == path and start <= offset and offset + nbytes <= start + length:
                self._wins.move_to_end((p, start))
                return mm, start
        fd, size = self._fd(path)
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        length = min(max(self.WINDOW_BYTES, offset + nbytes - start), size - start)
        if offset + nbytes > size:
            raise ConvertError(f"{path}: bytes [{offset}, {offset + nbytes}) lie past the end of the {size}-byte "
                               f"file; it was truncated or replaced during the conversion")
        try:
            mm = mmap.mmap(fd, length, offset=start, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise ConvertError(f"{path}: cannot map bytes [{offset}, {offset + nbytes}) ({e})") from None
        try:
            mm.madvise(mmap.MADV_SEQUENTIAL)
        except (AttributeError, OSError, ValueError):
            pass
        self._wins[(path, start)] = (mm, length)
        while len(self._wins) > self.MAX_WINDOWS:
            self._wins.popitem(last=False)           # unmapped when its last view goes
        return mm, start

    def view(self, path: str, offset: int, nbytes: int, dtype: np.dtype, shape) -> np.ndarray:
        if nbytes == 0:
            return np.zeros(shape, dtype)
        mm, start = self._window(path, offset, nbytes)
        return np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=offset - start).view(dtype).reshape(shape)

    def rows(self, path: str, entry_offset: int, dtype_tag: str, shape: Tuple[int, ...], r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) of a stored tensor (dim 0), as its storage dtype."""
        dt = STORAGE_DTYPES[dtype_tag]
        if len(shape) == 0:
            return self.view(path, entry_offset, dt.itemsize, dt, ())
        row = int(np.prod(shape[1:], dtype=np.int64)) * dt.itemsize
        return self.view(path, entry_offset + r0 * row, (r1 - r0) * row, dt, (r1 - r0,) + tuple(shape[1:]))

    def close(self) -> None:
        self._wins.clear()
        for fd, _ in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
