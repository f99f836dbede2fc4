"""Load, validate and index the rule table (``rules.yaml``).

The table is data so that adding a CUDA API is a YAML edit, not a code change. Validation is strict and
names the offending rule, because a typo in a rule silently producing no findings is the worst failure
mode for an analyser. Look-ups used in the per-node hot path are memoised (see ``RuleSet.name_candidates``).
"""
from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from .findings import EFFORTS, REPLACEMENT_KEYS, SEVERITIES

DEFAULT_RULES_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rules.yaml")

KINDS = ("import", "name", "attr", "string", "text", "file", "router_gate")
_ID_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_RULE_KEYS = {
    "id", "kind", "severity", "category", "effort", "message", "replacement", "note",
    "module", "name", "attr", "call", "regex", "files", "unless_file", "kernel", "when", "apply", "params",
    "surface", "context", "only_file",
}
_KIND_REQUIRED = {
    "import": ("module",),
    "name": ("name",),
    "attr": ("attr",),
    "string": ("regex",),
    "text": ("regex", "files"),
    "file": ("files",),
    "router_gate": ("params",),
}
_APPLY_FORMS = {"string": "sub", "attr": "rename", "name": "rename_segment", "import": "rename_module"}


class RuleError(ValueError):
    """The rule table is malformed; the message names the rule and field."""


def expand_braces(pattern: str) -> List[str]:
    """``a.{b,c}.d`` -> ``[a.b.d, a.c.d]`` (several groups allowed, no nesting).

    fnmatch has no alternation; braces keep related names on one YAML line.
    """
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    out: List[str] = []
    for alt in m.group(1).split(","):
        out.extend(expand_braces(pattern[: m.start()] + alt.strip() + pattern[m.end():]))
    return out


@dataclass
class Rule:
    id: str
    kind: str
    severity: str
    category: str
    effort: str
    message: str
    replacement: Dict[str, str]
    patterns: Tuple[str, ...] = ()  # expanded `name` / `module` patterns
    attr: str = ""
    call: bool = True
    regex: Optional[re.Pattern] = None
    files: Tuple[str, ...] = ()
    unless_file: Optional[re.Pattern] = None
    only_file: Optional[re.Pattern] = None  # text rules: the file must match this to be searched at all
    kernel: bool = False
    when: Dict = field(default_factory=dict)
    apply: Dict = field(default_factory=dict)
    params: Dict = field(default_factory=dict)
    context: str = ""  # string rules: "device"/"backend" -> rewrite (and report) only in that code context
    order: int = 0  # position in the table: ties in specificity go to the earlier rule

    # compiled fnmatch regexes for `name` rules, parallel to `patterns`
    _name_res: Tuple[Tuple[re.Pattern, Optional[re.Pattern], int], ...] = ()

    def specificity(self, name: str) -> int:
        """Literal characters of the best pattern matching ``name`` (-1: no match)."""
        best = -1
        for full, prefix, literal in self._name_res:
            if full.match(name) or (prefix is not None and prefix.match(name)):
                best = max(best, literal)
        return best

    def format_message(self, symbol: str) -> str:
        return self.message.replace("{symbol}", symbol)


BACKWARD_NAME = re.compile(r"(?i)(^|_|\.)(bwd|backward|grad|dgrad|wgrad|dq|dkv|dqkv)(_|$|\.)|_bwd|bwd_|backward(sm\d+)?\.|Backward")
# what makes a file "MoE code" for `requires: moe` hints
MOE_CODE = re.compile(r"(?i)\bmoe|moe_|_moe|\bexperts?\b|\brouter\b|topk_ids|topk_weights|num_experts")


@dataclass
class Hint:
    name_regex: re.Pattern
    replacement: Dict[str, str]
    phase: str = ""  # "", "forward" or "backward"
    requires: str = ""  # "" or "moe"


