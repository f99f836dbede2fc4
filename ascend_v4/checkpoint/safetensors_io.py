"""Strict safetensors reader/writer in plain NumPy, including the FP8 entry types (F8_E4M3, F8_E8M0)
that `safetensors.numpy` and MindSpore cannot read.

File layout: 8-byte little-endian header length N, N bytes of JSON (padded with spaces), then the
data region. Every entry is {"dtype", "shape", "data_offsets": [begin, end]} relative to the data
region; the entries must tile the data region exactly (the format forbids holes), which is also
what catches truncated and padded files. Tensors come back as read-only memmap views of their
*storage* dtype: uint8 for F8_*, uint16 for BF16, int8 for I8 (packed FP4), ...
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..atomic import atomic_write


class CheckpointError(ValueError):
    """A checkpoint file or directory that cannot be read as it claims to be."""


# safetensors dtype tag -> little-endian storage dtype we hand out.
STORAGE_DTYPES: Dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "F8_E4M3": np.dtype("u1"), "F8_E5M2": np.dtype("u1"), "F8_E8M0": np.dtype("u1"),
    "I16": np.dtype("<i2"), "U16": np.dtype("<u2"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I32": np.dtype("<i4"), "U32": np.dtype("<u4"), "F32": np.dtype("<f4"),
    "I64": np.dtype("<i8"), "U64": np.dtype("<u8"), "F64": np.dtype("<f8"),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024        # same limit as the safetensors library
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,511}")


def _check_name(path: str, name) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise CheckpointError(f"{path}: tensor name {name!r} is not a plain dotted name (letters, digits, "
                              f"'_', '.', '-'; no '..', at most 512 chars); the file is corrupt or not a "
                              f"model checkpoint")


_Entry = Tuple[str, Tuple[int, ...], int, int]          # dtype tag, shape, begin, end (data-relative)


def _parse_header(path: str, file_size: int, head: bytes) -> Tuple[int, Dict[str, _Entry], Dict[str, str]]:
    """Validate a header; returns (data_start, {name: (dtype, shape, begin, end)}, metadata)."""
    fix = "re-download or re-write the file"
    if file_size < 8:
        raise CheckpointError(f"{path}: {file_size} bytes is too short for a safetensors file; {fix}")
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER_BYTES or 8 + n > file_size:
        raise CheckpointError(f"{path}: header length {n} runs past the end of the {file_size}-byte file "
                              f"(truncated or not safetensors); {fix}")
    raw = head[8: 8 + n]
    dups: List[str] = []

    def no_dups(pairs):           # json.loads would silently keep the last of two equal keys
        keys = [k for k, _ in pairs]
        dups.extend(k for k in set(keys) if keys.count(k) > 1)
        return dict(pairs)
    try:
        hdr = json.loads(raw.decode("utf-8"), object_pairs_hook=no_dups)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: header is not valid UTF-8 JSON ({e}); {fix}") from None
    if dups:
        raise CheckpointError(f"{path}: header lists '{dups[0]}' more than once; {fix}")
    if not isinstance(hdr, dict):
        raise CheckpointError(f"{path}: header is a JSON {type(hdr).__name__}, not an object; {fix}")
    meta = hdr.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings; {fix}")
    data_start, data_len = 8 + n, file_size - 8 - n
    entries = {}
    for name, e in hdr.items():
        _check_name(path, name)
        where = f"{path}: tensor '{name}'"
        if not isinstance(e, dict) or set(e) - {"dtype", "shape", "data_offsets"} or len(e) != 3:
            raise CheckpointError(f"{where}: entry must have exactly dtype, shape, data_offsets; {fix}")
        dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if dt not in STORAGE_DTYPES:
            raise CheckpointError(f"{where}: unknown dtype {dt!r} (known: {', '.join(STORAGE_DTYPES)}); "
                                  f"convert the tensor to a supported dtype")
        if (not isinstance(shape, list) or len(shape) > 16
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2 ** 40 for d in shape)):
            raise CheckpointError(f"{where}: shape {shape!r} is not a list of non-negative ints; {fix}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
                or not 0 <= offs[0] <= offs[1] <= data_len):
            raise CheckpointError(f"{where}: data_offsets {offs!r} fall outside the {data_len}-byte data "
                                  f"region (truncated file?); {fix}")
        nbytes = math.prod(shape) * STORAGE_DTYPES[dt].itemsize
        if nbytes != offs[1] - offs[0]:
            raise CheckpointError(f"{where}: {dt}{shape} needs {nbytes} bytes but data_offsets span "
                                  f"{offs[1] - offs[0]}; {fix}")
        entries[name] = (dt, tuple(shape), offs[0], offs[1])
    # The spans must tile [0, data_len) exactly: no overlap, no hole, nothing after the last tensor.
    pos, prev = 0, None
    for name, (_, _, b, e) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if b < pos:
            raise CheckpointError(f"{path}: tensor '{name}' bytes [{b}, {e}) overlap tensor '{prev}'; {fix}")
        if b > pos:
            raise CheckpointError(f"{path}: {b - pos} unindexed bytes before tensor '{name}' (holes are "
                                  f"not allowed in safetensors); {fix}")
        pos, prev = e, name
    if pos != data_len:
        raise CheckpointError(f"{path}: data region is {data_len} bytes but the tensors cover {pos} "
                              f"(trailing garbage or a damaged header); {fix}")
    return data_start, entries, meta


class SafeTensorFile:
    """Lazily mapped safetensors file. `raw(name)` is a read-only view (copy it to mutate)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                head = f.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else 0
                if len(head) == 8 and n <= MAX_HEADER_BYTES and 8 + n <= size:
                    head += f.read(n)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read ({e.strerror}); check the path") from None
        self.data_start, self._entries, self.metadata = _parse_header(self.path, size, head)
        self._mm: Optional[np.memmap] = None

    def keys(self) -> List[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def meta(self, name: str) -> Tuple[str, Tuple[int, ...]]:
        dt, shape, _, _ = self._entry(name)
        return dt, shape

    def nbytes(self, name: str) -> int:
        _, _, b, e = self._entry(name)
        return e - b

    def raw(self, name: str) -> np.ndarray:
        dt, shape, b, e = self._entry(name)
        if e == b:
            return np.zeros(shape, STORAGE_DTYPES[dt])
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        return np.ndarray(shape, STORAGE_DTYPES[dt], buffer=self._mm, offset=self.data_start + b)

    def _entry(self, name: str):
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor '{name}' in this file") from None

    def close(self) -> None:
        self._mm = None      # views handed out keep their own reference to the mapping

    def __enter__(self) -> "SafeTensorFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_safetensors(path: str, tensors: Mapping[str, Tuple[str, np.ndarray]],
                      metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write {name: (dtype tag, raw storage array)} atomically (ascend_v4.atomic: temporary name, fsync, rename).

    The raw array must already have the tag's storage dtype (uint8 for F8_*, uint16 for BF16, int8
    for I8, ...) - this function never converts values. Entries are laid out in sorted name order.
    """
    path = os.fspath(path)
    header: Dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise CheckpointError(f"{path}: metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    arrays, off = [], 0
    for name in sorted(tensors):
        dt, arr = tensors[name]
        _check_name(path, name)
        if dt not in STORAGE_DTYPES:
            raise CheckpointError(f"{path}: tensor '{name}': unknown dtype tag {dt!r}")
        arr = np.asarray(arr)
        want = STORAGE_DTYPES[dt]
        if arr.dtype.newbyteorder("<") != want.newbyteorder("<") or arr.dtype.kind != want.kind:
            raise CheckpointError(f"{path}: tensor '{name}': {dt} needs storage dtype {want}, got {arr.dtype}; "
                                  f"encode the values first (formats.py) or .view() the bytes")
        arr = np.asarray(arr, dtype=want, order="C")        # keeps 0-d shapes, unlike ascontiguousarray
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + arr.nbytes]}
        arrays.append(arr)
        off += arr.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with atomic_write(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for arr in arrays:
            if arr.nbytes:
                f.write(memoryview(arr.reshape(-1)).cast("B"))


INDEX_NAME = "model.safetensors.index.json"


class ShardedCheckpoint:
    """A checkpoint directory: `model.safetensors.index.json` + shards, or a single
    `model.safetensors`, or (no index) every *.safetensors file in the directory.

    Shard paths from the index must stay lexically inside the directory (symlinks are followed,
    as in the HF hub cache whose snapshot files link to ../../blobs).
    """

    def __init__(self, directory: str):
        self.dir = os.fspath(directory)
        if not os.path.isdir(self.dir):
            raise CheckpointError(f"{self.dir}: not a directory; pass the checkpoint folder")
        self.files: Dict[str, SafeTensorFile] = {}
        self._where: Dict[str, str] = {}
        index = os.path.join(self.dir, INDEX_NAME)
        if os.path.exists(index):
            self._load_index(index)
        else:
            names = (["model.safetensors"] if os.path.exists(os.path.join(self.dir, "model.safetensors"))
                     else sorted(f for f in os.listdir(self.dir) if f.endswith(".safetensors")))
            if not names:
                raise CheckpointError(f"{self.dir}: no {INDEX_NAME} and no *.safetensors files; "
                                      f"pass a checkpoint directory")
            for fn in names:
                st = self._open(fn)
                for k in st.keys():
                    if k in self._where:
                        raise CheckpointError(f"{st.path}: tensor '{k}' is also in {self._where[k]}; "
                                              f"remove the duplicate shard or add an index")
                    self._where[k] = fn

    def _open(self, fn: str) -> SafeTensorFile:
        if fn not in self.files:
            self.files[fn] = SafeTensorFile(os.path.join(self.dir, fn))
        return self.files[fn]

    def _load_index(self, index: str) -> None:
        try:
            with open(index, "r", encoding="utf-8") as f:
                wm = json.load(f)["weight_map"]
            if not isinstance(wm, dict):
                raise TypeError("weight_map is not an object")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid index ({type(e).__name__}: {e}); "
                                  f"re-download or delete it") from None
        for name, fn in wm.items():
            _check_name(index, name)
            norm = os.path.normpath(fn) if isinstance(fn, str) else ""
            if (not isinstance(fn, str) or not fn or os.path.isabs(fn) or norm.startswith("..")
                    or "\\" in fn or not fn.endswith(".safetensors")):
                raise CheckpointError(f"{index}: tensor '{name}' maps to {fn!r}, which is not a "
                                      f".safetensors file inside the checkpoint directory; fix the index")
            if not os.path.isfile(os.path.join(self.dir, norm)):
                raise CheckpointError(f"{index}: shard {fn!r} (for tensor '{name}') does not exist; "
                                      f"download the missing shard")
            if name not in self._open(norm):
                raise CheckpointError(f"{os.path.join(self.dir, norm)}: tensor '{name}' is listed in "
                                      f"{INDEX_NAME} but missing from the shard; re-download it")
            self._where[name] = norm
        for fn, st in self.files.items():
            for k in st.keys():
                if self._where.get(k) != fn:
                    raise CheckpointError(f"{st.path}: tensor '{k}' is not mapped to this shard in "
                                          f"{INDEX_NAME}; the index is stale - regenerate it")

    def keys(self) -> List[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def file_of(self, name: str) -> str:
        return self._file(name).path

    def _file(self, name: str) -> SafeTensorFile:
        try:
            return self.files[self._where[name]]
        except KeyError:
            raise CheckpointError(f"{self.dir}: no tensor '{name}' in this checkpoint") from None

    def meta(self, name: str) -> Tuple[str, Tuple[int, ...]]:
        return self._file(name).meta(name)

    def raw(self, name: str) -> np.ndarray:
        return self._file(name).raw(name)

    def close(self) -> None:
        for st in self.files.values():
            st.close()
