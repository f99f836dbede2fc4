"""What goes where: destination name, dtype and shape of every converted tensor, its rank, and the
output file it lands in - decided up front from the source layout and the options only, so the
output is the same whatever the number of workers and whether the run was interrupted.

Destination formats per precision (the release's FP32 tensors stay FP32, BF16 stay BF16 and
`tid2eid` stays int64 in every precision):
* bf16: FP8 (128x128 E8M0) and MXFP4 (1x32 E8M0) linears -> BF16, exact.
* w8a8: the linears 910B runs as int8 with per-token dynamic activation quantisation
  (A8dynW8; the published V4-Flash W8A8's layer set, FORMAT.md): attention `wq_b`, `wo_b`, indexer `wq_b`, the shared expert's
  and every routed expert's w1/w2/w3 -> `<name>` I8 [out, in] + `<name>_scale` F32 [out]
  (symmetric per output channel, see quantize.py); every other linear -> BF16.
* w4a8: routed experts -> `<name>` I8 [out, in/2] holding int4 pairs (low nibble = even column) +
  `<name>_scale` F32 [out]; the rest as w8a8.
Int weights are quantised over the FULL input dimension before any TP split, so the int values do
not depend on --tp; a tensor split on dim 1 carries the full per-row scale on every TP rank.

Output files: rank shards `model-XXXXX-of-YYYYY.safetensors` (world size 1) or
`rankRRR/model-XXXXX-of-YYYYY.safetensors` (one HF-style shard set per rank), at most `shard_bytes`
each (a tensor larger than that gets a file of its own), tensors in release order. The release's E8M0 block scales go,
unchanged and under their release names, to `source/scales-XXXXX-of-YYYYY.safetensors` (one per
release shard that has scales), which is what makes --to-official byte-exact for any source.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ascend_v4.checkpoint.inventory import TensorSpec, scale_name
from ascend_v4.checkpoint.safetensors_io import STORAGE_DTYPES

from .errors import ConvertError
from .sharding import Layout, check_split, module_of, routed_expert_index, split_dim
from .source import SourceLayout

PRECISIONS = ("bf16", "w8a8", "w4a8")
LAYOUTS = ("serving", "ranks")
PLAN_VERSION = 1
DEFAULT_SHARD_BYTES = 2 * 1000 ** 3
SIDECAR_DIR = "source"

# Modules 910B runs as int8 (the published V4-Flash W8A8's set, FORMAT.md; issue 3): keyed on the module name, plus the
# parent for the shared / routed experts.
_INT8_ATTN = frozenset({"wq_b", "wo_b"})
# Release formats stored as codes + a sibling `.scale` (V4.1's FP8 Engram tables are `fp8_row`).
QUANTISED_FORMATS = ("fp8", "fp4", "fp8_row")
ENGRAM_INT8_GROUP = 32          # int8 Engram rows: one float32 scale per 32 values (the release's FP8 groups)
ENGRAM_DTYPES = ("int8", "bf16")


def scale_entry_name(weight: str) -> str:
    """Per-channel scale of an int weight: `x.weight` -> `x.weight_scale`."""
    return weight + "_scale"


# The serving layout quantises the int8 layer set of the published V4-Flash W8A8 checkpoints: also the
# main attention's wq_a and wkv (not the compressor's wkv); the MTP block stays BF16 (vllm-ascend loads
# DeepSeek MTP layers unquantised).
_INT8_ATTN_SERVING = frozenset({"wq_a", "wkv"})


def is_int8_linear(name: str, layout: str = "ranks") -> bool:
    if not name.endswith(".weight"):
        return False
    if layout == "serving" and name.startswith("mtp."):
        return False
    mod = module_of(name)
    if mod in _INT8_ATTN and ".attn." in "." + name:
        return True                                      # attn.wq_b, attn.wo_b, attn.indexer.wq_b
    if layout == "serving" and mod in _INT8_ATTN_SERVING and name.endswith(f".attn.{mod}.weight"):
        return True                                      # attn.wq_a, attn.wkv
    if mod in ("w1", "w2", "w3") and (".ffn.shared_experts." in "." + name or routed_expert_index(name) is not None):
        return True
    return False


def dest_kind(name: str, spec: TensorSpec, precision: str, layout: str = "ranks", int4_group=0,
              engram_dtype: str = "") -> str:
    """copy | bf16 | int8 | int4 (ranks layout) | int8s | int4s | int8x (serving layout) | int8g (DeepSeek-V4.1
    Engram tables with engram_dtype int8: int8 with one float32 scale per 32 values of a row) for one tensor."""
    if spec.fmt in ("f32", "i64"):
        return "copy"
    if spec.fmt == "fp8_row":
        return "int8g" if (engram_dtype or default_engram_dtype(precision)) == "int8" else "bf16"
    if precision != "bf16" and is_int8_linear(name, layout) and len(spec.shape) == 2:
        expert = routed_expert_index(name) is not None
        if layout == "serving":
            if precision == "w4a8" and expert:
                return "int8x" if spec.fmt == "fp4" and int4_group == "exact" else "int4s"
            return "int8s"
        if precision == "w4a8" and expert:
            return "int4"
        return "int8"
    return "copy" if spec.fmt == "bf16" else "bf16"


def serving_names(weight: str) -> Dict[str, str]:
    """msModelSlim tensor names of one quantised linear `<prefix>.weight`."""
    base = weight[: -len(".weight")]
    return {k: f"{base}.{k}" for k in ("weight", "weight_scale", "weight_offset", "weight_scale_second",
                                        "weight_offset_second", "scale_bias")}


def int4_bias_parts(name: str) -> int:
    """scale_bias columns: 16 for the row-parallel down projection (w2), 1 for gate/up."""
    return 16 if module_of(name) == "w2" else 1


_TAG = {"bf16": "BF16", "f32": "F32", "i64": "I64"}


@dataclass
class DestEntry:
    name: str
    dtype: str
    shape: Tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * STORAGE_DTYPES[self.dtype].itemsize


@dataclass
class Group:
    """One source tensor's contribution to one output file (weight + its per-channel scale, if any)."""
    source: str                      # logical name (or, for kind 'src_scale', the release's scale entry)
    kind: str                        # copy | bf16 | int8 | int4 | src_scale
    rank: Optional[int]              # None for the sidecar
    split: Optional[Tuple[int, int, int]]   # (dim, part, parts) or None
    entries: List[DestEntry]
    read_bytes: int = 0              # source bytes this group reads (progress accounting)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)


