"""`generate` as a user runs it: one-line errors with exit 2 and no output file for bad requests; a real run writes
ids + per-step logits that match a full recompute."""
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from ascend_v4.serve.cli import generate


def invoke(*args):
    r = CliRunner().invoke(generate, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture()
def ckpt_no_tok(tiny_ckpt_dir, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt_dir, d)
    return d


BAD = [
    ("missing checkpoint", lambda d, t: [t / "nope", "--tokens", t / "x.npy"], "does not exist"),
    ("prompt and tokens", lambda d, t: [d, "--prompt", "hi", "--tokens", t / "x.npy"], "exactly one"),
    ("neither", lambda d, t: [d], "exactly one"),
    ("empty prompt", lambda d, t: [d, "--prompt", "   "], "empty"),
    ("no tokenizer", lambda d, t: [d, "--prompt", "hello"], "no tokenizer"),
    ("bad tokenizer file", lambda d, t: [d, "--prompt", "hello", "--tokenizer", t / "bad.json"], "not a valid tokenizer.json"),
    ("tokens missing", lambda d, t: [d, "--tokens", t / "missing.npy"], "does not exist"),
    ("tokens not npy", lambda d, t: [d, "--tokens", t / "garbage.npy"], "not a readable .npy"),
    ("tokens float", lambda d, t: [d, "--tokens", t / "float.npy"], "integer"),
    ("tokens out of vocab", lambda d, t: [d, "--tokens", t / "big.npy"], "vocabulary"),
    ("tokens negative", lambda d, t: [d, "--tokens", t / "neg.npy"], "-1 right-padding"),
    ("tokens empty row", lambda d, t: [d, "--tokens", t / "emptyrow.npy"], "empty"),
    ("bad temperature", lambda d, t: [d, "--tokens", t / "ok.npy", "--temperature", "0"], "temperature"),
    ("bad top-p", lambda d, t: [d, "--tokens", t / "ok.npy", "--top-p", "2"], "top_p"),
    ("zero new tokens", lambda d, t: [d, "--tokens", t / "ok.npy", "--max-new-tokens", "0"], "max-new-tokens"),
    ("out dir missing", lambda d, t: [d, "--tokens", t / "ok.npy", "--out", t / "no" / "g.npz"], "does not exist"),
    ("out is a dir", lambda d, t: [d, "--tokens", t / "ok.npy", "--out", t], "directory"),
]


@pytest.mark.parametrize("name,args,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_fail_with_one_line_and_no_output(ckpt_no_tok, tmp_path, name, args, msg):
    np.save(tmp_path / "x.npy", np.arange(4))
    np.save(tmp_path / "ok.npy", np.arange(4))
    np.save(tmp_path / "float.npy", np.ones(4))
    np.save(tmp_path / "big.npy", np.array([1, 2, 100000]))
    np.save(tmp_path / "neg.npy", np.array([[1, -1, 3]]))
    np.save(tmp_path / "emptyrow.npy", np.array([[1, 2], [-1, -1]]))
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    (tmp_path / "bad.json").write_text("{not json")
    before = set(os.listdir(tmp_path))
    code, out, err = invoke(*args(ckpt_no_tok, tmp_path))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err
    assert set(os.listdir(tmp_path)) == before                  # nothing written (no partial npz)


@pytest.mark.slow   # > 20 s: runs in .ci/run, so the default suite stays under 10 minutes
def test_generate_tokens_batch_writes_ids_and_logits(ckpt_no_tok, tmp_path, tiny_cfg, tiny_weights):
    from ascend_v4.numpy_model import NumpyV4
    toks = np.full((2, 9), -1, np.int64)
    rng = np.random.default_rng(2)
    toks[0, :9] = rng.integers(2, tiny_cfg.vocab_size, 9)
    toks[1, :4] = rng.integers(2, tiny_cfg.vocab_size, 4)
    np.save(tmp_path / "t.npy", toks)
    out = tmp_path / "gen.npz"
    code, stdout, err = invoke(ckpt_no_tok, "--tokens", tmp_path / "t.npy", "--max-new-tokens", 6, "--greedy",
                               "--no-eos", "--out", out)
    assert code == 0, err
    assert "generated 12 tokens for 2 sequence(s)" in err and "tok/s" in err
    assert stdout.startswith("[0] ") and "\n[1] " in stdout
    with np.load(out) as z:
        assert sorted(z.files) == ["lengths", "logits", "prompt", "prompt_lengths", "tokens"]
        assert z["logits"].dtype == np.float32 and z["logits"].shape == (2, 6, tiny_cfg.vocab_size)
        assert z["tokens"].shape == (2, 6) and z["prompt_lengths"].tolist() == [9, 4]
        assert np.array_equal(z["prompt"], toks)
        gen, lg = z["tokens"], z["logits"]
    golden = NumpyV4(tiny_cfg, tiny_weights)
    for r, n in enumerate((9, 4)):
        assert np.array_equal(gen[r], lg[r].argmax(-1))
        seq = np.concatenate([toks[r, :n], gen[r, :-1]])[None]
        ref = golden.forward(seq)["logits"][0, n - 1:]
        rel = np.linalg.norm(lg[r] - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert rel.max() < 1e-4, rel


def test_demo_tokenizer_round_trip(tmp_path, tiny_cfg):
    from ascend_v4.serve.tokenizer import load_tokenizer, prompt_ids, text_of, train_demo_tokenizer
    from ascend_v4.train.tokenizer import check_vocab
    train_demo_tokenizer(tiny_cfg.vocab_size, str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(str(tmp_path))
    check_vocab(tok, tiny_cfg)                                            # <bos>/<eos> are the config's ids
    ids = prompt_ids(tok, "The quick brown fox jumps over 128 lazy dogs.")
    assert tok.vocab_size == tiny_cfg.vocab_size and ids[0] == tiny_cfg.bos_token_id and max(ids) < 512
    assert tiny_cfg.bos_token_id not in ids[1:]
    assert text_of(tok, ids) == "The quick brown fox jumps over 128 lazy dogs."
    assert text_of(tok, [tiny_cfg.vocab_size + 5]) == ""                  # ids beyond the tokenizer are skipped


@pytest.mark.slow
def test_generate_prompt_streams_text_through_the_tokenizer(ckpt_no_tok, tmp_path, tiny_cfg):
    from ascend_v4.serve.tokenizer import load_tokenizer, prompt_ids, train_demo_tokenizer
    train_demo_tokenizer(tiny_cfg.vocab_size, str(ckpt_no_tok / "tokenizer.json"))
    tok = load_tokenizer(str(ckpt_no_tok))
    assert tok.vocab_size == tiny_cfg.vocab_size and prompt_ids(tok, "hi")[0] == tiny_cfg.bos_token_id
    code, stdout, err = invoke(ckpt_no_tok, "--prompt", "The quick brown fox", "--max-new-tokens", 5,
                               "--seed", 3, "--top-k", 20, "--temperature", 0.8)
    assert code == 0, err
    assert "generated" in err and stdout.endswith("\n") and len(stdout.strip()) > 0