@dataclass
class RuleSet:
    rules: List[Rule]
    our_ops: Tuple[str, ...]
    file_types: Dict[str, Tuple[str, ...]]
    skip_dirs: Tuple[str, ...]
    apply_settings: Dict
    hints: List[Hint]
    sources: Tuple[str, ...] = ()
    surface: Dict[str, List[str]] = field(default_factory=dict)
    # (regex over an imported module's last component, import rule id) from cuda_libraries.yaml
    module_regex: List[Tuple[re.Pattern, str]] = field(default_factory=list)

    # ids of the rules generated from cuda_libraries.yaml (import rules and their -call rules)
    library_ids: frozenset = frozenset()

    def __post_init__(self) -> None:
        self.by_id = {r.id: r for r in self.rules}
        by_kind: Dict[str, List[Rule]] = {k: [] for k in KINDS}
        for r in self.rules:
            by_kind[r.kind].append(r)
        self.by_kind = by_kind
        self.attr_rules: Dict[str, List[Rule]] = {}
        for r in by_kind["attr"]:
            self.attr_rules.setdefault(r.attr, []).append(r)
        # One alternation of all string regexes: most literals in a real tree match none, so a single
        # failed search is much cheaper than one search per rule.
        srx = [r.regex.pattern for r in by_kind["string"]]
        self.string_prefilter = re.compile("|".join(f"(?:{p})" for p in srx)) if srx else None
        self._name_cache: Dict[str, List[Rule]] = {}
        self._import_cache: Dict[str, Optional[Rule]] = {}
        self._string_cache: Dict[str, List[Rule]] = {}
        self.ensure_import = (self.apply_settings or {}).get("ensure_import") or {}

    # ----------------------------------------------------------------- hot-path look-ups (memoised)
    def name_candidates(self, name: str) -> List[Rule]:
        """Name rules matching ``name``, most specific first (``when`` rules before plain ones)."""
        hit = self._name_cache.get(name)
        if hit is None:
            scored = []
            for r in self.by_kind["name"]:
                s = r.specificity(name)
                if s >= 0:
                    scored.append((1 if r.when else 0, s, -r.order, r))
            scored.sort(key=lambda t: (t[0], t[1], t[2]), reverse=True)
            hit = [t[3] for t in scored]
            self._name_cache[name] = hit
        return hit

    def import_rule(self, module: str) -> Optional[Rule]:
        """Most specific import rule for a module path (a rule on ``a.b`` matches ``a.b`` and ``a.b.c``)."""
        if module in self._import_cache:
            return self._import_cache[module]
        best, best_len = None, -1
        for r in self.by_kind["import"]:
            for p in r.patterns:
                if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                    best, best_len = r, len(p)
        self._import_cache[module] = best
        return best

    def string_rules(self, value: str) -> List[Rule]:
        hit = self._string_cache.get(value)
        if hit is None:
            if self.string_prefilter is None or not self.string_prefilter.search(value):
                hit = []
            else:
                hit = [r for r in self.by_kind["string"] if r.regex.search(value)]
            if len(value) < 200:  # don't let long docstring-like literals bloat the cache
                self._string_cache[value] = hit
        return hit

    def module_regex_rule(self, module: str) -> Optional[Rule]:
        last = module.rsplit(".", 1)[-1]
        for rx, rid in self.module_regex:
            if rx.search(last):
                return self.by_id.get(rid)
        return None

    def hint_for(self, kernel_name: str, moe_code: bool = False) -> Optional[Hint]:
        """First hint for a kernel name, honouring `phase` (bwd kernels) and `requires: moe`."""
        backward = bool(BACKWARD_NAME.search(kernel_name))
        for h in self.hints:
            if h.phase == "backward" and not backward or h.phase == "forward" and backward:
                continue
            if h.requires == "moe" and not moe_code:
                continue
            if h.name_regex.search(kernel_name):
                return h
        return None

    def file_tags(self, basename: str) -> Tuple[str, ...]:
        return tuple(
            tag for tag, globs in self.file_types.items()
            if any(fnmatch.fnmatchcase(basename, g) for g in globs)
        )

    def text_rules_for(self, tags: Iterable[str]) -> List[Rule]:
        tags = set(tags)
        return [r for r in self.by_kind["text"] + self.by_kind["file"] if tags.intersection(r.files)]


# --------------------------------------------------------------------------------------------- loading
def _fail(rule_id: str, msg: str) -> None:
    raise RuleError(f"rule {rule_id!r}: {msg}")


def _compile_name_pattern(p: str) -> Tuple[re.Pattern, Optional[re.Pattern], int]:
    full = re.compile(fnmatch.translate(p))
    prefix = re.compile(fnmatch.translate(p[:-2])) if p.endswith(".*") else None
    literal = len(p.replace("*", "").replace("?", ""))
    return full, prefix, literal


def _compile_regex(rule_id: str, field_name: str, pattern, flags: int = 0) -> re.Pattern:
    if not isinstance(pattern, str) or not pattern:
        _fail(rule_id, f"{field_name} must be a non-empty string")
    try:
        return re.compile(pattern, flags)
    except re.error as e:
        _fail(rule_id, f"{field_name} is not a valid regex: {e}")