@dataclass
class OutFile:
    path: str                        # relative to the destination directory
    rank: Optional[int]
    groups: List[Group] = field(default_factory=list)
    _layout: Optional[tuple] = None

    def layout(self):
        """(header bytes incl. length prefix, [(entry, group, absolute offset)], file size).

        Entries in plan order (a group's weight, then its scale), which is the order the producers
        stream them in. With the release's dimensions (multiples of 32) every tensor's byte size is
        a multiple of 8, so every tensor starts aligned."""
        if self._layout is None:
            header = {"__metadata__": {"format": "pt"}}
            off = 0
            placed = []
            for g in self.groups:
                for e in g.entries:
                    header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [off, off + e.nbytes]}
                    placed.append((e, g, off))
                    off += e.nbytes
            blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
            blob += b" " * (-len(blob) % 8)
            head = len(blob).to_bytes(8, "little") + blob
            self._layout = (head, [(e, g, len(head) + o) for e, g, o in placed], len(head) + off)
        return self._layout

    @property
    def size(self) -> int:
        return self.layout()[2]

    @property
    def read_bytes(self) -> int:
        return sum(g.read_bytes for g in self.groups)


@dataclass
class Plan:
    precision: str
    layout: Layout
    shard_bytes: int
    files: List[OutFile]
    source: SourceLayout
    fingerprint: str = ""
    dir_layout: str = "ranks"            # serving | ranks
    int4_group: object = 0               # serving w4a8: 0 (per channel), 32..256, or "exact"
    engram_dtype: str = ""               # DeepSeek-V4.1 Engram tables: int8 | bf16 ("" for V4)

    @property
    def rank_files(self) -> List[OutFile]:
        return [f for f in self.files if f.rank is not None]

    @property
    def sidecar_files(self) -> List[OutFile]:
        return [f for f in self.files if f.rank is None]

    def groups_of(self, source: str) -> List[Tuple[OutFile, Group]]:
        idx = self._group_index()
        return idx.get(source, [])

    def _group_index(self):
        if not hasattr(self, "_gidx"):
            gi: Dict[str, List[Tuple[OutFile, Group]]] = {}
            for f in self.files:
                for g in f.groups:
                    gi.setdefault(g.source, []).append((f, g))
            self._gidx = gi
        return self._gidx

    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def rank_dir(layout: Layout, rank: int) -> str:
    return "" if layout.world == 1 else f"rank{rank:03d}"


