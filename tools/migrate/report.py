"""Report writers: table (terminal), csv, json, md, and the msFmkTransplt-style CSV set.

Table and Markdown are sorted worst-first (what a porting lead reads); CSV and JSON are sorted by
location (what scripts and spreadsheets diff). All writers take a ``ScanResult`` and return text, so the
CLI decides where it goes.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from typing import Dict, List, Sequence, Tuple

from .findings import EFFORTS, REPLACEMENT_KEYS, SEVERITIES, SEVERITY_RANK, Finding, ScanResult

FORMATS = ("table", "triage", "csv", "json", "md")
TOOL = "ascend-v4 migrate scan"
SCHEMA_VERSION = 1


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name in the same directory and a rename, so a full
    disk or a crash never leaves a truncated report under the final name."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def render_left(result: ScanResult) -> str:
    """Statements --apply left unrewritten (see apply.settle_statements)."""
    return _csv([[x.file, x.start, x.end, x.blocking, x.dropped] for x in result.left],
                ["File", "Start Line", "End Line", "Blocking (no certain NPU equivalent)", "Rewrites withheld"])


def render(result: ScanResult, fmt: str) -> str:
    return {"table": render_table, "triage": render_triage, "csv": render_csv, "json": render_json,
            "md": render_md}[fmt](result)


def _worst_first(findings: Sequence[Finding]) -> List[Finding]:
    return sorted(findings, key=lambda f: (SEVERITY_RANK[f.severity],) + f.sort_key())


def summary_line(result: ScanResult) -> str:
    sev = result.by_severity()
    auto = sum(1 for f in result.findings if f.autofix)
    return (f"{result.files_scanned} files, {result.lines_scanned:,} lines in {result.seconds:.2f} s: "
            f"{len(result.findings)} findings ({sev['blocker']} blocker, {sev['change']} change, "
            f"{sev['fine']} fine); {auto} rewritable by --apply"
            + (f" ({len(result.left)} statements left whole: they would mix cuda and npu)" if result.left else "")
            + f"; {len(result.warnings)} warnings")


def effort_line(result: ScanResult) -> str:
    eff = result.by_effort()
    return "effort: " + ", ".join(f"{eff[e]} {e}" for e in reversed(EFFORTS) if eff[e]) if result.findings else "effort: none"


# ------------------------------------------------------------------------------------------------ table
def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "~"


def render_table(result: ScanResult) -> str:
    out = [f"{TOOL}: {result.root}", summary_line(result), effort_line(result), ""]
    if result.findings:
        loc_w = min(48, max(len(f.location) for f in result.findings))
        rule_w = min(28, max(len(f.rule_id) for f in result.findings))
        out.append(f"{'SEVERITY':<8}  {'LOCATION':<{loc_w}}  {'RULE':<{rule_w}}  {'EFFORT':<7}  FOUND")
        for f in _worst_first(result.findings):
            auto = "  [--apply]" if f.autofix else ""
            out.append(f"{f.severity:<8}  {_clip(f.location, loc_w):<{loc_w}}  {_clip(f.rule_id, rule_w):<{rule_w}}  "
                       f"{f.effort:<7}  {_clip(f.symbol, 60)}{auto}")
            out.append(f"{'':<10}why: {f.message}")
            out.append(f"{'':<10}use: {f.replacement_text()}")
    else:
        out.append("no findings")
    if result.warnings:
        out.append("")
        out.append(f"warnings ({len(result.warnings)}):")
        out.extend(f"  {w}" for w in result.warnings)
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ csv
CSV_COLUMNS = ["file", "line", "col", "severity", "rule", "category", "symbol", "message",
               *REPLACEMENT_KEYS, "effort", "autofix", "snippet"]


def _csv(rows: List[List], header: List[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def render_csv(result: ScanResult) -> str:
    rows = []
    for f in result.findings:
        rows.append([f.file, f.line, f.col, f.severity, f.rule_id, f.category, f.symbol, f.message,
                     *(f.replacement.get(k, "") for k in REPLACEMENT_KEYS), f.effort,
                     "yes" if f.autofix else "no", f.snippet])
    return _csv(rows, CSV_COLUMNS)


# ------------------------------------------------------------------------------------------------ json
def render_json(result: ScanResult) -> str:
    doc = {
        "tool": TOOL,
        "schema": SCHEMA_VERSION,
        "root": result.root,
        "summary": {
            "files": result.files_scanned,
            "lines": result.lines_scanned,
            "seconds": round(result.seconds, 3),
            "findings": len(result.findings),
            "by_severity": result.by_severity(),
            "by_effort": result.by_effort(),
            "autofix": sum(1 for f in result.findings if f.autofix),
            "by_rule": {rid: n for rid, _s, _c, n, _f in result.by_rule()},
        },
        "findings": [f.to_dict() for f in result.findings],
        "left": [x.to_dict() for x in result.left],
        "warnings": [w.to_dict() for w in result.warnings],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------------ md
def _md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_md(result: ScanResult) -> str:
    out = ["# CUDA -> Ascend migration report", "", f"`{TOOL} {result.root}`", "",
           f"**{summary_line(result)}**", "", effort_line(result), ""]
    if result.findings:
        out += ["## Summary by rule", "", "| severity | rule | category | count | replacement |",
                "| --- | --- | --- | ---: | --- |"]
        repls = {}
        for f in result.findings:
            repls.setdefault(f.rule_id, set()).add(f.replacement_text())
        for rid, sev, cat, n, first in result.by_rule():
            text = first.replacement_text() if len(repls[rid]) == 1 else "varies per finding (kernel-name hints)"
            out.append(f"| {sev} | `{rid}` | {cat} | {n} | {_md(text)} |")
        out.append("")
    for sev in SEVERITIES:
        fs = [f for f in _worst_first(result.findings) if f.severity == sev]
        if not fs:
            continue
        out += [f"## {sev} ({len(fs)})", "", "| location | found | why | replacement | effort | --apply |",
                "| --- | --- | --- | --- | --- | --- |"]
        for f in fs:
            out.append(f"| `{_md(f.location)}` | `{_md(f.symbol)}` | {_md(f.message)} | "
                       f"{_md(f.replacement_text('<br>'))} | {f.effort} | {'yes' if f.autofix else ''} |")
        out.append("")
    if result.warnings:
        out += [f"## Warnings ({len(result.warnings)})", ""]
        out += [f"- `{_md(str(w))}`" for w in result.warnings]
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ msFmkTransplt set
# CANN's msFmkTransplt (`pytorch_gpu2npu.sh` / `pytorch_analyse.sh`) writes these files; porting engineers
# and their scripts read them by name and column, so the names and the leading columns are exactly
# msFmkTransplt's (File, Start Line, End Line, OP, Tips / ... Operation Type, Message / File, Api) and our
# columns follow. See docs in tools/migrate/README.md ("msFmkTransplt files").
MSFT_LOG = "msFmkTranspltlog.txt"
MSFT_FILES = ("unsupported_api.csv", "unknown_api.csv", "change_list.csv", "cuda_op_list.csv",
              "api_precision_advice.csv", "api_performance_advice.csv", "triage.csv", MSFT_LOG)
MSFT_API_COLUMNS = ["File", "Start Line", "End Line", "OP", "Tips"]
MSFT_CHANGE_COLUMNS = ["File", "Start Line", "End Line", "Operation Type", "Message"]
MSFT_CUDA_OP_COLUMNS = ["File", "Api"]
OUR_COLUMNS = ["Severity", "Rule", "Category", "Effort", "Ascend replacement"]
_OP_CATEGORIES = {"kernel", "extension", "library", "v4_kernel"}
_PRECISION_CATEGORIES = {"precision", "dtype"}
_PERFORMANCE_CATEGORIES = {"compile", "graph", "profiling", "performance"}
_UNKNOWN_RULES = {"torch-cuda-other", "py-fallback-cuda"}


def is_unknown(f: Finding) -> bool:
    """Support on Ascend is doubtful rather than known (msFmkTransplt's 'unknown' API list)."""
    return f.rule_id in _UNKNOWN_RULES or f.rule_id.endswith("-uncertain")


def _end_line(f: Finding) -> int:
    return max(f.line, f.stmt[1]) if f.stmt != (0, 0) else f.line


def _api_row(f: Finding) -> list:
    return [f.file, f.line, _end_line(f), f.symbol, f.message, f.severity, f.rule_id, f.category, f.effort,
            f.replacement_text()]


def _operation(f: Finding) -> str:
    return "replace (--apply)" if f.autofix else "manual"


def write_msft_set(result: ScanResult, out_dir: str) -> List[str]:
    """Write the msFmkTransplt file set plus triage.csv into ``out_dir`` (each file atomically)."""
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def put(name: str, text: str) -> None:
        p = os.path.join(out_dir, name)
        write_atomic(p, text)
        written.append(p)

    fs = result.findings
    api_cols = MSFT_API_COLUMNS + OUR_COLUMNS
    put("unsupported_api.csv", _csv([_api_row(f) for f in fs if f.severity == "blocker"], api_cols))
    put("unknown_api.csv", _csv([_api_row(f) for f in fs if f.severity != "blocker" and is_unknown(f)], api_cols))
    changes = [[f.file, f.line, _end_line(f), _operation(f), f"{f.message} -> {f.replacement_text()}",
                f.rule_id, f.snippet, f.fix_preview] for f in fs if f.severity == "change" and not is_unknown(f)]
    changes += [[x.file, x.start, x.end, "left (--apply)", f"not rewritten: {x.blocking} has no certain NPU "
                 f"equivalent, so {x.dropped} stays CUDA too", "", "", ""] for x in result.left]
    changes.sort(key=lambda r: (r[0], r[1]))
    put("change_list.csv", _csv(changes, MSFT_CHANGE_COLUMNS + ["Rule", "Original", "Changed to"]))
    put("cuda_op_list.csv", _csv(
        [[f.file, f.symbol, f.line, f.rule_id, f.replacement_text(), f.effort]
         for f in fs if f.category in _OP_CATEGORIES],
        MSFT_CUDA_OP_COLUMNS + ["Line", "Rule", "Ascend replacement", "Effort"]))
    put("api_precision_advice.csv", _csv([_api_row(f) for f in fs if f.category in _PRECISION_CATEGORIES], api_cols))
    put("api_performance_advice.csv",
        _csv([_api_row(f) for f in fs if f.category in _PERFORMANCE_CATEGORIES], api_cols))
    put("triage.csv", render_triage_csv(result))
    log = [f"{TOOL} {result.root}", summary_line(result), effort_line(result), ""]
    log += [f"{rid}: {n} ({sev})" for rid, sev, _c, n, _f in result.by_rule()]
    log += ["", f"left by --apply: {len(result.left)}"] + [f"{x.file}:{x.start}-{x.end}: {x.blocking}" for x in result.left]
    log += ["", f"warnings: {len(result.warnings)}"] + [str(w) for w in result.warnings]
    put(MSFT_LOG, "\n".join(log) + "\n")
    return written


# ------------------------------------------------------------------------------------------------ triage
_TEST_PART = re.compile(r"(^|/)(tests?|testing|unittests?)(/|$)|(^|/)test_[^/]*$|_test\.py$|(^|/)conftest\.py$")
_BENCH_PART = re.compile(r"(^|/)(bench|benchmarks?|perf)(/|$)|(^|/)bench[^/]*\.py$")
_EFFORT_RANK = {e: i for i, e in enumerate(EFFORTS)}


def area_of(path: str) -> str:
    """'tests', 'benchmarks' or 'code': findings in tests and benchmarks are triaged apart."""
    if _TEST_PART.search(path):
        return "tests"
    if _BENCH_PART.search(path):
        return "benchmarks"
    return "code"


def triage_key(f: Finding) -> Tuple[str, str]:
    """What one triage row stands for: a library (top-level module), a kernel or exported op, or a rule."""
    if f.group:
        kind = "kernel" if f.category in ("kernel", "v4_kernel") else f.category
        return kind, f.group
    return "rule", f.rule_id


def triage_rows(result: ScanResult) -> List[dict]:
    rows: Dict[Tuple[str, str], dict] = {}
    for f in result.findings:
        key = triage_key(f)
        r = rows.get(key)
        if r is None:
            r = rows[key] = {"item": key[1], "kind": key[0], "severity": f.severity, "effort": f.effort,
                             "code": 0, "tests": 0, "benchmarks": 0, "files": set(), "first": f.location,
                             "replacement": f.replacement_text()}
        r[area_of(f.file)] += 1
        r["files"].add(f.file)
        if SEVERITY_RANK[f.severity] < SEVERITY_RANK[r["severity"]]:
            r["severity"] = f.severity
        if _EFFORT_RANK[f.effort] > _EFFORT_RANK[r["effort"]]:
            r["effort"] = f.effort
    out = sorted(rows.values(), key=lambda r: (SEVERITY_RANK[r["severity"]], -_EFFORT_RANK[r["effort"]],
                                                -(r["code"] + r["tests"] + r["benchmarks"]), r["item"]))
    for r in out:
        r["files"] = len(r["files"])
    return out


TRIAGE_COLUMNS = ["Item", "Kind", "Severity", "Effort", "Sites (code)", "Sites (tests)", "Sites (benchmarks)",
                  "Files", "First", "Ascend replacement"]


def render_triage_csv(result: ScanResult) -> str:
    return _csv([[r["item"], r["kind"], r["severity"], r["effort"], r["code"], r["tests"], r["benchmarks"],
                  r["files"], r["first"], r["replacement"]] for r in triage_rows(result)], TRIAGE_COLUMNS)


def render_triage(result: ScanResult) -> str:
    """One line per library / kernel / rule: what a porting lead plans with (effort is per item)."""
    rows = triage_rows(result)
    out = [f"{TOOL}: {result.root}", summary_line(result), f"{len(rows)} items (one per library, kernel, "
           f"extension or rule); sites split into code / tests / benchmarks", ""]
    if rows:
        w = min(40, max(len(r["item"]) for r in rows))
        out.append(f"{'SEVERITY':<8}  {'EFFORT':<7}  {'ITEM':<{w}}  {'KIND':<10}  {'CODE':>5} {'TESTS':>5} {'BENCH':>5}  FIRST")
        for r in rows:
            out.append(f"{r['severity']:<8}  {r['effort']:<7}  {_clip(r['item'], w):<{w}}  {r['kind']:<10}  "
                       f"{r['code']:>5} {r['tests']:>5} {r['benchmarks']:>5}  {r['first']}")
    return "\n".join(out) + "\n"
