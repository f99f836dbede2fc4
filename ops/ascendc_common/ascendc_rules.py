#!/usr/bin/env python3
"""Static checks of the AscendC sources (op_host + op_kernel of every family) for CANN rules that a compiler cannot
see, because the code that breaks them is type-correct C++. See docs/ascendc.md ("Rule checks").

  python ops/ascendc_common/ascendc_rules.py [OPS_DIR]      # prints one line per violation, exit 1 if any

Rules (name: what is checked):
  tiling-key      every tiling key an op's host tiling function can set (literal SetTilingKey arguments and the
                  *KEY* constants it names) has a TILING_KEY_IS(key) branch in the op's kernel; a kernel without
                  branches is compiled for key 0 only (launching another key fails: no binary for it).
  attr-type       GetAttrPointer<T>(i) / AttrInt / AttrFloat / AttrBool read attribute i with the type its OpDef
                  declares (Int -> int64_t, Float -> float, Bool -> bool): CANN reinterprets the bytes.
  input-index     GetInputShape/GetInputDesc/GetInputTensor/GetInputDataType(i) count INSTANTIATED inputs: only
                  valid while inputs 0..i are all REQUIRED; otherwise GetRequiredInputShape / GetOptionalInputShape
                  (IR index), which must name a REQUIRED / OPTIONAL input respectively.
  kernel-include  op_kernel sources include nothing outside op_kernel/ (only op_kernel/ ships in the source package).
  register-tiling a kernel that reads its tiling with GET_TILING_DATA* registers it (REGISTER_TILING_DEFAULT).
  event-id        SetFlag/WaitFlag take an event ID from the pipe (FetchEventID / AllocEventID), never a literal.
  matmul-trans    SetTensorB(.., transpose) with a transpose that is not `false` needs the B MatmulType declared
                  with ISTRANS = true (the Matmul API refuses it otherwise: CheckMatrixB).
  gm-roundtrip    a tensor dequeued from a plain VECIN TQue is not copied out to GM: the queue syncs MTE2 -> V only;
                  a GM -> UB -> GM move needs TQueBind<VECIN, VECOUT> (MTE2 -> MTE3).
  mte2-reload     a GM -> UB load into a plain buffer (TBuf) that vector ops read, done again and again (inside a
                  loop, or in a function called from one), is preceded in its function by a V -> MTE2 (or V -> S)
                  wait:
                  without a queue nothing stops MTE2 overwriting the buffer while the last vector op still reads it.
  v-barrier       a vector instruction that reads a tensor written by an earlier vector instruction (no queue in
                  between) is separated from it by PipeBarrier<PIPE_V> (or a V-side SetFlag/WaitFlag). Checked in
                  program order within a function and through calls of the family's own functions and of the
                  shared kernel headers' (ops/ascendc_common/op_kernel); loop-carried dependences are not followed.
"""
import os
import re
import sys

VEC_OPS = {
    # dst is argument 0; every other tensor argument is read. Reductions also write their shared tmp (arg 2).
    "Abs", "Add", "Adds", "Sub", "Subs", "Mul", "Muls", "Div", "Max", "Maxs", "Min", "Mins", "Exp", "Ln", "Sqrt",
    "Rsqrt", "Reciprocal", "Relu", "LeakyRelu", "Cast", "Duplicate", "Axpy", "ReduceMax", "ReduceMin", "ReduceSum",
    "WholeReduceSum", "WholeReduceMax", "WholeReduceMin", "BlockReduceSum", "BlockReduceMax", "BlockReduceMin",
    "PairReduceSum", "Compare", "CompareScalar", "Select", "Sort", "Sort32", "MrgSort", "MrgSort4", "Extract",
    "GatherMask", "Gather", "Brcb", "Not", "And", "Or", "ShiftLeft", "ShiftRight", "Transpose", "Copy", "Exp2",
    "Sign", "Power", "Tanh", "Sigmoid", "Silu", "CastDeq", "ReduceProd",
}
READS_DST = {"Axpy"}
WRITES_TMP = {"ReduceMax", "ReduceMin", "ReduceSum"}
# what orders a vector op after an earlier one: a V barrier, a wait of the scalar unit on V (it issues the next
# vector op only afterwards), or a V-side wait on another pipe; a V -> MTE2/MTE3 flag only holds up the other pipe
V_SYNC = re.compile(r"PipeBarrier\s*<\s*PIPE_(V|ALL)\s*>|(WaitFlag|PipeSync)\s*<\s*HardEvent::(V_S|\w+_V)\s*>")
KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof", "static_assert", "catch", "decltype", "defined"}
ATTR_TYPES = {"Int": "int64_t", "Float": "float", "Bool": "bool", "String": "char", "ListInt": "list"}
ATTR_HELPERS = {"AttrInt": "int64_t", "AttrFloat": "float", "AttrBool": "bool"}


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', lambda m: '"' + "_" * (len(m.group(0)) - 2) + '"', text)