def _check_replacement(rule_id: str, repl, our_ops: Sequence[str]) -> Dict[str, str]:
    if not isinstance(repl, dict) or not repl:
        _fail(rule_id, "replacement must be a non-empty mapping")
    for k, v in repl.items():
        if k not in REPLACEMENT_KEYS:
            _fail(rule_id, f"replacement key {k!r} not one of {', '.join(REPLACEMENT_KEYS)}")
        if not isinstance(v, str) or not v.strip():
            _fail(rule_id, f"replacement.{k} must be a non-empty string")
    if "ours" in repl:
        for op in (s.strip() for s in repl["ours"].split(",")):
            if op not in our_ops:
                _fail(rule_id, f"replacement.ours names {op!r}, which is not in our_ops")
    return {k: str(v) for k, v in repl.items()}


def _surface_patterns(rid: str, spec, surface: Dict[str, List[str]]) -> Tuple[str, ...]:
    """``surface: {namespace: torch.npu, prefix: torch.cuda, exclude: [...]}`` -> ``torch.cuda.<name>``
    for every name torch_npu exports under ``namespace`` (see torch_npu_api.yaml)."""
    if not isinstance(spec, dict) or set(spec) - {"namespace", "prefix", "exclude"} or "namespace" not in spec:
        _fail(rid, "surface must be {namespace: ..., prefix: ..., exclude: [...]}")
    names = surface.get(spec["namespace"])
    if not names:
        _fail(rid, f"surface namespace {spec['namespace']!r} is not in the torch_npu surface file")
    exclude = set(spec.get("exclude") or ())
    prefix = spec.get("prefix") or spec["namespace"]
    return tuple(f"{prefix}.{n}" for n in names if n not in exclude)


