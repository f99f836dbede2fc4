"""Producers: the bytes of each planned group, computed chunk by chunk from the memory-mapped source.

A producer yields (entry index within the group, byte offset within the entry, array); the writer
puts the array's bytes there. Chunks are a few hundred thousand elements (row blocks), so a
worker's memory does not grow with the tensor: a 1 GB embedding or a 400 MB Pro wq_b is streamed
the same way as a 4 KB norm.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import numpy as np

from ascend_v4.checkpoint.inventory import scale_name
from ascend_v4.checkpoint.safetensors_io import STORAGE_DTYPES
from ascend_v4.checkpoint.values import value_problem

from . import quantize as Q
from .errors import ConvertError
from .plan import Group
from .source import MappedReader, SourceLayout

DECODE_CHUNK_ELEMS = 1 << 17        # keeps the 64K-entry lookup tables and indices in cache
COPY_CHUNK_BYTES = 4 << 20

Chunk = Tuple[int, int, np.ndarray]


class SourceData:
    """Worker-side access to the release's tensor data."""

    def __init__(self, layout: SourceLayout):
        self.layout = layout
        self.reader = MappedReader()
        self._paths = {}

    def rows(self, entry: str, r0: int, r1: int) -> np.ndarray:
        e = self.layout.entries[entry]
        path = self._paths.get(e.shard)
        if path is None:
            path = self._paths[e.shard] = self.layout.path(e.shard)
        return self.reader.rows(path, e.offset, e.dtype, e.shape, r0, r1)

    def whole(self, entry: str) -> np.ndarray:
        e = self.layout.entries[entry]
        return self.rows(entry, 0, e.shape[0] if e.shape else 1)

    def close(self) -> None:
        self.reader.close()