def match_brace(text, i):
    """index just past the brace matching text[i] ('{', '(' or '<' is not supported)"""
    open_c = text[i]
    close_c = {"{": "}", "(": ")", "[": "]"}[open_c]
    depth = 0
    for j in range(i, len(text)):
        if text[j] == open_c:
            depth += 1
        elif text[j] == close_c:
            depth -= 1
            if depth == 0:
                return j + 1
    return len(text)


def split_args(s):
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def base_name(expr):
    """the tensor an argument names: `sc[s0 * cg]` -> sc, `work_.ReinterpretCast<uint32_t>()` -> work_, `&hf` / `*af`
    (a tensor passed or written through a pointer) -> hf / af"""
    m = re.match(r"\s*(?:\(\s*\w[\w:<>\s]*\)\s*)?[&*]?\s*([A-Za-z_]\w*)", expr)
    return m.group(1) if m else None


class Function:
    def __init__(self, name, params, body, path, line):
        self.name, self.params, self.body, self.path, self.line = name, params, body, path, line


def functions(path, text):
    """function definitions (free functions and class methods) of a comment-stripped source"""
    out = []
    pat = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
    i = 0
    while True:
        m = pat.search(text, i)
        if not m:
            return out
        name = m.group(1)
        close = match_brace(text, m.end() - 1)
        rest = re.match(r"\s*(const\s*)?(noexcept\s*)?(->\s*[\w:<>]+\s*)?(:[^{;]*)?\{", text[close:])
        if name in KEYWORDS or not rest or (rest.group(4) and "(" not in rest.group(4) and name[0].islower()):
            i = m.end()
            continue
        before = text[max(0, m.start() - 40):m.start()]
        if re.search(r"(=|return|\(|,)\s*$", before):           # a call inside an expression, not a definition
            i = m.end()
            continue
        bstart = close + rest.end() - 1
        bend = match_brace(text, bstart)
        params = []
        for p in split_args(text[m.end():close - 1]):
            p = p.split("=")[0].strip()
            pm = re.search(r"([A-Za-z_]\w*)\s*(\[\s*\])?$", p)
            params.append(pm.group(1) if pm else "")
        out.append(Function(name, params, text[bstart + 1:bend - 1], path, text.count("\n", 0, m.start()) + 1))
        i = bend


def calls(body, name, member=False):
    """argument lists of every call of `name` in body (member=True: also `obj.name(...)`)"""
    out = []
    for m in re.finditer((r"(?<!\w)" if member else r"(?<![\w.])") + re.escape(name) + r"\s*(<[^;(){}]*>)?\s*\(",
                         body):
        close = match_brace(body, m.end() - 1)
        out.append((m.start(), split_args(body[m.end():close - 1])))
    return out


def line_of(text, pos):
    return text.count("\n", 0, pos) + 1


