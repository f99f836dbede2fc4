"""Engram hashing bit-exact to DeepSeek's V4.1 `engram.py`: bucket primes, multipliers, n-gram hashes (published
test vectors and a hand computation with Python integers), the state carried across calls, dead tokens, and the
compressed tokenizer map's normaliser."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ascend_v4.ops.engram.reference import (DEAD, NgramHashState, column_offsets, compressed_token_map,
                                             compressed_token_map_from_tokenizer, engram_primes, hash_multipliers,
                                             normalize_token_text)

from .engram_hand import hand_rows

# Hand-copied from the V4.1 model description (its Engram layout, multipliers and test vectors sections; values
# were produced there by running DeepSeek's official EngramLayout / NgramHashState with numpy's PCG64).
PRIMES_L1 = [16000057, 16000079, 16000081, 16000097, 16000121, 16000129, 16000133, 16000183,
             16000189, 16000207, 16000211, 16000253, 16000277, 16000289, 16000307, 16000321,
             16000339, 16000381, 16000393, 16000399, 16000403, 16000409, 16000447, 16000463]
PRIMES_L14 = [16000477, 16000487, 16000499, 16000507, 16000511, 16000573, 16000609, 16000627,
              16000667, 16000669, 16000693, 16000697, 16000711, 16000729, 16000759, 16000769,
              16000781, 16000799, 16000813, 16000819, 16000841, 16000877, 16000879, 16000889]
MULT_L1 = [76632096046245, 4839876093313, 35959672319349, 73987337458391]
MULT_L14 = [67716810739261, 51510806800915, 30921347202721, 82619226485591]
VEC_L1_POS4 = [5457301, 26470289, 42926785, 62582378, 68079542, 85915763, 102834638, 114358063, 130605657,
               156377119, 174550172, 181396638, 194477994, 217026077, 226856678, 250510400, 261515048, 274655344,
               296704228, 307730068, 331081547, 342108941, 363969460, 377395685]
VEC_L1_POS0 = [9400104, 24924096, 42335591]
VEC_L14_POS4 = [12112771, 17594806, 40177035]
VEC_DECODE_60 = [13392526, 28568535, 38676362]
VEC_DEAD2_POS4_3GRAM = [129810215, 149700608]
VEC_DEAD2_POS3 = [7957620, 22328225]


def flash_state(batch=1):
    return NgramHashState(batch, (1, 14), 16000000, 4, 8, pad_id=2, compressed_vocab_size=99092)


def test_layout_and_multipliers_match_the_release():
    p1, p14 = engram_primes(2, 16000000, 4, 8)
    assert p1.tolist() == PRIMES_L1 and p14.tolist() == PRIMES_L14
    assert (sum(PRIMES_L1), sum(PRIMES_L14)) == (384006168, 384016682)
    assert column_offsets(p1)[:3].tolist() == [0, 16000057, 32000136] and column_offsets(p1)[-1] == 368005705
    assert hash_multipliers(1, 99092, 4).tolist() == MULT_L1
    assert hash_multipliers(14, 99092, 4).tolist() == MULT_L14


def test_published_vectors():
    st_ = flash_state()
    out = st_(np.array([[10, 20, 30, 40, 50]]))
    assert out.shape == (1, 5, 2, 24) and out.dtype == np.int64
    assert out[0, 4, 0].tolist() == VEC_L1_POS4
    assert out[0, 0, 0, :3].tolist() == VEC_L1_POS0
    assert out[0, 4, 1, :3].tolist() == VEC_L14_POS4
    assert st_(np.array([[60]]))[0, 0, 0, :3].tolist() == VEC_DECODE_60
    dead = flash_state()(np.array([[10, 20, 30, 40, 50]]), text_mask=np.array([[1, 1, 0, 1, 1]]))
    assert dead[0, 4, 0, :8].tolist() == VEC_L1_POS4[:8]
    assert dead[0, 4, 0, 8:10].tolist() == VEC_DEAD2_POS4_3GRAM
    assert dead[0, 3, 0, :2].tolist() == VEC_DEAD2_POS3


@pytest.mark.parametrize("seq", [[7, 99091, 0, 5, 5, 5], [1, None, 3, 4, None, 6, 7, 8], [None, 2, 99000]])
def test_hash_equals_a_hand_computation(seq):
    ids = np.array([[0 if t is None else t for t in seq]])
    mask = np.array([[t is not None for t in seq]])
    out = flash_state()(ids, text_mask=mask)
    for p in range(len(seq)):
        assert out[0, p, 0].tolist() == hand_rows(seq, p, PRIMES_L1, MULT_L1, pad=2)
        assert out[0, p, 1].tolist() == hand_rows(seq, p, PRIMES_L14, MULT_L14, pad=2)
    dead_cols = [p for p, t in enumerate(seq) if t is None]
    assert all(out[0, p].min() >= 0 for p in dead_cols)      # a dead position still hashes (its gate is 0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 299), min_size=1, max_size=24), st.data())
def test_any_chunking_hashes_like_one_call(tokens, data):
    """Prefill in chunks then decode one token at a time == one call, per sequence of a batch."""
    n = len(tokens)
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    ids = np.array([tokens, tokens[::-1]])
    masks = np.stack([mask, mask[::-1]])
    kw = dict(layer_ids=(1, 4), vocab_size=1000, max_ngram=4, n_heads=2, pad_id=2, compressed_vocab_size=300)
    whole = NgramHashState(2, **kw)(ids, masks)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, n), max_size=4)))) if n > 1 else []
    state = NgramHashState(2, **kw)
    parts, a = [], 0
    for b in cuts + [n]:
        if b > a:
            assert np.array_equal(state.peek(ids[:, a:b], masks[:, a:b]), whole[:, a:b])   # peek does not advance
            parts.append(state(ids[:, a:b], masks[:, a:b]))
            a = b
    assert np.array_equal(np.concatenate(parts, axis=1), whole)
    assert state.length.tolist() == [n, n]


def test_token_map_is_applied_before_masking_and_pad_is_mapped():
    tmap = np.array([5, 6, 9, 7, 8, 5])                     # raw id -> compressed id; pad raw id 2 -> 9
    kw = dict(layer_ids=(1,), vocab_size=1000, max_ngram=4, n_heads=2, pad_id=2, compressed_vocab_size=10)
    a = NgramHashState(1, token_map=tmap, **kw)(np.array([[0, 3, 4, 1]]))
    b = NgramHashState(1, **dict(kw, pad_id=9))(np.array([[5, 7, 8, 6]]))
    assert np.array_equal(a, b)
    with pytest.raises(IndexError):
        NgramHashState(1, token_map=tmap, **kw)(np.array([[6]]))
    st_ = NgramHashState(1, **kw)
    st_(np.array([[1, 2, 3]]))
    st_.reset()
    assert np.array_equal(st_(np.array([[4]])), NgramHashState(1, **kw)(np.array([[4]])))
    assert (st_.history[0, :2] == DEAD).all()


@pytest.mark.parametrize("text, key", [
    ("Hello", "hello"), ("  Hello\t\n World ", "hello world"), ("ΟΔΟΣ", "οδοσ"), ("Straße", "straße"),
    ("Café", "cafe"), ("ﬁ", "fi"), (" \t\n ", " "), ("\u3000abc\u3000", "abc"), ("\u2028", ""),
    ("a\u200b", "a\u200b"), ("\x1c", "\x1c"), ("x\u2028", "x"), ("Ⅻ", "xii"),
])
def test_normaliser_semantics(text, key):
    assert normalize_token_text(text) == key


def test_compressed_map_first_seen_order_raw_keys_for_partial_utf8():
    decoded = ["<s>", "Hello", "hello", " hello", "\ufffd", "\ufffd", "\u2028", "HELLO", "x"]
    raw = ["<s>", "Hello", "hello", "Ġhello", "<0xE2>", "<0x82>", "\u2028", "HELLO", "x"]
    # " hello" strips to "hello"; the two partial bytes key by their raw strings; U+2028 normalises to "" and
    # keys by its raw text
    assert compressed_token_map(decoded, raw).tolist() == [0, 1, 1, 1, 2, 3, 4, 1, 5]


def test_map_from_a_tokenizers_tokenizer():
    from tokenizers import Tokenizer, models
    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2, "Hello": 3, "hello": 4, "HELLO\t": 5, "\ufffd": 6, "Ωmega": 7, "ωmega": 8}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.add_special_tokens(["<s>", "</s>", "<pad>"])
    # specials keep their own keys; Hello/hello/"HELLO\t" share one; the U+FFFD token keys by its raw string
    assert compressed_token_map_from_tokenizer(tok).tolist() == [0, 1, 2, 3, 3, 3, 4, 5, 5]
