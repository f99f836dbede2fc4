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