class Family:
    def __init__(self, root):
        self.root = root
        self.name = os.path.basename(os.path.dirname(root))
        self.host_files = self._files("op_host")
        # the shared kernel headers (ops/ascendc_common/op_kernel, staged next to every family's kernels) are part of
        # each family's kernel code
        shared = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(root))), "ascendc_common", "op_kernel")
        self.shared_files = self._files(shared)
        self.kernel_files = self._files("op_kernel") + self.shared_files
        self.text = {p: strip_comments(open(p, encoding="utf-8").read()) for p in self.host_files + self.kernel_files}
        self.host_funcs = {}
        for p in self.host_files:
            for f in functions(p, self.text[p]):
                self.host_funcs.setdefault(f.name, f)
        self.kernel_funcs = {}
        for p in self.kernel_files:
            for f in functions(p, self.text[p]):
                self.kernel_funcs.setdefault((p, f.name), f)
        # helpers of the shared headers, callable from every kernel file (the file's own function of a name wins)
        self.shared_keys = {}
        for p in self.shared_files:
            for f in functions(p, self.text[p]):
                self.shared_keys.setdefault(f.name, (p, f.name))

    def _files(self, sub):
        d = os.path.join(self.root, sub)
        if not os.path.isdir(d):
            return []
        return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith((".cpp", ".h", ".cc")))

    def constants(self):
        """integer constants (enumerators, constexpr) of the family's sources: name -> value"""
        out = {}
        for p, t in self.text.items():
            for m in re.finditer(r"\b([A-Z][A-Z0-9_]*|k[A-Z]\w*)\s*=\s*(\d+)[uUlL]*\b", t):
                out.setdefault(m.group(1), int(m.group(2)))
        return out

    def op_defs(self):
        """OpDef classes: type -> {inputs: [(name, kind)], attrs: [(name, type)], funcs: [names], path}"""
        ops = {}
        for p in self.host_files:
            t = self.text[p]
            for m in re.finditer(r"\bclass\s+(\w+)\s*:\s*public\s+[\w:]*OpDef\w*\s*\{", t):
                body = t[m.end():match_brace(t, m.end() - 1)]
                inputs = re.findall(r'Input\(\s*"(\w+)"\s*\)\s*\.ParamType\(\s*(\w+)\s*\)', body)
                attrs = [(n, ATTR_TYPES.get(k, k)) for n, k in
                         re.findall(r'Attr\(\s*"(\w+)"\s*\)(?:\s*\.\s*AttrType\(\s*\w+\s*\))?\s*\.\s*(\w+)\s*\(', body)]
                funcs = re.findall(r"Set(?:InferShape|InferDataType|Tiling)\(\s*(?:[\w]+::)*(\w+)\s*\)", body)
                ops[m.group(1)] = {"inputs": inputs, "attrs": attrs, "funcs": funcs, "path": p}
        return ops

    def reach(self, names):
        """host functions reachable from `names` through calls of the family's own host functions"""
        seen, todo = {}, list(names)
        while todo:
            n = todo.pop()
            if n in seen or n not in self.host_funcs:
                continue
            f = self.host_funcs[n]
            seen[n] = f
            todo += re.findall(r"\b(\w+)\s*(?:<[^;(){}]*>)?\s*\(", f.body)
        return list(seen.values())

    def kernel_for(self):
        """op type -> kernel source, from op_kernel/CMakeLists.txt"""
        cm = os.path.join(self.root, "op_kernel", "CMakeLists.txt")
        if not os.path.exists(cm):
            return {}
        pairs = re.findall(r"^\s*(\w+)\s+([\w.]+\.cpp)\s*$", open(cm).read(), re.M)
        return {op: os.path.join(self.root, "op_kernel", f) for op, f in pairs}


