"""Evaluate `ascend-v4 migrate scan` on real public CUDA PyTorch projects against hand-made labels.

For each project in bench/migrate_eval_labels/*.yaml (labels only; the projects' code is never in this
repository) it reports, per category:

  imports  every import of a CUDA-only library / compiled CUDA extension / kernel DSL  (file:line)
  kernels  every device-kernel definition: Triton, TileLang, CuTe DSL, CUDA C++ __global__  (file, name)

precision = labelled findings / findings of that category, recall = found labels / labels, and the
--apply safety of the project: the rewritten copy is re-read and every statement --apply touched is
checked (it still parses; it does not mix NPU with a CUDA reference left behind; labelled
`must_not_rewrite` lines are unchanged). Goals (issue #21): precision >= 98 %, recall >= 95 % on imports
and kernels, zero behaviour-changing rewrites.

Getting the projects (once; ~30 MB). Each label file names its repository and commit:

    mkdir -p ~/.cache/ascend-v4/migrate-eval && cd ~/.cache/ascend-v4/migrate-eval
    git clone https://github.com/<repo>.git <name> && git -C <name> checkout <commit>

then run (the mirror directory can also come from $ASCEND_V4_MIGRATE_EVAL):

    python bench/migrate_eval.py [--mirrors ~/.cache/ascend-v4/migrate-eval] [--project NAME]

It prints a table and writes bench/results/migrate_eval.json. `--propose NAME` prints a label proposal for
a new project (imports of the modules listed under `cuda_modules`, functions under kernel decorators) to
review by hand before it becomes a label file.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from ascend_v4.atomic import write_json  # noqa: E402
from ascend_v4.tools.migrate import apply_rewrites, load_rules, scan_path  # noqa: E402

LABELS = os.path.join(HERE, "migrate_eval_labels")
RESULTS = os.path.join(HERE, "results", "migrate_eval.json")
DEFAULT_MIRRORS = os.environ.get("ASCEND_V4_MIGRATE_EVAL", os.path.expanduser("~/.cache/ascend-v4/migrate-eval"))
IMPORT_CATEGORIES = {"library", "extension", "dependency", "profiling"}


def load_labels(path):
    with open(path, encoding="utf-8") as fh:
        lab = yaml.safe_load(fh)
    lab["imports"] = {(f, int(ln)) for f, ln in (x.split()[0].rsplit(":", 1) for x in lab.get("imports") or [])}
    lab["kernels"] = {tuple(x.split()[:2]) for x in lab.get("kernels") or []}
    lab["must_not_rewrite"] = [x.rsplit(":", 1) for x in lab.get("must_not_rewrite") or []]
    return lab


def in_scope(rel, scope):
    return not scope or any(rel == s or rel.startswith(s.rstrip("/") + "/") for s in scope)


def found_sets(result, rules, scope):
    imports, kernels = set(), set()
    for f in result.findings:
        if not in_scope(f.file, scope):
            continue
        rule = rules.by_id[f.rule_id]
        if rule.kind == "import" and f.category in IMPORT_CATEGORIES:
            imports.add((f.file, f.line))
        elif rule.kernel and f.category == "kernel":  # (pybind-exported ops are extension findings)
            kernels.add((f.file, f.symbol))
    return imports, kernels


def prf(found, labels):
    tp = len(found & labels)
    return {"found": len(found), "labels": len(labels), "tp": tp,
            "precision": tp / len(found) if found else 1.0, "recall": tp / len(labels) if labels else 1.0,
            "false_positives": sorted(map(list, found - labels))[:20],
            "missed": sorted(map(list, labels - found))[:20]}


# ------------------------------------------------------------------------------------------- --apply safety
_NPU = re.compile(r"\bnpu\b|\bhccl\b|is_npu|torch_npu")
_CUDA_LEFT = re.compile(r"(?i)cuda|nccl")


def apply_safety(src, result, rules, must_not_rewrite):
    """Re-read the rewritten copy: every touched statement parses and does not mix NPU with CUDA."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        _diff, changed = apply_rewrites(result, src, out)
        again = scan_path(out, rules)
        left_cuda = {}
        for f in again.findings:
            if f.stmt != (0, 0) and _CUDA_LEFT.search(f.symbol) and f.category not in ("kernel", "v4_kernel"):
                left_cuda.setdefault(f.file, []).append(f)
        rewritten_lines = 0
        for rel in changed:
            old = result.sources[rel].splitlines()
            new_text = open(os.path.join(out, rel), encoding=result.encodings.get(rel, "utf-8")).read()
            new = new_text.splitlines()
            if rel.endswith(".py"):
                try:
                    tree = ast.parse(new_text)
                except SyntaxError as e:
                    problems.append(f"{rel}: does not parse after --apply: {e}")
                    continue
                touched = {i + 1 for i, line in enumerate(new) if line not in old}
                rewritten_lines += len(touched)
                for node in ast.walk(tree):
                    if not isinstance(node, ast.stmt) or getattr(node, "body", None):
                        continue
                    lines = set(range(node.lineno, node.end_lineno + 1))
                    if not lines & touched:
                        continue
                    seg = "\n".join(new[node.lineno - 1:node.end_lineno])
                    mixed = [f.symbol for f in left_cuda.get(rel, []) if f.line in lines]
                    if _NPU.search(seg) and mixed:
                        problems.append(f"{rel}:{node.lineno}: rewritten statement still uses {mixed}")
        for rel, ln in must_not_rewrite:
            if rel not in changed:
                continue
            # lines move (the inserted `import torch_npu`): the labelled line must survive verbatim
            old_lines = result.sources[rel].splitlines()
            new_lines = open(os.path.join(out, rel), encoding="utf-8").read().splitlines()
            line = old_lines[int(ln) - 1]
            if new_lines.count(line) < old_lines.count(line):
                problems.append(f"{rel}:{ln}: labelled must_not_rewrite but rewritten")
    return {"files_rewritten": len(changed), "lines_rewritten": rewritten_lines, "left_statements": len(result.left),
            "unsafe": len(problems), "problems": problems[:20]}


