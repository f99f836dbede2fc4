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
from typing import List, Sequence

from .findings import EFFORTS, REPLACEMENT_KEYS, SEVERITIES, SEVERITY_RANK, Finding, ScanResult

FORMATS = ("table", "csv", "json", "md")
TOOL = "ascend-v4 migrate scan"
SCHEMA_VERSION = 1


def render(result: ScanResult, fmt: str) -> str:
    return {"table": render_table, "csv": render_csv, "json": render_json, "md": render_md}[fmt](result)


def _worst_first(findings: Sequence[Finding]) -> List[Finding]:
    return sorted(findings, key=lambda f: (SEVERITY_RANK[f.severity],) + f.sort_key())


def summary_line(result: ScanResult) -> str:
    sev = result.by_severity()
    auto = sum(1 for f in result.findings if f.autofix)
    return (f"{result.files_scanned} files, {result.lines_scanned:,} lines in {result.seconds:.2f} s: "
            f"{len(result.findings)} findings ({sev['blocker']} blocker, {sev['change']} change, "
            f"{sev['fine']} fine); {auto} rewritable by --apply; {len(result.warnings)} warnings")


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
        "warnings": [w.to_dict() for w in result.warnings],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------------ md
def _md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_md(result: ScanResult) -> str:
    out = [f"# CUDA -> Ascend migration report", "", f"`{TOOL} {result.root}`", "",
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


# ------------------------------------------------------------------------------------------------ msFmkTransplt-style set
# msFmkTransplt (CANN `pytorch_gpu2npu.sh` / `pytorch_analyse.sh`) leaves these files in
# transplant_result_file/; porting engineers know where to look, so we keep the names and roles:
#   cuda_op_list.csv        custom CUDA ops/kernels and CUDA libraries the project relies on
#   unsupported_api.csv     everything without a drop-in (our 'blocker' findings)
#   change_list.csv         changes to make; 'auto' marks what --apply rewrites, with the new line
#   api_precision_advice.csv  dtype/precision hazards (FP8/FP4, bf16 routers, TF32)
#   scan_log.txt            summary and the files that could not be analysed (msFmkTranspltlog.txt role)
MSFT_FILES = ("cuda_op_list.csv", "unsupported_api.csv", "change_list.csv", "api_precision_advice.csv", "scan_log.txt")
_OP_CATEGORIES = {"kernel", "extension", "library", "v4_kernel"}
_PRECISION_CATEGORIES = {"precision", "dtype"}


def write_msft_set(result: ScanResult, out_dir: str) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def put(name: str, text: str) -> None:
        p = os.path.join(out_dir, name)
        with open(p, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        written.append(p)

    fs = result.findings
    put("cuda_op_list.csv", _csv(
        [[i, f.file, f.line, f.symbol, f.rule_id, f.severity, f.replacement_text(), f.effort]
         for i, f in enumerate((f for f in fs if f.category in _OP_CATEGORIES), 1)],
        ["No.", "File", "Line", "CUDA op / kernel", "Rule", "Severity", "Ascend replacement", "Effort"]))
    put("unsupported_api.csv", _csv(
        [[i, f.file, f.line, f.symbol, f.category, f.message, f.replacement_text(), f.effort]
         for i, f in enumerate((f for f in fs if f.severity == "blocker"), 1)],
        ["No.", "File", "Line", "API", "Category", "Reason", "Ascend replacement", "Effort"]))
    put("change_list.csv", _csv(
        [[i, f.file, f.line, f.snippet, f.fix_preview or f.replacement_text(),
          "auto" if f.autofix else "manual", f.rule_id]
         for i, f in enumerate((f for f in fs if f.severity == "change"), 1)],
        ["No.", "File", "Line", "Original", "Change to", "Mode (--apply)", "Rule"]))
    put("api_precision_advice.csv", _csv(
        [[i, f.file, f.line, f.symbol, f.message, f.replacement_text()]
         for i, f in enumerate((f for f in fs if f.category in _PRECISION_CATEGORIES), 1)],
        ["No.", "File", "Line", "API", "Advice", "Ascend replacement"]))
    log = [f"{TOOL} {result.root}", summary_line(result), effort_line(result), ""]
    log += [f"{rid}: {n} ({sev})" for rid, sev, _c, n, _f in result.by_rule()]
    log += ["", f"warnings: {len(result.warnings)}"] + [str(w) for w in result.warnings]
    put("scan_log.txt", "\n".join(log) + "\n")
    return written