# ---------------------------------------------------------------------------------------------------- host rules
def check_host(fam, report):
    consts = fam.constants()
    kernels = fam.kernel_for()
    for op, d in fam.op_defs().items():
        funcs = fam.reach(d["funcs"])
        # tiling-key
        keys = set()
        for f in fam.reach([n for n in d["funcs"] if "Tiling" in n]):
            for _, args in calls(f.body, "SetTilingKey"):
                if args and re.fullmatch(r"\d+[uUlL]*", args[0]):
                    keys.add(int(re.match(r"\d+", args[0]).group(0)))
            for name in re.findall(r"\b(?:\w+::)*(\w*KEY\w*)\b", f.body):
                if name in consts:
                    keys.add(consts[name])
        kpath = kernels.get(op)
        if kpath and kpath in fam.text:
            branches = {int(v) for v in re.findall(r"TILING_KEY_IS\(\s*(\d+)", fam.text[kpath])} or {0}
            for k in sorted(keys - branches):
                report(d["path"], 1, "tiling-key",
                       f"{op}: host tiling can set tiling key {k}, but {os.path.basename(kpath)} has no "
                       f"TILING_KEY_IS({k}) branch (binary built for keys {sorted(branches)})")
        # attr-type + input-index
        for f in funcs:
            text = fam.text[f.path]
            body_off = text.find(f.body)
            for helper, want in ATTR_HELPERS.items():
                for pos, args in calls(f.body, helper):
                    if len(args) >= 2 and args[1].isdigit():
                        _attr(report, f, text, body_off + pos, op, d, int(args[1]), want)
            for m in re.finditer(r"GetAttrPointer\s*<\s*([\w:]+)\s*>\s*\(\s*(\d+)\s*\)", f.body):
                _attr(report, f, text, body_off + m.start(), op, d, int(m.group(2)), m.group(1).split("::")[-1])
            kinds = [k for _, k in d["inputs"]]
            for api in ("GetInputShape", "GetInputDesc", "GetInputTensor", "GetInputDataType"):
                for pos, args in calls(f.body, api):
                    if args and args[0].isdigit():
                        i = int(args[0])
                        if any(k != "REQUIRED" for k in kinds[:i + 1]):
                            first = next(n for n, k in d["inputs"][:i + 1] if k != "REQUIRED")
                            report(f.path, line_of(text, body_off + pos), "input-index",
                                   f"{op}: {api}({i}) counts instantiated inputs, but optional input '{first}' "
                                   f"comes first: use GetRequiredInputShape / GetOptionalInputShape({i}) (IR index)")
            for apis, want in ((("GetRequiredInputShape", "GetRequiredInputDesc", "RequiredShape"), "REQUIRED"),
                               (("GetOptionalInputShape", "GetOptionalInputDesc", "OptionalShape"), "OPTIONAL")):
                for api in apis:
                    for pos, args in calls(f.body, api):
                        idx = args[-1] if api.endswith("Shape") and not api.startswith("Get") else args[0]
                        if idx.isdigit() and int(idx) < len(kinds) and kinds[int(idx)] != want:
                            report(f.path, line_of(text, body_off + pos), "input-index",
                                   f"{op}: {api}({idx}) names input '{d['inputs'][int(idx)][0]}', which is "
                                   f"{kinds[int(idx)]}, not {want}")


def _attr(report, f, text, pos, op, d, i, got):
    if i >= len(d["attrs"]):
        report(f.path, line_of(text, pos), "attr-type", f"{op}: attribute {i} read, but the OpDef declares "
               f"{len(d['attrs'])}")
        return
    name, want = d["attrs"][i]
    if want != got:
        report(f.path, line_of(text, pos), "attr-type",
               f"{op}: attribute {i} '{name}' is declared {want} but read as {got} (GetAttrPointer reinterprets "
               f"the stored bytes)")


# -------------------------------------------------------------------------------------------------- kernel rules
def check_kernel(fam, report):
    for p in fam.kernel_files:
        raw = open(p, encoding="utf-8").read()
        t = fam.text[p]
        for m in re.finditer(r'#\s*include\s*"(\.\./[^"]+)"', raw):
            report(p, line_of(raw, m.start()), "kernel-include",
                   f'includes "{m.group(1)}" from outside op_kernel/ (only op_kernel/ ships in the source package)')
        if p.endswith(".cpp") and re.search(r"\bGET_TILING_DATA\w*\s*\(", t) and "REGISTER_TILING_DEFAULT" not in t \
                and "REGISTER_TILING_FOR_TILINGKEY" not in t:
            report(p, line_of(t, re.search(r"\bGET_TILING_DATA\w*\s*\(", t).start()), "register-tiling",
                   "GET_TILING_DATA* without REGISTER_TILING_DEFAULT(struct)")
        for m in re.finditer(r"\b(SetFlag|WaitFlag)\s*<[^>]*>\s*\(\s*(\d+|EVENT_ID\d)\s*\)", t):
            report(p, line_of(t, m.start()), "event-id",
                   f"{m.group(1)} with literal event ID {m.group(2)}: take it from TPipe::FetchEventID / AllocEventID")
        _matmul_trans(p, t, report)
        _gm_roundtrip(fam, p, t, report)
        _mte2_reload(fam, p, t, report)
    _v_barrier(fam, report)


