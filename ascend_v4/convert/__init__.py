"""Release checkpoint -> Ascend conversion (bf16 / w8a8 / w4a8; the serving layout vllm-ascend and MindIE load,
or our TP/EP rank shards) and back.

Modules, one per concept:
    plan       what goes where: destination name / dtype / shape / rank per tensor, output files
    sharding   the official converter's split rules (docs/formats.md), TP/EP rank layout, which experts a rank holds
    quantize   int8 / int4 quantisers (per channel; serving int4 per group with a clip search, exact int8 g32),
               the run-time DynamicQuant of activations, exact BF16 decoders
    serving    the serving layout's config.json and quant_model_description.json
    source     release-format validation and chunked memory-mapped reads
    transform  per-tensor producers (chunked dequantise / quantise / split)
    writer     tmp + fsync + hash + rename, journal, worker pool, progress bar
    run        `convert` orchestration and the converted directory's metadata files
    manifest   manifest.json and `verify`
    reverse    `--to-official` (byte-exact for bf16 conversions of any release)
    loader     load_converted (gathers rank shards, dequantises) - reached through ascend_v4.weights.load_checkpoint
    cli        click commands `convert`, `verify`
"""
from .errors import ConvertError
from .loader import converted_plan, is_converted, load_any_checkpoint, load_converted, quantized_linears
from .manifest import verify_dir
from .plan import LAYOUTS, PRECISIONS, build_plan
from .quantize import (INT4_NIBBLE_ORDER, INT4_QMAX, INT8_QMAX, dequant_int4, dequant_int8, pack_int4, quant_int4,
                       quant_int8, unpack_int4)
from .reverse import to_official
from .run import convert_checkpoint
from .sharding import Layout, split_dim

__all__ = [
    "ConvertError", "converted_plan", "is_converted", "load_any_checkpoint", "load_converted", "quantized_linears",
    "verify_dir", "LAYOUTS", "PRECISIONS", "build_plan", "INT4_NIBBLE_ORDER", "INT4_QMAX", "INT8_QMAX", "dequant_int4", "dequant_int8",
    "pack_int4", "quant_int4", "quant_int8", "unpack_int4", "to_official", "convert_checkpoint", "Layout", "split_dim",
]
