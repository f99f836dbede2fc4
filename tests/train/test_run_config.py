"""The train YAML schema: typed values, unknown and misplaced keys, mindformers YAMLs, --print-config."""
import subprocess
import sys

import pytest
import yaml

from ascend_v4.train.run_config import TrainConfig, TrainConfigError, default_yaml, key_table


def _load(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return TrainConfig.from_yaml(str(p))


def test_yaml_numbers_pyyaml_reads_as_strings_are_numbers(tmp_path):
    tc = _load(tmp_path, "lr: 1e-3\nmin_lr: 1e-5\nadam_eps: 1e-8\nsteps: 1e3\nparallel: {dp: 1}\n")
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"        # the PyYAML behaviour being fixed
    assert (tc.lr, tc.min_lr, tc.adam_eps, tc.steps) == (1e-3, 1e-5, 1e-8, 1000)
    assert isinstance(tc.steps, int) and isinstance(tc.lr, float)


@pytest.mark.parametrize("text, match", [
    ("seed: abc", r"seed must be an integer, got 'abc'"),
    ("max_grad_norm: big", r"max_grad_norm must be a number, got 'big'"),
    ("decay_start: -5", r"decay_start must be null or lie in \[warmup_steps, steps\]"),
    ("mtp: 'maybe'", r"mtp must be true or false, got 'maybe'"),
    ("mtp: 1", r"mtp must be true or false"),
    ("lr: .nan", r"lr must be a number"),
    ("lr: -1", r"lr must be > 0"),
    ("steps: 2.5", r"steps must be an integer, got 2.5"),
    ("seq_len: true", r"seq_len must be an integer"),
    ("keep_last_n: 0", r"keep_last_n must be null or >= 1"),
    ("freeze: [embed, lm_head]", r"freeze: unknown part\(s\) \['lm_head'\]; valid: embed, head, router"),
    ("data: {files: 3}", r"data.files must be a list of strings"),
    ("data: [a]", r"'data' must be a mapping of keys \(files, tokenizer, eval_fraction, eval_files\)"),
    ("parallel: {dp: two}", r"parallel.dp must be an integer, got 'two'"),
    ("parallel: {optimizer_shard: yes please}", r"parallel.optimizer_shard must be true or false"),
    ("parallel: {dp: 2, pp: 2, optimizer_shard: true}", r"optimizer_shard is not implemented with the pipeline"),
    ("parallel: {dp: 2, micro_batches: 2, optimizer_shard: true}", r"optimizer_shard is not implemented with the pi"),
    ("- 1\n- 2", r"top level must be a mapping"),
])
def test_bad_values_are_named(tmp_path, text, match):
    with pytest.raises(TrainConfigError, match=match):
        _load(tmp_path, text)


def test_unknown_and_misplaced_keys(tmp_path):
    with pytest.raises(TrainConfigError, match=r"unknown key 'stepz' \(did you mean 'steps'\?\); valid keys at "
                                               r"the top level: model, init_from"):
        _load(tmp_path, "stepz: 3")
    with pytest.raises(TrainConfigError, match=r"unknown key 'parallel.micro_batch' \(did you mean "
                                               r"'parallel.micro_batches'\?\); "
                                               r"valid keys under parallel: dp, tp, ep, pp, micro_batches, "
                                               r"optimizer_shard"):
        _load(tmp_path, "parallel: {micro_batch: 2}")
    with pytest.raises(TrainConfigError, match=r"'tp' is misplaced: it belongs under parallel, not at the top"):
        _load(tmp_path, "tp: 2")
    with pytest.raises(TrainConfigError, match=r"'data.lr' is misplaced: it belongs at the top level, not under "
                                               r"data"):
        _load(tmp_path, "data: {lr: 0.1}")
    with pytest.raises(TrainConfigError, match=r"'parallel.files' is misplaced: it belongs under data, not "
                                               r"under parallel"):
        _load(tmp_path, "parallel: {files: [a.txt]}")


def test_mindformers_yaml_is_refused_with_equivalents(tmp_path):
    text = ("run_mode: train\ncontext: {mode: 0}\nparallel_config: {data_parallel: 2, model_parallel: 1}\n"
            "runner_config: {batch_size: 1, epochs: 2}\nmodel: {model_config: {seq_length: 4096}}\n")
    with pytest.raises(TrainConfigError) as e:
        _load(tmp_path, text)
    msg = str(e.value)
    assert "mindformers-style YAML (parallel_config, runner_config, context, run_mode, model.model_config)" in msg
    assert "parallel_config.data_parallel" in msg and "->  parallel.dp" in msg and "->  seq_len" in msg


def test_print_config_is_the_full_default_and_loads_back(tmp_path):
    text = default_yaml()
    back = TrainConfig.from_dict(yaml.safe_load(text))
    assert back == TrainConfig()
    keys = [k for k, _, _ in key_table()]
    assert "parallel.optimizer_shard" in keys and "data.eval_files" in keys and "init_from" in keys
    for k, _, doc in key_table():                       # every key is documented on its line
        leaf = k.split(".")[-1]
        assert any(line.strip().startswith(f"{leaf}:") and f"# {doc}" in line for line in text.splitlines()), k
    out = subprocess.run([sys.executable, "-m", "ascend_v4.cli", "train", "--print-config"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == text


def test_readme_documents_every_key_as_the_code_does():
    """README.md's key table: one row per key, with the default and meaning the config code has (a key added or
    changed in code without the README fails here)."""
    import os
    import re
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md"), encoding="utf-8").read()
    rows = {m.group(1): (m.group(2), m.group(3)) for m in
            (re.match(r"^\| `([a-z_.]+)` \| `(.*?)` \| (.*) \|$", line) for line in readme.splitlines()) if m}
    want = {k: (d, doc) for k, d, doc in key_table()}
    assert len(want) > 30
    assert {k: rows.get(k) for k in want if rows.get(k) != want[k]} == {}


def test_shipped_finetune_preset_loads_by_name():
    tc = TrainConfig.from_yaml("finetune.yaml")
    assert tc.model is None and tc.lr == 1e-4 and tc.warmup_steps == 10 and tc.keep_last_n == 2