def _matmul_trans(p, t, report):
    types = {}
    for m in re.finditer(r"using\s+(\w+)\s*=\s*(?:AscendC::)?MatmulType\s*<", t):
        close = t.find(";", m.end())
        args = split_args(t[m.end():t.rfind(">", m.end(), close)])
        types[m.group(1)] = len(args) >= 4 and args[3].strip() == "true"
    for m in re.finditer(r"\bMatmul\s*<", t):
        args = split_args(t[m.end():t.find(";", m.end())].rsplit(">", 1)[0])
        if len(args) < 2:
            continue
        b = args[1].strip()
        trans = types.get(b, b.endswith("true>") if b.startswith("MatmulType") else None)
        if trans is None or trans:
            continue
        for pos, cargs in calls(t, "SetTensorB", member=True):
            if len(cargs) >= 2 and cargs[1].strip() != "false":
                report(p, line_of(t, pos), "matmul-trans",
                       f"SetTensorB(.., {cargs[1].strip()}) but B type {b} is declared with ISTRANS = false")


def _gm_roundtrip(fam, p, t, report):
    vecin = set()
    for m in re.finditer(r"\bTQue\s*<\s*(?:AscendC::)?(?:TPosition|QuePosition)::VECIN\s*,[^>]*>\s*([\w\s,]+);", t):
        vecin |= {n.strip() for n in m.group(1).split(",")}
    for m in re.finditer(r"\bTQue\s*<\s*(?:AscendC::)?(?:TPosition|QuePosition)::VECIN\s*,[^>]*>\s*&\s*(\w+)", t):
        vecin.add(m.group(1))                                  # a queue passed by reference
    gm = set()
    for m in re.finditer(r"\bGlobalTensor\s*<[^>]*>\s*([\w\s,]+);", t):
        gm |= {n.strip() for n in m.group(1).split(",")}
    for (path, _), f in fam.kernel_funcs.items():
        if path != p:
            continue
        tensors = {m.group(1) for m in re.finditer(r"(\w+)\s*=\s*(\w+)\s*\.\s*(?:template\s+)?DeQue\b", f.body)
                   if m.group(2) in vecin}
        for api in ("DataCopy", "DataCopyPad"):
            for pos, args in calls(f.body, api):
                if len(args) >= 2 and base_name(args[0]) in gm and base_name(args[1]) in tensors:
                    report(p, line_of(t, t.find(f.body) + pos), "gm-roundtrip",
                           f"{base_name(args[1])} comes from a VECIN TQue and is copied to GM: the queue orders "
                           "MTE2 -> V only; use TQueBind<VECIN, VECOUT> for a GM -> UB -> GM move")


def _loop_ranges(body):
    return [(m.start(), _stmt_end(body, m.start())) for m in re.finditer(r"\b(for|while)\s*\(", body)]


