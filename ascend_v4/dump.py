"""Parity tools: dump the named activations of a forward pass, compare two dumps (msprobe-style report)."""
from __future__ import annotations

import json
from typing import Dict

import numpy as np

from .atomic import write_npz
from .compare import compare_arrays, compare_files, format_compare, load_dump  # noqa: F401  (compare lives there)

DUMP_KEYS_DOC = ("embed [B,S,D]; hidden_block{i} [B,S,hc,D] (the streams after block i); logits [B,S,V]; "
                 "mtp_logits [B,S-1,V] with --mtp")


class DumpError(ValueError):
    pass


def read_token_file(path: str, error=DumpError) -> np.ndarray:
    """int64 [batch, seq] from an integer .npy file ([seq] is one row); `error` is the caller's error class.
    Never unpickles; an .npz archive, a non-integer or an empty array is refused with one line."""
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise error(f"token file {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"token file {path} is a directory; pass an .npy file") from None
    except (ValueError, OSError, EOFError) as e:
        raise error(f"{path} is not a readable .npy array ({(str(e).splitlines() or [''])[0][:120]}); save tokens "
                    f"with numpy.save") from None
    if not isinstance(a, np.ndarray):          # np.load returns an NpzFile for a zip archive, whatever its name
        a.close()
        raise error(f"{path} is an .npz archive, not an .npy array; save the token array with numpy.save(path, ids)")
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.dtype.kind not in "iu":
        raise error(f"{path}: tokens must be an integer [seq] or [batch, seq] array, got {a.dtype} {a.shape}")
    if a.size == 0:
        raise error(f"{path}: the token array is empty")
    if a.dtype.kind == "u" and int(a.max()) > np.iinfo(np.int64).max:
        raise error(f"{path}: token id {int(a.max())} does not fit int64")
    return a.astype(np.int64)


def load_tokens(path: str) -> np.ndarray:
    return read_token_file(path, DumpError)


def check_tokens(ids: np.ndarray, cfg, path: str, error=DumpError) -> None:
    """Token ids inside the vocabulary and sequences no longer than the model's positions."""
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise error(f"{path}: token ids span [{ids.min()}, {ids.max()}] but the vocabulary has {cfg.vocab_size} "
                    f"entries")
    if ids.shape[-1] > cfg.max_position_embeddings:
        raise error(f"{path}: sequences of {ids.shape[-1]} tokens exceed max_position_embeddings "
                    f"({cfg.max_position_embeddings}) of '{cfg.name}'; shorten them")


def save_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """Atomic float32 dump: a killed run or a full disk never leaves a complete-looking file."""
    write_npz(path, {k: np.asarray(v, np.float32) for k, v in arrays.items()})


def json_dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)


# ------------------------------------------------------------------------------ --quant-emulation --------
def dynamic_int8_linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """What a W8A8 / W4A8 matmul computes on the NPU: DynamicQuant of x per token (int8), the integer GEMM
    against the int weight (exact here: float64 sums of int8 x int products scaled by the weight's
    scales, i.e. x_q @ (q * s_w)^T), times the per-token scale, output rounded to BF16 (the kernels'
    output dtype)."""
    from .checkpoint.formats import bf16_round
    from .convert.quantize import dynamic_quant_int8
    q, s = dynamic_quant_int8(x)
    y = (q @ np.asarray(w, np.float64).T) * s
    return bf16_round(y.astype(np.float32)).astype(np.float64)


def quant_emulation_model(checkpoint: str, cfg, weights):
    """NumpyV4 whose quantised linears (those the converted directory stores as int8 / int4) run with per-token
    dynamic int8 activations; every other op as the float64 golden model."""
    from .convert.loader import is_converted, quantized_linears
    from .numpy_model import NumpyV4
    if not is_converted(checkpoint):
        raise DumpError(f"--quant-emulation needs a w8a8 / w4a8 directory from `ascend-v4 convert`; {checkpoint} "
                        f"is a release directory (its FP8 numerics: --mode official)")
    quantized = quantized_linears(checkpoint)
    if not quantized:
        raise DumpError(f"{checkpoint} stores no int8 / int4 weights (a bf16 conversion); --quant-emulation applies "
                        f"to w8a8 / w4a8 directories")

    class _QuantEmulation(NumpyV4):
        def _lin(self, x, name):
            if name in quantized:
                return dynamic_int8_linear(x, self.w[name])
            return super()._lin(x, name)

    m = _QuantEmulation(cfg, weights)
    m.quantized = quantized
    return m


# ------------------------------------------------------------------------------ DeepSeek-V4.1 golden ------
def numpy_v41_dump(checkpoint: str, cfg, weights, ids: np.ndarray) -> Dict[str, np.ndarray]:
    """embed, hidden_block{i}, logits of a DeepSeek-V4.1 directory from the float64 golden
    (ascend_v4/numpy_model_v41.py), the Engram token map taken from the directory's tokenizer.json."""
    from .checkpoint.release_v41 import release_token_map
    from .numpy_model_v41 import NumpyV41
    tmap = release_token_map(checkpoint, cfg) if cfg.engram_layer_ids else None
    if tmap is not None and int(ids.max()) >= len(tmap):
        raise DumpError(f"token id {int(ids.max())} is not in the tokenizer ({len(tmap)} ids): Engram cannot map it")
    out = NumpyV41(cfg, weights, token_map=tmap).forward(ids)
    return {k: v for k, v in out.items() if k == "embed" or k == "logits" or k.startswith("hidden_block")}


def v41_token_map(checkpoint: str, cfg, ids: np.ndarray):
    """The Engram compressed-token map of a DeepSeek-V4.1 directory (None without Engram), after refusing what
    this port cannot run: image spans (the vision tower is out of scope) and ids outside the tokenizer."""
    if np.any(np.asarray(ids) == cfg.image_token_id):
        raise DumpError(f"the tokens hold the image token id {cfg.image_token_id}: image inputs are not supported "
                        f"(DeepSeek-V4.1's vision tower is out of scope); give text tokens only")
    if not cfg.engram_layer_ids:
        return None
    from .checkpoint.release_v41 import release_token_map
    tmap = release_token_map(checkpoint, cfg)
    if int(np.max(ids)) >= len(tmap):
        raise DumpError(f"token id {int(np.max(ids))} is not in the tokenizer ({len(tmap)} ids): Engram cannot map it")
    return tmap
