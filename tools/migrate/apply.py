"""``--apply``: perform the mechanical rewrites on a copy of the project and produce a unified diff.

Only findings that carry ``edits`` are touched (rules with an ``apply:`` entry: device strings, ``.cuda()``,
NCCL->HCCL, ``torch.cuda.<device API>`` -> ``torch.npu``, ``torch.cuda.amp`` imports, plus one
``import torch_npu`` per rewritten file). The source tree is never modified; everything else in the
copy is byte-identical to the original.
"""
from __future__ import annotations

import difflib
import os
import re
import shutil
from typing import Dict, List, Tuple

from .files import split_lines_keepends
from .findings import Edit, Finding, LeftStatement, ScanResult, apply_line_edits

_VCS_AND_CACHES = shutil.ignore_patterns(".git", ".hg", ".svn", "__pycache__", ".pytest_cache", ".mypy_cache")


class ApplyError(ValueError):
    pass


_CUDA_WORD = re.compile(r"(?i)cuda|nccl")
_NOT_MIXING = {"kernel", "v4_kernel"}  # a kernel finding is named after the function, not a CUDA reference


def settle_statements(findings: List[Finding]) -> List[LeftStatement]:
    """Withhold every rewrite of a statement that also holds a CUDA reference we cannot rewrite with
    certainty; return those statements (what --apply leaves, for the user to finish by hand).

    Rewriting half of `torch.cuda.is_available() and torch.cuda.<name torch_npu lacks>()` yields a
    statement that is silently False on an NPU host; leaving all of it CUDA fails loudly instead.
    """
    groups: Dict[Tuple[str, Tuple[int, int]], List[Finding]] = {}
    for f in findings:
        if f.stmt != (0, 0):
            groups.setdefault((f.file, f.stmt), []).append(f)
    left: List[LeftStatement] = []
    for (rel, (start, end)), fs in groups.items():
        if not any(f.edits for f in fs):
            continue
        blocking = [f for f in fs if not f.edits and f.category not in _NOT_MIXING and _CUDA_WORD.search(f.symbol)]
        if not blocking:
            continue
        dropped = [f for f in fs if f.edits]
        for f in dropped:
            f.edits, f.fix_preview = (), ""
        left.append(LeftStatement(
            rel, start, end, ", ".join(sorted({f.symbol for f in blocking})),
            ", ".join(sorted({f.symbol for f in dropped}))))
    left.sort(key=lambda x: (x.file, x.start))
    return left


def default_apply_dir(path: str) -> str:
    """``proj`` -> ``proj_npu`` next to it (msFmkTransplt writes ``proj_msft`` the same way)."""
    path = os.path.abspath(path).rstrip(os.sep)
    base, ext = os.path.splitext(path) if os.path.isfile(path) else (path, "")
    return base + "_npu"


def rewrite_text(text: str, edits: List[Edit]) -> Tuple[str, int]:
    """Apply single-line edits; returns (new text, number of edits applied).

    Overlapping edits on the same span (two rules rewriting one literal) keep the first and drop the
    rest instead of producing garbage.
    """
    lines = split_lines_keepends(text)
    by_line: Dict[int, List[Edit]] = {}
    for e in edits:
        by_line.setdefault(e.line, []).append(e)
    applied = 0
    for lineno in sorted(by_line, reverse=True):
        if lineno < 1 or lineno > len(lines):
            continue
        raw = lines[lineno - 1]
        body = raw.rstrip("\r\n")
        ending = raw[len(body):]
        inserts = [e for e in by_line[lineno] if e.insert_line]
        spans = [e for e in by_line[lineno] if not e.insert_line]
        if spans:
            body, n = apply_line_edits(body, spans)
            applied += n
        extra = ""
        for e in inserts[:1]:  # at most one inserted line per anchor
            extra = e.text + (ending or "\n")
            applied += 1
        if not ending and extra:
            ending = "\n"
        lines[lineno - 1] = body + ending + extra
    return "".join(lines), applied


def plan_edits(result: ScanResult) -> Dict[str, List[Edit]]:
    plan: Dict[str, List[Edit]] = {}
    for f in result.findings:
        if f.edits:
            plan.setdefault(f.file, []).extend(f.edits)
    for rel, e in (result.extra_edits or {}).items():
        plan.setdefault(rel, []).append(e)
    return plan


def apply_rewrites(result: ScanResult, src: str, out_dir: str, force: bool = False) -> Tuple[str, List[str]]:
    """Copy ``src`` to ``out_dir``, rewrite it there, return (unified diff, rewritten relative paths)."""
    if result.sources is None:
        raise ApplyError("scan was run without keep_sources=True")
    src = os.path.abspath(src)
    out_dir = os.path.abspath(out_dir)
    if out_dir == src or out_dir.startswith(src.rstrip(os.sep) + os.sep):
        raise ApplyError(f"--apply-dir must be outside the scanned tree: {out_dir}")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        if not force:
            raise ApplyError(f"--apply-dir exists and is not empty: {out_dir} (use --force to overwrite)")
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        else:
            os.remove(out_dir)
    if os.path.isdir(src):
        shutil.copytree(src, out_dir, symlinks=True, ignore=_VCS_AND_CACHES, dirs_exist_ok=True)
    else:
        os.makedirs(out_dir, exist_ok=True)
        shutil.copy2(src, os.path.join(out_dir, os.path.basename(src)))

    diff_parts: List[str] = []
    changed: List[str] = []
    for rel, edits in sorted(plan_edits(result).items()):
        old = result.sources.get(rel)
        if old is None:
            continue
        new, n = rewrite_text(old, edits)
        if not n or new == old:
            continue
        target = os.path.join(out_dir, *rel.split("/"))
        if os.path.islink(target):
            os.remove(target)  # never write through a copied symlink into the original tree
        with open(target, "w", encoding=result.encodings.get(rel, "utf-8"), newline="") as fh:
            fh.write(new)
        changed.append(rel)
        diff_parts.extend(difflib.unified_diff(
            split_lines_keepends(old), split_lines_keepends(new), fromfile=f"a/{rel}", tofile=f"b/{rel}"))
    diff = "".join(p if p.endswith(("\n", "\r")) else p + "\n\\ No newline at end of file\n" for p in diff_parts)
    return diff, changed