# ------------------------------------------------------------------------------------------- label proposals
_KERNEL_DECORATORS = re.compile(r"^(triton\.(jit|autotune|heuristics)|tilelang\.(jit|autotune)|"
                                r"tilelang\.language\.prim_func|cutlass\.cute\.(jit|kernel)|cuda\.tile\.kernel|"
                                r"numba\.cuda\.jit)$")
_GLOBAL = re.compile(r"__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(?:static\s+|inline\s+)*void\s+"
                     r"(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)")


def propose(root, cuda_modules):
    """Candidate labels (to be reviewed by hand): imports of the given top-level modules, outermost
    functions under a kernel decorator, `__global__` functions in C/C++/CUDA sources."""
    imports, kernels = [], []
    for dp, dn, fn in os.walk(root):
        dn[:] = sorted(d for d in dn if d not in (".git", "build", "__pycache__"))
        for name in sorted(fn):
            path = os.path.join(dp, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if name.endswith((".cu", ".cuh", ".cpp", ".h", ".hpp", ".cc")):
                text = open(path, encoding="utf-8", errors="replace").read()
                for m in _GLOBAL.finditer(re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)):
                    kernels.append(f"{rel} {m.group(1)}")
            if not name.endswith(".py"):
                continue
            try:
                tree = ast.parse(open(path, encoding="utf-8", errors="replace").read())
            except SyntaxError:
                continue
            alias = {}
            for n in ast.walk(tree):
                if isinstance(n, ast.Import):
                    for a in n.names:
                        alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                        if a.name.split(".")[0] in cuda_modules:
                            imports.append(f"{rel}:{n.lineno} {a.name}")
                elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
                    for a in n.names:
                        alias[a.asname or a.name] = f"{n.module}.{a.name}"
                    if n.module.split(".")[0] in cuda_modules:
                        imports.append(f"{rel}:{n.lineno} {n.module}")

            def dotted(d):
                d = d.func if isinstance(d, ast.Call) else d
                parts = []
                while isinstance(d, ast.Attribute):
                    parts.append(d.attr)
                    d = d.value
                if not isinstance(d, ast.Name):
                    return ""
                return ".".join([alias.get(d.id, d.id)] + parts[::-1])

            def walk(node, inside, cls):
                for child in ast.iter_child_nodes(node):
                    is_kernel = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                        _KERNEL_DECORATORS.match(dotted(d)) for d in child.decorator_list)
                    if is_kernel and not inside:
                        kernels.append(f"{rel} {cls + '.' if cls else ''}{child.name}")
                    walk(child, inside or is_kernel, child.name if isinstance(child, ast.ClassDef) else cls)
            walk(tree, False, "")
    return {"imports": sorted(set(imports)), "kernels": sorted(set(kernels))}


