"""KVCache: the per-batch serving cache (window rings, compressed entries, indexer keys, compressor state).

The buffers are MindSpore Parameters that the compiled step graphs update in place; CacheLayout names them and
gives their shapes, dtypes and which block reads which buffer. One cache serves `batch` sequences of up to
`max_len` tokens; `reset(rows)` starts new sequences in those rows (the compressor state goes back to kv 0 /
score -1e30 — the reference never resets it; we must, or a second sequence pools the first one's tail into its
first entry; docs/design.md, "conventions").

Per main layer i (ratio r; W = window, hd = head_dim, c_I = index_head_dim, Nmax = max_len // r,
coff = 2 if r == 4 else 1, S = the slack below), stored 2-D as [B·rows, width]:
  L{i}.win                       [B, W+S+1, hd]        window ring, slot = position mod (W+S); last row is scratch
                                                       (int8: .win_q [.., hd-rope] i8, .win_r [.., rope],
                                                       .win_s [.., 1];
                                                       reference: .win_c [.., hd] u8, .win_s [.., hd/32] u8)
  L{i}.ent            (r > 0)    [B, Nmax+1, hd]       compressed entries (int8 split likewise; row Nmax is scratch)
  L{i}.ckv / L{i}.csc (r > 0)    [B, coff·r+S+1, coff·hd] compressor state (kv 0 / score -1e30 at sequence
                                                       start), position a in slot a mod (coff·r+S); last row scratch
  L{i}.ikey           (r == 4)   [B, Nmax+1, c_I]      indexer keys
  L{i}.ikv / L{i}.isc (r == 4)   [B, 2r+S+1, 2c_I]     indexer compressor state
MTP block j: M{j}.win (SWA ring of the draft block, W+S+1 rows).
Speculative rollback (docs/design.md, "speculative rollback"): every buffer is addressed by position, so a verify
step of up to V = verify_tokens tokens whose tail is rejected is undone by rewinding the row's length — no copy.
The slack S = max(0, V - 2) extra ring / state slots make that exact: a rejected position x is at most V - 2 past
the row's new length q, and the oldest position a later step reads from a ring is > q - W (window) or
> q - coff·r (compressor state), so x's slot is one nothing reads before x is written again. Entries and indexer
keys are rows by group, read only below the visible count, and rewritten when their group completes for real.
DeepSeek-V4.1 (docs/deepseek-v4.1.md, "serving"): every layer has its ring; only the kv sources (kv_source_layers)
have .ent, .ckv/.csc (r slots, no overlap) and .ikey (index keys derived from the compressor latent) — the other
compressed layers read their kv source's buffers, so the cache holds 4 compressed layers for Flash, not 38.
Stored formats (kv_format, KV_FORMATS; the codecs are ascend_v4/kv_formats.py; docs/deepseek-v4.1.md, "KV cache
formats"): every KV buffer (rings, entries, and V4.1's index keys) is one float32 buffer ("float32"), or its
stored parts:
  "int8"       (V4 and V4.1) the non-RoPE dims int8 with one float32 scale per row (amax / 127), RoPE dims float32:
               name_q / name_r / name_s (V4.1's index keys too, with index_head_dim - rope_head_dim int8 dims;
               V4's index keys stay float32)
  "reference"  (V4.1) DeepSeek-V4.1's own formats: window rings FP8 E4M3 codes + E8M0 scale per 32 (name_c /
               name_s), compressed entries FP4 E2M1 (two per byte) + E4M3 scale per 16, index keys FP4 + E8M0 per 32
A step's own kv rows and new entries / keys are read back through the same encoding, and a ring keeps each row
as stored (never re-encoded), so chunked == one-shot == decode and speculative rollback hold in every format.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from .. import kv_formats as kvf
from ..config import ModelConfig
from ..ops.common import NEG_INF

_UID = itertools.count()
KV_FORMATS = ("float32", "int8", "reference")


def compressed_bytes_per_token(cfg: ModelConfig, entry: float, key: float) -> Dict[str, float]:
    """Steady-state cache bytes per token of context, by layer kind (cfg.layer_kind), of the layers that store
    compressed KV, given the bytes of one stored entry and of one index key: a DeepSeek-V4 layer of ratio r stores
    an entry per r tokens and, CSA (r = 4) only, an indexer key per r tokens; a V4.1 kv source stores an entry and an
    index key per r tokens (the layers that reuse its cache store none). Window rings are fixed per sequence."""
    v41 = cfg.version == "v4.1"
    out: Dict[str, float] = {}
    for i in range(cfg.n_layers):
        r = cfg.ratio(i)
        if v41 and i in cfg.kv_source_layers:
            b = (entry + key) / r
        elif not v41 and r:
            b = entry / r + (key / r if r == 4 else 0.0)
        else:
            continue
        out[cfg.layer_kind(i)] = out.get(cfg.layer_kind(i), 0.0) + b
    return out


def check_kv_format(cfg: ModelConfig, kv_format: str) -> str:
    """The cache format by name (KV_FORMATS); 'reference' is DeepSeek-V4.1's only."""
    if kv_format not in KV_FORMATS:
        raise ValueError(f"kv_format must be one of {', '.join(KV_FORMATS)}, got {kv_format!r}")
    if kv_format == "reference" and cfg.version != "v4.1":
        raise ValueError(f"kv_format 'reference' (FP8 window / FP4 compressed KV) is DeepSeek-V4.1's storage; config "
                         f"'{cfg.name}' is V4: use 'int8' or 'float32'")
    return kv_format


