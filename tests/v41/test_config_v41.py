"""DeepSeek-V4.1 configs: every key of the release's inference/config.json is read and validated, V4 is unchanged,
and the paths that do not run V4.1 yet refuse it with one line."""
import json
import os
import subprocess
import sys

import pytest

from ascend_v4.config import (MODEL_VERSIONS, PRESETS, V41_PRESETS, ConfigError, ConfigWarning, ModelConfig,
                              ModelConfigV41, load_config)

ALL = MODEL_VERSIONS

# The 64 keys of DeepSeek-V4.1-Flash's inference/config.json with the release's values, typed by hand from the
# key table of the V4.1 model description (docs/deepseek-v4.1.md summarises it).
FLASH_INFERENCE_JSON = {
    "vocab_size": 129280, "dim": 5120, "moe_inter_dim": 2304, "n_layers": 40, "n_mtp_layers": 3,
    "dspark_block_size": 5, "dspark_noise_token_id": 128799, "dspark_target_layer_ids": [37, 38, 39],
    "dspark_markov_rank": 256, "dspark_n_routed_experts": 128, "dspark_n_activated_experts": 3, "n_heads": 64,
    "n_routed_experts": 384, "n_shared_experts": 1, "n_activated_experts": 6, "score_func": "sqrtsoftplus",
    "route_scale": 1.5, "swiglu_limit": 10.0, "q_lora_rank": 1280, "head_dim": 512, "rope_head_dim": 64,
    "norm_eps": 1e-20, "o_groups": 8, "o_lora_rank": 1024, "window_size": 128, "kv_source_layers": [2, 8, 14, 20],
    "index_source_layers": [2, 8, 14, 20, 24, 28, 32, 36], "original_seq_len": 65536, "rope_factor": 16,
    "beta_fast": 32, "beta_slow": 1, "rope_theta": 10000, "compress_rope_theta": 160000, "index_n_heads": 32,
    "index_head_dim": 128, "index_topk": 512, "candidate_source_layer": 20, "candidate_topk_blocks": 2048,
    "candidate_block_size": 8, "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "engram_layer_ids": [1, 14],
    "engram_vocab_size": 16000000, "engram_num_embeddings": [384006168, 384016682], "engram_max_ngram_size": 4,
    "engram_pad_id": 2, "engram_compressed_vocab_size": 99092, "engram_n_heads": 8, "engram_head_dim": 256,
    "dtype": "fp8", "expert_dtype": "fp4", "compress_ratios": [0, 0] + [2] * 18 + [1] * 20 + [0] * 3,
    "vision_n_layers": 32, "vision_dim": 1024, "vision_n_heads": 16, "vision_inter_dim": 2816,
    "vision_patch_size": 14, "vision_downsample_ratio": 3, "vision_max_n_token": 1024, "vision_min_pixels": 295936,
    "vision_max_wh_ratio": None, "vision_rope_theta": 10000, "image_token_id": 129264,
}


def test_release_inference_json_reads_into_the_flash_preset_and_writes_back_byte_for_key():
    assert len(FLASH_INFERENCE_JSON) == 64
    cfg = ModelConfig.from_dict(FLASH_INFERENCE_JSON, name="v4.1-flash", versions=ALL)
    assert isinstance(cfg, ModelConfigV41) and cfg.version == "v4.1"
    assert cfg == V41_PRESETS["v4.1-flash"]
    assert cfg.to_inference_json() == {k: (float(v) if isinstance(v, int) and isinstance(
        getattr(cfg, k), float) else v) for k, v in FLASH_INFERENCE_JSON.items()}


@pytest.mark.parametrize("name", ["v4.1-flash", "v4.1-tiny"])
def test_v41_presets_roundtrip_and_load_from_a_directory(name, tmp_path):
    cfg = load_config(name, versions=ALL)
    assert ModelConfig.from_dict(cfg.to_inference_json(), name=name, versions=ALL) == cfg
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_inference_json()))
    assert load_config(str(tmp_path), versions=ALL) == cfg.replace(name=tmp_path.name)


def test_flash_layer_roles_match_the_release_table():
    cfg = V41_PRESETS["v4.1-flash"]
    assert [cfg.layer_role(i) for i in (0, 1, 2, 3, 8, 14, 19, 20, 21, 24, 25, 36, 39)] == [
        "window", "window", "full", "reuse", "full", "full", "reuse", "full", "reuse", "reindex", "reuse",
        "reindex", "reuse"]
    assert [cfg.kv_source(i) for i in (3, 7, 9, 15, 19, 21, 24, 39)] == [2, 2, 8, 14, 14, 20, 20, 20]
    assert [cfg.index_source(i) for i in (3, 13, 23, 25, 31, 39)] == [2, 8, 20, 24, 28, 36]
    assert cfg.engram_n_columns == 24 and cfg.layer_kind(2) == "C2" and cfg.layer_kind(20) == "C1"


