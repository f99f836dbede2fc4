"""Checkpoint codecs and official-format I/O (pure NumPy)."""
from .formats import (
    E2M1_VALUES, E4M3_MAX, E2M1_MAX,
    act_quant_fp8,
    bf16_decode, bf16_encode, bf16_round,
    dequant_fp8_block, dequant_mxfp4,
    e2m1_decode, e2m1_encode, e4m3_decode, e4m3_encode, e8m0_decode, e8m0_encode,
    fp4_pack, fp4_unpack,
    mxfp4_to_fp8_block, quant_fp8_block, quant_mxfp4,
)
from .inventory import (
    FORMATS, StoredEntry, TensorSpec, official_inventory, scale_name, stored_entries, stored_inventory,
)
from .official import (
    decode_tensor, encode_tensor, load_official_weights, random_weights, write_official_checkpoint,
)
from .safetensors_io import CheckpointError, SafeTensorFile, ShardedCheckpoint, STORAGE_DTYPES, write_safetensors

__all__ = [
    "E2M1_VALUES", "E4M3_MAX", "E2M1_MAX",
    "act_quant_fp8", "bf16_decode", "bf16_encode", "bf16_round",
    "dequant_fp8_block", "dequant_mxfp4", "e2m1_decode", "e2m1_encode", "e4m3_decode", "e4m3_encode",
    "e8m0_decode", "e8m0_encode", "fp4_pack", "fp4_unpack", "mxfp4_to_fp8_block", "quant_fp8_block",
    "quant_mxfp4",
    "FORMATS", "StoredEntry", "TensorSpec", "official_inventory", "scale_name", "stored_entries",
    "stored_inventory",
    "decode_tensor", "encode_tensor", "load_official_weights", "random_weights", "write_official_checkpoint",
    "CheckpointError", "SafeTensorFile", "ShardedCheckpoint", "STORAGE_DTYPES", "write_safetensors",
]
