"""Which optimiser moves which parameter: Muon, AdamW, or nothing (docs/training.md).

The split is decided by the parameter's *role*, read from its official name (ascend_v4/model.py uses the release
names), with its shape and `requires_grad` as guards:

* **muon**   every weight *matrix* that acts as a linear map: attention (wq_a, wq_b, wkv, wo_a, wo_b), compressors
             (wkv, wgate, also the indexer's), indexer (wq_b, weights_proj), the router affinity matrix
             `ffn.gate.weight`, routed experts (each expert's w1/w2/w3 is its own Parameter and is orthogonalised
             on its own), the shared expert, MTP e_proj/h_proj, and the mHC W_* projections `hc_*_fn`.
             Of the technical report's two AdamW lists we take the larger ("Muon for everything except
             embedding, head, RMSNorm and mHC biases + gates"); docs/training.md says why.
* **adamw**  embedding, output head, every RMSNorm gain (`*norm.weight`), mHC static biases `hc_*_base` (S_*) and
             gating factors `hc_*_scale` (α_*), per-head `attn_sink` logits, compressor `ape`, and any other
             vector (1-D) parameter.  `ape` [ratio, c] is 2-D but is a learned per-slot *position bias* added to
             the pooling scores (docs/design.md), i.e. a lookup table indexed by position-in-block like the embedding,
             not a linear map; orthogonalising it (flattening its singular values) has no meaning, and its
             largest side is only `ratio` (4 or 128) rows.
* **frozen** `ffn.gate.bias` (moved by the aux-loss-free balancer, never by gradients), the hash-routing table
             `ffn.gate.tid2eid` (int), and anything with `requires_grad=False` or an integer dtype.

A name that matches no known role still gets a group (2-D `*.weight` -> muon, <2-D -> adamw, other -> frozen) but
its reason starts with "default:" so `--list-param-groups` shows it; pass `strict=True` to raise instead (frozen
parameters are never an error).
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

MUON, ADAMW, FROZEN = "muon", "adamw", "frozen"
GROUPS = (MUON, ADAMW, FROZEN)

_P = r"(?:^|\.)"  # start of the name or of a dotted component (the name may carry a wrapper prefix)

# (pattern, group, allowed ndims, reason) — first match wins; frozen roles come first.
_RULES: Tuple[Tuple[re.Pattern, str, Tuple[int, ...], str], ...] = tuple(
    (re.compile(p), g, nd, r) for p, g, nd, r in (
        (_P + r"ffn\.gate\.bias$", FROZEN, (1,),
         "router bias: moved by the aux-loss-free balancer, never by gradients"),
        (_P + r"tid2eid$", FROZEN, (2,), "hash-routing table token->experts (integer, fixed)"),
        (_P + r"embed\.weight$", ADAMW, (2,), "token embedding (a lookup table, not a linear map)"),
        (_P + r"head\.weight$", ADAMW, (2,), "output prediction head (AdamW, as DeepSeek trains it)"),
        (r"norm\.weight$", ADAMW, (1,), "RMSNorm gain"),
        (_P + r"hc_(?:attn|ffn|head)_base$", ADAMW, (1,), "mHC static bias S_*"),
        (_P + r"hc_(?:attn|ffn|head)_scale$", ADAMW, (1,), "mHC gating factor alpha_*"),
        (_P + r"attn_sink$", ADAMW, (1,), "per-head attention-sink logit"),
        (_P + r"compressor\.ape$", ADAMW, (2,),
         "compressor per-slot position bias added to pooling scores: a table, not a linear map"),
        (_P + r"hc_(?:attn|ffn|head)_fn$", MUON, (2,), "mHC W_* projection matrix"),
        (_P + r"indexer\.compressor\.(?:wkv|wgate)\.weight$", MUON, (2,), "indexer key-compressor projection"),
        (_P + r"compressor\.(?:wkv|wgate)\.weight$", MUON, (2,), "KV compressor projection"),
        (_P + r"indexer\.(?:wq_b|weights_proj)\.weight$", MUON, (2,), "lightning-indexer projection"),
        (_P + r"attn\.(?:wq_a|wq_b|wkv|wo_a|wo_b)\.weight$", MUON, (2,), "attention projection"),
        (_P + r"ffn\.gate\.weight$", MUON, (2,), "MoE router affinity matrix"),
        (_P + r"experts\.(\d+)\.w[123]\.weight$", MUON, (2,), "routed expert {0} matrix, orthogonalised on its own"),
        (_P + r"experts\.w[123](?:\.weight)?$", MUON, (3,),
         "stacked routed experts [E, out, in]: each expert slice orthogonalised on its own"),
        (_P + r"shared_experts\.w[123]\.weight$", MUON, (2,), "shared expert matrix"),
        (_P + r"(?:e_proj|h_proj)\.weight$", MUON, (2,), "MTP input projection"),
    ))


def classify(name: str, shape: Sequence[int], requires_grad: bool = True, dtype=None,
             strict: bool = False) -> Tuple[str, str]:
    """(group, reason) for one parameter. group is 'muon', 'adamw' or 'frozen'.

    `dtype` (a MindSpore or NumPy dtype, optional): integer/bool parameters are frozen.
    `strict`: raise ValueError for a name that matches no known role instead of using the default rule.
    """
    shape = tuple(int(s) for s in shape)
    group, reason = _by_role(name, shape, strict and requires_grad and (dtype is None or _is_float(dtype)))
    if group != FROZEN:
        if not requires_grad:
            return FROZEN, f"requires_grad=False (role: {reason})"
        if dtype is not None and not _is_float(dtype):
            return FROZEN, f"non-float dtype {dtype} (role: {reason})"
    return group, reason


def _by_role(name: str, shape: Tuple[int, ...], strict: bool) -> Tuple[str, str]:
    nd = len(shape)
    for pat, group, ndims, reason in _RULES:
        m = pat.search(name)
        if m is None:
            continue
        if nd not in ndims:
            raise ValueError(f"{name}: shape {shape} does not fit its role ({reason}; expected {ndims}-D)")
        return group, reason.format(*m.groups())
    if strict:
        raise ValueError(f"{name} {shape}: no known optimiser role")
    if nd == 2 and name.endswith("weight"):
        return MUON, "default: unrecognised 2-D weight matrix"
    if nd < 2:
        return ADAMW, "default: unrecognised vector/scalar"
    return FROZEN, f"default: unrecognised {nd}-D parameter, left untouched"


def _is_float(dtype) -> bool:
    return "float" in str(dtype).lower()  # MindSpore Float32/BFloat16/..., NumPy float32/...


def classify_param(p, strict: bool = False) -> Tuple[str, str]:
    """classify() for a MindSpore Parameter."""
    return classify(p.name, p.shape, p.requires_grad, p.dtype, strict)


def split(params: Iterable, strict: bool = False) -> Dict[str, List]:
    """{'muon': [...], 'adamw': [...], 'frozen': [...]}: the Parameters of each group, in input order.
    `params` is an iterable of Parameters or a Cell (its get_parameters())."""
    if hasattr(params, "get_parameters"):
        params = params.get_parameters()
    out: Dict[str, List] = {g: [] for g in GROUPS}
    seen = set()
    for p in params:
        if p.name in seen:
            raise ValueError(f"duplicate parameter name {p.name}")
        seen.add(p.name)
        out[classify_param(p, strict)[0]].append(p)
    return out


class ParamRow(NamedTuple):
    """One `--list-param-groups` row; iterates as (name, shape, group, reason)."""
    name: str
    shape: Tuple[int, ...]
    group: str
    reason: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def describe(model, strict: bool = False) -> List[ParamRow]:
    """One ParamRow (name, shape, group, reason) per parameter, in model order, for `--list-param-groups`.
    `model` is a Cell (all its parameters, frozen ones included) or an iterable of Parameters."""
    rows = []
    for p in (model.get_parameters() if hasattr(model, "get_parameters") else model):
        g, r = classify_param(p, strict)
        rows.append(ParamRow(p.name, tuple(int(d) for d in p.shape), g, r))
    return rows


def summarize(rows: Sequence[ParamRow]) -> Dict[str, Dict[str, int]]:
    """{group: {'tensors': n, 'numel': n}} over describe() rows."""
    out = {g: {"tensors": 0, "numel": 0} for g in GROUPS}
    for r in rows:
        out[r.group]["tensors"] += 1
        out[r.group]["numel"] += r.numel
    return out


def format_table(rows: Sequence[ParamRow], group: Optional[str] = None) -> str:
    """Plain-text table of describe() rows (optionally one group only), then per-group totals over all rows."""
    sel = [r for r in rows if group is None or r.group == group]
    w = max([len(r.name) for r in sel] + [4])
    lines = [f"{'name':<{w}}  {'shape':<16} {'group':<6}  reason"]
    for r in sel:
        lines.append(f"{r.name:<{w}}  {str(list(r.shape)):<16} {r.group:<6}  {r.reason}")
    lines.append("")
    for g, s in summarize(rows).items():
        lines.append(f"{g:<6}  {s['tensors']:6d} tensors  {s['numel']:14,d} parameters")
    return "\n".join(lines)
