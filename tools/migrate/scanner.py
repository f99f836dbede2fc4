"""Scan orchestration: walk the tree, route each file to the Python and/or text scanner, collect results."""
from __future__ import annotations

import ast
import os
import re
import time
from typing import Dict, List, Optional, Sequence, Set

from .apply import settle_statements
from .files import SourceFile, iter_files, read_source
from .findings import Edit, ScanResult, ScanWarning
from .pyscan import ProjectInfo, scan_python
from .rules import RuleSet, load_rules
from .textscan import scan_text


class ScanPathError(ValueError):
    """The path to scan does not exist or is not a file/directory we can read."""


# Python beyond these sizes is generated code: scanned by the text fallback, which keeps memory linear
PY_AST_MAX_BYTES = 2 * 1024 * 1024
PY_AST_MAX_LINE = 64 * 1024
_LONG_LINE = re.compile(r"[^\r\n]{%d}" % PY_AST_MAX_LINE)


def _generated(text: str) -> bool:
    return len(text) > PY_AST_MAX_BYTES or bool(_LONG_LINE.search(text))


_CUDA_EXTENSION_CALL = re.compile(r"CUDAExtension\s*\(")


def cuda_extension_names(text: str) -> List[str]:
    """Module names of ``CUDAExtension(name=...)`` / ``CUDAExtension("name", ...)`` in a build script."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    # module-level string constants, so `name=f"{PACKAGE_NAME}._C"` resolves
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
              and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
              for t in n.targets if isinstance(t, ast.Name)}
    names = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        fname = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if not fname.endswith("CUDAExtension"):
            continue
        arg = next((k.value for k in node.keywords if k.arg == "name"), node.args[0] if node.args else None)
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value:
            names.append(arg.value)
        elif isinstance(arg, ast.JoinedStr):
            parts = []
            for v in arg.values:
                if isinstance(v, ast.Constant):
                    parts.append(str(v.value))
                elif isinstance(v.value, ast.Name) and v.value.id in consts and not v.format_spec:
                    parts.append(consts[v.value.id])
                else:
                    break
            else:
                names.append("".join(parts))
    return names


def project_info(files: List[SourceFile]) -> ProjectInfo:
    """Project-wide facts: the CUDA extensions its build scripts define (so `import <ext>` and every
    `<ext>.op(...)` are found) and the module names it defines (never mistaken for compiled `*_cuda` ones)."""
    exts: Set[str] = set()
    local: Set[str] = set()
    packages: Set[str] = set()
    dir_of = lambda rel: rel.rsplit("/", 1)[0] if "/" in rel else ""  # noqa: E731
    dirs_with_init = {dir_of(sf.rel) for sf in files if sf.rel.split("/")[-1] == "__init__.py"}
    # a directory with its own setup.py / pyproject.toml installs the modules beside it as top-level ones
    install_roots = {dir_of(sf.rel) for sf in files if sf.rel.split("/")[-1] in ("setup.py", "pyproject.toml")}
    for sf in files:
        if "python" not in sf.tags:
            continue
        parts = sf.rel.split("/")
        stem = parts[-1][:-3]
        local.add(stem)
        local.update(parts[:-1])
        if parts[-1] == "__init__.py" and len(parts) >= 2:
            packages.add(parts[-2])  # a package of the project (at any depth: src/ layouts, monorepos)
        elif "/".join(parts[:-1]) not in dirs_with_init or "/".join(parts[:-1]) in install_roots:
            packages.add(stem)  # a top-level module (its directory is a script/sys.path root, not a package)
        if not (stem.startswith("setup") or "setup" in sf.tags):
            continue
        text, _w, _e = read_source(sf)
        if text and _CUDA_EXTENSION_CALL.search(text):
            for name in cuda_extension_names(text):
                exts.add(name)
                last = name.rsplit(".", 1)[-1]
                if len(last) >= 4 and not last.startswith("_"):  # `pkg._C`: only the full name is specific
                    exts.add(last)
    return ProjectInfo(exts, local - {"__init__"}, packages)


def scan_path(path: str, rules: Optional[RuleSet] = None, exclude: Sequence[str] = (),
              keep_sources: bool = False) -> ScanResult:
    """Scan a file or directory tree.

    ``keep_sources`` keeps the decoded text of files with rewritable findings (plus the planned
    ``import torch_npu`` insertions) so ``--apply`` works from exactly what was analysed.
    """
    if not os.path.exists(path):
        raise ScanPathError(f"path does not exist: {path}")
    if not (os.path.isdir(path) or os.path.isfile(path)):
        raise ScanPathError(f"not a regular file or directory: {path}")
    if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
        raise ScanPathError(f"directory is not readable: {path}")
    rules = rules or load_rules()
    t0 = time.perf_counter()
    result = ScanResult(root=os.path.abspath(path))
    sources: Dict[str, str] = {}
    extra_edits: Dict[str, Edit] = {}
    fallback_rules = rules.text_rules_for(["python_fallback"])

    if os.path.isfile(path) and not rules.file_tags(os.path.basename(path)):
        result.warnings.append(ScanWarning(
            os.path.basename(path), 0, "skipped", "not a file type the analyser knows (see file_types)"))

    files = list(iter_files(path, rules, exclude))
    project = project_info(files)
    result.cuda_extensions = sorted(project.cuda_extensions)
    for sf in files:
        text, warns, encoding = read_source(sf)
        result.warnings.extend(warns)
        if text is None:
            continue
        result.files_scanned += 1
        result.lines_scanned += text.count("\n") + (0 if text.endswith("\n") or not text else 1)
        file_findings = []
        if "python" in sf.tags and _generated(text):
            # Generated code (a data table or minified module): its AST alone would take hundreds of MB
            # (ast.parse peaks near 200x the source size), and nothing in it is safe to rewrite anyway.
            result.warnings.append(ScanWarning(
                sf.rel, 0, "generated", f"line longer than {PY_AST_MAX_LINE:,} characters or file over "
                f"{PY_AST_MAX_BYTES:,}: scanned by text rules (py-fallback-cuda), not rewritten by --apply"))
            file_findings.extend(scan_text(rules, sf.rel, text, ["python_fallback"], fallback_rules))
        elif "python" in sf.tags:
            py, err = scan_python(rules, sf.rel, text, project)
            if err is not None:
                lineno = err.lineno or 0
                result.warnings.append(ScanWarning(
                    sf.rel, lineno, "syntax",
                    f"Python does not parse ({err.msg}); fell back to text rules, findings may be incomplete"))
                if not py.findings:
                    file_findings.extend(scan_text(rules, sf.rel, text, ["python_fallback"], fallback_rules))
            file_findings.extend(py.findings)
            if keep_sources and py.ensure_import_edit is not None and (
                    py.uses_torch_cuda or any(f.edits for f in py.findings)):
                extra_edits[sf.rel] = py.ensure_import_edit
        result.left.extend(settle_statements(file_findings))
        other_tags = [t for t in sf.tags if t != "python"]
        if other_tags:
            file_findings.extend(scan_text(rules, sf.rel, text, other_tags))
        if any(w.kind == "decode" for w in warns) and any(f.edits for f in file_findings):
            # Text decoded with replacement characters cannot be written back faithfully: report the
            # findings, but don't promise (or perform) a rewrite.
            extra_edits.pop(sf.rel, None)
            for f in file_findings:
                f.edits, f.fix_preview = (), ""
            result.warnings.append(ScanWarning(sf.rel, 0, "decode", "not rewritten by --apply (encoding)"))
        if keep_sources and (sf.rel in extra_edits or any(f.edits for f in file_findings)):
            sources[sf.rel] = text
            result.encodings[sf.rel] = encoding
        result.findings.extend(file_findings)

    result.findings.sort(key=lambda f: f.sort_key())
    result.warnings.sort(key=lambda w: (w.file, w.line))
    result.seconds = time.perf_counter() - t0
    if keep_sources:
        result.sources = sources
        result.extra_edits = extra_edits
    return result