def _mte2_reload(fam, p, t, report):
    tbufs = set()
    for m in re.finditer(r"\bTBuf\s*<[^>]*>\s*([\w\s,]+);", t):
        tbufs |= {n.strip() for n in m.group(1).split(",")}
    gm = set()
    for m in re.finditer(r"\bGlobalTensor\s*<[^>]*>\s*([\w\s,]+);", t):
        gm |= {n.strip() for n in m.group(1).split(",")}
    funcs = {name: f for (path, name), f in fam.kernel_funcs.items() if path == p}
    members = {m.group(1): m.group(2) for m in re.finditer(r"\b(\w+_)\s*=\s*(\w+)\s*\.\s*(?:template\s+)?Get\s*<", t)}

    def owner(f, var):
        for m in re.finditer(r"\b" + re.escape(var) + r"\s*=\s*(\w+)\s*\.\s*(?:template\s+)?Get\s*<", f.body):
            if m.group(1) in tbufs:
                return m.group(1)
        m = re.search(r"\b" + re.escape(var) + r"\s*=\s*(\w+)\s*\.\s*(?:template\s+)?Get\s*<", f.body)
        return members.get(var) or (re.search(r",\s*" + re.escape(var) + r"\s*=\s*(\w+)\s*\.\s*Get", f.body) or [None, None])[1]

    vec_read = set()
    for f in funcs.values():
        for kind, reads, _, _ in _events(fam, p, f.body, lambda k: (set(), set(), False)):
            if kind == "op":
                vec_read |= {owner(f, r) for r in reads} - {None}
    callers = {n: [(g, pos) for g in funcs.values() for pos, _ in calls(g.body, n)] for n in funcs}

    def in_loop(name, seen=()):
        if name in seen:
            return False
        for g, pos in callers.get(name, []):
            if any(a <= pos < b for a, b in _loop_ranges(g.body)) or in_loop(g.name, seen + (name,)):
                return True
        return False

    def synced_before(f, pos):
        return any(m.start() < pos for m in
                   re.finditer(r"(SetFlag|WaitFlag|PipeSync)\s*<\s*HardEvent::V_(MTE2|S)\s*>|PipeBarrier\s*<\s*PIPE_ALL", f.body))

    for f in funcs.values():
        for api in ("DataCopy", "DataCopyPad"):
            for pos, args in calls(f.body, api):
                if len(args) < 2 or base_name(args[1]) not in gm:
                    continue
                dst = base_name(args[0])
                sites = [(f, pos, dst)]
                if dst in f.params:                       # a load helper: resolve at its call sites
                    k = f.params.index(dst)
                    sites = [(g, cpos, base_name(cargs[k])) for g in funcs.values()
                             for cpos, cargs in calls(g.body, f.name) if len(cargs) > k]
                for g, gpos, var in sites:
                    buf = owner(g, var)
                    if buf not in vec_read:
                        continue
                    looped = any(a <= gpos < b for a, b in _loop_ranges(g.body)) or in_loop(g.name)
                    if looped and not synced_before(g, gpos):
                        report(p, line_of(t, t.find(g.body) + gpos), "mte2-reload",
                               f"in {g.name}: {buf} is reloaded from GM in a loop while vector ops read it, with no "
                               "V -> MTE2 wait before the load (the previous iteration's vector op may still read it)")


def _summaries(fam):
    """per kernel function: (params/members read before its first V sync, written after its last, has sync)"""
    memo = {}

    def walk(key, stack=()):
        if key in memo:
            return memo[key]
        if key in stack:
            return (set(), set(), False)
        f = fam.kernel_funcs[key]
        memo[key] = (set(), set(), False)
        events = _events(fam, key[0], f.body, lambda k: walk(k, stack + (key,)))
        first, pending, synced = set(), set(), False
        for kind, reads, writes, _ in events:
            if kind == "sync":
                synced, pending = True, set()
                continue
            if not synced:
                first |= reads
            pending |= writes
        memo[key] = (first, pending, synced)
        return memo[key]

    for key in fam.kernel_funcs:
        walk(key)
    return memo


