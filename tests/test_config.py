import json

import pytest

from ascend_v4.config import PRESETS, ConfigError, ModelConfig, load_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_roundtrip_both_json_flavours(name, tmp_path):
    cfg = load_config(name)
    hf = ModelConfig.from_dict(cfg.to_hf_json(), name=name)
    inf = ModelConfig.from_dict(cfg.to_inference_json(), name=name)
    assert hf == cfg and inf == cfg
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg.to_hf_json()))
    assert load_config(str(tmp_path)) == cfg.replace(name=tmp_path.name)


def test_flash_schedule_matches_the_release():
    cfg = load_config("v4-flash")
    assert len(cfg.compress_ratios) == 44
    assert [cfg.layer_kind(i) for i in (0, 1, 2, 3, 41, 42, 43)] == ["SWA", "SWA", "CSA", "HCA", "HCA", "CSA", "SWA"]
    pro = load_config("v4-pro")
    assert [pro.layer_kind(i) for i in (0, 1, 2, 3, 60, 61)] == ["HCA", "HCA", "CSA", "HCA", "CSA", "SWA"]


def test_official_root_config_keys_are_read():
    raw = {"hidden_size": 4096, "num_hidden_layers": 43, "num_attention_heads": 64, "num_key_value_heads": 1,
           "head_dim": 512, "qk_rope_head_dim": 64, "q_lora_rank": 1024, "o_lora_rank": 1024, "o_groups": 8,
           "sliding_window": 128, "compress_ratios": [0, 0] + [4, 128] * 20 + [4] + [0],
           "num_experts_per_tok": 6, "n_routed_experts": 256, "moe_intermediate_size": 2048,
           "num_hash_layers": 3, "routed_scaling_factor": 1.5, "scoring_func": "sqrtsoftplus",
           "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                            "beta_fast": 32, "beta_slow": 1},
           "quantization_config": {"quant_method": "fp8", "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
           "vocab_size": 129280, "num_nextn_predict_layers": 1}
    cfg = ModelConfig.from_dict(raw)
    assert cfg.replace(name="v4-flash") == PRESETS["v4-flash"]


@pytest.mark.parametrize("change, fragment", [
    ({"n_heads": 7}, "divisible by o_groups"),
    ({"compress_ratios": (0, 4)}, "compress_ratios has 2 entries"),
    ({"n_activated_experts": 9}, "exceeds n_routed_experts"),
    ({"rope_head_dim": 33}, "rope_head_dim"),
    ({"dim": 0}, r"dim must be an integer in \[1, "),
    ({"moe_inter_dim": 40}, "divisible by 32"),
    ({"score_func": "relu"}, "score_func"),
    ({"index_head_dim": 48}, "power of two"),
])
def test_impossible_configs_fail_with_a_named_reason(change, fragment):
    with pytest.raises(ConfigError, match=fragment):
        PRESETS["tiny"].replace(**change)


def test_hf_config_with_wrong_kv_heads_is_rejected():
    d = PRESETS["tiny"].to_hf_json()
    d["num_key_value_heads"] = 8
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        ModelConfig.from_dict(d)


def test_unknown_preset_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config("v5-ultra")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(str(tmp_path))


def test_bf16_release_config_roundtrips():
    cfg = load_config("tiny").replace(dtype="bf16")
    assert "quantization_config" not in cfg.to_hf_json()
    assert ModelConfig.from_dict(cfg.to_hf_json(), name="tiny") == cfg


# ----- the schema (issue: every config value type-checked at load) ---------------------------------------------
import math  # noqa: E402
import warnings  # noqa: E402

from ascend_v4.config import ConfigWarning  # noqa: E402

# DeepSeek's ModelArgs (inference/model.py) defaults, written out by hand from the official source.
OFFICIAL_MODEL_ARGS = dict(
    dtype="fp8", scale_fmt="ue8m0", vocab_size=129280, dim=4096, moe_inter_dim=4096, n_layers=7, n_hash_layers=0,
    n_mtp_layers=1, n_heads=64, n_routed_experts=8, n_shared_experts=1, n_activated_experts=2,
    score_func="sqrtsoftplus", route_scale=1.0, swiglu_limit=0.0, q_lora_rank=1024, head_dim=512, rope_head_dim=64,
    norm_eps=1e-6, o_groups=8, o_lora_rank=1024, window_size=128, compress_ratios=(0, 0, 4, 128, 4, 128, 4, 0),
    compress_rope_theta=40000.0, original_seq_len=0, rope_theta=10000.0, rope_factor=40.0, beta_fast=32.0,
    beta_slow=1.0, index_n_heads=64, index_head_dim=128, index_topk=512, hc_mult=4, hc_sinkhorn_iters=20,
    hc_eps=1e-6,
    expert_dtype="fp8",        # ModelArgs: expert_dtype None = experts in the linears' format (fp8)
)


def test_inference_config_omitting_every_key_gets_the_official_model_args_defaults():
    cfg = ModelConfig.from_dict({}, name="empty")
    for k, v in OFFICIAL_MODEL_ARGS.items():
        assert getattr(cfg, k) == v, k
    # runtime keys of ModelArgs are accepted silently (no unknown-key warning), and validated
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ModelConfig.from_dict({"max_batch_size": 4, "max_seq_len": 4096, "scale_dtype": "fp8"})
    with pytest.raises(ConfigError, match="max_seq_len must be a positive integer"):
        ModelConfig.from_dict({"max_seq_len": "4k"})
    with pytest.raises(ConfigError, match="scale_dtype must be fp8"):
        ModelConfig.from_dict({"scale_dtype": "fp32"})


def test_hf_config_omitting_keys_gets_the_release_values():
    flash = PRESETS["v4-flash"]
    cfg = ModelConfig.from_dict({"hidden_size": 4096, "compress_ratios": list(flash.compress_ratios)})
    for k in ("n_layers", "n_heads", "index_topk", "n_routed_experts", "n_activated_experts", "moe_inter_dim",
              "route_scale", "swiglu_limit", "compress_rope_theta", "n_hash_layers", "expert_dtype"):
        assert getattr(cfg, k) == getattr(flash, k), k
    assert cfg.dtype == "bf16"              # no quantization_config: an unquantised release
    assert cfg.original_seq_len == 0        # no rope_scaling: no YaRN
    assert ModelConfig.from_dict(cfg.to_hf_json(), name=cfg.name) == cfg


def _hf(**change):
    d = PRESETS["tiny"].to_hf_json()
    d.update(change)
    return d


@pytest.mark.parametrize("change, fragment", [
    ({"rms_norm_eps": "1e-6"}, "rms_norm_eps must be a finite number > 0, got the string '1e-6' (write numbers"),
    ({"routed_scaling_factor": "1.5"}, "routed_scaling_factor must be a finite number > 0, got the string"),
    ({"num_hash_layers": "1"}, "num_hash_layers must be an integer in [0, "),
    ({"compress_ratios": "abc"}, "compress_ratios must be a list of integers"),
    ({"compress_ratios": 5}, "compress_ratios must be a list of integers"),
    ({"compress_ratios": [0, 4, "16", 4, 0]}, "compress_ratios[2] must be 0 (sliding window only) or an integer"),
    ({"compress_ratios": [0, 4, 1, 4, 0]}, "compress_ratios[2] must be 0"),
    ({"rope_scaling": "yarn"}, "rope_scaling must be an object or null"),
    ({"quantization_config": "fp8"}, "quantization_config must be an object or null"),
    ({"rope_theta": "ten-thousand"}, "rope_theta must be a finite number > 0"),
    ({"max_position_embeddings": "big"}, "max_position_embeddings must be an integer"),
    ({"max_position_embeddings": 0}, "max_position_embeddings must be an integer in [1, "),
    ({"vocab_size": True}, "vocab_size must be an integer in [1, 2147483647], got the boolean true"),
    ({"hidden_size": 2 ** 40}, "hidden_size must be an integer in [1, 2147483647]"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be a finite number > 0, got nan"),
    ({"swiglu_limit": float("inf")}, "swiglu_limit must be a finite number >= 0"),
    ({"hc_eps": -1e-6}, "hc_eps must be a finite number >= 0"),
    ({"scoring_func": 3}, "scoring_func must be one of sqrtsoftplus, softmax, sigmoid, got 3"),
    ({"expert_dtype": "int4"}, "expert_dtype must be one of fp4, fp8"),
    ({"eos_token_id": 512}, "eos_token_id (512) must be below vocab_size (512)"),
    ({"hidden_act": "gelu"}, "hidden_act = the string 'gelu', DeepSeek-V4 requires \"silu\""),
    ({"model_type": "deepseek_v3"}, "model_type = the string 'deepseek_v3', DeepSeek-V4 requires"),
    ({"rope_scaling": {"type": "linear", "factor": 4}}, "rope_scaling.type must be \"yarn\""),
    ({"rope_scaling": {"factor": 4}}, "rope_scaling.type must be \"yarn\""),
    ({"rope_scaling": {"type": "yarn", "factor": "16", "original_max_position_embeddings": 64}},
     "rope_scaling.factor must be a finite number >= 1, got the string '16'"),
    ({"rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 64, "beta_fast": 1,
                       "beta_slow": 32}}, "rope_scaling.beta_fast (1) must exceed rope_scaling.beta_slow (32)"),
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [64, 64]}},
     "quantization_config.weight_block_size = a list [64, 64] is not supported"),
    ({"quantization_config": {"quant_method": "awq"}}, "quantization_config.quant_method"),
    ({"quantization_config": {"quant_method": "fp8", "scale_fmt": None}},
     "quantization_config.scale_fmt must be one of ue8m0, got null"),
])
def test_hf_values_of_the_wrong_type_or_range_name_the_key_as_written(change, fragment):
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict(_hf(**change), name="ck")
    assert fragment in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("raw, fragment", [
    ([1, 2], "must be a JSON object of keys, got a list"),
    ("dim", "must be a JSON object of keys, got the string"),
    ({"dim": "64"}, "dim must be an integer in [1, "),
    ({"norm_eps": [1e-6]}, "norm_eps must be a finite number > 0, got a list"),
    ({"compress_ratios": {"0": 4}}, "compress_ratios must be a list of integers"),
    ({"name": 3}, "name must be a string"),
])
def test_inference_values_of_the_wrong_type_are_refused(raw, fragment):
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict(raw, name="inf")
    assert fragment in str(e.value), str(e.value)


