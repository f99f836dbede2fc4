"""Python AST scanner: resolves import aliases and matches ``import``/``name``/``attr``/``string`` rules.

Why an AST and not regexes: ``import torch as th; th.cuda.synchronize()``, ``from torch import cuda``
and ``import triton.language as tl`` all need alias resolution, docstrings/comments must not produce
findings, and ``--apply`` needs exact token positions. One pass over the tree, no type inference:
names are resolved only through imports, which is what makes this fast enough for 100k-line trees.
"""
from __future__ import annotations

import ast
import re
from typing import Dict, List, Optional, Set, Tuple

from .contexts import CONTEXT_NODE_TYPES, classify_node, context_of_value
from .files import split_lines
from .findings import Edit, Finding, apply_line_edits
from .router import find_router_hazards
from .rules import MOE_CODE, Rule, RuleSet

_SNIPPET_LEN = 160


class PyFileScan:
    """Scan one parsed Python module. Use :func:`scan_python` rather than this class directly.

    There is one flat alias table per module (a function-local `import torch as th` is visible after
    it everywhere): scoping would cost a symbol table per function for a case that practically never
    changes the answer.
    """

    def __init__(self, rules: RuleSet, rel: str, lines: List[str], project: Optional["ProjectInfo"] = None):
        self.rules = rules
        self.project = project or ProjectInfo()
        # imported module path -> import rule, for modules recognised by project facts rather than by the
        # static table (this project's CUDAExtension names, `*_cuda` compiled modules)
        self.dynamic_modules: Dict[str, Rule] = {}
        self.rel = rel
        self.lines = lines
        self.aliases: Dict[str, str] = {}
        # names bound by a `from M import n` that --apply rewrites (e.g. torch.cuda.amp -> torch.npu.amp):
        # their uses are fixed by the import rewrite, so reporting each use would be noise
        self.fixed_by_import: Set[str] = set()
        self.findings: List[Finding] = []
        self.uses_torch_cuda = False
        self.ensure_import_edit: Optional[Edit] = None
        self._resolved_cache: Dict[str, List[Tuple[Rule, str]]] = {}
        self._router_rules = rules.by_kind["router_gate"]
        # literal id -> "device"/"backend"/"none", filled during the traversal (contexts.classify_node)
        self._string_ctx: Dict[int, str] = {}
        self._text = ""
        self._moe_code: Optional[bool] = None
        self._by_key: Dict[Tuple, Finding] = {}
        self._more_edits: Dict[int, List[Edit]] = {}
        self._snippets: Dict[int, str] = {}
        self._encoded: Dict[int, bytes] = {}
        self._stmt: Tuple[int, int] = (0, 0)  # span of the statement (header) being visited
        self._class = ""  # innermost enclosing class (kernel methods are reported as Class.method)
        self._dispatch = {
            ast.Import: self._visit_import,
            ast.ImportFrom: self._visit_import_from,
            ast.Attribute: self._visit_attribute,
            ast.Name: self._visit_name,
            ast.Call: self._visit_call,
            ast.FunctionDef: self._visit_function,
            ast.AsyncFunctionDef: self._visit_function,
            ast.ClassDef: self._visit_class,
            ast.Constant: self._visit_constant,
            ast.JoinedStr: self._visit_joined_str,
            ast.Expr: self._visit_expr,
        }

    @property
    def moe_code(self) -> bool:
        """The file is MoE code (MoE kernel hints apply); searched once, only if a kernel needs a hint."""
        if self._moe_code is None:
            self._moe_code = bool(MOE_CODE.search(self.rel) or MOE_CODE.search(self._text))
        return self._moe_code

    # ------------------------------------------------------------------------------------------ driver
    def run(self, tree: ast.Module) -> None:
        # Module-level imports first, so a function defined above a late `import torch as th` still
        # resolves `th`; function-local imports are picked up when the traversal reaches them.
        for stmt in _top_level_statements(tree):
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                self._record_aliases(stmt)
        self._plan_ensure_import(tree)
        try:
            for stmt in tree.body:
                self.visit(stmt)
        finally:
            # drop the tree and the per-node map now: a live AST makes the next file's parse pay for GC
            self._string_ctx = {}
            self._by_key, self._encoded = {}, {}
            self._finish_previews()

    def visit(self, node: ast.AST) -> None:
        outer = None
        if isinstance(node, ast.stmt):
            outer, self._stmt = self._stmt, _statement_span(node)
        if isinstance(node, CONTEXT_NODE_TYPES):
            classify_node(node, self.resolve, self._string_ctx)
        handler = self._dispatch.get(type(node))
        if handler is not None:
            handler(node)
        else:
            for child in ast.iter_child_nodes(node):
                self.visit(child)
        if outer is not None:
            self._stmt = outer

    def _visit_children(self, node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            self.visit(child)

    # ------------------------------------------------------------------------------------------ helpers
    def _line(self, lineno: int) -> str:
        return self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""

    def _char_col(self, lineno: int, byte_col: int) -> int:
        """ast columns are UTF-8 byte offsets; edits and reports need character offsets."""
        line = self._line(lineno)
        if line.isascii():
            return byte_col
        enc = self._encoded.get(lineno)
        if enc is None:
            enc = self._encoded[lineno] = line.encode("utf-8")
        return len(enc[:byte_col].decode("utf-8", errors="ignore"))

    def _snippet(self, lineno: int) -> str:
        s = self._snippets.get(lineno)
        if s is None:
            s = self._snippets[lineno] = _cap(self._line(lineno))
        return s

    def _add(self, rule: Rule, node: ast.AST, symbol: str, edits: Tuple[Edit, ...] = (),
             replacement: Optional[Dict[str, str]] = None, lineno: Optional[int] = None) -> None:
        lineno = lineno or getattr(node, "lineno", 1)
        if rule.category in ("device", "amp", "graph") and symbol.startswith("torch.cuda"):
            self.uses_torch_cuda = True
        # One finding per (line, rule, symbol): a generated line with 20,000 identical literals is one
        # finding counting 20,000 sites (its edits all kept for --apply), so memory stays bounded.
        key = (lineno, rule.id, symbol, self._stmt)
        same = self._by_key.get(key)
        if same is not None:
            same.count += 1
            if edits:
                self._more_edits.setdefault(id(same), []).extend(edits)
            return
        col = self._char_col(lineno, getattr(node, "col_offset", 0)) if lineno == getattr(node, "lineno", 0) else 0
        f = Finding(
            rule_id=rule.id, severity=rule.severity, category=rule.category, file=self.rel,
            line=lineno, col=col + 1, symbol=symbol if len(symbol) <= _SNIPPET_LEN else _cap(symbol),
            message=rule.format_message(symbol if len(symbol) <= 80 else _cap(symbol)[:80]),
            replacement=replacement or rule.replacement, effort=rule.effort,
            snippet=self._snippet(lineno), edits=edits, stmt=self._stmt,
            group=_group_of(rule, symbol, self.rules),
        )
        self._by_key[key] = f
        self.findings.append(f)

    def _finish_previews(self) -> None:
        """`fix_preview`: each rewritten line as --apply will write it, computed once per line."""
        for f in self.findings:
            more = self._more_edits.get(id(f))
            if more:
                f.edits = f.edits + tuple(more)
        self._more_edits = {}
        by_line: Dict[int, List[Edit]] = {}
        for f in self.findings:
            for e in f.edits:
                if not e.insert_line:
                    by_line.setdefault(e.line, []).append(e)
        previews = {lineno: _cap(apply_line_edits(self._line(lineno), edits)[0]) for lineno, edits in by_line.items()}
        for f in self.findings:
            if f.edits:
                f.fix_preview = previews.get(f.edits[0].line, "")

    def resolve(self, node: ast.AST) -> Optional[str]:
        """Dotted name of a Name/Attribute chain rooted in an import alias, else None."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            base = self.aliases.get(node.id)
            if base is None:
                return None
            parts.append(base)
            return ".".join(reversed(parts))
        return None

    def _name_matches(self, qual: str) -> List[Tuple[Rule, str]]:
        """Rules for a resolved chain and for its prefixes, best first, as (rule, matched symbol).

        ``torch.cuda.Stream.wait_stream`` should hit the specific ``torch.cuda.Stream`` rule rather than
        the generic ``torch.cuda.*`` one, so every prefix competes on specificity.
        """
        hit = self._resolved_cache.get(qual)
        if hit is not None:
            return hit
        scored = []
        parts = qual.split(".")
        for n in range(len(parts), 0, -1):
            prefix = ".".join(parts[:n])
            for rule in self.rules.name_candidates(prefix):
                if rule.when and prefix != qual:
                    continue  # call conditions only make sense for the called name itself
                scored.append((1 if rule.when else 0, rule.specificity(prefix), n, -rule.order, rule, prefix))
        scored.sort(key=lambda t: t[:4], reverse=True)
        seen, hit = set(), []
        for t in scored:
            if t[4].id not in seen:
                seen.add(t[4].id)
                hit.append((t[4], t[5]))
        self._resolved_cache[qual] = hit
        return hit

    # ------------------------------------------------------------------------------------------ imports
    def _record_aliases(self, node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for a in node.names:
                if self.rules.import_rule(a.name) is None:
                    self._dynamic_rule(a.name)
                if a.asname:
                    self.aliases[a.asname] = a.name
                    rule = self.rules.import_rule(a.name)
                    ren = rule.apply.get("rename_module") if rule else None
                    if ren and a.name == ren[0]:
                        self.fixed_by_import.add(a.asname)
                    else:
                        self.fixed_by_import.discard(a.asname)
                else:
                    top = a.name.split(".")[0]
                    self.aliases[top] = top
        elif isinstance(node, ast.ImportFrom):
            # Relative imports keep their module path without the dots: `from .kernel import act_quant`
            # must still resolve to `kernel.act_quant` for the V4-reference rules.
            base = node.module or ""
            if base and not node.level:
                for a in node.names:
                    full = f"{base}.{a.name}"
                    if self.rules.import_rule(full) is None:
                        self._dynamic_rule(full)
            rule = self.rules.import_rule(base) if base and not node.level else None
            renamed = bool(rule and rule.apply.get("rename_module"))
            for a in node.names:
                if a.name == "*":
                    continue
                local = a.asname or a.name
                self.aliases[local] = f"{base}.{a.name}" if base else a.name
                if renamed:
                    self.fixed_by_import.add(local)
                else:
                    self.fixed_by_import.discard(local)

    def _dynamic_rule(self, module: str) -> Optional[Rule]:
        """Import rule for a compiled CUDA extension: built by this project's setup.py, or named `*_cuda`
        (cuda_libraries.yaml `module_regex`) and not a module of the scanned project itself."""
        last = module.rsplit(".", 1)[-1]
        exts = self.project.cuda_extensions
        if module in exts or last in exts or any(module.startswith(e + ".") for e in exts if "." in e):
            rule = self.rules.by_id.get("cuda-extension-import")
        elif last in self.project.local_modules or module.split(".")[0] in self.project.local_modules:
            return None
        else:
            rule = self.rules.module_regex_rule(module)
        if rule is not None:
            self.dynamic_modules[module] = rule
        return rule

    def _import_rule(self, module: str) -> Optional[Rule]:
        rule = self.rules.import_rule(module)
        if rule is not None and rule.id in self.rules.library_ids and self._is_local(module):
            # the scanned project *is* this library: its own imports are not a dependency, except the
            # compiled CUDA extensions its setup.py builds
            return self._dynamic_rule(module) if self._is_extension(module) else None
        return rule or self._dynamic_rule(module)

    def _is_extension(self, module: str) -> bool:
        exts = self.project.cuda_extensions
        return module in exts or any(module.startswith(e + ".") for e in exts)

    def _is_local(self, module: str) -> bool:
        return module.split(".")[0] in self.project.local_packages

    def _visit_import(self, node: ast.Import) -> None:
        self._record_aliases(node)
        for a in node.names:
            rule = self._import_rule(a.name)
            if rule is None:
                continue
            edits = ()
            ren = rule.apply.get("rename_module")
            if ren and a.asname and a.name == ren[0]:
                edits = self._edit_module_token(node.lineno, ren[0], ren[1], r"import\s+")
            self._add(rule, node, a.name, edits)

    def _visit_import_from(self, node: ast.ImportFrom) -> None:
        self._record_aliases(node)
        if node.level or not node.module:
            return  # relative imports are the project's own modules, never third-party CUDA libraries
        cands = [node.module] + [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
        done = set()
        for cand in cands:
            rule = self._import_rule(cand)
            if rule is None or rule.id in done:
                continue
            done.add(rule.id)
            edits = ()
            ren = rule.apply.get("rename_module")
            if ren and (node.module == ren[0] or node.module.startswith(ren[0] + ".")):
                edits = self._edit_module_token(node.lineno, ren[0], ren[1], r"from\s+")
            self._add(rule, node, cand, edits)

    def _edit_module_token(self, lineno: int, old: str, new: str, lead: str) -> Tuple[Edit, ...]:
        m = re.search(lead + r"(" + re.escape(old) + r")\b", self._line(lineno))
        if not m:
            return ()  # e.g. a backslash-continued statement: report, don't rewrite
        return (Edit(lineno, m.start(1), m.end(1), new),)

    def _plan_ensure_import(self, tree: ast.Module) -> None:
        cfg = self.rules.ensure_import
        if not cfg:
            return
        after, module = cfg.get("after_module"), cfg.get("module")
        anchor = None
        for stmt in _top_level_statements(tree):
            if isinstance(stmt, ast.Import):
                names = [a.name for a in stmt.names]
            elif isinstance(stmt, ast.ImportFrom) and not stmt.level:
                names = [stmt.module or ""]
            else:
                continue
            if any(n == module or n.startswith(module + ".") for n in names):
                return  # already imported: nothing to add
            if anchor is None and stmt.col_offset == 0 and any(n == after or n.startswith(after + ".") for n in names):
                anchor = stmt  # unconditional module-level import only (not inside try/if)
        if anchor is not None:
            self.ensure_import_edit = Edit(anchor.end_lineno, text=cfg["line"], insert_line=True)

    # ------------------------------------------------------------------------------------------ names
    def _visit_name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            return  # `mod = None` in an ImportError fallback is not a use
        qual = self.aliases.get(node.id)
        if qual is not None:
            self._match_name(node, qual, None)

    def _visit_attribute(self, node: ast.Attribute) -> None:
        qual = self.resolve(node)
        if qual is not None:
            self._match_name(node, qual, None)
            return  # outermost chain only: `torch.cuda.x` must not also report `torch.cuda`
        for rule in self.rules.attr_rules.get(node.attr, ()):
            if not rule.call and not rule.when:
                self._add(rule, node, "." + node.attr, self._attr_rename(rule, node), lineno=node.end_lineno)
                break
        self.visit(node.value)

    def _match_name(self, node: ast.AST, qual: str, call: Optional[ast.Call]) -> Optional[Rule]:
        root = node
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name) and root.id in self.fixed_by_import:
            return None
        local = None
        for rule, symbol in self._name_matches(qual):
            if rule.id in self.rules.library_ids:
                local = self._is_local(qual) if local is None else local
                if local:
                    continue
            shown = symbol
            if rule.when:
                if call is None:
                    continue
                hit = _check_when(rule, call)
                if hit is None:
                    continue
                if isinstance(hit, str):
                    shown = hit
            self._add(rule, node, shown, self._segment_rename(rule, node))
            return rule
        if self.dynamic_modules:
            parts = qual.split(".")
            for n in range(len(parts) - 1, 0, -1):
                rule = self.dynamic_modules.get(".".join(parts[:n]))
                if rule is not None:
                    call_rule = self.rules.by_id.get(rule.id + "-call")
                    if call_rule is not None:
                        self._add(call_rule, node, qual)
                        return call_rule
                    break
        return None

    def _segment_rename(self, rule: Rule, node: ast.AST) -> Tuple[Edit, ...]:
        """`th.cuda.synchronize` -> `th.npu.synchronize`: rename the spelled-out `cuda` attribute."""
        ren = rule.apply.get("rename_segment")
        if not ren:
            return ()
        old, new = ren
        cur = node
        while isinstance(cur, ast.Attribute):
            if cur.attr == old and self.resolve(cur.value) is not None:
                return self._token_edit(cur, old, new)
            cur = cur.value
        return ()  # written through an alias (`from torch import cuda`): not mechanical

    def _attr_rename(self, rule: Rule, node: ast.Attribute) -> Tuple[Edit, ...]:
        new = rule.apply.get("rename")
        return self._token_edit(node, node.attr, new) if new else ()

    def _token_edit(self, node: ast.Attribute, old: str, new: str) -> Tuple[Edit, ...]:
        """Edit replacing the attribute token, which ends exactly at the node's end position."""
        lineno = node.end_lineno
        end = self._char_col(lineno, node.end_col_offset)
        start = end - len(old)
        if start < 0 or self._line(lineno)[start:end] != old:
            return ()
        return (Edit(lineno, start, end, new),)

    # ------------------------------------------------------------------------------------------ calls
    def _visit_call(self, node: ast.Call) -> None:
        func = node.func
        qual = self.resolve(func) if isinstance(func, (ast.Name, ast.Attribute)) else None
        if qual is not None:
            self._match_name(func, qual, node)
        elif isinstance(func, ast.Attribute):
            for rule in self.rules.attr_rules.get(func.attr, ()):
                if rule.call and (not rule.when or _check_when(rule, node) is not None):
                    self._add(rule, func, f".{func.attr}()", self._attr_rename(rule, func),
                              lineno=func.end_lineno)
                    break
            self.visit(func.value)
        else:
            self.visit(func)
        for a in node.args:
            self.visit(a)
        for kw in node.keywords:
            self.visit(kw.value)

    # ------------------------------------------------------------------------------------------ defs
    def _visit_function(self, node) -> None:
        for dec in node.decorator_list:
            target = dec.func if isinstance(dec, ast.Call) else dec
            qual = self.resolve(target)
            if qual is None:
                continue
            for rule, _sym in self._name_matches(qual):
                if rule.kernel:
                    # a kernel method is named with its class (`FlashAttentionBackwardSm90.__call__`): the
                    # class name is what says forward/backward, attention/norm for the hint
                    name = f"{self._class}.{node.name}" if self._class else node.name
                    hint = self.rules.hint_for(name, self.moe_code)
                    repl = {**rule.replacement, **hint.replacement} if hint else None
                    self._add(rule, dec, name, replacement=repl)
                    # The whole kernel is one finding: its body (tl.*/T.* calls, FP8 dtype strings,
                    # autotune configs) would otherwise produce dozens of redundant ones.
                    return
        for dec in node.decorator_list:
            self.visit(dec)
        self.visit(node.args)
        if node.returns is not None:
            self.visit(node.returns)
        for stmt in node.body:
            self.visit(stmt)

    def _visit_class(self, node: ast.ClassDef) -> None:
        for rule in self._router_rules:
            for gemm, symbol in find_router_hazards(node, rule.params, self.resolve):
                self._add(rule, gemm, symbol)
        outer, self._class = self._class, node.name
        try:
            self._visit_children(node)
        finally:
            self._class = outer

    # ------------------------------------------------------------------------------------------ strings
    def _visit_expr(self, node: ast.Expr) -> None:
        v = node.value
        if isinstance(v, ast.JoinedStr) or (isinstance(v, ast.Constant) and isinstance(v.value, str)):
            return  # docstring / bare string statement: prose, not code
        self.visit(v)

    def _visit_constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and node.value and len(node.value) < 300:
            self._match_string(node, node.value)

    def _visit_joined_str(self, node: ast.JoinedStr) -> None:
        skeleton = []
        for part in node.values:
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                skeleton.append(part.value)
            else:
                skeleton.append("{}")
                self.visit(part)
        value = "".join(skeleton)
        if len(value) < 300:
            self._match_string(node, value)

    def _match_string(self, node: ast.AST, value: str) -> None:
        """A literal with a context rule (device/backend) is rewritten only in that context; elsewhere its
        uncertain sibling (same regex, no context) reports it without a rewrite, and in a known non-device
        place (dict key, subscript, getattr name) nothing is reported."""
        rules = self.rules.string_rules(value)
        if not rules:
            return
        ctx_patterns = {r.regex.pattern: r.context for r in rules if r.context}
        ctx = (context_of_value(value) or self._string_ctx.get(id(node))) if ctx_patterns else None
        for rule in rules:
            if rule.context:
                if ctx == rule.context:
                    self._add(rule, node, value, self._string_edit(rule, node))
            elif rule.regex.pattern in ctx_patterns:
                if ctx is None:
                    self._add(rule, node, value)
            else:
                self._add(rule, node, value, self._string_edit(rule, node))

    def _string_edit(self, rule: Rule, node: ast.AST) -> Tuple[Edit, ...]:
        """One edit per regex match, each spanning only the matched characters, so a rewrite inside an
        f-string (`f'cuda:{torch.cuda.current_device()}'`) never overlaps the edit of a call inside it."""
        subs = rule.apply.get("sub")
        if not subs or node.lineno != node.end_lineno:
            return ()
        line = self._line(node.lineno)
        start = self._char_col(node.lineno, node.col_offset)
        end = self._char_col(node.lineno, node.end_col_offset)
        seg = line[start:end]
        edits = []
        for rx, repl in subs:
            for m in rx.finditer(seg):
                new = m.expand(repl)
                if new != m.group(0):
                    edits.append(Edit(node.lineno, start + m.start(), start + m.end(), new))
        return tuple(edits)


def _group_of(rule: Rule, symbol: str, rules: RuleSet) -> str:
    """Triage item of a finding: kernels by name, libraries/extensions by top-level module."""
    if rule.kernel:
        return symbol
    if rule.kind == "import" or rule.id in rules.library_ids or rule.id == "cuda-extension-import-call":
        return symbol.split(".")[0]
    return ""


def _cap(line: str) -> str:
    """Report text for a source line, bounded: a finding never holds more than _SNIPPET_LEN characters of
    its line, so memory does not grow with line length x findings (minified / generated code)."""
    if len(line) > 4 * _SNIPPET_LEN:
        line = line[: 4 * _SNIPPET_LEN]
    s = line.strip()
    return s if len(s) <= _SNIPPET_LEN else s[: _SNIPPET_LEN - 3] + "..."


def _statement_span(stmt: ast.stmt) -> Tuple[int, int]:
    """Lines of a simple statement, or of a compound statement's header (`if a and\n b:`), which is what
    --apply rewrites or leaves as a whole."""
    body = getattr(stmt, "body", None)
    if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
        first = body[0].lineno
        return stmt.lineno, max(stmt.lineno, first - 1)
    return stmt.lineno, getattr(stmt, "end_lineno", stmt.lineno) or stmt.lineno


def _top_level_statements(tree: ast.Module):
    """Module body plus statements nested in top-level if/try blocks (guarded optional imports)."""
    stack = list(reversed(tree.body))
    while stack:
        stmt = stack.pop()
        yield stmt
        if isinstance(stmt, (ast.If, ast.Try)) or type(stmt).__name__ == "TryStar":
            children = list(stmt.body) + list(getattr(stmt, "orelse", []))
            for h in getattr(stmt, "handlers", []):
                children.extend(h.body)
            children.extend(getattr(stmt, "finalbody", []))
            stack.extend(reversed(children))


def _strings_in(node: ast.AST):
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            yield sub.value


def _check_when(rule: Rule, call: ast.Call):
    """None if the call does not satisfy ``rule.when``; else the matched string (or True)."""
    w = rule.when
    shown = True
    if "kwarg" in w:
        for name, rx in w["kwarg"].items():
            kw = next((k for k in call.keywords if k.arg == name), None)
            if kw is None:
                return None
            if rx is not None:
                hit = next((s for s in _strings_in(kw.value) if rx.search(s)), None)
                if hit is None:
                    return None
                shown = hit
    if "any_arg" in w:
        values = [a for a in call.args] + [k.value for k in call.keywords]
        hit = next((s for v in values for s in _strings_in(v) if w["any_arg"].search(s)), None)
        if hit is None:
            return None
        shown = hit
    if w.get("arg0_int"):
        a0 = call.args[0] if call.args else None
        if not (isinstance(a0, ast.Constant) and type(a0.value) is int):
            return None
    return shown


class ProjectInfo:
    """Facts about the whole scanned tree that change how one file is read (see scanner.project_info)."""

    def __init__(self, cuda_extensions=(), local_modules=(), local_packages=()):
        self.cuda_extensions: Set[str] = set(cuda_extensions)  # CUDAExtension(name=...) names and last parts
        self.local_modules: Set[str] = set(local_modules)  # module/package names the project defines
        self.local_packages: Set[str] = set(local_packages)  # top-level packages (dirs with __init__.py)


def scan_python(rules: RuleSet, rel: str, text: str,
                project: Optional[ProjectInfo] = None) -> Tuple[PyFileScan, Optional[SyntaxError]]:
    """Parse and scan; on a syntax error return the exception so the caller can fall back to text rules."""
    lines = split_lines(text)
    scanner = PyFileScan(rules, rel, lines, project)
    scanner._text = text
    try:
        tree = ast.parse(text, filename=rel)
    except SyntaxError as e:
        return scanner, e
    except (ValueError, RecursionError, MemoryError) as e:  # NUL bytes / absurd nesting
        err = SyntaxError(f"cannot parse: {type(e).__name__}: {e}")
        err.lineno = 0
        return scanner, err
    try:
        scanner.run(tree)
    except RecursionError:
        err = SyntaxError("expression nesting too deep for the analyser; findings may be incomplete")
        err.lineno = 0
        return scanner, err
    return scanner, None