def _build_rule(raw: dict, order: int, our_ops: Sequence[str], file_types: Dict,
                surface: Optional[Dict[str, List[str]]] = None) -> Rule:
    if not isinstance(raw, dict):
        raise RuleError(f"rule #{order}: must be a mapping, got {type(raw).__name__}")
    rid = raw.get("id")
    if not isinstance(rid, str) or not _ID_RE.match(rid):
        raise RuleError(f"rule #{order}: id {rid!r} must be kebab-case")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        _fail(rid, f"unknown field(s) {sorted(unknown)}")
    kind = raw.get("kind")
    if kind not in KINDS:
        _fail(rid, f"kind {kind!r} not one of {KINDS}")
    required = _KIND_REQUIRED[kind]
    if kind == "name" and "surface" in raw:
        required = ()  # the names come from the torch_npu surface file
    for req in ("severity", "category", "effort", "message", "replacement") + required:
        if raw.get(req) in (None, "", [], {}):
            _fail(rid, f"missing {req!r}")
    if raw["severity"] not in SEVERITIES:
        _fail(rid, f"severity {raw['severity']!r} not one of {SEVERITIES}")
    if raw["effort"] not in EFFORTS:
        _fail(rid, f"effort {raw['effort']!r} not one of {EFFORTS}")
    rule = Rule(
        id=rid, kind=kind, severity=raw["severity"], category=str(raw["category"]), effort=raw["effort"],
        message=str(raw["message"]).strip(), replacement=_check_replacement(rid, raw["replacement"], our_ops),
        order=order,
    )
    if kind == "name" and "surface" in raw:
        rule.patterns = _surface_patterns(rid, raw["surface"], surface or {})
        rule._name_res = tuple(_compile_name_pattern(p) for p in rule.patterns)
    elif kind in ("name", "import"):
        key = "name" if kind == "name" else "module"
        rule.patterns = tuple(expand_braces(str(raw[key])))
        if kind == "name":
            rule._name_res = tuple(_compile_name_pattern(p) for p in rule.patterns)
    if kind == "attr":
        rule.attr = str(raw["attr"])
        rule.call = bool(raw.get("call", True))
    if kind in ("string", "text"):
        rule.regex = _compile_regex(rid, "regex", raw["regex"], re.MULTILINE if kind == "text" else 0)
    if kind in ("text", "file"):
        files = raw["files"]
        if not isinstance(files, list) or not all(isinstance(t, str) for t in files):
            _fail(rid, "files must be a list of file_types tags")
        for t in files:
            if t not in file_types:
                _fail(rid, f"files names unknown file type {t!r}")
        rule.files = tuple(files)
    if "context" in raw:
        if kind != "string" or raw["context"] not in ("device", "backend"):
            _fail(rid, "context applies to string rules and is one of device, backend")
        rule.context = raw["context"]
    if "unless_file" in raw:
        rule.unless_file = _compile_regex(rid, "unless_file", raw["unless_file"])
    if "only_file" in raw:
        rule.only_file = _compile_regex(rid, "only_file", raw["only_file"])
    if raw.get("kernel"):
        if kind not in ("name", "text"):
            _fail(rid, "kernel: true only applies to name and text rules")
        rule.kernel = True
    when = raw.get("when") or {}
    if when:
        if kind not in ("name", "attr"):
            _fail(rid, "when only applies to name and attr rules")
        unknown = set(when) - {"kwarg", "any_arg", "arg0_int"}
        if unknown:
            _fail(rid, f"unknown when condition(s) {sorted(unknown)}")
        compiled = {}
        if "kwarg" in when:
            if not isinstance(when["kwarg"], dict) or not when["kwarg"]:
                _fail(rid, "when.kwarg must be a mapping {name: regex}")
            compiled["kwarg"] = {k: (re.compile(v) if v else None) for k, v in when["kwarg"].items()}
        if "any_arg" in when:
            compiled["any_arg"] = _compile_regex(rid, "when.any_arg", when["any_arg"])
        if when.get("arg0_int"):
            compiled["arg0_int"] = True
        rule.when = compiled
    apply = raw.get("apply") or {}
    if apply:
        form = _APPLY_FORMS.get(kind)
        if form is None or set(apply) != {form}:
            _fail(rid, f"apply for a {kind} rule must be {{{form}: ...}}" if form else f"{kind} rules cannot apply")
        val = apply[form]
        if form == "sub":
            if not isinstance(val, list) or not val:
                _fail(rid, "apply.sub must be a list of [regex, replacement]")
            subs = []
            for pair in val:
                if not (isinstance(pair, list) and len(pair) == 2):
                    _fail(rid, "apply.sub entries must be [regex, replacement]")
                subs.append((_compile_regex(rid, "apply.sub", pair[0]), str(pair[1])))
            rule.apply = {"sub": subs}
        elif form == "rename":
            rule.apply = {"rename": str(val)}
        else:
            if not (isinstance(val, list) and len(val) == 2 and all(isinstance(v, str) for v in val)):
                _fail(rid, f"apply.{form} must be [old, new]")
            rule.apply = {form: tuple(val)}
    if kind == "router_gate":
        p = raw["params"]
        for k in ("gate_class_regex", "moe_class_regex", "gate_attr_regex"):
            if k not in p:
                _fail(rid, f"params.{k} missing")
        rule.params = {
            "gate_class_re": _compile_regex(rid, "params.gate_class_regex", p["gate_class_regex"]),
            "moe_class_re": _compile_regex(rid, "params.moe_class_regex", p["moe_class_regex"]),
            "gate_attr_re": _compile_regex(rid, "params.gate_attr_regex", p["gate_attr_regex"]),
            "gemm_names": frozenset(p.get("gemm_names", ())),
            "local_gemm_names": frozenset(p.get("local_gemm_names", ())),
        }
    return rule