def test_ints_written_as_floats_are_ints_and_ints_in_float_fields_are_floats():
    cfg = ModelConfig.from_dict(_hf(hidden_size=64.0, rope_theta=10000), name="ck")
    assert cfg.dim == 64 and isinstance(cfg.dim, int)
    assert cfg.rope_theta == 10000.0 and isinstance(cfg.rope_theta, float)
    with pytest.raises(ConfigError, match="hidden_size must be an integer"):
        ModelConfig.from_dict(_hf(hidden_size=64.5), name="ck")


def test_unknown_keys_are_warned_with_the_nearest_known_key():
    with pytest.warns(ConfigWarning) as rec:
        cfg = ModelConfig.from_dict(_hf(num_experts_per_token=3), name="ck")
    msgs = [str(w.message) for w in rec]
    assert msgs == ["config 'ck': unknown key 'num_experts_per_token' ignored (did you mean 'num_experts_per_tok'?)"]
    assert cfg == PRESETS["tiny"].replace(name="ck")        # ignored: the value stays the preset's
    with pytest.warns(ConfigWarning, match="'dim' is a key of the other config.json flavour"):
        ModelConfig.from_dict(_hf(dim=64), name="ck")
    with pytest.warns(ConfigWarning, match=r"unknown key 'rope_scaling.mscale' ignored"):
        ModelConfig.from_dict(_hf(rope_scaling={"type": "yarn", "factor": 16, "mscale": 1.0,
                                                "original_max_position_embeddings": 64}), name="ck")
    with pytest.warns(ConfigWarning, match=r"unknown key 'n_activated_expert' ignored \(did you mean "
                                           r"'n_activated_experts'\?\)"):
        ModelConfig.from_dict(dict(PRESETS["tiny"].to_inference_json(), n_activated_expert=3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # a complete official config warns about nothing
        ModelConfig.from_dict(PRESETS["v4-flash"].to_hf_json())
        ModelConfig.from_dict(PRESETS["v4-flash"].to_inference_json())
        # a `convert --layout serving` config: the HF config + MindIE's tag + our "conversion" block
        ModelConfig.from_dict(dict(PRESETS["v4-flash"].to_hf_json(), quantize="w8a8_dynamic",
                                   conversion={"precision": "w8a8"}))


def test_the_cli_prints_unknown_keys_as_one_warning_line(tmp_path):
    from click.testing import CliRunner
    from ascend_v4.cli import main
    (tmp_path / "config.json").write_text(json.dumps(_hf(num_experts_per_token=3)))
    r = CliRunner().invoke(main, ["info", str(tmp_path)])
    assert r.exit_code == 0
    assert r.stderr.splitlines() == [f"warning: config '{tmp_path.name}': unknown key 'num_experts_per_token' "
                                     f"ignored (did you mean 'num_experts_per_tok'?)"]


def test_load_config_takes_a_mapping_from_a_train_yaml_and_checks_the_same_schema():
    d = PRESETS["tiny"].to_inference_json()
    assert load_config(d, source="run.yaml: model") == PRESETS["tiny"].replace(name="run.yaml: model")
    with pytest.raises(ConfigError, match=r"invalid config 'run.yaml: model': norm_eps must be a finite number"):
        load_config(dict(d, norm_eps="1e-6"), source="run.yaml: model")
    with pytest.raises(ConfigError, match="a model must be a preset name"):
        load_config(3, source="run.yaml: model")
    with pytest.raises(ConfigError, match=r"did you mean 'tiny'\?"):
        load_config("tinyy")


def test_rope_scaling_null_means_no_yarn_and_roundtrips():
    cfg = ModelConfig.from_dict(_hf(rope_scaling=None), name="ck")
    assert cfg.original_seq_len == 0
    assert cfg.to_hf_json()["rope_scaling"] is None
    assert ModelConfig.from_dict(cfg.to_hf_json(), name="ck") == cfg
    assert math.isclose(ModelConfig.from_dict(_hf(), name="ck").rope_factor, PRESETS["tiny"].rope_factor)
