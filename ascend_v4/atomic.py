"""Atomic file output: a file appears under its final name complete or not at all.

`atomic_write(path)` yields a file object on a temporary name beside `path` (same directory, so the rename
cannot cross filesystems); on success the data is flushed, fsynced and renamed over `path`, and the directory
entry is fsynced; on any failure (a full disk included) the temporary file is removed and the error re-raised
unchanged, so the CLI's error contract reports it (ENOSPC -> one `error: disk full …` line). `write_npz`,
`write_json` and `write_bytes` build on it. `atomic_dir(path)` does the same for a directory (a checkpoint): it
is filled under a temporary name and swapped in whole. See docs/reliability.md.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import zipfile
from typing import Any, Dict, Iterator, Optional

import numpy as np


_fdopen = os.fdopen          # the one place atomic output opens its file (tests inject a full disk here)


def fsync_dir(path: str) -> None:
    """Make a rename durable (best effort: some filesystems refuse fsync on a directory)."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", **open_kw) -> Iterator:
    """`with atomic_write(p) as fh: fh.write(...)` — `p` holds the new content only if the block completes.
    Text modes default to UTF-8; `open_kw` (e.g. newline="") goes to the file object."""
    path = os.fspath(path)
    with _name_failures(path), _atomic(path, mode, open_kw) as fh:
        yield fh


@contextlib.contextmanager
def _atomic(path: str, mode: str, open_kw: Dict[str, Any]) -> Iterator:
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)   # umask applies
    fh = None
    try:
        fh = _fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", **open_kw}))
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        os.replace(tmp, path)
    except BaseException:
        if fh is not None:
            try:
                fh.close()           # may fail again on a full disk: the first error is the one to report
            except OSError:
                pass
        else:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(d)


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """`with atomic_dir(d) as tmp: <write files into tmp>` — `d` is replaced by the complete directory only if the
    block completes (an existing `d` is moved aside, the new one renamed in, the old one removed); on failure the
    temporary directory is removed and `d` is left as it was. Files inside need no atomicity of their own."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.makedirs(tmp)
    try:
        with _name_failures(path):
            yield tmp
        fsync_dir(tmp)
        if os.path.lexists(path):
            old = tmp + ".old"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(parent)


@contextlib.contextmanager
def _name_failures(path: str) -> Iterator[None]:
    """A write error carries no file name; give it the final one so the error line says what was being written."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno:
            raise type(e)(e.errno, e.strerror or os.strerror(e.errno), path) from None
        raise


def write_bytes(path: str, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def write_json(path: str, obj: Any, indent: Optional[int] = 2, **dumps_kw) -> None:
    """`dumps_kw` goes to json.dumps (e.g. default=, sort_keys=)."""
    write_bytes(path, (json.dumps(obj, indent=indent, **dumps_kw) + "\n").encode("utf-8"))


def write_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """An uncompressed .npz (what numpy.savez writes, readable by numpy.load) written atomically.

    numpy.savez cannot be used on a full disk: its ZipFile is left open when a write fails and its
    `__del__` then tries to write the central directory again, printing an 'Exception ignored' traceback
    after our error line. Here the archive is abandoned explicitly instead."""
    with atomic_write(path, "wb") as fh:
        zf = zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)
        try:
            for k, v in arrays.items():
                with zf.open(f"{k}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(v), allow_pickle=False)
            zf.close()
        except BaseException:
            zf.fp = None             # abandon the archive: closing it would write to the failed file again
            raise
