"""PackedLoader: packing invariants (reconstruct every document from the rows), segment/position/mask
consistency, deterministic shuffling, exact resume (also across epoch boundaries), eval split, the on-disk
token cache, and bad inputs -> one-line DataError naming the file."""
import json
import os

import numpy as np
import pytest

from ascend_v4 import load_config
from ascend_v4.train import data as data_mod
from ascend_v4.train.corpus import default_corpus_files, default_tokenizer
from ascend_v4.train.data import (BATCH_KEYS, DataError, PackedLoader, build_loaders, eval_split, iter_documents,
                                  resolve_files)


class ByteTok:
    """Minimal protocol tokenizer (no fingerprint attribute): UTF-8 bytes shifted by 3."""
    vocab_size, bos_id, eos_id, pad_id = 259, 0, 1, 2

    def __init__(self):
        self.calls = 0

    def encode(self, text):
        self.calls += 1
        return [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return default_tokenizer(512, str(tmp_path_factory.mktemp("tok")))


@pytest.fixture()
def cache(tmp_path):
    return str(tmp_path / "cache")


def _texts(files):
    return [t for f in resolve_files(files) for t in iter_documents(f)]


def _doc(tok, text):
    return [tok.bos_id] + list(tok.encode(text)) + [tok.eos_id]


def _one_line(e):
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def _epoch_rows(loader):
    """All rows (as one-row batches) of the loader's current epoch, starting from its current position."""
    e0 = None
    rows = []
    while True:
        st = loader.state_dict()
        ep, row = loader.next_row()
        if e0 is None:
            e0 = ep
        if ep != e0:
            loader.load_state_dict(st)
            return rows
        rows.append({k: v[0] for k, v in row.items()})


def _check_epoch(loader, tok, texts, epoch_rows, epoch, positions="segment"):
    S = loader.seq_len
    assert len(epoch_rows) == loader.rows_per_epoch == -(-loader.n_tokens // S)
    stream, mask_total = [], 0
    for r, row in enumerate(epoch_rows):
        inp, tgt, seg, pos, m = (row[k] for k in BATCH_KEYS)
        assert all(a.dtype == np.int32 and a.shape == (S,) for a in (inp, tgt, seg, pos, m))
        real = seg >= 0
        n = int(real.sum())
        assert real[:n].all() and not real[n:].any()          # padding only at the end ...
        if r < len(epoch_rows) - 1:
            assert n == S                                     # ... of the epoch's last row
            assert tgt[-1] == epoch_rows[r + 1]["input_ids"][0]
        assert (tgt[:-1] == inp[1:]).all()                    # targets = inputs shifted by one
        assert (inp[n:] == loader.pad_token).all()
        # segments: 0, 1, 2, ... ; a new segment starts exactly at a bos (or at the row start)
        if n:
            assert seg[0] == 0 and (np.diff(seg[:n]) >= 0).all() and (np.diff(seg[:n]) <= 1).all()
            starts = np.nonzero(np.diff(seg[:n]) == 1)[0] + 1
            assert (inp[starts] == tok.bos_id).all()
            assert set(np.nonzero(inp[1:n] == tok.bos_id)[0] + 1) == set(starts)
        for s in np.unique(seg[:n]):
            idx = np.nonzero(seg == s)[0]
            if positions == "segment":
                assert (pos[idx] == np.arange(len(idx))).all()
            else:
                assert (np.diff(pos[idx]) == 1).all()
                assert (pos[idx[0]] == 0) == (inp[idx[0]] == tok.bos_id)
        # loss mask: 1 exactly where the target is the next token of the same document
        expect = real & (tgt != tok.bos_id)                  # a bos target = the boundary between documents
        if r == len(epoch_rows) - 1:
            expect[n - 1:] = False                            # the epoch's last token has no target
        assert (m == expect).all()
        mask_total += int(m.sum())
        stream += inp[:n].tolist()
    # every document exactly once per epoch, in the epoch's order, equal to direct tokenisation
    order = loader.order(epoch)
    expected = [t for i in order for t in _doc(tok, texts[i])]
    assert stream == expected
    assert mask_total == loader.n_tokens - loader.n_documents   # a document of L tokens has L-1 targets
    return stream


@pytest.mark.parametrize("seq_len,shuffle,positions", [(64, True, "segment"), (17, False, "segment"),
                                                       (1000, True, "document"), (7, True, "document")])
def test_packing_invariants_default_corpus(tok, cache, seq_len, shuffle, positions):
    files = default_corpus_files()
    texts = _texts(files)
    loader = PackedLoader(files, tok, seq_len, 3, seed=5, shuffle=shuffle, cache_dir=cache, positions=positions)
    assert loader.n_documents == len(texts)
    assert loader.n_tokens == sum(len(_doc(tok, t)) for t in texts)
    for epoch in (0, 1):
        rows = _epoch_rows(loader)
        _check_epoch(loader, tok, texts, rows, epoch, positions)
    if not shuffle:
        assert (loader.order(0) == np.arange(len(texts))).all()


@pytest.mark.parametrize("seq_len", [1, 24])
def test_packing_small_docs_and_long_docs(tmp_path, cache, seq_len):
    # documents far shorter and far longer than a row; a row holding many documents
    p = tmp_path / "mix.jsonl"
    rng = np.random.default_rng(0)
    lines = []
    for i in range(40):
        n = int(rng.choice([0, 1, 2, 5, 30, 200]))
        lines.append(json.dumps({"text": "".join(chr(97 + (i + j) % 26) for j in range(n)), "id": i}))
    p.write_text("\n".join(lines) + "\n")
    bt = ByteTok()
    texts = _texts([str(p)])
    assert len(texts) == sum(1 for ln in lines if json.loads(ln)["text"])
    loader = PackedLoader([str(p)], bt, seq_len, 2, seed=9, cache_dir=cache)
    assert loader.stats["empty_docs"] == len(lines) - len(texts)
    for epoch in range(3):
        _check_epoch(loader, bt, texts, _epoch_rows(loader), epoch)


def test_batches_match_rows_and_cross_epochs(tok, cache):
    files = default_corpus_files()
    a = PackedLoader(files, tok, 32, 7, seed=1, cache_dir=cache)
    b = PackedLoader(files, tok, 32, 1, seed=1, cache_dir=cache)
    n_batches = 2 * a.rows_per_epoch // 7 + 3                 # well past two epoch boundaries
    for _ in range(n_batches):
        batch = a.next_batch()
        assert set(batch) == set(BATCH_KEYS)
        assert all(v.shape == (7, 32) and v.dtype == np.int32 for v in batch.values())
        rows = [b.next_batch() for _ in range(7)]
        for k in BATCH_KEYS:
            assert (batch[k] == np.concatenate([r[k] for r in rows])).all()
    assert a.epoch >= 2 and a.state_dict() == {**b.state_dict(), "rows_emitted": a.rows_emitted}


def test_shuffle_is_deterministic(tok, cache):
    files = default_corpus_files()
    mk = lambda seed, **kw: PackedLoader(files, tok, 48, 4, seed=seed, cache_dir=cache, **kw)
    a, b, c = mk(3), mk(3), mk(4)
    for _ in range(20):
        ba, bb, bc = a.next_batch(), b.next_batch(), c.next_batch()
        for k in BATCH_KEYS:
            assert (ba[k] == bb[k]).all()
    assert not (ba["input_ids"] == bc["input_ids"]).all()
    n = a.n_documents
    o0, o1 = a.order(0), a.order(1)
    assert sorted(o0.tolist()) == list(range(n)) and sorted(o1.tolist()) == list(range(n))
    assert (o0 != o1).any() and (o0 != c.order(0)).any()
    assert (data_mod.epoch_order(n, 3, 0) == o0).all()
    # the order is pure uint64 arithmetic: check it against a pure-Python splitmix64 (stable across numpy versions)
    for seed, epoch in ((0, 0), (3, 0), (3, 1), (2 ** 40 + 7, 5)):
        assert data_mod.epoch_order(n, seed, epoch).tolist() == _py_order(n, seed, epoch)


def _py_splitmix(x):
    M = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & M
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M
    return x ^ (x >> 31)


def _py_order(n, seed, epoch):
    salt = 0
    for v in (seed, epoch, 0x5EED):
        salt = _py_splitmix(salt ^ v)
    keys = [_py_splitmix(i ^ salt) for i in range(n)]
    return sorted(range(n), key=lambda i: (keys[i], i))


def _run(loader, n):
    return [loader.next_batch() for _ in range(n)]


def _same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        for k in BATCH_KEYS:
            assert (x[k] == y[k]).all(), k


@pytest.mark.parametrize("n_before", [0, 1, 5, 13, 37])
def test_exact_resume(tok, cache, tmp_path, n_before):
    files = default_corpus_files()
    mk = lambda: PackedLoader(files, tok, 256, 8, seed=11, cache_dir=cache)
    a = mk()
    assert a.rows_per_epoch // 8 < 30                          # so the 30 batches after resuming cross an epoch
    _run(a, n_before)
    state = a.state_dict()
    assert all(type(v) is int for v in state.values())
    # through JSON and through np.savez (no pickle)
    js = json.loads(json.dumps(state))
    np.savez(tmp_path / "st.npz", **state)
    npz = dict(np.load(tmp_path / "st.npz", allow_pickle=False))
    cont = _run(a, 30)
    for saved in (js, npz):
        b = mk()
        b.load_state_dict(saved)
        _same(_run(b, 30), cont)
        assert b.state_dict() == a.state_dict()


def test_resume_exactly_at_epoch_boundary(tok, cache):
    files = default_corpus_files()
    a = PackedLoader(files, tok, 40, 1, seed=2, cache_dir=cache)
    _run(a, a.rows_per_epoch)                                  # the whole first epoch
    st = a.state_dict()
    cont = _run(a, 5)
    assert cont[0]["input_ids"][0, 0] == tok.bos_id and a.epoch == 1
    b = PackedLoader(files, tok, 40, 1, seed=2, cache_dir=cache)
    b.load_state_dict(st)
    _same(_run(b, 5), cont)


def test_resume_with_other_batch_size_and_seq_len(tok, cache):
    files = default_corpus_files()
    a = PackedLoader(files, tok, 40, 4, seed=2, cache_dir=cache)
    _run(a, 9)
    st = a.state_dict()
    rows = np.concatenate([x["input_ids"] for x in _run(a, 6)])          # 24 rows
    b = PackedLoader(files, tok, 40, 3, seed=2, cache_dir=cache)
    b.load_state_dict(st)
    assert (np.concatenate([x["input_ids"] for x in _run(b, 8)]) == rows).all()
    # a longer seq_len continues the same token stream (sequence-length ramp)
    c = PackedLoader(files, tok, 80, 1, seed=2, cache_dir=cache)
    c.load_state_dict(st)
    assert (c.next_batch()["input_ids"][0] == rows[:2].reshape(-1)).all()


def test_resume_mismatch_errors(tok, cache, tmp_path):
    files = default_corpus_files()
    a = PackedLoader(files, tok, 40, 4, seed=2, cache_dir=cache)
    _run(a, 3)
    st = a.state_dict()
    with pytest.raises(DataError) as e:
        PackedLoader(files, tok, 40, 4, seed=3, cache_dir=cache).load_state_dict(st)
    assert "seed" in _one_line(e)
    with pytest.raises(DataError) as e:
        PackedLoader(files[:2], tok, 40, 4, seed=2, cache_dir=cache).load_state_dict(st)
    assert "corpus" in _one_line(e)
    with pytest.raises(DataError) as e:
        PackedLoader(files, tok, 40, 4, seed=2, cache_dir=cache, eval_fraction=0.1).load_state_dict(st)
    assert "split" in _one_line(e)
    with pytest.raises(DataError):
        a.load_state_dict({"epoch": 1})
    with pytest.raises(DataError):
        a.load_state_dict({**st, "token_offset": 10 ** 9})


def test_eval_split(tok, cache):
    files = default_corpus_files()
    texts = _texts(files)
    train, ev = eval_split(files, tok, 32, 4, seed=0, eval_fraction=0.2, cache_dir=cache)
    assert train.n_documents + ev.n_documents == len(texts)
    assert 0 < ev.n_documents < len(texts) * 0.45
    assert train.corpus is ev.corpus
    # disjoint documents; independent of the training seed and of the file order
    def doc_set(loader):
        return {tuple(loader.document(i).tolist()) for i in range(loader.n_documents)}
    tr_docs, ev_docs = doc_set(train), doc_set(ev)
    assert not tr_docs & ev_docs and len(tr_docs | ev_docs) == len({tuple(_doc(tok, t)) for t in texts})
    train2, ev2 = eval_split(files[::-1], tok, 32, 4, seed=99, eval_fraction=0.2, cache_dir=cache)
    assert doc_set(ev2) == ev_docs
    # one fixed pass, padded to [B, S], not touching the loader's position
    st = ev.state_dict()
    b1 = list(ev.epoch_batches())
    b2 = list(ev.epoch_batches())
    assert ev.state_dict() == st and len(b1) == -(-ev.rows_per_epoch // 4)
    _same(b1, b2)
    assert all(b[k].shape == (4, 32) for b in b1 for k in BATCH_KEYS)
    total = sum(int(b["loss_mask"].sum()) for b in b1)
    assert total == ev.n_tokens - ev.n_documents
    assert len(list(ev.epoch_batches(max_batches=2))) == min(2, len(b1))
    stream = [t for b in b1 for r in range(4) for t, s in zip(b["input_ids"][r], b["segment_ids"][r]) if s >= 0]
    assert stream == [t for i in range(ev.n_documents) for t in ev.document(i).tolist()]
    with pytest.raises(DataError):
        PackedLoader(files, tok, 32, 4, split="eval", cache_dir=cache)
    # a tiny fraction still holds out one document (deterministically)
    tr3, ev3 = eval_split(files, tok, 32, 4, eval_fraction=1e-9, cache_dir=cache)
    _, ev4 = eval_split(files, tok, 32, 4, seed=5, eval_fraction=1e-9, cache_dir=cache)
    assert ev3.n_documents == 1 and tr3.n_documents == len(texts) - 1 and doc_set(ev3) == doc_set(ev4)


def test_token_cache(tmp_path, cache, monkeypatch):
    p = tmp_path / "a.txt"
    p.write_text("first doc\nline two\n\n\nsecond doc\r\n \t \nthird\n")
    bt = ByteTok()
    a = PackedLoader([str(p)], bt, 8, 2, cache_dir=cache)
    probe = 1                                                       # ByteTok has no fingerprint: one probe encode
    assert a.n_documents == 3 and bt.calls == 3 + probe
    names = os.listdir(cache)
    assert len([n for n in names if n.endswith(".json")]) == 1 and not [n for n in names if ".tmp-" in n]
    assert isinstance(a.corpus.parts[0].tokens, np.memmap)
    PackedLoader([str(p)], bt, 8, 2, cache_dir=cache)
    assert bt.calls == 3 + 2 * probe                               # served from the cache
    p.write_text("changed\n")
    b = PackedLoader([str(p)], bt, 8, 2, cache_dir=cache)
    assert b.n_documents == 1 and bt.calls == 4 + 3 * probe        # content hash changed -> retokenised
    # a damaged entry is rebuilt
    for n in os.listdir(cache):
        if n.endswith(".tokens"):
            with open(os.path.join(cache, n), "r+b") as fh:
                fh.truncate(4)
    c = PackedLoader([str(p)], bt, 8, 2, cache_dir=cache)
    assert c.document(0).tolist() == [0] + bt.encode("changed") + [1]
    # chunked tokenisation gives the same tokens as one chunk
    monkeypatch.setattr(data_mod, "_CHUNK_CHARS", 5)
    files = default_corpus_files()
    tk = default_tokenizer(512, str(tmp_path / "tok"))
    x = PackedLoader(files, tk, 16, 1, cache_dir=str(tmp_path / "c1"))
    monkeypatch.setattr(data_mod, "_CHUNK_CHARS", 1 << 30)
    y = PackedLoader(files, tk, 16, 1, cache_dir=str(tmp_path / "c2"))
    for i in range(x.n_documents):
        assert (x.document(i) == y.document(i)).all()


def test_txt_and_jsonl_readers(tmp_path):
    t = tmp_path / "t.txt"
    t.write_bytes(b"  para one\r\nstill one  \r\n\r\n\r\n   \npara two\n\tindented\n\n")
    assert list(iter_documents(str(t))) == ["  para one\nstill one  ", "para two\n\tindented"]
    j = tmp_path / "j.jsonl"
    j.write_text('{"text": "a\\n\\nb"}\n\n   \n{"text": "", "x": 1}\n{"text": "caf\\u00e9", "meta": [1]}\n')
    stats = {}
    assert list(iter_documents(str(j), stats=stats)) == ["a\n\nb", "café"]
    assert stats["empty_docs"] == 1
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("x")
    (d / "sub" / "a.jsonl").write_text('{"text": "y"}\n')
    (d / "ignore.csv").write_text("z")
    assert resolve_files([str(d)]) == [str(d / "b.txt"), str(d / "sub" / "a.jsonl")]


def test_bad_inputs(tmp_path, cache):
    bt = ByteTok()
    mk = lambda files, **kw: PackedLoader(files, bt, 8, 2, cache_dir=cache, **kw)
    with pytest.raises(DataError) as e:
        mk([str(tmp_path / "missing.jsonl")])
    assert "missing.jsonl" in _one_line(e)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": ""}\n')
    with pytest.raises(DataError) as e:
        mk([str(empty), str(blank)])
    msg = _one_line(e)
    assert "empty corpus" in msg and "empty.txt" in msg and "blank.jsonl" in msg
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "fine"}\n{"txt": "typo"}\nnot json at all\n[1, 2]\n{"text": 5}\n')
    with pytest.raises(DataError) as e:
        mk([str(bad)])
    msg = _one_line(e)
    assert f"{bad}:3" in msg and "text" in msg and "skip" in msg
    loader = mk([str(bad)], skip_bad=True)
    assert loader.n_documents == 2 and loader.stats["skipped_lines"] == 4
    for name, payload in (("latin1.txt", b"ok line\ncaf\xe9\n"), ("latin1.jsonl", b'{"text": "a"}\n{"text": "\xff"}\n')):
        f = tmp_path / name
        f.write_bytes(payload)
        with pytest.raises(DataError) as e:
            mk([str(f)])
        msg = _one_line(e)
        assert f"{f}:2" in msg and "UTF-8" in msg
    with pytest.raises(DataError) as e:
        mk([str(tmp_path / "x.csv")]) if (tmp_path / "x.csv").write_text("a") else None
    assert "x.csv" in _one_line(e)
    emptydir = tmp_path / "nothing"
    emptydir.mkdir()
    with pytest.raises(DataError) as e:
        mk([str(emptydir)])
    assert "nothing" in _one_line(e)
    ok = tmp_path / "ok.txt"
    ok.write_text("hello")
    for kw in ({"seq_len": 0}, {"batch_size": 0}, {"split": "test"}, {"eval_fraction": 1.0}, {"positions": "x"}):
        args = dict(seq_len=8, batch_size=2)
        args.update(kw)
        with pytest.raises(DataError):
            PackedLoader([str(ok)], bt, args.pop("seq_len"), args.pop("batch_size"), cache_dir=cache, **args)
    with pytest.raises(DataError) as e:                   # every document held out: nothing left to train on
        PackedLoader([str(ok)], bt, 8, 2, cache_dir=cache, eval_fraction=0.99, split_seed=_all_eval_seed())
    assert "ok.txt" in _one_line(e)


def _all_eval_seed():
    for s in range(1000):
        if data_mod.eval_membership("0" * 16, 1, 0.99, s).all():
            return s
    raise AssertionError


def test_build_loaders_default(tmp_path):
    cfg = load_config("tiny")
    tk, train, ev = build_loaders(cfg, seq_len=64, batch_size=2, seed=0, eval_fraction=0.05,
                                  cache_dir=str(tmp_path))
    assert tk.vocab_size <= cfg.vocab_size and ev is not None and ev.n_documents > 0
    b = next(train)
    assert b["input_ids"].max() < cfg.vocab_size and b["input_ids"].shape == (2, 64)
    assert sorted(os.listdir(tmp_path)) == ["tokenizers", "tokens"]
    _, train2, none = build_loaders(cfg, seq_len=64, batch_size=2, seed=0, cache_dir=str(tmp_path))
    assert none is None and train2.n_documents == train.n_documents + ev.n_documents