def role_format(kv_format: str, role: str) -> int:
    """The ascend_v4/kv_formats.py format of a KV buffer of `role` (ring / entries / index_keys)."""
    if kv_format == "int8":
        return kvf.INT8
    if kv_format == "reference":
        return {"ring": kvf.FP8, "entries": kvf.FP4_E4M3, "index_keys": kvf.FP4_E8M0}[role]
    return kvf.F32


@dataclass(frozen=True)
class CacheEntry:
    name: str
    shape: Tuple[int, ...]
    dtype: str            # numpy dtype name
    fill: float           # value at sequence start
    kind: str             # SWA / CSA / HCA / MTP
    role: str             # ring / entries / index_keys / state
    per_row_tokens: int   # how many token positions a row of this buffer covers (bytes-per-token accounting)

    @property
    def param_shape(self) -> Tuple[int, int]:
        """Stored 2-D as [B·R, width]: ScatterUpdate writes rows in place in O(rows written), while MindSpore's
        CPU ScatterNdUpdate on a [B, R, width] buffer copies the whole buffer per call (2.7 ms at 32 MB)."""
        return (self.shape[0] * self.shape[1], self.shape[2])


class CacheLayout:
    """Names, shapes and dtypes of every cache buffer (the module docstring lists them), and where each block
    finds its buffers in the flat tuple."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, kv_int8: bool = False, mtp: bool = False,
                 verify_tokens: int = 1, kv_format: Optional[str] = None):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.cfg, self.batch, self.max_len = cfg, batch, max_len
        if verify_tokens < 1:
            raise ValueError(f"verify_tokens must be >= 1, got {verify_tokens}")
        if kv_format is None:
            kv_format = "int8" if kv_int8 else "float32"
        elif kv_int8 and kv_format != "int8":
            raise ValueError(f"kv_int8=True contradicts kv_format={kv_format!r}")
        self.kv_format = check_kv_format(cfg, kv_format)
        self.kv_int8, self.mtp = kv_format == "int8", bool(mtp and cfg.n_mtp_layers > 0)
        self.verify_tokens = int(verify_tokens)
        self.slack = S = max(0, self.verify_tokens - 2)        # extra ring / state slots (see the module docstring)
        self.entries: List[CacheEntry] = []
        self.index: Dict[str, int] = {}
        self.kv_handles: Dict[str, Tuple[int, ...]] = {}
        B, W, hd, rd = batch, cfg.window_size, cfg.head_dim, cfg.rope_head_dim
        self.v41 = cfg.version == "v4.1"
        for i in range(cfg.n_layers):
            r = cfg.ratio(i)
            kind = cfg.layer_kind(i)
            self._kv(f"L{i}.win", (B, W + S + 1), kind, "ring", 0)
            if self.v41:
                if i in cfg.kv_source_layers:
                    nmax = max_len // r
                    self._kv(f"L{i}.ent", (B, nmax + 1), kind, "entries", r)
                    self._add(f"L{i}.ckv", (B, r + S + 1, hd), "float32", 0.0, kind, "state", 0)
                    self._add(f"L{i}.csc", (B, r + S + 1, hd), "float32", NEG_INF, kind, "state", 0)
                    self._kv(f"L{i}.ikey", (B, nmax + 1), kind, "index_keys", r)
            elif r:
                nmax = max_len // r
                coff = 2 if r == 4 else 1
                self._kv(f"L{i}.ent", (B, nmax + 1), kind, "entries", r)
                self._add(f"L{i}.ckv", (B, coff * r + S + 1, coff * hd), "float32", 0.0, kind, "state", 0)
                self._add(f"L{i}.csc", (B, coff * r + S + 1, coff * hd), "float32", NEG_INF, kind, "state", 0)
                if r == 4:
                    ci = cfg.index_head_dim
                    self._add(f"L{i}.ikey", (B, nmax + 1, ci), "float32", 0.0, kind, "index_keys", r)
                    self._add(f"L{i}.ikv", (B, 2 * r + S + 1, 2 * ci), "float32", 0.0, kind, "state", 0)
                    self._add(f"L{i}.isc", (B, 2 * r + S + 1, 2 * ci), "float32", NEG_INF, kind, "state", 0)
        if self.v41:    # the last kv source that published index keys (index_keys="shipped" decode), -1: none
            self._add("V41.pub", (B, 1, 1), "float32", -1.0, "SWA", "state", 0)
        if self.mtp:
            for j in range(cfg.n_mtp_layers):
                self._kv(f"M{j}.win", (B, W + S + 1), "MTP", "ring", 0)
        del hd, rd

    def _add(self, name, shape, dtype, fill, kind, role, ratio):
        self.index[name] = len(self.entries)
        self.entries.append(CacheEntry(name, tuple(int(s) for s in shape), dtype, float(fill), kind, role, ratio))

    def row_format(self, role: str) -> Tuple[int, int, int]:
        """(ascend_v4/kv_formats.py format, row width, INT8 int8 width) of a KV buffer of `role`."""
        c = self.cfg
        w = c.index_head_dim if role == "index_keys" else c.head_dim
        return role_format(self.kv_format, role), w, w - c.rope_head_dim

    def _kv(self, name, lead, kind, role, ratio):
        """A KV buffer: one float32 buffer `name`, or the parts of its stored format (INT8: name_q int8 non-RoPE
        dims, name_r float32 RoPE dims, name_s scale; FP8 / FP4: name_c codes, name_s scales)."""
        fmt, w, nope = self.row_format(role)
        parts = kvf.part_shapes(fmt, w, nope)
        if fmt == kvf.F32:
            names = ("",)
        elif fmt == kvf.INT8:
            names = ("_q", "_r", "_s")
        else:
            names = ("_c", "_s")
        for suffix, (dtype, width) in zip(names, parts):
            self._add(name + suffix, lead + (width,), dtype, 0.0, kind, role, ratio)
        self.kv_handles[name] = (fmt,) + tuple(self.index[name + s] for s in names)

    def kv_ids(self, name: str) -> Tuple[int, ...]:
        """A KV buffer's handle (format, flat indices of its parts...) (ascend_v4/model.py, kv_read); () if
        absent."""
        return self.kv_handles.get(name, ())

    def row_bytes(self, role: str) -> int:
        """Bytes of one stored row of a KV buffer of `role` (V4's index keys are float32 in every format)."""
        if role == "index_keys" and not self.v41:
            return self.cfg.index_head_dim * 4
        fmt, w, nope = self.row_format(role)
        return kvf.row_bytes(fmt, w, nope)

    def bytes_per_token(self) -> Dict[str, float]:
        """Cache bytes per token of context for ONE sequence, by layer kind (the window rings and the compressor
        state are fixed per sequence): V4 CSA (entry + indexer key) / 4, HCA entry / 128; V4.1 each kv source's
        (entry + index key) / ratio; SWA and MTP 0."""
        c = self.cfg
        kinds = (["SWA"] + [f"C{r}" for r in sorted({r for r in c.compress_ratios if r}, reverse=True)] + ["MTP"]
                 if self.v41 else ["SWA", "CSA", "HCA", "MTP"])
        out = {k: 0.0 for k in kinds}
        for k, b in compressed_bytes_per_token(c, self.row_bytes("entries"), self.row_bytes("index_keys")).items():
            out[k] += b
        out["total"] = sum(out.values())
        return out

    def ring_bytes_per_seq(self) -> int:
        """Bytes of the window rings of one sequence (W slots per main layer, and per MTP block when held)."""
        n = self.cfg.n_layers + (self.cfg.n_mtp_layers if self.mtp else 0)
        return n * self.cfg.window_size * self.row_bytes("ring")

    def ids(self, name: str) -> int:
        return self.index.get(name, -1)

    def shared_slots(self) -> tuple:
        """V4.1: (index-key buffer id of every kv source, publisher row id); () for V4."""
        if not self.v41:
            return ()
        return (tuple(self.kv_ids(f"L{s}.ikey") for s in self.cfg.kv_source_layers), self.ids("V41.pub"))

    def block_slots(self, model) -> tuple:
        """Per block (main layers, then MTP blocks) the flat cache indices the model's cached step reads and writes:
        (window KV ids, entries KV ids, (ckv, csc), (ikey, ikv, isc), index of the block's ratio in model.ratios) — () / -1 when absent (see ascend_v4/model.py, "cached step")."""
        cfg = self.cfg
        out = []
        for i in range(cfg.n_total_blocks):
            n = "L%d" % i if i < cfg.n_layers else "M%d" % (i - cfg.n_layers)
            r = cfg.ratio(i)
            if self.v41 and r and i < cfg.n_layers:       # entries and keys of the layer's kv source
                src = "L%d" % cfg.kv_source(i)
                out.append((self.kv_ids(n + ".win"), self.kv_ids(src + ".ent"),
                            tuple(self.ids(n + s) for s in (".ckv", ".csc")),
                            (self.kv_ids(src + ".ikey"), -1, -1), model.ratios.index(r)))
                continue
            out.append((self.kv_ids(n + ".win"), self.kv_ids(n + ".ent"),
                        tuple(self.ids(n + s) for s in (".ckv", ".csc")),
                        tuple(self.ids(n + s) for s in (".ikey", ".ikv", ".isc")),
                        model.ratios.index(r) if r else -1))
        return tuple(out)


def ctx_bucket(n: int, max_len: int, minimum: int = 256) -> int:
    """Context capacity a step reads: the next power of two >= max(n, minimum), capped at max_len."""
    b = 1
    while b < max(n, minimum):
        b *= 2
    return min(b, max_len)


class KVCache:
    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, kv_int8: bool = False, mtp: bool = False,
                 verify_tokens: int = 1, kv_format: Optional[str] = None):
        import mindspore as ms
        from mindspore import Parameter, Tensor

        self.cfg = cfg
        self.layout = CacheLayout(cfg, batch, max_len, kv_int8=kv_int8, mtp=mtp, verify_tokens=verify_tokens,
                                  kv_format=kv_format)
        self.kv_format = self.layout.kv_format
        self.batch, self.max_len, self.kv_int8, self.mtp = batch, max_len, self.layout.kv_int8, self.layout.mtp
        uid = next(_UID)
        self.params = tuple(
            Parameter(Tensor(np.full(e.param_shape, e.fill, dtype=e.dtype)), name=f"kvcache{uid}.{e.name}",
                      requires_grad=False)
            for e in self.layout.entries)
        self._ms = ms

    # ------------------------------------------------------------------------------------------ reset
    def reset(self, rows: Optional[Iterable[int]] = None, full: bool = False) -> None:
        """Start new sequences in `rows` (default: all). Resets the compressor state; with
        full=True also zeroes rings, entries and indexer keys (never needed for correctness: every read is
        masked by position, so stale rows are invisible)."""
        from mindspore import Tensor
        rows = list(range(self.batch)) if rows is None else [int(r) for r in rows]
        for r in rows:
            if not 0 <= r < self.batch:
                raise ValueError(f"cache row {r} outside [0, {self.batch})")
        if not rows:
            return
        for e, p in zip(self.layout.entries, self.params):
            if e.role == "state" or full:
                a = p.asnumpy().reshape(e.shape).copy()
                a[rows] = e.fill
                p.set_data(Tensor(a.reshape(e.param_shape)))

    def arrays(self) -> Dict[str, np.ndarray]:
        """Host copies of every buffer, by layout name, in the logical [batch, rows, width] shape."""
        return {e.name: p.asnumpy().reshape(e.shape) for e, p in zip(self.layout.entries, self.params)}

    # ------------------------------------------------------------------------------------------ sizes
    def entry_bytes(self, role: str = "entries") -> int:
        """Bytes of one stored KV row of `role` (ring / entries / index_keys) in this cache's format."""
        return self.layout.row_bytes(role)

    def bytes_per_token_formula(self) -> Dict[str, float]:
        return self.layout.bytes_per_token()

    def report(self) -> Dict[str, Dict[str, float]]:
        """Per layer kind: layers, bytes per token (formula), fixed bytes per sequence, and the bytes actually
        allocated (all rows); plus totals."""
        c = self.cfg
        per_tok = self.bytes_per_token_formula()
        kinds: Dict[str, Dict[str, float]] = {}
        n_layers = {k: 0 for k in self._kinds()}
        n_layers["MTP"] = c.n_mtp_layers if self.mtp else 0
        for i in range(c.n_layers):
            n_layers[c.layer_kind(i)] += 1
        for k in self._kinds():
            kinds[k] = {"layers": n_layers[k], "bytes_per_token": per_tok[k], "fixed_bytes_per_seq": 0.0,
                        "allocated_bytes": 0.0}
        for e in self.layout.entries:
            nbytes = float(np.prod(e.shape)) * np.dtype(e.dtype).itemsize
            kinds[e.kind]["allocated_bytes"] += nbytes
            if e.per_row_tokens:      # entries / index keys: one scratch row per sequence is fixed overhead
                kinds[e.kind]["fixed_bytes_per_seq"] += nbytes / e.shape[1] / self.batch
            else:
                kinds[e.kind]["fixed_bytes_per_seq"] += nbytes / self.batch
        total = {"bytes_per_token": per_tok["total"],
                 "fixed_bytes_per_seq": sum(v["fixed_bytes_per_seq"] for v in kinds.values()),
                 "allocated_bytes": sum(v["allocated_bytes"] for v in kinds.values()),
                 "batch": self.batch, "max_len": self.max_len, "kv_format": self.kv_format}
        return {"kinds": kinds, "total": total}

    def _kinds(self) -> List[str]:
        """Layer kinds in report order: SWA/CSA/HCA/MTP (V4), SWA/C2/C1/.../MTP (V4.1, by ratio)."""
        return [k for k in self.layout.bytes_per_token() if k != "total"]

    def allocated_bytes(self) -> int:
        return int(sum(int(np.prod(e.shape)) * np.dtype(e.dtype).itemsize for e in self.layout.entries))


def format_report(rep: Dict) -> str:
    lines = [f"KV cache ({rep['total']['kv_format']}, batch {rep['total']['batch']}, max_len {rep['total']['max_len']}):"]
    for k, v in rep["kinds"].items():
        if v["layers"]:
            lines.append(f"  {k}: {v['layers']} layer(s), {v['bytes_per_token']:.1f} B/token, fixed "
                         f"{v['fixed_bytes_per_seq'] / 1024:.1f} KiB/seq, allocated {v['allocated_bytes'] / 2**20:.2f} MiB")
    t = rep["total"]
    lines.append(f"  total: {t['bytes_per_token']:.1f} B/token + {t['fixed_bytes_per_seq'] / 1024:.1f} KiB/seq fixed; "
                 f"allocated {t['allocated_bytes'] / 2**20:.2f} MiB")
    return "\n".join(lines)
