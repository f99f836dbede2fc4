"""Find the files to scan and read them robustly.

Every failure here (permissions, binary content, bad encodings, huge files) becomes a ``ScanWarning``
instead of an exception: one odd file in a 100k-line tree must not abort the whole analysis.
"""
from __future__ import annotations

import codecs
import fnmatch
import io
import os
import re
import stat
import tokenize
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

from .findings import ScanWarning
from .rules import RuleSet

# Generated or vendored files this large are not hand-written code; scanning them only costs time.
MAX_FILE_BYTES = 8 * 1024 * 1024


@dataclass
class SourceFile:
    path: str  # absolute path on disk
    rel: str  # path relative to the scan root, '/'-separated (what reports show)
    tags: Tuple[str, ...]


def _skipped(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def iter_files(root: str, rules: RuleSet, exclude: Sequence[str] = ()) -> Iterator[SourceFile]:
    """Yield scannable files under ``root`` (or ``root`` itself), sorted for deterministic reports.

    Directory symlinks are not followed (loops, and trees that point into site-packages).
    ``exclude`` globs are matched against the relative path and the base name.
    """
    root = os.path.abspath(root)
    if os.path.isfile(root):
        tags = rules.file_tags(os.path.basename(root))
        if tags:
            yield SourceFile(root, os.path.basename(root), tags)
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        dirnames[:] = sorted(
            d for d in dirnames
            if not _skipped(d, rules.skip_dirs) and not _excluded(rel_dir + d, d, exclude)
        )
        for name in sorted(filenames):
            rel = rel_dir + name
            if _excluded(rel, name, exclude):
                continue
            tags = rules.file_tags(name)
            if tags:
                yield SourceFile(os.path.join(dirpath, name), rel, tags)


def _excluded(rel: str, name: str, exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in exclude)


def read_source(sf: SourceFile) -> Tuple[Optional[str], List[ScanWarning], str]:
    """Return (text, warnings, encoding). ``text`` is None when the file cannot be analysed at all.

    Python files honour a PEP 263 coding cookie; everything else is UTF-8 (with BOM). Undecodable bytes
    are replaced rather than failing the file: the CUDA identifiers we look for are ASCII, so a stray
    Latin-1 comment should not hide them.
    """
    warnings: List[ScanWarning] = []
    try:
        st = os.stat(sf.path)
        if not stat.S_ISREG(st.st_mode):
            # FIFOs/devices named *.py would block or stream forever
            return None, [ScanWarning(sf.rel, 0, "unreadable", "not a regular file; skipped")], ""
        size = st.st_size
        if size > MAX_FILE_BYTES:
            return None, [ScanWarning(sf.rel, 0, "too_large", f"{size} bytes > {MAX_FILE_BYTES}; skipped")], ""
        with open(sf.path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        return None, [ScanWarning(sf.rel, 0, "unreadable", f"cannot read: {e.strerror or e}")], ""
    if b"\x00" in data[:8192]:
        return None, [ScanWarning(sf.rel, 0, "binary", "file contains NUL bytes (binary); skipped")], ""
    encoding = "utf-8-sig"
    if "python" in sf.tags:
        try:
            enc, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
            encoding = "utf-8-sig" if enc in ("utf-8", "utf-8-sig") else enc
        except (SyntaxError, LookupError) as e:
            # detect_encoding also raises when the first lines are simply not UTF-8; that case is
            # reported once by the decode step below, so only a bogus cookie is worth its own warning.
            if "unknown encoding" in str(e):
                warnings.append(ScanWarning(sf.rel, 0, "decode", f"{e}; assuming UTF-8"))
    try:
        codecs.lookup(encoding)
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as e:
        text = data.decode("utf-8", errors="replace")
        where = f" at byte {e.start}" if isinstance(e, UnicodeDecodeError) else ""
        warnings.append(ScanWarning(
            sf.rel, _line_of_byte(data, getattr(e, "start", 0)), "decode",
            f"not valid {encoding}{where}; scanned with replacement characters",
        ))
    if encoding == "utf-8-sig" and not data.startswith(codecs.BOM_UTF8):
        encoding = "utf-8"  # write back without inventing a BOM
    return text, warnings, encoding


_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_WITH_END = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def split_lines(text: str) -> List[str]:
    """Lines without endings, broken exactly where ``ast`` counts lines.

    ``str.splitlines`` also breaks on form feeds and U+2028, which would shift line numbers against
    the AST in files that contain them.
    """
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def split_lines_keepends(text: str) -> List[str]:
    return _LINE_WITH_END.findall(text)


def _line_of_byte(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1 if offset else 0