def _rank_groups(src: SourceLayout, precision: str, lay: Layout, rank: int, dir_layout: str = "ranks",
                 int4_group=0, engram_dtype: str = "") -> List[Group]:
    cfg = src.cfg
    E = cfg.n_routed_experts
    experts = lay.local_experts(rank, E)
    tp_rank = lay.tp_rank(rank)
    groups: List[Group] = []
    for name, spec in src.inventory.items():
        e = routed_expert_index(name)
        if e is not None and e not in experts:
            continue
        kind = dest_kind(name, spec, precision, dir_layout, int4_group, engram_dtype)
        shape = tuple(spec.shape)
        dim = None if e is not None else split_dim(name)
        split = None
        local = shape
        if dim is not None and lay.tp > 1:
            part = check_split(name, shape, dim, lay.tp, unit=2 if (kind == "int4" and dim == 1) else 1)
            local = tuple(part if i == dim else d for i, d in enumerate(shape))
            split = (dim, tp_rank, lay.tp)
        if kind == "copy":
            ents = [DestEntry(name, src.entries[name].dtype, local)]
        elif kind == "bf16":
            ents = [DestEntry(name, "BF16", local)]
        elif kind in ("int8s", "int4s", "int8x"):
            ents = _serving_entries(name, kind, local, int4_group)
        elif kind == "int8":
            ents = [DestEntry(name, "I8", local), DestEntry(scale_entry_name(name), "F32", (local[0],))]
        elif kind == "int8g":
            ents = [DestEntry(name, "I8", local),
                    DestEntry(scale_entry_name(name), "F32", (local[0], local[1] // ENGRAM_INT8_GROUP))]
        else:  # int4
            if local[1] % 2:
                raise ConvertError(f"tensor '{name}' has an odd input dim {local[1]}; int4 packs pairs of columns")
            g4 = int(int4_group or 0) or local[1]
            if local[1] % g4:
                raise ConvertError(f"tensor '{name}': input dim {local[1]} is not a multiple of the int4 group size "
                                   f"{g4}; choose another --int4-group")
            ents = [DestEntry(name, "I8", (local[0], local[1] // 2)),
                    DestEntry(scale_entry_name(name), "F32", (local[0], local[1] // g4))]
        src_bytes = sum(src.entries[x].nbytes for x in _stored_names(name, spec))
        read = src_bytes if (split is None or split[0] == 1) else src_bytes // lay.tp
        groups.append(Group(name, kind, rank, split, ents, read))
    return groups


def _serving_entries(name: str, kind: str, shape, int4_group) -> List[DestEntry]:
    """Entries of one quantised linear in the serving (msModelSlim) layout, in file order."""
    o, i = shape
    n = serving_names(name)
    one = (o, 1)
    if kind == "int8s":
        return [DestEntry(n["weight"], "I8", (o, i)), DestEntry(n["weight_scale"], "F32", one),
                DestEntry(n["weight_offset"], "F32", one)]
    if kind == "int8x":                                  # exact: int8 codes per group of 32, scale 2^(e-1)
        return [DestEntry(n["weight"], "I8", (o, i)), DestEntry(n["weight_scale"], "F32", one),
                DestEntry(n["weight_offset"], "F32", one), DestEntry(n["weight_scale_second"], "F32", (o, i // 32)),
                DestEntry(n["weight_offset_second"], "F32", (o, i // 32))]
    if o % 2:
        raise ConvertError(f"tensor '{name}' has an odd output dim {o}; W4A8 packs pairs of output channels")
    g = 32 if int4_group == "exact" else int(int4_group)      # exact only applies to FP4 sources
    parts = int4_bias_parts(name)
    if (g and i % g) or i % parts:
        raise ConvertError(f"tensor '{name}': input dim {i} is not a multiple of the int4 group size {g or i} "
                           f"and of {parts}; choose another --int4-group")
    ents = [DestEntry(n["weight"], "I8", (o // 2, i)), DestEntry(n["weight_scale"], "F32", one),
            DestEntry(n["weight_offset"], "F32", one)]
    if g:
        ents += [DestEntry(n["weight_scale_second"], "F32", (o, i // g)),
                 DestEntry(n["weight_offset_second"], "F32", (o, i // g))]
    return ents + [DestEntry(n["scale_bias"], "F32", (o, parts))]


def _stored_names(name: str, spec: TensorSpec) -> List[str]:
    return [name, scale_name(name)] if spec.fmt in QUANTISED_FORMATS else [name]


def _pack(groups: List[Group], shard_bytes: int) -> List[List[Group]]:
    files: List[List[Group]] = [[]]
    used = 0
    for g in groups:
        if files[-1] and used + g.nbytes > shard_bytes:
            files.append([])
            used = 0
        files[-1].append(g)
        used += g.nbytes
    return [f for f in files if f] or [[]]


def default_dir_layout(precision: str, lay: Layout, cfg=None) -> str:
    """serving for w8a8 / w4a8; ranks for bf16, whenever --tp / --ep ask for rank shards, and for DeepSeek-V4.1."""
    if getattr(cfg, "version", "v4") == "v4.1":
        return "ranks"
    return "ranks" if precision == "bf16" or lay.world > 1 else "serving"


def check_int4_group(value) -> object:
    """--int4-group: 'channel' / 0, 32, 64, 128, 256, or 'exact' (int8 per group of 32, FP4 sources)."""
    v = str(value).strip().lower()
    if v in ("channel", "0"):
        return 0
    if v == "exact":
        return "exact"
    if v.isdigit() and int(v) in (32, 64, 128, 256):
        return int(v)
    raise ConvertError(f"--int4-group {value!r}: use channel, 32, 64, 128, 256 or exact")


def default_engram_dtype(precision: str) -> str:
    """Engram tables follow the precision: BF16 (exact) in a bf16 conversion, INT8 per 32 values in w8a8 / w4a8."""
    return "bf16" if precision == "bf16" else "int8"


def build_plan(src: SourceLayout, precision: str, lay: Layout, shard_bytes: int = DEFAULT_SHARD_BYTES,
               dir_layout: Optional[str] = None, int4_group=32, engram_dtype: Optional[str] = None) -> Plan:
    if precision not in PRECISIONS:
        raise ConvertError(f"--dtype {precision!r} is not one of {', '.join(PRECISIONS)}")
    if shard_bytes < 1:
        raise ConvertError(f"--shard-size must be positive, got {shard_bytes}")
    dir_layout = dir_layout or default_dir_layout(precision, lay, src.cfg)
    if dir_layout not in LAYOUTS:
        raise ConvertError(f"--layout {dir_layout!r} is not one of {', '.join(LAYOUTS)}")
    if dir_layout == "serving" and lay.world > 1:
        raise ConvertError(f"--tp {lay.tp} --ep {lay.ep}: the serving layout is one unsharded set (vllm-ascend and "
                           f"MindIE shard it when they load it); add --layout ranks for our per-rank shards")
    if getattr(src.cfg, "version", "v4") == "v4.1" and dir_layout == "serving":
        raise ConvertError("DeepSeek-V4.1: the serving layout (msModelSlim names for vllm-ascend / MindIE) is not "
                           "written for V4.1 yet; add --layout ranks")
    int4_group = check_int4_group(int4_group) if precision == "w4a8" else 0
    if getattr(src.cfg, "version", "v4") == "v4.1" and src.cfg.engram_layer_ids:
        engram_dtype = engram_dtype or default_engram_dtype(precision)
        if engram_dtype not in ENGRAM_DTYPES:
            raise ConvertError(f"--engram-dtype {engram_dtype!r} is not one of {', '.join(ENGRAM_DTYPES)}")
    elif engram_dtype:
        raise ConvertError(f"--engram-dtype: '{src.cfg.name}' has no Engram tables (a DeepSeek-V4.1 option); drop it")
    else:
        engram_dtype = ""
    if int4_group == "exact" and dir_layout != "serving":
        raise ConvertError("--int4-group exact writes the serving layout's int8 experts; drop --layout ranks / "
                           "--tp / --ep, or choose a group size")
    lay.check_experts(src.cfg.n_routed_experts)
    files: List[OutFile] = []
    for r in range(lay.world):
        packs = _pack(_rank_groups(src, precision, lay, r, dir_layout, int4_group, engram_dtype), shard_bytes)
        d = rank_dir(lay, r)
        for i, gs in enumerate(packs):
            fn = f"model-{i + 1:05d}-of-{len(packs):05d}.safetensors"
            files.append(OutFile(os.path.join(d, fn) if d else fn, r, gs))
    # Sidecar: the release's E8M0 scales, one file per release shard that has any.
    scale_entries = set()
    for name, spec in src.inventory.items():
        if spec.fmt in QUANTISED_FORMATS:
            scale_entries.add(scale_name(name))
    per_shard = []
    for i, sh in enumerate(src.shards):
        names = [n for n in sh.names if n in scale_entries]
        if names:
            per_shard.append((i, names))
    for k, (i, names) in enumerate(per_shard):
        fn = f"{SIDECAR_DIR}/scales-{k + 1:05d}-of-{len(per_shard):05d}.safetensors"
        gs = [Group(n, "src_scale", None, None, [DestEntry(n, src.entries[n].dtype, src.entries[n].shape)],
                    src.entries[n].nbytes) for n in names]
        files.append(OutFile(fn, None, gs))
    plan = Plan(precision, lay, shard_bytes, files, src, dir_layout=dir_layout, int4_group=int4_group,
                engram_dtype=engram_dtype)
    plan.fingerprint = fingerprint(plan)
    return plan


def fingerprint(plan: Plan) -> str:
    """Identifies the conversion: options + the source's config and shard headers (not its data)."""
    src = plan.source
    d = {
        "plan_version": PLAN_VERSION,
        "precision": plan.precision,
        "tp": plan.layout.tp,
        "ep": plan.layout.ep,
        "shard_bytes": plan.shard_bytes,
        **({"layout": plan.dir_layout, "int4_group": plan.int4_group} if plan.dir_layout != "ranks" else {}),
        **({"int4_group": plan.int4_group} if plan.dir_layout == "ranks" and plan.precision == "w4a8" else {}),
        **({"engram_dtype": plan.engram_dtype} if plan.engram_dtype else {}),
        "config": hashlib.sha256(src.config_bytes).hexdigest(),
        "shards": [[s.file, s.size, hashlib.sha256(s.header).hexdigest()] for s in src.shards],
    }
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------ name map ----------
_ENCODING = {"copy": "unchanged", "bf16": "bf16 (exact dequantisation)", "int8": "int8 symmetric per output channel",
             "int4": "int4 -8..7 pairs in int8 (low nibble = even column), scale per group of input columns "
                     "(searched clip ratio)",
             "int8s": "W8A8_DYNAMIC: int8 [out, in], symmetric per output channel (weight_scale [out, 1])",
             "int4s": "W4A8_DYNAMIC: int4 -8..7, two output channels per byte (low nibble = even row), "
                      "searched clip ratio per group",
             "int8x": "exact: int8 = 2 x FP4 value per group of 32, scale 2^(e-1)",
             "int8g": "int8 symmetric per group of 32 values of a row (Engram table rows)"}

def name_map(plan: Plan) -> dict:
    """param_name_map.json: release entry name -> where its converted data lives."""
    src = plan.source
    params: Dict[str, list] = {}
    for name, spec in src.inventory.items():
        stored = _stored_names(name, spec)
        for s in stored:
            params[s] = []
        for f, g in plan.groups_of(name):
            for i, e in enumerate(g.entries):
                rec = {"name": e.name, "dtype": e.dtype, "shape": list(e.shape), "rank": g.rank, "file": f.path,
                       "encoding": _ENCODING[g.kind] if i == 0 else f"float32 {e.name.rsplit('.', 1)[-1]}"}
                if g.split is not None:
                    dim, part, parts = g.split
                    n = spec.shape[dim]
                    if i == 0 or dim == 0:
                        rec["slice"] = {"dim": dim, "start": part * n // parts, "stop": (part + 1) * n // parts}
                    else:
                        rec["slice"] = None       # per-row scale of a dim-1 split: full, replicated
                rec["role"] = "weight" if i == 0 else "scale"
                params[name].append(rec)
        if len(stored) == 2:
            sc = stored[1]
            for f, g in plan.groups_of(sc):
                e = g.entries[0]
                params[sc].append({"name": e.name, "dtype": e.dtype, "shape": list(e.shape), "rank": None,
                                   "file": f.path, "encoding": "unchanged",
                                   "role": "release block scale (consumed by dequantisation; kept for --to-official)"})
    return {
        "format": "ascend-v4 param_name_map",
        "version": 1,
        "precision": plan.precision,
        "tp": plan.layout.tp,
        "ep": plan.layout.ep,
        "world_size": plan.layout.world,
        "params": params,
    }