# ------------------------------------------------------------------------------------------- main
def evaluate(name, lab, mirrors, rules):
    root = os.path.join(mirrors, lab.get("dir", name))
    if not os.path.isdir(root):
        return {"project": name, "error": f"not mirrored: {root} (see the docstring: git clone {lab['repo']})"}
    t0 = time.perf_counter()
    result = scan_path(root, rules, keep_sources=True)
    seconds = time.perf_counter() - t0
    imports, kernels = found_sets(result, rules, lab.get("scope"))
    row = {"project": name, "repo": lab["repo"], "commit": lab["commit"], "kind": lab.get("kind", ""),
           "lines": result.lines_scanned, "seconds": round(seconds, 2), "findings": len(result.findings),
           "imports": prf(imports, lab["imports"]), "kernels": prf(kernels, lab["kernels"])}
    row["apply"] = apply_safety(root, result, rules, lab["must_not_rewrite"])
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirrors", default=DEFAULT_MIRRORS, help="directory holding the checked-out projects")
    ap.add_argument("--project", action="append", help="only these label files (name without .yaml)")
    ap.add_argument("--propose", metavar="NAME", help="print candidate labels for mirrors/NAME and exit")
    ap.add_argument("--cuda-modules", default="triton,tilelang,cutlass,cuda,quack,flash_attn,causal_conv1d,"
                    "selective_scan_cuda,causal_conv1d_cuda,deep_gemm,flash_mla,deep_ep,apex,amp_C",
                    help="top-level modules whose imports --propose lists")
    ap.add_argument("--quick", action="store_true", help="accepted for bench/run_all.py: the whole evaluation is "
                    "already quick (about 20 s)")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    if args.propose:
        print(yaml.safe_dump(propose(os.path.join(args.mirrors, args.propose), set(args.cuda_modules.split(","))),
                             sort_keys=False, width=200))
        return 0
    if not os.path.isdir(args.mirrors):
        print(f"error: mirror directory {args.mirrors} does not exist; clone the projects named in "
              f"{LABELS}/*.yaml there (see the docstring) or pass --mirrors", file=sys.stderr)
        return 2
    rules = load_rules()
    names = args.project or sorted(f[:-5] for f in os.listdir(LABELS) if f.endswith(".yaml"))
    rows = []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        rows.append(evaluate(name, load_labels(os.path.join(LABELS, name + ".yaml")), args.mirrors, rules))
    hdr = (f"{'project':<16} {'kind':<26} {'lines':>7} {'scan s':>6}  {'imports P/R (n)':<22} "
           f"{'kernels P/R (n)':<22} {'--apply: lines / left / unsafe'}")
    print(hdr)
    print("-" * len(hdr))
    tot = {"imports": [0, 0, 0], "kernels": [0, 0, 0], "unsafe": 0}
    for r in rows:
        if "error" in r:
            print(f"{r['project']:<16} {r['error']}")
            continue
        cells = []
        for cat in ("imports", "kernels"):
            m = r[cat]
            tot[cat][0] += m["tp"]
            tot[cat][1] += m["found"]
            tot[cat][2] += m["labels"]
            cells.append(f"{m['precision']:.1%}/{m['recall']:.1%} ({m['labels']})")
        a = r["apply"]
        tot["unsafe"] += a["unsafe"]
        print(f"{r['project']:<16} {r['kind'][:26]:<26} {r['lines']:>7} {r['seconds']:>6.2f}  {cells[0]:<22} "
              f"{cells[1]:<22} {a['lines_rewritten']} / {a['left_statements']} / {a['unsafe']}")
    summary = {}
    for cat in ("imports", "kernels"):
        tp, found, labels = tot[cat]
        summary[cat] = {"precision": tp / found if found else 1.0, "recall": tp / labels if labels else 1.0,
                        "labels": labels, "found": found}
    summary["unsafe_rewrites"] = tot["unsafe"]
    print("-" * len(hdr))
    print(f"{'all':<16} {'':<26} {'':>7} {'':>6}  "
          f"{summary['imports']['precision']:.1%}/{summary['imports']['recall']:.1%} ({summary['imports']['labels']})"
          f"{'':<4}{summary['kernels']['precision']:.1%}/{summary['kernels']['recall']:.1%} "
          f"({summary['kernels']['labels']})   unsafe rewrites: {tot['unsafe']}")
    goals = (min(summary["imports"]["precision"], summary["kernels"]["precision"]) >= 0.98
             and min(summary["imports"]["recall"], summary["kernels"]["recall"]) >= 0.95 and tot["unsafe"] == 0)
    print(f"goals (precision >= 98%, recall >= 95%, 0 unsafe rewrites): {'met' if goals else 'NOT met'}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, {"summary": summary, "goals_met": goals, "projects": rows}, indent=1)
    print(f"wrote {os.path.relpath(args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
