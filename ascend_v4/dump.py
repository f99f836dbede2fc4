"""Parity tools: dump the named activations of a forward pass, compare two dumps (msprobe-style report)."""
from __future__ import annotations

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
# ------------------------------------------------------------------------------ --format msprobe --------
# The layout MindStudio's msprobe (package mindstudio-probe) writes for a MindSpore L0 (cell-level) tensor dump:
#   OUT/step0/rank0/dump.json           {"task": "tensor", "level": "L0", "framework": "mindspore",
#                                        "dump_data_dir": ..., "data": {cell call: {"input_args": [...],
#                                        "input_kwargs": {}, "output": [...]}}}; each tensor {"type":
#                                        "mindspore.Tensor", "dtype", "shape", "Max", "Min", "Mean", "Norm",
#                                        "data_name"}
#   OUT/step0/rank0/dump_tensor_data/   <cell call>.<input|output>.<i>.npy
#   OUT/step0/rank0/stack.json          {"0": [[cell calls], [source lines]]}
#   OUT/step0/rank0/construct.json      {cell call: parent cell call or null}
# One cell call per dump key, named as msprobe names a MindSpore cell: Cell.<path>.<class>.forward.0.
MSPROBE_POINTS = (
    # (dump key, cell path, cell class, source of the call)
    ("embed", "embed", "Embedding", "ascend_v4/model.py, in Transformer.embed_streams"),
    ("hidden_block{i}", "layers.{i}", "Block", "ascend_v4/model.py, in Transformer.run_layers"),
    ("logits", "hc_head", "HcHead", "ascend_v4/model.py, in Transformer.logits"),
    ("mtp_logits", "mtp.0", "MTPBlock", "ascend_v4/model.py, in Transformer.mtp_forward"),
)


def msprobe_cell_names(n_layers: int) -> Dict[str, str]:
    """dump key -> msprobe cell name without the call suffix ("layers.3.Block"), for every point."""
    out = {}
    for key, path, cls, _ in MSPROBE_POINTS:
        for i in (range(n_layers) if "{i}" in key else [None]):
            out[key.format(i=i)] = f"{path.format(i=i)}.{cls}"
    return out


def write_msprobe(out_dir: str, res: Dict[str, np.ndarray], ids: np.ndarray, n_layers: int) -> str:
    """Write a dump (dump keys -> arrays) as an msprobe MindSpore L0 tensor dump under out_dir/step0/rank0.
    Each block's input is the previous point (the embedding's hc copies for block 0), the embedding's input
    the token ids, so msprobe shows where an error enters. The directory appears complete or not at all."""
    import os
    import shutil
    import tempfile
    from .atomic import fsync_dir
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise DumpError(f"{out_dir} already exists and is not an empty directory; --format msprobe writes a "
                        f"directory: choose a new path")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.", dir=parent)
    try:
        rank = os.path.join(tmp, "step0", "rank0")
        data_dir = os.path.join(rank, "dump_tensor_data")
        os.makedirs(data_dir)
        names = msprobe_cell_names(n_layers)
        hc = res["hidden_block0"].shape[-2] if "hidden_block0" in res else 1
        inputs = {"embed": ids}
        if "embed" in res:
            e = res["embed"]
            prev = np.broadcast_to(e[:, :, None, :], e.shape[:2] + (hc, e.shape[-1]))
            for i in range(n_layers):
                inputs[f"hidden_block{i}"] = prev
                prev = res.get(f"hidden_block{i}", prev)
        data, construct, calls, stack = {}, {}, [], []
        sources = {key.format(i=i): src for key, _, _, src in MSPROBE_POINTS for i in range(max(n_layers, 1))}
        for key in [k for k in names if k in res]:
            call = f"Cell.{names[key]}.forward.0"
            entry = {"input_args": [], "input_kwargs": {}, "output": []}
            if key in inputs:
                entry["input_args"].append(_msprobe_tensor(data_dir, f"{call}.input.0", inputs[key]))
            entry["output"].append(_msprobe_tensor(data_dir, f"{call}.output.0", res[key]))
            data[call] = entry
            construct[call] = None
            calls.append(call)
            stack.append(f"File {sources[key]}")
        dump = {"task": "tensor", "level": "L0", "framework": "mindspore",
                "dump_data_dir": os.path.join(os.path.abspath(out_dir), "step0", "rank0", "dump_tensor_data"),
                "data": data}
        for name, obj in (("dump.json", dump), ("construct.json", construct),
                          ("stack.json", {"0": [calls, sorted(set(stack))]})):
            with open(os.path.join(rank, name), "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=1)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)                   # empty (checked above)
        os.replace(tmp, out_dir)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.join(out_dir, "step0", "rank0", "dump.json")


_MS_DTYPE = {"float32": "Float32", "float64": "Float64", "float16": "Float16", "int64": "Int64", "int32": "Int32"}


def _msprobe_tensor(data_dir: str, stem: str, a: np.ndarray) -> dict:
    """One tensor: saved as <stem>.npy, described with msprobe's statistics (max, min, mean, L2 norm)."""
    a = np.ascontiguousarray(a if a.dtype.kind in "iu" else np.asarray(a, np.float32))
    np.save(f"{data_dir}/{stem}.npy", a, allow_pickle=False)
    f = a.astype(np.float64)
    return {"type": "mindspore.Tensor", "dtype": _MS_DTYPE[a.dtype.name], "shape": list(a.shape),
            "Max": float(f.max()), "Min": float(f.min()), "Mean": float(f.mean()),
            "Norm": float(np.sqrt((f * f).sum())), "data_name": f"{stem}.npy"}


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
