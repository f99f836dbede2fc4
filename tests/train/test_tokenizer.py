"""Tokenizers: deterministic sentencepiece training, exact round trips, special ids, tokenizer.json loading,
vocab checks against the model config, the embedded default corpus + cached default tokenizer."""
import dataclasses
import json
import os
import shutil

import pytest

from ascend_v4 import load_config
from ascend_v4.train.corpus import MAX_DEFAULT_VOCAB, default_corpus_files, default_tokenizer
from ascend_v4.train.data import DataError, iter_documents
from ascend_v4.train.tokenizer import (HFTokenizer, SentencePieceTokenizer, Tokenizer, check_vocab,
                                       load_tokenizer, train_sentencepiece)

TRICKY = ["hello  world\n\tfoo ", " leading space", "trailing  ", "", "\n\n\n", "    return x + 1",
          "é ü ß 日本語 🙂 — “quotes”\r\n", "def f(x):\n    return {'a': [1, 2, 3]}\n", "0123456789 3.14159e-10",
          "<s> </s> <pad> <unk> are just text here", "\x00\x7f control"]


def _one_line(e):
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def spm512(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    return SentencePieceTokenizer(train_sentencepiece(default_corpus_files(), 512, str(d / "m512"), seed=0))


def test_training_is_deterministic_and_path_independent(tmp_path):
    files = default_corpus_files()
    a = train_sentencepiece(files, 600, str(tmp_path / "a"), seed=3)
    b = train_sentencepiece(files, 600, str(tmp_path / "sub" / "b"), seed=3)
    copies = []
    for f in files:                                   # same content under other names: same model bytes
        c = tmp_path / "copy" / ("x_" + os.path.basename(f))
        c.parent.mkdir(exist_ok=True)
        shutil.copy(f, c)
        copies.append(str(c))
    c = train_sentencepiece(copies, 600, str(tmp_path / "c"), seed=3)
    data = [open(p, "rb").read() for p in (a, b, c)]
    assert a.endswith(".model") and data[0] == data[1] == data[2]
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    d = train_sentencepiece(files, 700, str(tmp_path / "d"), seed=3)
    assert open(d, "rb").read() != data[0]


def test_special_ids_and_protocol(spm512):
    tok = spm512
    assert isinstance(tok, Tokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert tok.id_to_piece(0) == "<s>" and tok.id_to_piece(1) == "</s>" and tok.id_to_piece(3) == "<unk>"
    assert tok.vocab_size == 512
    ids = tok.encode("<s> </s> <pad> hello")               # the spellings are plain text, never control ids
    assert not {0, 1, 2, 3} & set(ids)
    assert tok.decode([0] + tok.encode("hi there") + [1, 2, 2]) == "hi there"


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_exact(spm512, text):
    ids = spm512.encode(text)
    assert all(0 <= i < spm512.vocab_size for i in ids)
    assert 3 not in ids                                   # byte fallback: nothing becomes <unk>
    assert spm512.decode(ids) == text


def test_round_trip_whole_corpus(spm512):
    docs = [t for f in default_corpus_files() for t in iter_documents(f)]
    assert len(docs) > 50
    batch = spm512.encode_batch(docs)
    for d, ids in zip(docs, batch):
        assert ids == spm512.encode(d)
        assert spm512.decode(ids) == d


def test_check_vocab(tmp_path, spm512):
    tiny, small = load_config("tiny"), load_config("small")
    check_vocab(spm512, tiny)
    big = SentencePieceTokenizer(train_sentencepiece(default_corpus_files(), 1024, str(tmp_path / "b"), 0))
    check_vocab(big, small)
    with pytest.raises(DataError) as e:
        check_vocab(big, tiny)
    msg = _one_line(e)
    assert "1024" in msg and "512" in msg and "b.model" in msg
    with pytest.raises(DataError) as e:
        check_vocab(spm512, dataclasses.replace(tiny, bos_token_id=5))
    assert "bos/eos" in _one_line(e)
    with pytest.raises(DataError):
        load_tokenizer(str(tmp_path / "b.model"), cfg=tiny)
    assert isinstance(DataError("x"), ValueError)


def test_load_tokenizer_model_and_dir(tmp_path, spm512):
    p = train_sentencepiece(default_corpus_files(), 512, str(tmp_path / "tokenizer"), 0)
    for arg in (p, str(tmp_path)):
        tok = load_tokenizer(arg)
        assert isinstance(tok, SentencePieceTokenizer) and tok.fingerprint == spm512.fingerprint
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        load_tokenizer(str(empty))
    assert str(empty) in _one_line(e) and "tokenizer.json" in str(e.value)
    with pytest.raises(DataError) as e:
        load_tokenizer(str(tmp_path / "nope.model"))
    assert "nope.model" in _one_line(e)
    bad = tmp_path / "bad" / "x.model"
    bad.parent.mkdir()
    bad.write_bytes(b"definitely not a protobuf \xff\xfe")
    with pytest.raises(DataError) as e:
        load_tokenizer(str(bad.parent))
    assert "x.model" in _one_line(e)
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(p, two / "a.model")
    shutil.copy(p, two / "b.model")
    with pytest.raises(DataError) as e:
        load_tokenizer(str(two))
    assert "several" in _one_line(e)
    other = tmp_path / "x.vocab.bin"
    other.write_text("x")
    with pytest.raises(DataError):
        load_tokenizer(str(other))


def _hf_tokenizer_json(path, names=("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")):
    from tokenizers import Tokenizer as T, models, pre_tokenizers, decoders, trainers
    tok = T(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(names) + ["<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    docs = [t for f in default_corpus_files() for t in iter_documents(f)]
    tok.train_from_iterator(docs, trainer)
    tok.save(str(path))
    return str(path)


def test_tokenizer_json(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    _hf_tokenizer_json(d / "tokenizer.json")
    train_sentencepiece(default_corpus_files(), 512, str(d / "tokenizer"), 0)   # tokenizer.json wins
    tok = load_tokenizer(str(d))
    assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert tok.vocab_size <= 400
    for s in TRICKY[:9]:
        ids = tok.encode(s)
        assert not {0, 1} & set(ids)
        assert tok.decode([0] + ids + [1]) == s
    check_vocab(tok, load_config("tiny"))
    assert tok.encode_batch(["a b", "c"]) == [tok.encode("a b"), tok.encode("c")]


def test_tokenizer_json_specials_from_config(tmp_path):
    _hf_tokenizer_json(tmp_path / "tokenizer.json", names=("[A]", "[B]"))
    with pytest.raises(DataError) as e:
        load_tokenizer(str(tmp_path))
    assert "tokenizer_config.json" in _one_line(e)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "[A]"}, "eos_token": "[B]"}))
    tok = load_tokenizer(str(tmp_path))
    assert (tok.bos_id, tok.eos_id) == (0, 1)
    (tmp_path / "tokenizer.json").write_text("{ broken")
    with pytest.raises(DataError) as e:
        load_tokenizer(str(tmp_path))
    assert "tokenizer.json" in _one_line(e)


def test_vocab_too_small_and_empty_corpus(tmp_path):
    with pytest.raises(DataError) as e:
        train_sentencepiece(default_corpus_files(), 200, str(tmp_path / "s"), 0)
    _one_line(e)
    with pytest.raises(DataError) as e:
        train_sentencepiece(default_corpus_files(), 300, str(tmp_path / "s"), 0)   # fewer than the corpus's chars
    assert "vocab" in _one_line(e).lower()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(DataError) as e:
        train_sentencepiece([str(empty)], 512, str(tmp_path / "s"), 0)
    assert "empty.txt" in _one_line(e)


def test_default_corpus_and_tokenizer(tmp_path):
    files = default_corpus_files()
    assert len(files) >= 3 and all(os.path.isabs(f) for f in files)
    assert any(f.endswith(".jsonl") for f in files) and any(f.endswith(".txt") for f in files)
    assert sum(os.path.getsize(f) for f in files) < 400_000
    for name in ("tiny", "small"):
        cfg = load_config(name)
        tok = default_tokenizer(cfg.vocab_size, str(tmp_path))
        check_vocab(tok, cfg)
        assert tok.vocab_size == min(cfg.vocab_size, MAX_DEFAULT_VOCAB)
    cached = [n for n in os.listdir(tmp_path) if n.endswith(".model")]
    assert len(cached) == 2
    p = os.path.join(tmp_path, sorted(cached)[0])
    mtime = os.stat(p).st_mtime_ns
    again = default_tokenizer(load_config("small").vocab_size, str(tmp_path))
    assert os.stat(p).st_mtime_ns == mtime                 # loaded from the cache, not retrained
    assert again.vocab_size == 2048
    with open(p, "wb") as fh:                              # a damaged cache entry is rebuilt
        fh.write(b"junk")
    tok = default_tokenizer(2048 if "2048" in p else 512, str(tmp_path))
    assert tok.vocab_size in (512, 2048)
    big = default_tokenizer(129280, str(tmp_path / "big"))
    assert big.vocab_size == MAX_DEFAULT_VOCAB
