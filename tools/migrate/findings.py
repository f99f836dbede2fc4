"""Result types shared by the scanners, the report writers and ``--apply``.

Kept free of scanning logic so writers and tests can build findings by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

SEVERITIES = ("blocker", "change", "fine")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}  # lower = worse; used for sorting
EFFORTS = ("trivial", "small", "medium", "large")
REPLACEMENT_KEYS = ("ours", "aclnn", "torch_npu", "mindspore", "tool", "action")


@dataclass(frozen=True)
class Edit:
    """A single-line source edit for ``--apply``: replace chars [start, end) of 1-based ``line``.

    ``start == end`` with ``insert_line`` set means "insert a whole new line after ``line``".
    Edits never span lines: multi-line constructs are reported but not rewritten (too easy to get wrong).
    """

    line: int
    start: int = 0
    end: int = 0
    text: str = ""
    insert_line: bool = False


def apply_line_edits(line: str, edits) -> Tuple[str, int]:
    """Apply single-line edits in one pass (linear in the line length, however many edits); returns
    (new line, edits applied). Overlapping edits keep the leftmost and drop the rest instead of producing
    garbage."""
    out, pos, applied = [], 0, 0
    for start, end, text in sorted({(e.start, e.end, e.text) for e in edits}):
        if start < pos:
            continue
        out.append(line[pos:start])
        out.append(text)
        pos = end
        applied += 1
    out.append(line[pos:])
    return "".join(out), applied


@dataclass
class Finding:
    rule_id: str
    severity: str
    category: str
    file: str  # path relative to the scan root, '/'-separated
    line: int
    col: int
    symbol: str  # what was found: dotted name, attribute, literal, regex match or kernel name
    message: str
    replacement: Dict[str, str]
    effort: str
    snippet: str = ""  # the source line, stripped and shortened
    edits: Tuple[Edit, ...] = ()  # non-empty => `--apply` rewrites this finding
    fix_preview: str = ""  # the source line as --apply will write it (stripped, capped), when edits exist
    # Python: lines of the enclosing statement (header); --apply rewrites or leaves a statement as a whole
    stmt: Tuple[int, int] = (0, 0)
    count: int = 1  # sites of this (line, rule, symbol): identical repeats on one line are one finding
    group: str = ""  # triage item: a library's top-level module, a kernel or exported op name; "" = the rule

    @property
    def autofix(self) -> bool:
        return bool(self.edits)

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"

    def replacement_text(self, sep: str = "; ") -> str:
        return sep.join(f"{k}: {self.replacement[k]}" for k in REPLACEMENT_KEYS if self.replacement.get(k))

    def sort_key(self):
        return (self.file, self.line, self.col, self.rule_id)

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "severity": self.severity,
            "rule": self.rule_id,
            "category": self.category,
            "symbol": self.symbol,
            "message": self.message,
            "replacement": {k: self.replacement[k] for k in REPLACEMENT_KEYS if self.replacement.get(k)},
            "effort": self.effort,
            "autofix": self.autofix,
            "snippet": self.snippet,
            **({"count": self.count} if self.count > 1 else {}),
            **({"fix": self.fix_preview} if self.fix_preview else {}),
        }


@dataclass
class ScanWarning:
    """Something the scanner could not analyse (unreadable, binary, undecodable, syntax error)."""

    file: str
    line: int
    kind: str  # unreadable | binary | decode | syntax | too_large
    message: str

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "kind": self.kind, "message": self.message}

    def __str__(self) -> str:
        loc = f"{self.file}:{self.line}" if self.line else self.file
        return f"{loc}: {self.kind}: {self.message}"


@dataclass
class LeftStatement:
    """A statement --apply did not rewrite because part of it has no certain NPU equivalent: rewriting the
    rest would leave CUDA and NPU mixed in one statement (`torch.npu.is_available() and
    torch.cuda.<not in torch_npu>()`), which changes behaviour silently."""

    file: str
    start: int
    end: int
    blocking: str  # the CUDA references without a certain rewrite
    dropped: str  # the rewrites that were withheld

    def to_dict(self) -> dict:
        return {"file": self.file, "start_line": self.start, "end_line": self.end, "blocking": self.blocking,
                "withheld": self.dropped}


@dataclass
class ScanResult:
    root: str
    findings: List[Finding] = field(default_factory=list)
    warnings: List[ScanWarning] = field(default_factory=list)
    files_scanned: int = 0
    lines_scanned: int = 0
    seconds: float = 0.0
    # file -> decoded source text, kept only when `--apply` needs it (see scanner.scan_path(keep_sources=...))
    sources: Optional[Dict[str, str]] = None
    encodings: Dict[str, str] = field(default_factory=dict)  # file -> codec to write it back with
    # file -> the `import torch_npu` insertion planned for it (see pyscan._plan_ensure_import)
    extra_edits: Dict[str, Edit] = field(default_factory=dict)
    left: List[LeftStatement] = field(default_factory=list)  # statements --apply leaves as they are
    cuda_extensions: List[str] = field(default_factory=list)  # CUDAExtension names from the build scripts

    def by_severity(self) -> Dict[str, int]:
        counts = {s: 0 for s in SEVERITIES}
        for f in self.findings:
            counts[f.severity] += 1
        return counts

    def by_effort(self) -> Dict[str, int]:
        counts = {e: 0 for e in EFFORTS}
        for f in self.findings:
            counts[f.effort] += 1
        return counts

    def by_rule(self) -> List[Tuple[str, str, str, int, Finding]]:
        """(rule_id, severity, category, count, first finding), worst severity first then most frequent."""
        groups: Dict[str, List[Finding]] = {}
        for f in self.findings:
            groups.setdefault(f.rule_id, []).append(f)
        rows = [(rid, fs[0].severity, fs[0].category, len(fs), fs[0]) for rid, fs in groups.items()]
        rows.sort(key=lambda r: (SEVERITY_RANK[r[1]], -r[3], r[0]))
        return rows