def test_tiny_exercises_every_feature():
    t = V41_PRESETS["v4.1-tiny"]
    roles = {t.layer_role(i) for i in range(t.n_layers)}
    assert roles == {"window", "full", "reindex", "reuse"}
    assert {t.ratio(i) for i in range(t.n_layers)} == {0, 1, 2}
    assert t.candidate_source_layer in t.index_source_layers and t.engram_layer_ids[1] in t.kv_source_layers
    assert t.n_mtp_layers == 3 and len(t.dspark_target_layer_ids) == 3 and t.vision_n_layers == 0


def test_v4_is_unchanged_and_v4_paths_refuse_v41_with_one_line():
    assert ModelConfig().version == "v4" and "engram_layer_ids" not in PRESETS["v4-flash"].to_dict()
    assert "kv_source_layers" not in PRESETS["v4-flash"].to_inference_json()
    for spec in ("v4.1-flash", FLASH_INFERENCE_JSON):
        with pytest.raises(ConfigError, match="is DeepSeek-V4.1, which this command does not run yet"):
            load_config(spec)


def test_the_old_compress_ratios_refusal_is_gone(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(FLASH_INFERENCE_JSON))
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path))
    assert "compress_ratios has" not in str(e.value) and "DeepSeek-V4.1" in str(e.value)


def test_nested_hf_root_reads_inference_config_beside_it(tmp_path):
    root = {"architectures": ["DeepseekV41ForCausalLM"], "model_type": "deepseek_v41",
            "text_config": {"model_type": "deepseek_v41_text", "hidden_size": 5120, "num_hidden_layers": 40}}
    (tmp_path / "config.json").write_text(json.dumps(root))
    with pytest.raises(ConfigError, match="nested HF root config.*inference/config.json"):
        load_config(str(tmp_path), versions=ALL)
    (tmp_path / "inference_config.json").write_text(json.dumps(V41_PRESETS["v4.1-tiny"].to_inference_json()))
    assert load_config(str(tmp_path), versions=ALL) == V41_PRESETS["v4.1-tiny"].replace(name=tmp_path.name)
    (tmp_path / "inference").mkdir()                             # the release layout wins
    (tmp_path / "inference" / "config.json").write_text(json.dumps(FLASH_INFERENCE_JSON))
    assert load_config(str(tmp_path), versions=ALL) == V41_PRESETS["v4.1-flash"].replace(name=tmp_path.name)
    with pytest.raises(ConfigError, match="nested HF root config"):
        ModelConfig.from_dict(root, versions=ALL)


@pytest.mark.parametrize("change, fragment", [
    ({"kv_source_layers": [2, 8, 14]}, "layer 20 .ratio 1. has no kv source of its ratio"),
    ({"kv_source_layers": [3, 8, 14, 20]}, "layer 2 .ratio 2. has no kv source"),
    ({"index_source_layers": [8, 14, 20]}, "every kv source must also be in index_source_layers"),
    ({"candidate_source_layer": 21}, "candidate_source_layer .21. must be one of index_source_layers"),
    ({"engram_num_embeddings": [384006168, 384016683]}, r"must equal the sums of each layer's bucket primes.*384016682"),
    ({"engram_num_embeddings": [384006168]}, "engram_num_embeddings has 1 entries"),
    ({"engram_layer_ids": [14, 1]}, "ascending order"),
    ({"compress_ratios": [0, 0] + [2] * 18 + [1] * 20 + [0, 0, 2]}, "DSpark stages"),
    ({"compress_ratios": [0, 0] + [2] * 18 + [1] * 20}, "compress_ratios has 40 entries"),
    ({"dspark_n_activated_experts": 200}, "exceeds dspark_n_routed_experts"),
    ({"engram_head_dim": "256"}, "write numbers without quotes"),
    ({"vision_max_wh_ratio": -1}, "vision_max_wh_ratio"),
    ({"engram_head_dim": 48}, "multiple of 32"),
    ({"dspark_target_layer_ids": [37, 38, 40]}, "each < n_layers"),
])
def test_impossible_v41_configs_fail_with_a_named_reason(change, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ModelConfig.from_dict(dict(FLASH_INFERENCE_JSON, **change), name="x", versions=ALL)


def test_v4_only_and_unknown_keys_warn():
    with pytest.warns(ConfigWarning, match="n_hash_layers.*V4 key that V4.1 dropped"):
        ModelConfig.from_dict(dict(FLASH_INFERENCE_JSON, n_hash_layers=3), versions=ALL)
    with pytest.warns(ConfigWarning, match="engram_head_dims.*did you mean 'engram_head_dim'"):
        ModelConfig.from_dict(dict(FLASH_INFERENCE_JSON, engram_head_dims=3), versions=ALL)


def test_cli_plan_takes_v41_and_names_the_engram_path(tmp_path):
    p = subprocess.run([sys.executable, "-m", "ascend_v4.cli", "plan", "--config", "v4.1-tiny"],
                       capture_output=True, text=True, env={"GLOG_v": "3", "PATH": ""}, cwd=tmp_path)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert "engram_lookup" in p.stdout and "engram_gate" in p.stdout and not os.listdir(tmp_path)