def _rows_per_chunk(shape, target_elems: int) -> int:
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    return max(1, target_elems // max(1, row))


def _row_range(shape, split) -> Tuple[int, int]:
    n = shape[0] if shape else 1
    if split is not None and split[0] == 0:
        _, part, parts = split
        return part * n // parts, (part + 1) * n // parts
    return 0, n


def _col_range(shape, split) -> Optional[Tuple[int, int]]:
    if split is not None and split[0] == 1:
        _, part, parts = split
        n = shape[1]
        return part * n // parts, (part + 1) * n // parts
    return None


def _fail(src: SourceData, name: str, counts: Q.Counts) -> None:
    raise ConvertError(f"{src.layout.where(name)}: tensor '{name}' has {counts.message()}; the shard is corrupt "
                       f"or not this model's release - re-download it")


def produce(group: Group, src: SourceData, progress: Callable[[int], None], stats: Optional[dict] = None,
            int4_group=0) -> Iterator[Chunk]:
    """stats (optional): filled with {logical name: [sum (w - w_q)^2, sum w^2]} for quantised tensors."""
    if group.kind in ("int8s", "int4s", "int8x"):
        yield from _to_serving(group, src, progress, {} if stats is None else stats, int4_group)
        return
    if group.kind in ("copy", "src_scale"):
        yield from _copy(group, src, progress)
    elif group.kind == "bf16":
        yield from _to_bf16(group, src, progress)
    elif group.kind in ("int8", "int4"):
        yield from _to_int(group, src, progress, stats if stats is not None else {}, int4_group)
    elif group.kind == "int8g":
        yield from _to_int8_groups(group, src, progress, stats if stats is not None else {})
    else:  # pragma: no cover
        raise ConvertError(f"internal: unknown group kind {group.kind!r}")


def _copy(group: Group, src: SourceData, progress) -> Iterator[Chunk]:
    name = group.source
    e = src.layout.entries[name]
    shape, dt = e.shape, e.dtype
    item = STORAGE_DTYPES[dt].itemsize
    r0, r1 = _row_range(shape, group.split)
    cols = _col_range(shape, group.split)
    step = _rows_per_chunk(shape, max(1, COPY_CHUNK_BYTES // item))
    counts = Q.Counts()
    out_row = group.entries[0].nbytes // max(1, r1 - r0) if shape else 0
    for a in range(r0, r1, step):
        b = min(r1, a + step)
        arr = src.rows(name, a, b)
        progress(arr.nbytes)
        if cols is not None:
            arr = np.ascontiguousarray(arr[:, cols[0]:cols[1]])
        if dt == "BF16":
            counts.add_bits(arr)
        elif dt in ("F32", "F16", "F64"):
            counts.add_f32(arr)
        # tid2eid range; a NaN E8M0 scale is reported by its weight's decoder, with the count of values it spoils
        bad = value_problem(name, dt, arr, src.layout.cfg.n_routed_experts) if dt != "F8_E8M0" else None
        if bad:
            raise ConvertError(f"{src.layout.where(name)}: {bad}")
        yield 0, (a - r0) * out_row, arr
    if counts.bad():
        _fail(src, name, counts)


def _decoder(group: Group, src: SourceData):
    """rows(a, b, counts) -> BF16 bits of source rows [a, b), full width; plus source bytes per row."""
    name = group.source
    spec = src.layout.inventory[name]
    e = src.layout.entries[name]
    if spec.fmt == "fp8":
        scale = np.array(src.whole(scale_name(name)))
        per_row = (e.nbytes + scale.nbytes) // e.shape[0]
        block = src.layout.fp8_block

        def dec(a, b, counts):
            return Q.fp8_block_to_bf16(src.rows(name, a, b), scale, a, counts, block)
        return dec, per_row
    if spec.fmt == "fp8_row":          # V4.1 Engram table: one E8M0 scale per 32 values of a row
        sname = scale_name(name)
        per_row = (e.nbytes + src.layout.entries[sname].nbytes) // e.shape[0]

        def dec(a, b, counts):
            return Q.fp8_block_to_bf16(src.rows(name, a, b), src.rows(sname, a, b), 0, counts, (1, 32))
        return dec, per_row
    if spec.fmt == "fp4":
        sname = scale_name(name)
        per_row = (e.nbytes + src.layout.entries[sname].nbytes) // e.shape[0]

        def dec(a, b, counts):
            return Q.mxfp4_to_bf16(src.rows(name, a, b), src.rows(sname, a, b), counts)
        return dec, per_row
    if spec.fmt == "bf16":
        per_row = e.nbytes // e.shape[0]

        def dec(a, b, counts):
            bits = src.rows(name, a, b)
            counts.add_bits(bits)
            return bits
        return dec, per_row
    raise ConvertError(f"internal: cannot decode {name} of format {spec.fmt}")


def _source_rows(group: Group, src: SourceData):
    """How the bf16 and int writers read group's source tensor: (name, shape, decoder, source bytes per row, its row
    range (r0, r1) and column range (None: all) in this group's split, rows per decoded chunk)."""
    name = group.source
    shape = src.layout.inventory[name].shape
    dec, per_row = _decoder(group, src)
    return (name, shape, dec, per_row, _row_range(shape, group.split), _col_range(shape, group.split),
            _rows_per_chunk(shape, DECODE_CHUNK_ELEMS))


def _to_bf16(group: Group, src: SourceData, progress) -> Iterator[Chunk]:
    name, shape, dec, per_row, (r0, r1), cols, step = _source_rows(group, src)
    out_row = (cols[1] - cols[0] if cols else shape[1]) * 2
    counts = Q.Counts()
    for a in range(r0, r1, step):
        b = min(r1, a + step)
        bits = dec(a, b, counts)
        progress((b - a) * per_row)
        if cols is not None:
            bits = np.ascontiguousarray(bits[:, cols[0]:cols[1]])
        yield 0, (a - r0) * out_row, bits
    if counts.bad():
        _fail(src, name, counts)


def _int4_groups(name: str, src: SourceData, a: int, b: int, w: np.ndarray, group: int):
    """int4 codes (-8..7) and per-group scales of rows [a, b) of a routed expert (one implementation for both
    layouts): the code-histogram search for MXFP4 sources at group 32, the float search otherwise."""
    if src.layout.inventory[name].fmt == "fp4" and group == 32:
        return Q.int4_group32_from_fp4(src.rows(name, a, b), src.rows(scale_name(name), a, b))
    return Q.int4_group_search(w, group)


def _to_int(group: Group, src: SourceData, progress, stats: dict, int4_group=0) -> Iterator[Chunk]:
    name, shape, dec, per_row, (r0, r1), cols, step = _source_rows(group, src)
    qmax = Q.INT4_QMAX if group.kind == "int4" else Q.INT8_QMAX
    out_row = group.entries[0].nbytes // max(1, r1 - r0)
    counts = Q.Counts()
    g4 = int(int4_group or 0) or shape[1]                   # int4: group size along the input dim (0: per row)
    scales = np.empty((r1 - r0, shape[1] // g4) if group.kind == "int4" else r1 - r0, np.float32)
    err2 = ref2 = 0.0
    # error sums: a dim-0 TP part covers its rows (key name#part, summed by run.quant_errors); a dim-1 part
    # quantises full rows, so part 0 stands for the tensor; replicas on other ranks write the same key
    split = group.split
    keep = split is None or split[0] == 0 or split[1] == 0
    key = name if split is None or split[0] == 1 else f"{name}#{split[1]}"
    for a in range(r0, r1, step):
        b = min(r1, a + step)
        bits = dec(a, b, counts)
        progress((b - a) * per_row)
        if counts.bad():
            continue                       # keep counting, fail once the whole tensor is seen
        if group.kind == "int4":
            q, s = _int4_groups(name, src, a, b, Q.bf16_to_f32(bits), g4)
            wq = Q.dequant_int4(Q.pack_int4(q), s).astype(np.float64)
        else:
            q, s = Q.quant_bf16_rows(bits, qmax)
            wq = q.astype(np.float64) * s.astype(np.float64)[:, None]
        if keep:
            w = Q.bf16_to_f32(bits).astype(np.float64)
            d = w - wq
            err2 += float(np.einsum("ij,ij->", d, d))
            ref2 += float(np.einsum("ij,ij->", w, w))
        if group.kind == "int4":
            q = Q.pack_int4(q)
        scales[a - r0: b - r0] = s
        if cols is not None:
            c0, c1 = (cols[0] // 2, cols[1] // 2) if group.kind == "int4" else cols
            q = np.ascontiguousarray(q[:, c0:c1])
        yield 0, (a - r0) * out_row, q
    if counts.bad():
        _fail(src, name, counts)
    if keep:
        stats[key] = [err2, ref2]
    yield 1, 0, scales


def _to_int8_groups(group: Group, src: SourceData, progress, stats: dict) -> Iterator[Chunk]:
    """int8g (V4.1 Engram tables): rows decoded to BF16 exactly, then int8 symmetric per group of G values of a
    row (scale = max|group| / 127, q = round-half-even(w / scale)); the [rows, d/G] float32 scales follow the
    codes - the layout the host prefetcher reads (ops/engram/host.py `dequant_group_int8`). The writer takes
    entries in file order, and a table's scales (12 GB for one of V4.1-Flash's) must not be held in memory, so
    the rows are decoded twice: codes on the first pass, scales on the second."""
    name = group.source
    shape = src.layout.inventory[name].shape
    dec, per_row = _decoder(group, src)
    r0, r1 = _row_range(shape, group.split)
    step = _rows_per_chunk(shape, DECODE_CHUNK_ELEMS)
    w_ent, s_ent = group.entries
    n_groups = s_ent.shape[1]
    err2 = ref2 = 0.0
    key = name if group.split is None else f"{name}#{group.split[1]}"

    def quant(a, b, counts):
        bits = dec(a, b, counts)
        if counts.bad():
            return bits, None, None
        q, s = Q.quant_bf16_rows(bits.reshape((b - a) * n_groups, -1), Q.INT8_QMAX)
        return bits, q, s
    counts = Q.Counts()
    for a in range(r0, r1, step):
        b = min(r1, a + step)
        bits, q, s = quant(a, b, counts)
        progress((b - a) * per_row)
        if q is None:
            continue                       # keep counting, fail once the whole tensor is seen
        w = Q.bf16_to_f32(bits).astype(np.float64).reshape((b - a) * n_groups, -1)
        d = w - q.astype(np.float64) * s.astype(np.float64)[:, None]
        err2 += float(np.einsum("ij,ij->", d, d))
        ref2 += float(np.einsum("ij,ij->", w, w))
        yield 0, (a - r0) * w_ent.shape[1], q.reshape(b - a, -1)
    if counts.bad():
        _fail(src, name, counts)
    for a in range(r0, r1, step):
        b = min(r1, a + step)
        yield 1, (a - r0) * n_groups * 4, quant(a, b, Q.Counts())[2].reshape(b - a, n_groups)
    stats[key] = [err2, ref2]


def _to_serving(group: Group, src: SourceData, progress, stats: dict, int4_group) -> Iterator[Chunk]:
    """int8s / int4s / int8x groups (serving layout, never split): the weight streamed in row blocks,
    then weight_scale, weight_offset (zeros: symmetric), [weight_scale_second, weight_offset_second],
    [scale_bias]; see plan._serving_entries. The relative error of each tensor goes to `stats`."""
    name = group.source
    spec = src.layout.inventory[name]
    o, i = spec.shape
    dec, per_row = _decoder(group, src)
    step = _rows_per_chunk(spec.shape, DECODE_CHUNK_ELEMS)
    step += step % 2                                     # int4 packs pairs of output rows
    g = 32 if int4_group == "exact" else int(int4_group or 0)
    counts = Q.Counts()
    err2 = ref2 = 0.0
    row_scale = np.ones((o, 1), np.float32)
    second = np.ones((o, i // (g or i)), np.float32) if group.kind != "int8s" else None
    bias = []
    ents = group.entries
    for a in range(0, o, step):
        b = min(o, a + step)
        bits = dec(a, b, counts)
        progress((b - a) * per_row)
        if counts.bad():
            continue                                     # keep counting, fail once the whole tensor is seen
        w = Q.bf16_to_f32(bits)
        if group.kind == "int8s":
            q, s = Q.quant_bf16_rows(bits, Q.INT8_QMAX)
            row_scale[a:b, 0] = s
            wq = q.astype(np.float32) * s[:, None]
            out = q
        else:
            if group.kind == "int8x":
                q, s = Q.int8_group32_exact(src.rows(name, a, b), src.rows(scale_name(name), a, b))
            else:
                q, s = _int4_groups(name, src, a, b, w, g or i)
            gs = i // s.shape[1]
            wq = (q.astype(np.float32).reshape(b - a, -1, gs) * s[..., None]).reshape(b - a, i)
            if g:
                second[a:b] = s
            else:
                row_scale[a:b] = s
            if group.kind == "int4s":
                bias.append(Q.int4_scale_bias(q, s, ents[-1].shape[1]))
                out = Q.pack_int4_out(q)
            else:
                out = q
        d = (w - wq).astype(np.float64)
        err2 += float(np.einsum("ij,ij->", d, d))
        ref2 += float(np.einsum("ij,ij->", w, w, dtype=np.float64))
        yield 0, a * ents[0].nbytes // o, out
    if counts.bad():
        _fail(src, name, counts)
    stats[name] = [err2, ref2]
    yield 1, 0, row_scale
    yield 2, 0, np.zeros((o, 1), np.float32)
    k = 3
    if second is not None and len(ents) >= 5 and ents[3].name.endswith("weight_scale_second"):
        yield 3, 0, second
        yield 4, 0, np.zeros_like(second)
        k = 5
    if group.kind == "int4s":
        yield k, 0, np.concatenate(bias, axis=0)