def _events(fam, path, body, summary):
    """vector-pipe events of a function body in program order: (kind, reads, writes, pos)"""
    out = []
    pat = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\s*(<[^;(){}]*>)?\s*\(")
    for m in pat.finditer(body):
        name = m.group(1)
        if V_SYNC.match(body, m.start()):
            out.append(("sync", set(), set(), m.start()))
            continue
        if name in VEC_OPS:
            args = split_args(body[m.end():match_brace(body, m.end() - 1) - 1])
            names = [base_name(a) for a in args]
            writes = {names[0]} if names and names[0] else set()
            reads = {n for n in names[1:] if n}
            if name in READS_DST:
                reads |= writes
            if name in WRITES_TMP and len(names) > 2 and names[2]:
                writes.add(names[2])
            out.append(("op", reads, writes, m.start()))
            continue
        key = (path, name)
        if key not in fam.kernel_funcs:
            key = fam.shared_keys.get(name, key)
        if key in fam.kernel_funcs and name not in KEYWORDS:
            f = fam.kernel_funcs[key]
            args = split_args(body[m.end():match_brace(body, m.end() - 1) - 1])
            first, last, synced = summary(key)
            bind = {p: base_name(a) for p, a in zip(f.params, args)}
            reads = {bind.get(n, n) for n in first if n in bind or n.endswith("_")}
            writes = {bind.get(n, n) for n in last if n in bind or n.endswith("_")}
            out.append(("call", {r for r in reads if r}, set(), m.start()))
            if synced:
                out.append(("sync", set(), set(), m.start()))
            out.append(("call", set(), {w for w in writes if w}, m.start()))
    return out


def _stmt_end(body, k):
    """end of the statement starting at body[k] (a block, an if/else chain, a loop or up to its ';')"""
    while k < len(body) and body[k].isspace():
        k += 1
    m = re.match(r"(if|for|while)\s*(?:constexpr\s*)?\(", body[k:])
    if m:
        close = match_brace(body, k + m.end() - 1)
        end = _stmt_end(body, close)
        if m.group(1) == "if":
            e = re.match(r"\s*else\b", body[end:])
            if e:
                end = _stmt_end(body, end + e.end())
        return end
    if body.startswith("{", k):
        return match_brace(body, k)
    depth = 0
    for j in range(k, len(body)):
        depth += body[j] in "([{"
        depth -= body[j] in ")]}"
        if body[j] == ";" and depth <= 0:
            return j + 1
    return len(body)


def _flow(body, i, j, pending, events, on_read):
    """vector-pipe hazards of body[i:j]: branches of an if/else start from the same state and merge; a loop body
    runs once from the state before it and merges with it (zero iterations)"""
    pos = i
    kw = re.compile(r"\b(if|for|while)\s*(?:constexpr\s*)?\(")
    while pos < j:
        m = kw.search(body, pos, j)
        stop = m.start() if m else j
        for ev in events:
            if pos <= ev[3] < stop:
                kind, reads, writes, at = ev
                if kind == "sync":
                    pending = {}
                    continue
                for r in sorted(reads & set(pending)):
                    on_read(r, at, pending[r])
                for w in writes:
                    pending = dict(pending, **{w: at})
        if not m:
            break
        close = match_brace(body, m.end() - 1)
        pending = _flow(body, m.end() - 1, close, pending, events, on_read)     # condition / loop header
        branch_end = _stmt_end(body, close)
        taken = _flow(body, close, branch_end, dict(pending), events, on_read)
        end = branch_end
        other = pending
        if m.group(1) == "if":
            e = re.match(r"\s*else\b", body[branch_end:])
            if e:
                end = _stmt_end(body, branch_end + e.end())
                other = _flow(body, branch_end + e.end(), end, dict(pending), events, on_read)
        pending = {**other, **taken}
        pos = end
    return pending


def _v_barrier(fam, report):
    memo = _summaries(fam)
    for key, f in fam.kernel_funcs.items():
        text = fam.text[key[0]]
        off = text.find(f.body)
        events = _events(fam, key[0], f.body, lambda k: memo.get(k, (set(), set(), False)))

        def on_read(r, at, wrote, f=f, text=text, off=off, key=key):
            report(key[0], line_of(text, off + at), "v-barrier",
                   f"in {f.name}: '{r}' is read by a vector op while the vector op writing it (line "
                   f"{line_of(text, off + wrote)}) may still run: PipeBarrier<PIPE_V>() between them")

        _flow(f.body, 0, len(f.body), {}, events, on_read)


def check(ops_dir):
    """all violations under ops_dir as (path, line, rule, message)"""
    found = []
    report = lambda p, l, r, msg: found.append((os.path.relpath(p, os.path.dirname(ops_dir)), l, r, msg))
    for fam_name in sorted(os.listdir(ops_dir)):
        root = os.path.join(ops_dir, fam_name, "ascendc")
        if os.path.isdir(os.path.join(root, "op_kernel")):
            fam = Family(root)
            check_host(fam, report)
            check_kernel(fam, report)
    return sorted(set(found))


def main(argv):
    ops_dir = os.path.abspath(argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    if not os.path.isdir(ops_dir):
        print(f"error: {ops_dir} is not a directory; pass the project's ops/ directory", file=sys.stderr)
        return 2
    found = check(ops_dir)
    for p, l, r, msg in found:
        print(f"{p}:{l}: [{r}] {msg}")
    print(f"{len(found)} violation(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