def _read_yaml(path: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as e:
        raise RuleError(f"cannot read rules file {path}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise RuleError(f"rules file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RuleError(f"rules file {path}: top level must be a mapping")
    return data


def load_rules(extra_paths: Sequence[str] = (), base_path: str = DEFAULT_RULES_PATH) -> RuleSet:
    """Load the built-in table plus optional extra YAML files.

    Extra files may contain only ``rules:`` (and optionally ``hints:``/``file_types:``); a rule whose id
    already exists replaces the earlier one, so users can retune a severity without forking the table.
    """
    base = _read_yaml(base_path)
    if base.get("version") != 1:
        raise RuleError(f"rules file {base_path}: unsupported version {base.get('version')!r}")
    our_ops = tuple(base.get("our_ops") or ())
    file_types = {k: tuple(v or ()) for k, v in (base.get("file_types") or {}).items()}
    hints_raw = list(base.get("hints") or [])
    raw_rules: Dict[str, dict] = {}
    order_ids: List[str] = []

    def add_rules(rules, src):
        if not isinstance(rules, list):
            raise RuleError(f"{src}: rules must be a list")
        for raw in rules:
            rid = raw.get("id") if isinstance(raw, dict) else None
            if rid in raw_rules and src == base_path:
                raise RuleError(f"rule {rid!r}: duplicate id in {src}")
            if rid not in raw_rules:
                order_ids.append(rid)
            raw_rules[rid] = raw

    add_rules(base.get("rules") or [], base_path)
    for p in extra_paths:
        extra = _read_yaml(p)
        for k, v in (extra.get("file_types") or {}).items():
            file_types[k] = tuple(v or ())
        hints_raw = list(extra.get("hints") or []) + hints_raw  # user hints take precedence
        add_rules(extra.get("rules") or [], p)

    here = os.path.dirname(os.path.abspath(base_path))
    module_regex: List[Tuple[re.Pattern, str]] = []
    library_ids: List[str] = []
    if base.get("libraries"):
        lib_rules, module_regex = _library_rules(os.path.join(here, base["libraries"]))
        for raw in lib_rules:
            if raw["id"] in raw_rules:
                raise RuleError(f"rule {raw['id']!r}: defined in rules.yaml and in {base['libraries']}")
        # library rules go first so an extra --rules file can still replace them by id
        merged = {raw["id"]: raw for raw in lib_rules}
        merged.update(raw_rules)
        raw_rules.clear()
        raw_rules.update(merged)
        order_ids[:0] = [raw["id"] for raw in lib_rules]
        library_ids = [raw["id"] for raw in lib_rules]
    surface: Dict[str, List[str]] = {}
    if base.get("torch_npu_surface"):
        sdata = _read_yaml(os.path.join(os.path.dirname(os.path.abspath(base_path)), base["torch_npu_surface"]))
        surface = {k: list(v) for k, v in sdata.items() if isinstance(v, list)}
    rules = [_build_rule(raw_rules[rid], i, our_ops, file_types, surface) for i, rid in enumerate(order_ids)]
    hints = []
    for i, h in enumerate(hints_raw):
        hid = f"hint #{i}"
        if not isinstance(h, dict) or "name_regex" not in h or "replacement" not in h:
            raise RuleError(f"{hid}: needs name_regex and replacement")
        if h.get("phase", "") not in ("", "forward", "backward") or h.get("requires", "") not in ("", "moe"):
            raise RuleError(f"{hid}: phase must be forward|backward and requires must be moe")
        hints.append(Hint(_compile_regex(hid, "name_regex", h["name_regex"]),
                          _check_replacement(hid, h["replacement"], our_ops), h.get("phase", ""),
                          h.get("requires", "")))
    return RuleSet(
        rules=rules, our_ops=our_ops, file_types=file_types,
        skip_dirs=tuple(base.get("skip_dirs") or ()), apply_settings=base.get("apply") or {}, hints=hints,
        sources=(base_path,) + tuple(extra_paths), surface=surface, module_regex=module_regex,
        library_ids=frozenset(library_ids),
    )


_LIB_KEYS = {"id", "modules", "module_regex", "severity", "category", "effort", "what", "replacement", "calls", "note"}
# modules that can never be imported: keeps an entry's import rule valid when it matches only dynamically
_DYNAMIC_MODULE = "__dynamic__"


def _library_rules(path: str) -> Tuple[List[dict], List[Tuple[re.Pattern, str]]]:
    """cuda_libraries.yaml -> raw `import` rules (+ `<id>-call` name rules) in rules.yaml's schema."""
    data = _read_yaml(path)
    entries = data.get("libraries")
    if not isinstance(entries, list):
        raise RuleError(f"{path}: libraries must be a list")
    out: List[dict] = []
    regexes: List[Tuple[re.Pattern, str]] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("id"), str):
            raise RuleError(f"{path}: library #{i} needs an id")
        rid = e["id"]
        unknown = set(e) - _LIB_KEYS
        if unknown:
            _fail(rid, f"unknown field(s) {sorted(unknown)} in {os.path.basename(path)}")
        mods = e.get("modules")
        if mods is None and "module_regex" not in e:
            _fail(rid, "needs modules or module_regex")
        if mods is not None and not (isinstance(mods, list) and all(isinstance(m, str) for m in mods)):
            _fail(rid, "modules must be a list of dotted module names")
        if "module_regex" in e:
            regexes.append((_compile_regex(rid, "module_regex", e["module_regex"]), rid))
        pattern = "{" + ",".join(mods) + "}" if mods else _DYNAMIC_MODULE
        common = {k: e.get(k) for k in ("severity", "category", "effort", "replacement")}
        what = str(e.get("what") or "").strip()
        out.append({"id": rid, "kind": "import", "module": pattern, "message": f"import of {{symbol}}: {what}", **common})
        if e.get("calls"):
            out.append({"id": f"{rid}-call", "kind": "name", "name": pattern + ".*", "message": f"{{symbol}}: {what}",
                        **common})
    return out, regexes
