"""Release revisions: a release carrying the mtp.* embedding/head copies loads (warning, copies skipped), and the
launch revision (shared expert unclamped) is selected by the config key "revision"."""
import json
import os
import shutil

import numpy as np
import pytest

from ascend_v4.checkpoint.official import is_mtp_shared_copy, load_official_weights
from ascend_v4.checkpoint.safetensors_io import CheckpointError, write_safetensors
from ascend_v4.config import ConfigError, ModelConfig
from ascend_v4.numpy_model import NumpyV4


def _add_tensors(d, tensors, shard="model-extra.safetensors"):
    write_safetensors(os.path.join(d, shard), tensors)
    idx = os.path.join(d, "model.safetensors.index.json")
    with open(idx) as f:
        j = json.load(f)
    j["weight_map"].update({k: shard for k in tensors})
    with open(idx, "w") as f:
        json.dump(j, f)


def test_mtp_copies_of_embedding_and_head_are_skipped_with_a_warning(tiny_ckpt_dir, tmp_path, tiny_cfg):
    d = str(tmp_path / "release")
    shutil.copytree(tiny_ckpt_dir, d)
    emb = np.zeros((tiny_cfg.vocab_size, tiny_cfg.dim), np.uint16)
    _add_tensors(d, {"mtp.0.emb.tok_emb.weight": ("BF16", emb), "mtp.0.head.weight": ("BF16", emb)})
    with pytest.warns(UserWarning, match="skipping 2 MTP copies"):
        got = load_official_weights(d, tiny_cfg)
    want = load_official_weights(tiny_ckpt_dir, tiny_cfg)
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
    # anything else unexpected is still refused
    _add_tensors(d, {"mtp.0.surprise.weight": ("BF16", np.zeros((2, 2), np.uint16))}, "model-extra2.safetensors")
    with pytest.warns(UserWarning, match="skipping 2"), \
            pytest.raises(CheckpointError, match="unexpected mtp.0.surprise.weight"):
        load_official_weights(d, tiny_cfg)


@pytest.mark.parametrize("name, dropped", [("mtp.0.emb.tok_emb.weight", True), ("mtp.0.head.weight", True),
                                           ("mtp.0.embed.weight", True), ("mtp.0.hc_head_fn", False),
                                           ("mtp.0.e_proj.weight", False), ("mtp.0.enorm.weight", False),
                                           ("head.weight", False), ("embed.weight", False)])
def test_which_names_are_mtp_copies(name, dropped):
    assert is_mtp_shared_copy(name) is dropped


def test_revision_key_is_read_and_validated(tiny_cfg):
    assert tiny_cfg.revision == "current" and tiny_cfg.shared_expert_clamp
    hf = tiny_cfg.to_hf_json()
    assert "revision" not in hf
    launch = ModelConfig.from_dict(dict(hf, revision="launch"))
    assert launch.revision == "launch" and not launch.shared_expert_clamp
    assert ModelConfig.from_dict(launch.to_hf_json()).revision == "launch"           # round trip
    assert ModelConfig.from_dict(dict(tiny_cfg.to_inference_json(), revision="launch")).revision == "launch"
    with pytest.raises(ConfigError, match="revision must be one of current, launch, got the string 'v2'"):
        ModelConfig.from_dict(dict(hf, revision="v2"))


def test_launch_revision_leaves_only_the_shared_expert_unclamped(tiny_cfg, tiny_weights):
    """Scaled-up shared-expert w1/w3 push its gate past swiglu_limit: the revisions then differ, and by exactly the
    shared expert's clamp (a hand-written SwiGLU of one layer's shared expert reproduces the difference)."""
    w = dict(tiny_weights)
    for k in ("layers.0.ffn.shared_experts.w1.weight", "layers.0.ffn.shared_experts.w3.weight"):
        w[k] = np.asarray(w[k], np.float64) * 200.0
    ids = np.random.default_rng(3).integers(0, tiny_cfg.vocab_size, (1, 12))
    cur = NumpyV4(tiny_cfg, w)
    old = NumpyV4(tiny_cfg.replace(revision="launch"), w)
    x = np.random.default_rng(4).standard_normal((5, tiny_cfg.dim))
    p = "layers.0.ffn.shared_experts."
    g, u = x @ cur.w[p + "w1.weight"].T, x @ cur.w[p + "w3.weight"].T
    assert np.abs(g).max() > tiny_cfg.swiglu_limit                    # the clamp is active on this input
    silu = lambda z: z / (1 + np.exp(-z))                             # noqa: E731
    lim = tiny_cfg.swiglu_limit
    np.testing.assert_allclose(cur._swiglu(x, p, clamp=tiny_cfg.shared_expert_clamp),
                               silu(np.minimum(g, lim)) * np.clip(u, -lim, lim), rtol=1e-12)
    np.testing.assert_allclose(old._swiglu(x, p, clamp=old.cfg.shared_expert_clamp), silu(g) * u, rtol=1e-12)
    assert not np.allclose(cur.forward(ids)["logits"], old.forward(ids)["logits"])
