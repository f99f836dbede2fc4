"""The serving layout through an independent reader of vllm-ascend's msModelSlim loader path.

vllm-ascend cannot be imported on CPU (torch_npu, vllm), so `VllmAscendReader` re-states, from its source
(vllm_ascend/quantization/modelslim_config.py, methods/w8a8_dynamic.py, methods/w4a8.py,
models/deepseek_v4/model.py `load_weights`; commits in ascend_v4/convert/FORMAT.md), what it does with a
directory: the description file and its DeepSeek-V4 key adaptation, the quant type each layer resolves
to, the name mapping of `load_weights`, the parameter shapes each scheme allocates, and the
dequantisation its kernels compute. Nothing here calls our loader; expected weights come from the
release's float64 dequantisation.
"""
import json
import os

import numpy as np
import pytest

import torch
from safetensors.torch import load_file

from ascend_v4.config import ModelConfig


class VllmAscendReader:
    PACKED = {"gate_up_proj": ["gate_proj", "up_proj"],
              "experts": ["experts.0.gate_proj", "experts.0.up_proj", "experts.0.down_proj"]}

    def __init__(self, root):
        self.root = root
        with open(os.path.join(root, "config.json")) as f:
            self.hf = json.load(f)
        with open(os.path.join(root, "quant_model_description.json")) as f:   # MODELSLIM_CONFIG_FILENAME
            self.desc = json.load(f)
        self._adapt()
        with open(os.path.join(root, "model.safetensors.index.json")) as f:
            wm = json.load(f)["weight_map"]
        self.tensors = {}
        for fn in sorted(set(wm.values())):                      # safetensors' own reader, not ours
            for name, t in load_file(os.path.join(root, fn)).items():
                self.tensors[name] = t.numpy() if t.dtype != torch.bfloat16 else t.float().numpy()

    def _adapt(self):
        """AscendModelSlimConfig._apply_extra_quant_adaptations for DeepSeek-V4 naming (keyed on hc_head_fn)."""
        d = self.desc
        assert "hc_head_fn" in d
        for step in (lambda n: n if n.startswith("model") else f"model.{n}",
                     lambda n: n.replace(".attn.", ".self_attn.") if "attn" in n and "self_attn" not in n else n,
                     lambda n: n.replace("ffn", "mlp") if "ffn" in n else n,
                     lambda n: n.replace(".w1.", ".gate_proj.").replace(".w2.", ".down_proj.").replace(".w3.", ".up_proj.")):
            d.update({step(k): v for k, v in list(d.items())})

    def quant_type(self, prefix):
        """get_linear_quant_type."""
        proj = prefix.split(".")[-1]
        if proj in self.PACKED:
            types = {self.desc[prefix.replace(proj, p) + ".weight"] for p in self.PACKED[proj]}
            assert len(types) == 1, f"{prefix}: shards quantised differently {types}"
            return types.pop()
        return self.desc[prefix + ".weight"]

    @staticmethod
    def hf_param_name(name):
        """DeepseekV4ForCausalLM.load_weights renaming (the parts that apply to the main model)."""
        n = name if name.startswith("model") else f"model.{name}"
        for a, b in ((".w1.", ".gate_proj."), (".w2.", ".down_proj."), (".w3.", ".up_proj.")):
            n = n.replace(a, b)
        n = n.replace("model.head.", "lm_head.")
        if "embed." in n:
            n = n.replace("embed.", "embed_tokens.")
        if "attn" in n and "self_attn" not in n:
            n = n.replace(".attn.", ".self_attn.")
        n = n.replace(".ffn.", ".mlp.").replace(".ffn_norm.", ".post_attention_layernorm.")
        n = n.replace(".attn_norm.", ".input_layernorm.")
        if n.endswith(".scale"):
            n = n.replace(".scale", ".weight_scale")
        return n

    def linear(self, prefix, out_f, in_f, expert=False):
        """Weights of one linear as the vendor kernel computes with them: float64 [out, in]."""
        if expert:                                # FusedMoE prefix: ...mlp.experts (packed: experts.0.*_proj)
            vllm_prefix = ("model." + prefix.rsplit(".experts.", 1)[0] + ".experts").replace(".ffn.", ".mlp.")
        else:                                     # shared w1/w3 load into the merged gate_up_proj
            vllm_prefix = (("model." + prefix).replace(".attn.", ".self_attn.").replace(".ffn.", ".mlp.")
                           .replace(".w1", ".gate_up_proj").replace(".w3", ".gate_up_proj").replace(".w2", ".down_proj"))
        qt = self.quant_type(vllm_prefix)
        t = {k.rsplit(".", 1)[-1]: v for k, v in self.tensors.items() if k.rsplit(".", 1)[0] == prefix}
        if qt == "FLOAT":
            assert t["weight"].shape == (out_f, in_f)
            return qt, np.asarray(t["weight"], np.float64), None
        if qt == "W8A8_DYNAMIC":                   # get_weight / get_perchannel_param (+ MoE: per expert slices)
            assert t["weight"].dtype == np.int8 and t["weight"].shape == (out_f, in_f)
            assert t["weight_scale"].shape == (out_f, 1) and t["weight_offset"].shape == (out_f, 1)
            assert not np.any(t["weight_offset"])
            if "weight_scale_second" in t:        # our exact path: per-group int8 (not a vendor scheme)
                s = t["weight_scale"] * t["weight_scale_second"]
                return "EXACT", (t["weight"].reshape(out_f, -1, 32) * s[..., None]).reshape(out_f, in_f), s
            return qt, t["weight"].astype(np.float64) * t["weight_scale"].astype(np.float64), t["weight_scale"]
        assert qt == "W4A8_DYNAMIC" and expert
        # msModelSlim "1.0.0": two int4 along the output dim per byte, [out/2, in]; _pack_int4_to_int8 order
        w = t["weight"]
        assert w.dtype == np.int8 and w.shape == (out_f // 2, in_f)
        u = w.view(np.uint8)
        q = np.empty((out_f, in_f), np.int64)
        q[0::2] = ((u & 0xF).astype(np.int64) ^ 8) - 8
        q[1::2] = w.astype(np.int64) >> 4
        assert t["weight_scale"].shape == (out_f, 1) and t["weight_offset"].shape == (out_f, 1)
        g = int(self.desc.get("group_size", 0))
        if g > 0:                                   # per group: antiquant scale = fp16(scale * scale_second)
            assert t["weight_scale_second"].shape == (out_f, in_f // g)
            s = (t["weight_scale"] * t["weight_scale_second"]).astype(np.float16).astype(np.float64)
        else:
            assert "weight_scale_second" not in t
            s = t["weight_scale"].astype(np.float64)
        deq = (q.reshape(out_f, s.shape[1], -1) * s[..., None]).reshape(out_f, in_f)
        parts = 16 if prefix.endswith("w2") else 1
        assert t["scale_bias"].shape == (out_f, parts)
        # the GMM's assistance bias 8 * sum_k w_int * scale, summed over its TP parts in process_weights
        np.testing.assert_allclose(t["scale_bias"].sum(1), 8 * deq.sum(1), rtol=1e-5, atol=1e-5)
        return qt, deq, s


@pytest.fixture(scope="module")
def reference(release):
    from ascend_v4.checkpoint import load_official_weights
    from ascend_v4.config import load_config
    return load_official_weights(release[0], load_config(release[0]))


PUBLISHED_INT8 = ("attn.wq_a", "attn.wq_b", "attn.wkv", "attn.wo_b", "attn.indexer.wq_b",
                  "ffn.shared_experts.w1", "ffn.shared_experts.w2", "ffn.shared_experts.w3")


@pytest.mark.parametrize("precision,group", [("w8a8", "32"), ("w4a8", "32"), ("w4a8", "channel"), ("w4a8", "exact")])
def test_vllm_ascend_reader_loads_the_serving_layout(release, converted, reference, precision, group):
    d = converted(precision, layout="serving", int4_group=group)
    r = VllmAscendReader(d)
    assert r.hf["model_type"] == "deepseek_v4" and r.hf["quantization_config"] == {"quant_method": "ascend"}
    assert r.hf["quantize"] == f"{precision}_dynamic"
    cfg = ModelConfig.from_dict(r.hf)                       # HF flavour: the geometry is the release's
    assert (cfg.dim, cfg.n_layers, cfg.n_routed_experts) == (64, 4, 8)
    assert os.path.isfile(os.path.join(d, "tokenizer.json"))
    assert r.desc["model_quant_type"] == ("W8A8_DYNAMIC" if precision == "w8a8" else "W4A8_DYNAMIC")
    # every stored tensor is described, every description key is stored
    stored = set(r.tensors)
    described = {k for k in json.load(open(os.path.join(d, "quant_model_description.json")))
                 if k not in ("model_quant_type", "version", "group_size")}
    assert stored == described
    n_int4 = 0
    for name, w in reference.items():
        if not name.endswith(".weight") or w.ndim != 2 or name.startswith("mtp."):
            continue
        prefix = name[: -len(".weight")]
        expert = ".ffn.experts." in name
        mod = prefix.split(".", 2)[2] if prefix.startswith("layers.") else prefix
        qt, deq, s = r.linear(prefix, *w.shape, expert=expert)
        if expert:
            want = "W4A8_DYNAMIC" if precision == "w4a8" and group != "exact" else "W8A8_DYNAMIC"
            assert qt == ("EXACT" if group == "exact" and precision == "w4a8" else want), name
        else:
            assert qt == ("W8A8_DYNAMIC" if mod in PUBLISHED_INT8 else "FLOAT"), name
        ref = np.asarray(w, np.float64)
        err = np.abs(deq - ref)
        if qt == "FLOAT":
            assert np.array_equal(deq, ref), name                 # BF16 is exact for FP8/BF16 sources
        elif qt == "EXACT":
            assert np.array_equal(deq, ref), name
        elif qt == "W8A8_DYNAMIC":
            assert np.all(err <= s / 2 * (1 + 1e-5) + 1e-12), name  # round to nearest, per channel absmax
        else:
            n_int4 += 1
            rel = np.linalg.norm(deq - ref) / np.linalg.norm(ref)
            assert rel < (0.09 if group == "32" else 0.45), (name, rel)
    assert n_int4 == (0 if precision == "w8a8" or group == "exact" else 4 * 8 * 3)
    # MTP stays unquantised (vllm-ascend loads DeepSeek MTP layers as FLOAT)
    assert all(v == "FLOAT" for k, v in r.desc.items() if k.startswith("mtp."))
    man = json.load(open(os.path.join(d, "manifest.json")))
    assert set(man["quant_relative_error"]) == {n for n in reference if n in {
        k.rsplit(".", 1)[0] + ".weight" for k, v in r.desc.items()
        if v != "FLOAT" and not k.startswith("model") and k.endswith(".weight")}}


def test_vllm_param_names_are_all_known_to_the_model(converted):
    """Every stored name maps, through load_weights' renaming, onto a DeepSeek-V4 module path."""
    r = VllmAscendReader(converted("w4a8", layout="serving"))
    for name in r.tensors:
        n = r.hf_param_name(name)
        assert n.startswith(("model.", "lm_head.")), n
        assert ".attn." not in n and ".ffn." not in n and ".w1." not in n, n


def test_serving_layout_refuses_rank_shards(release, tmp_path):
    from ascend_v4.convert import ConvertError, convert_checkpoint
    with pytest.raises(ConvertError, match="add --layout ranks"):
        convert_checkpoint(release[0], str(tmp_path / "x"), "w8a8", tp=2, layout="serving", progress=False)
    with pytest.raises(ConvertError, match="--int4-group"):
        convert_checkpoint(release[0], str(tmp_path / "y"), "w4a8", int4_group="48", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("layout", ["serving", "ranks"])
def test_int4_group_that_misfits_any_expert_names_every_input_dim_before_writing(release, tmp_path, layout):
    """The tiny release's experts have input dims 64 (w1, w3: dim) and 32 (w2: moe_inter_dim): 64 fits the first
    expert tensor but not w2, so the check must cover every routed expert, not stop at the first tensor."""
    from ascend_v4.convert import ConvertError, convert_checkpoint
    from ascend_v4.config import load_config
    cfg = load_config(release[0])
    assert (cfg.dim, cfg.moe_inter_dim) == (64, 32)
    msg = "--int4-group 64: the routed experts' input dims 32, 64 are not all multiples of 64; choose --int4-group " \
          "32 / channel"
    with pytest.raises(ConvertError) as e:
        convert_checkpoint(release[0], str(tmp_path / "x"), "w4a8", layout=layout, int4_group="64", progress=False)
    assert str(e.value) == msg
    assert not any(os.scandir(tmp_path))
