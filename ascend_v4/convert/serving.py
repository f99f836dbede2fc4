"""The serving layout's metadata: what vllm-ascend's msModelSlim loader and MindIE read besides the tensors.

* `config.json`: the release's HF config (model_type deepseek_v4) with its FP8 `quantization_config`
  replaced by `{"quant_method": "ascend"}` (vllm-ascend's `--quantization ascend`) and MindIE's
  `"quantize": "w8a8_dynamic"` / `"w4a8_dynamic"`; our own "conversion" block rides along (HF configs
  keep unknown keys).
* `quant_model_description.json`: every stored tensor name -> "W8A8_DYNAMIC" / "W4A8_DYNAMIC" / "FLOAT",
  keyed by the release's names (vllm-ascend's DeepSeek-V4 path recognises that naming by the presence
  of `hc_head_fn` and maps `layers.` / `.attn.` / `.ffn.` / `w1,w2,w3` to its module names itself), plus
  `model_quant_type`, `version` "1.0.0" (int4 packed two per byte) and `group_size` for W4A8.
Details and the loader versions checked: FORMAT.md.
"""
from __future__ import annotations

import json
from typing import Dict

from .plan import Plan

DESCRIPTION = "quant_model_description.json"
_TYPE = {"int8s": "W8A8_DYNAMIC", "int4s": "W4A8_DYNAMIC", "int8x": "W8A8_DYNAMIC"}


def serving_config(plan: Plan) -> dict:
    """The HF config.json at the top of a serving directory."""
    try:
        raw = json.loads(plan.source.config_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raw = None
    if not isinstance(raw, dict) or "hidden_size" not in raw:
        raw = plan.source.cfg.to_hf_json()         # an inference-flavour source config: write the HF one
    raw.pop("quantization_config", None)
    if plan.precision != "bf16":
        raw["quantization_config"] = {"quant_method": "ascend"}
        raw["quantize"] = "w8a8_dynamic" if plan.precision == "w8a8" else "w4a8_dynamic"
    raw["torch_dtype"] = "bfloat16"
    return raw


def quant_description(plan: Plan) -> Dict[str, object]:
    """quant_model_description.json: each stored tensor's quant type, in file order."""
    d: Dict[str, object] = {
        "model_quant_type": "W4A8_DYNAMIC" if plan.precision == "w4a8" else "W8A8_DYNAMIC",
        "version": "1.0.0",
    }
    if plan.precision == "w4a8":
        d["group_size"] = 0 if plan.int4_group == "exact" else int(plan.int4_group)
    for f in plan.rank_files:
        for g in f.groups:
            t = _TYPE.get(g.kind, "FLOAT")
            for e in g.entries:
                d[e.name] = t
    return d


def describe_formats(plan: Plan) -> dict:
    g = plan.int4_group
    out = {"int8": ("W8A8_DYNAMIC: `<p>.weight` I8 [out, in], `<p>.weight_scale` F32 [out, 1] = max|row| / 127, "
                    "`<p>.weight_offset` F32 [out, 1] = 0; activations int8 per token at run time")
            if plan.precision != "bf16" else None}
    if plan.precision == "w4a8":
        if g == "exact":
            out["int4"] = ("routed experts exact: `<p>.weight` I8 [out, in] = 2 x FP4 value, `weight_scale` 1, "
                           "`weight_scale_second` F32 [out, in/32] = 2^(e-1)")
        else:
            what = "per output channel" if not g else f"per group of {g} input columns"
            out["int4"] = (f"W4A8_DYNAMIC routed experts, int4 -8..7 {what}, clip ratio searched per group: "
                           "`<p>.weight` I8 [out/2, in] (row 2j low nibble, 2j+1 high nibble), `weight_scale` / "
                           "`weight_offset` F32 [out, 1]" + (", `weight_scale_second` / `weight_offset_second` F32 "
                                                             f"[out, in/{g}]" if g else "")
                           + ", `scale_bias` F32 [out, 1] (w1, w3) / [out, 16] (w2) = 8 * sum q * scale")
    return out
