"""Text scanner for non-Python files: CUDA/C++ sources, CMake, setup.py flags, requirements, shell, config.json.

Regexes are enough here because the rules look for identifiers and build keywords, not semantics.
C-family comments are blanked first (keeping line structure) so a commented-out ``cudaMalloc`` or a
licence header mentioning CUDA does not become a finding.
"""
from __future__ import annotations

import bisect
import re
from typing import List, Sequence

from .files import split_lines
from .findings import Finding
from .rules import MOE_CODE, Rule, RuleSet

_C_TOKENS = re.compile(
    r'"(?:\\.|[^"\\\n])*"'  # string literal (kept: includes and PTX asm live in strings)
    r"|'(?:\\.|[^'\\\n])*'"  # char literal
    r"|//[^\n]*"  # line comment
    r"|/\*.*?\*/",  # block comment
    re.DOTALL,
)
_HASH_COMMENT = re.compile(r"(?m)(^|\s)#(?!\s*include)[^\n]*")
_C_TAGS = {"cuda", "cpp"}
_HASH_TAGS = {"cmake", "requirements", "shell", "setup", "config_text", "docker"}
_SNIPPET_LEN = 160
_LINE_END = re.compile(r"\r\n|\r|\n")
_NOT_NEWLINE = re.compile(r"[^\r\n]")
# string literals kept: #include paths, inline asm, and the operator name of a pybind/TORCH_LIBRARY `.def("op"`
_INCLUDE_OR_ASM = re.compile(r"#\s*include\s*$|\basm\b|__asm__|\.\s*def\s*\(\s*$")


def strip_c_comments(text: str) -> str:
    """Blank C/C++ comments and ordinary string literals (line structure and offsets kept).

    Literals are blanked too (an error message saying "needs cudaMalloc" is not a call), except
    ``#include "..."`` paths and inline ``asm("...")`` bodies, which are code for our purposes.
    """
    def repl(m: re.Match) -> str:
        s = m.group(0)
        if s.startswith(("//", "/*")):
            return _NOT_NEWLINE.sub(" ", s)
        line_start = text.rfind("\n", 0, m.start()) + 1
        before = text[line_start:m.start()]
        if _INCLUDE_OR_ASM.search(before):
            return s
        return s[0] + " " * (len(s) - 2) + s[-1]
    if "/" not in text and '"' not in text:
        return text
    return _C_TOKENS.sub(repl, text)


def strip_hash_comments(text: str) -> str:
    return _HASH_COMMENT.sub(lambda m: m.group(1) + " " * (len(m.group(0)) - len(m.group(1))), text)


def scan_text(rules: RuleSet, rel: str, text: str, tags: Sequence[str],
              rule_list: Sequence[Rule] = None) -> List[Finding]:
    rule_list = rules.text_rules_for(tags) if rule_list is None else rule_list
    if not rule_list:
        return []
    tagset = set(tags)
    body = text
    if tagset & _C_TAGS:
        body = strip_c_comments(body)
    elif tagset & _HASH_TAGS:
        body = strip_hash_comments(body)
    lines = split_lines(text)
    # offsets of line ends, counted like split_lines (\r\n, \r, \n) so line numbers agree with the AST
    newlines = [m.end() - 1 for m in _LINE_END.finditer(text)]
    findings: List[Finding] = []
    moe: List[bool] = []  # searched once, only when a kernel needs a hint

    snippets = {}
    seen = {}

    def add(rule: Rule, offset: int, symbol: str, kernel_name: str = "") -> None:
        lineno = bisect.bisect_right(newlines, offset - 1) + 1 if offset else 1
        key = (lineno, rule.id, symbol)
        if key in seen:  # identical repeats on one line: one finding, counted (bounded memory)
            seen[key].count += 1
            return
        line_start = newlines[lineno - 2] + 1 if lineno > 1 else 0
        snippet = snippets.get(lineno)
        if snippet is None:
            raw = lines[lineno - 1][: 4 * _SNIPPET_LEN] if lineno <= len(lines) else ""
            snippet = raw.strip()
            snippet = snippets[lineno] = snippet if len(snippet) <= _SNIPPET_LEN else snippet[: _SNIPPET_LEN - 3] + "..."
        repl = rule.replacement
        if kernel_name:
            if not moe:
                moe.append(bool(MOE_CODE.search(rel) or MOE_CODE.search(text)))
            hint = rules.hint_for(kernel_name, moe[0])
            if hint:
                repl = {**repl, **hint.replacement}
        f = seen[key] = Finding(
            rule_id=rule.id, severity=rule.severity, category=rule.category, file=rel, line=lineno,
            col=offset - line_start + 1, symbol=symbol, message=rule.format_message(symbol),
            replacement=repl, effort=rule.effort, snippet=snippet, group=symbol if rule.kernel else "",
        )
        findings.append(f)

    for rule in rule_list:
        if rule.unless_file is not None and rule.unless_file.search(body):
            continue
        if rule.only_file is not None and not rule.only_file.search(body):
            continue
        if rule.kind == "file":
            add(rule, 0, rel)
            continue
        for m in rule.regex.finditer(body):
            if rule.kernel and m.groups() and m.group(1):
                add(rule, m.start(), m.group(1), kernel_name=m.group(1))
            else:
                sym = " ".join(m.group(0).split())
                if sym.count('"') + sym.count("'") <= 2:
                    sym = sym.strip("\"'")  # a quoted name in setup.py: show it bare
                sym = sym if len(sym) <= 80 else sym[:77] + "..."
                add(rule, m.start() + (len(m.group(0)) - len(m.group(0).lstrip())), sym)
    return findings
