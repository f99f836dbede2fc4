"""CUDA/PyTorch -> Ascend migration analyser (``ascend-v4 migrate scan``).

Modules, one concept each:
  rules     load/validate/index ``rules.yaml`` (the rule table is data)
  files     walk a tree, read files robustly
  pyscan    Python AST scanner with import-alias resolution
  router    bf16 MoE-router heuristic used by pyscan
  textscan  regex scanner for C/C++/CUDA, CMake, setup.py, requirements, shell, config.json
  scanner   orchestration -> ScanResult
  report    table / csv / json / md writers and the msFmkTransplt-style CSV set
  apply     ``--apply``: rewritten copy + unified diff
  cli       the click ``migrate`` group
"""
from .apply import apply_rewrites, default_apply_dir, rewrite_text
from .findings import Edit, Finding, ScanResult, ScanWarning, SEVERITIES, EFFORTS
from .report import render, write_msft_set
from .rules import RuleError, RuleSet, load_rules
from .scanner import ScanPathError, scan_path

__all__ = [
    "apply_rewrites", "default_apply_dir", "rewrite_text", "Edit", "Finding", "ScanResult", "ScanWarning",
    "SEVERITIES", "EFFORTS", "render", "write_msft_set", "RuleError", "RuleSet", "load_rules",
    "ScanPathError", "scan_path",
]
